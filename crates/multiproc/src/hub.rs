//! Fan-out of events to subscribers: the scheduler's and the supervisor's event streams.

use std::sync::{Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender};

/// Every subscriber gets every event sent after it subscribed. A subscriber whose
/// receiver was dropped is forgotten at the next event, so nobody reading costs nothing.
#[derive(Debug)]
pub(crate) struct Hub<E> {
    subscribers: Mutex<Vec<Sender<E>>>,
}

impl<E: Clone> Hub<E> {
    pub(crate) fn new() -> Self {
        Hub {
            subscribers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn subscribe(&self) -> Receiver<E> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    pub(crate) fn send(&self, event: E) {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|tx| tx.send(event.clone()).is_ok());
    }
}
