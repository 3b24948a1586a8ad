//! An event broadcast: fan-out of events to subscribers: the scheduler's and the supervisor's event streams.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use crate::sync::unpoisoned;

/// Every subscriber gets every event sent after it subscribed. A subscriber whose
/// receiver was dropped is forgotten at the next event, so nobody reading costs nothing.
#[derive(Debug)]
pub(crate) struct Broadcast<E> {
    subscribers: Mutex<Vec<Sender<E>>>,
}

impl<E: Clone> Broadcast<E> {
    pub(crate) fn new() -> Self {
        Broadcast {
            subscribers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn subscribe(&self) -> Receiver<E> {
        let (tx, rx) = crossbeam_channel::unbounded();
        unpoisoned::lock(&self.subscribers).push(tx);
        rx
    }

    pub(crate) fn send(&self, event: E) {
        let mut subs = unpoisoned::lock(&self.subscribers);
        subs.retain(|tx| tx.send(event.clone()).is_ok());
    }
}
