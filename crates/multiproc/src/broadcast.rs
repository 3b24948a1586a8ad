//! An event broadcast: fan-out of events to subscribers: the scheduler's and the supervisor's event streams.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use crate::sync::unpoisoned;

/// The most events a subscriber that does not read keeps: later ones are dropped for
/// it (a warning says so, once per run of drops), rather than grow without bound (a job
/// every millisecond makes 2,000 events a second).
pub(crate) const KEPT: usize = 100_000;

/// Every subscriber gets every event sent after it subscribed, while it keeps fewer than
/// [`KEPT`] unread. A subscriber whose receiver was dropped is forgotten at the next
/// event, so nobody reading costs nothing.
#[derive(Debug)]
pub(crate) struct Broadcast<E> {
    /// The subscribers; `None` once [`close`](Self::close)d.
    subscribers: Mutex<Option<Vec<Subscriber<E>>>>,
}

/// A subscriber, and how many events it missed since it last had room.
type Subscriber<E> = (Sender<E>, u64);

impl<E: Clone> Broadcast<E> {
    pub(crate) fn new() -> Self {
        Broadcast {
            subscribers: Mutex::new(Some(Vec::new())),
        }
    }

    pub(crate) fn subscribe(&self) -> Receiver<E> {
        // Unbounded, and held to `KEPT` here (sends happen under the lock, and the
        // receiver only empties it): a bounded channel would take its whole room at
        // once, megabytes per subscriber.
        // Closed: the receiver is disconnected at once (its sender dropped here).
        let (tx, rx) = crossbeam_channel::unbounded();
        if let Some(subs) = unpoisoned::lock(&self.subscribers).as_mut() {
            subs.push((tx, 0));
        }
        rx
    }

    /// Sends `last` to every subscriber, however many events it keeps unread (the end
    /// of a stream is not among the events a slow reader misses), and ends the
    /// broadcast: each receiver is disconnected once it has read what it holds, and one
    /// subscribed later is disconnected at once. Events sent afterwards go nowhere.
    pub(crate) fn close(&self, last: &[E]) {
        let Some(subs) = unpoisoned::lock(&self.subscribers).take() else {
            return;
        };
        for (tx, _) in subs {
            for event in last {
                let _ = tx.send(event.clone());
            }
        }
    }

    pub(crate) fn send(&self, event: E) {
        let mut subs = unpoisoned::lock(&self.subscribers);
        let Some(subs) = subs.as_mut() else {
            return;
        };
        subs.retain_mut(|(tx, missed)| {
            if tx.len() >= KEPT {
                if *missed == 0 {
                    tracing::warn!(
                        kept = KEPT,
                        "an event subscriber does not read: later events are dropped for it"
                    );
                }
                *missed += 1;
                // Kept: a receiver dropped meanwhile empties the channel (crossbeam
                // discards what a channel without receivers holds), and the next send
                // finds it gone.
                return true;
            }
            if tx.send(event.clone()).is_err() {
                return false;
            }
            if *missed > 0 {
                tracing::warn!(
                    missed = *missed,
                    "an event subscriber that did not read missed events"
                );
                *missed = 0;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber that does not read keeps `KEPT` events, not every one; once it
    /// reads, it gets the later ones again; a dropped one is forgotten.
    #[test]
    fn an_unread_subscriber_keeps_a_bounded_backlog() {
        let b = Broadcast::new();
        let idle = b.subscribe();
        let gone = b.subscribe();
        drop(gone);
        for i in 0..KEPT + 10 {
            b.send(i);
        }
        assert_eq!(idle.len(), KEPT);
        assert_eq!(subscribers(&b), 1);
        assert_eq!(idle.recv().unwrap(), 0);
        b.send(usize::MAX);
        assert_eq!(idle.len(), KEPT);
        assert_eq!(idle.try_iter().last(), Some(usize::MAX));
        // One dropped while full is forgotten at the next event.
        for i in 0..KEPT {
            b.send(i);
        }
        drop(idle);
        b.send(0);
        assert_eq!(subscribers(&b), 0);
    }

    fn subscribers<E>(b: &Broadcast<E>) -> usize {
        unpoisoned::lock(&b.subscribers)
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// The last events reach a subscriber that keeps `KEPT` unread (they were dropped for
    /// it, and one waiting for the end waited for ever); then its receiver is
    /// disconnected, as is one subscribed after the close.
    #[test]
    fn the_last_events_reach_a_full_subscriber_and_end_the_stream() {
        let b = Broadcast::new();
        let full = b.subscribe();
        for i in 0..KEPT {
            b.send(i);
        }
        b.send(0);
        b.close(&[usize::MAX - 1, usize::MAX]);
        b.send(7);
        let got: Vec<usize> = full.try_iter().collect();
        assert_eq!(got.len(), KEPT + 2);
        assert_eq!(got[KEPT..], [usize::MAX - 1, usize::MAX]);
        assert!(matches!(
            full.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
        assert!(matches!(
            b.subscribe().try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
    }
}
