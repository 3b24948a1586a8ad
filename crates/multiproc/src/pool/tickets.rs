//! The ticket table: one slot per task in flight, shared by the pool and its workers,
//! that decides who gets a task: the worker that starts it, or a `cancel` that comes
//! first. Both compare-and-swap the slot from *queued*, so exactly one wins. A task
//! that runs ends the same way: its worker swaps *running* for *finished* as it sends
//! the outcome, and a cancel or a timeout swaps *running* for *killing* before it kills
//! the worker; a worker that loses exits rather than start its next task, and a kill
//! that loses is not made (the outcome is on its way), so a kill meant for one task
//! never lands on the next.
//!
//! A slot's word is `generation << 8 | state`. The pool bumps the generation each time
//! it hands the slot to a new task, and a job names the generation it was queued with,
//! so a stale job can never claim the slot of a later task.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::ShmError;
use crate::shm::layout::{ObjectHeader, TicketWords};
use crate::shm::object::{Elem, Kind, Object, Shape};

/// A zeroed slot is free.
const FREE: u64 = 0;
const QUEUED: u64 = 1;
const RUNNING: u64 = 2;
const CANCELLED: u64 = 3;
const FINISHED: u64 = 4;
const KILLING: u64 = 5;

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TicketState {
    /// Not yet started by its worker.
    Queued,
    /// Started, at this `CLOCK_MONOTONIC` time (ns).
    Running(u64),
    /// Cancelled before it started.
    Cancelled,
    /// Ended, started at this time (ns): its outcome is on its way.
    Finished(u64),
    /// Its worker is being killed for it (a cancel or a timeout).
    Killing,
    /// The slot holds another generation, or nothing.
    Other,
}

/// The table.
#[derive(Clone, Debug)]
pub(crate) struct Tickets {
    obj: Arc<Object>,
}

impl Tickets {
    /// A table of `capacity` free slots.
    pub(crate) fn new(capacity: usize) -> Result<Tickets, ShmError> {
        let words = capacity
            .checked_mul(std::mem::size_of::<TicketWords>())
            .ok_or_else(|| ShmError::InvalidArgument("too many tickets".into()))?;
        let obj = Object::new(Shape::plain(Kind::Tickets, words), |_| {})?;
        Ok(Tickets { obj: Arc::new(obj) })
    }

    /// How many slots the table has.
    pub(crate) fn capacity(&self) -> usize {
        self.obj.words_len() / std::mem::size_of::<TicketWords>()
    }

    fn slot(&self, i: u32) -> Option<&TicketWords> {
        let i = i as usize;
        (i < self.capacity()).then(|| {
            self.obj
                .at(ObjectHeader::WORDS_OFFSET + i * std::mem::size_of::<TicketWords>())
        })
    }

    /// Pool: hands slot `i` to a task of generation `generation`.
    pub(crate) fn queue(&self, i: u32, generation: u32) {
        if let Some(s) = self.slot(i) {
            s.started_ns.store(0, SeqCst);
            s.item_ns.store(0, SeqCst);
            s.state.store(word(generation, QUEUED), SeqCst);
        }
    }

    /// Pool: frees slot `i`.
    pub(crate) fn free(&self, i: u32) {
        if let Some(s) = self.slot(i) {
            s.state.store(FREE, SeqCst);
        }
    }

    /// Pool: cancels the task in slot `i` unless it has started. Returns where it
    /// stands afterwards: `Cancelled` if this call (or an earlier one) won.
    pub(crate) fn cancel(&self, i: u32, generation: u32) -> TicketState {
        match self.swap(i, generation, QUEUED, CANCELLED) {
            Ok(()) => TicketState::Cancelled,
            Err(_) => self.state(i, generation),
        }
    }

    /// Where the task of `generation` in slot `i` stands.
    pub(crate) fn state(&self, i: u32, generation: u32) -> TicketState {
        let Some(s) = self.slot(i) else {
            return TicketState::Other;
        };
        let w = s.state.load(SeqCst);
        if w >> 8 != u64::from(generation) {
            return TicketState::Other;
        }
        match w & 0xff {
            QUEUED => TicketState::Queued,
            RUNNING => TicketState::Running(s.started_ns.load(SeqCst)),
            CANCELLED => TicketState::Cancelled,
            FINISHED => TicketState::Finished(s.started_ns.load(SeqCst)),
            KILLING => TicketState::Killing,
            _ => TicketState::Other,
        }
    }

    /// Worker: starts the task of `generation` in slot `i`, at `now_ns`. False if it was
    /// cancelled (or the job is stale).
    pub(crate) fn claim(&self, i: u32, generation: u32, now_ns: u64) -> bool {
        let Some(s) = self.slot(i) else {
            return false;
        };
        // The start time follows the claim: a reader that sees the task running with a
        // start time of 0 takes it as started just now.
        let ok = self.swap(i, generation, QUEUED, RUNNING).is_ok();
        if ok {
            s.started_ns.store(now_ns.max(1), SeqCst);
        }
        ok
    }
}

impl Tickets {
    /// Worker: the task of `generation` in slot `i` ended, and its outcome goes out now.
    /// False if the pool is killing this worker for it (then the worker must not start
    /// another task).
    pub(crate) fn finish(&self, i: u32, generation: u32) -> bool {
        match self.swap(i, generation, RUNNING, FINISHED) {
            Ok(()) => true,
            Err(w) => w != Some(word(generation, KILLING)),
        }
    }

    /// Worker: the task of `generation` in slot `i` (a map's chunk) starts its next
    /// item at `now_ns`: the pool's timeout counts from there, so that it applies to
    /// each item rather than to the chunk.
    pub(crate) fn restart_clock(&self, i: u32, generation: u32, now_ns: u64) {
        if let Some(s) = self.slot(i)
            && s.state.load(SeqCst) == word(generation, RUNNING)
        {
            s.item_ns.store(now_ns.max(1), SeqCst);
        }
    }

    /// When what the pool's timeout counts from started, for a task that runs since
    /// `started`: its current item's start (or its values' encoding's), for a map's
    /// chunk whose first item has started.
    pub(crate) fn timed_from(&self, i: u32, started: u64) -> u64 {
        self.slot(i)
            .map_or(started, |s| s.item_ns.load(SeqCst).max(started))
    }

    /// Pool: about to kill the worker running the task of `generation` in slot `i`.
    /// Returns where the task stands afterwards: `Killing` if it still ran (the kill
    /// may go ahead), `Finished` if it has just ended (it must not).
    pub(crate) fn kill(&self, i: u32, generation: u32) -> TicketState {
        match self.swap(i, generation, RUNNING, KILLING) {
            Ok(()) => TicketState::Killing,
            Err(_) => self.state(i, generation),
        }
    }
}

impl Tickets {
    /// Moves the task of `generation` in slot `i` from state `from` to `to`, if it is
    /// there; otherwise the word found (`None`: no such slot).
    fn swap(&self, i: u32, generation: u32, from: u64, to: u64) -> Result<(), Option<u64>> {
        let s = self.slot(i).ok_or(None)?;
        s.state
            .compare_exchange(word(generation, from), word(generation, to), SeqCst, SeqCst)
            .map(drop)
            .map_err(Some)
    }
}

fn word(generation: u32, state: u64) -> u64 {
    (u64::from(generation) << 8) | state
}

impl Serialize for Tickets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.obj.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Tickets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let obj = Object::deserialize(d, Kind::Tickets, Elem::NONE)?;
        Ok(Tickets { obj: Arc::new(obj) })
    }
}
