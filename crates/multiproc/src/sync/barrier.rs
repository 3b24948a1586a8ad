//! `Barrier`.
//!
//! The state lives in shared memory under a raw robust lock: how many parties wait in
//! the current generation, and one slot per party. A thread claims a slot (by its
//! thread identity) the first time it waits, and keeps it; its slot records whether it
//! is waiting and how its wait ended, so a waiter learns its outcome from its own slot
//! rather than from counters that later generations may have moved on.
//!
//! A party that dies is noticed by the waiters, which look at the other slots now and
//! then: a claimed slot whose thread is dead and that is not waiting belongs to a party
//! that will never arrive, so the barrier breaks. A thread that has never waited has no
//! slot yet, so a party that dies before its first wait cannot be told from one that is
//! slow; `wait_timeout` covers that case.
//!
//! A party that ends on purpose leaves instead: a thread that ends without a panic, and
//! a process whose function returned (or that exits with status 0, where the C library
//! says the status: glibc), frees the slots of all its threads (the process keeps the
//! list of its threads' slots, see `CLAIMS`), so that a new
//! thread or process can take its place in a later generation (a process started per
//! phase, a scope of threads per round) without the barrier breaking. So does a
//! process that lets go of its last handle to the barrier: its threads that waited on
//! it leave (all the handles of a process share one mapping, see `Held`). Only a party
//! killed, crashed or panicking is a party that died.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use super::BarrierError;
use super::raw::{Acquired, spin_until};
use super::unpoisoned;
use crate::shm::ShmError;
use crate::shm::layout::{BarrierSlot, BarrierWords, ObjectHeader};
use crate::shm::object::{Elem, Kind, Object, Shape};
use crate::sys;

/// How long a waiter spins before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// When a waiter first checks that the other parties live; then twice as long each
/// time, up to `MAX_CHECK`.
const FIRST_CHECK: Duration = Duration::from_millis(5);
const MAX_CHECK: Duration = Duration::from_millis(100);
/// How long a timed wait whose deadline has passed still waits for the state lock while
/// its holder runs: one that is merely busy lets go within microseconds, but one kept
/// from running (preempted on a busy machine) only at its next time slice, and the
/// holder may be the last party, releasing everyone. A holder seen stopped is not
/// waited for.
const LATE_LOCK_PATIENCE: Duration = Duration::from_millis(100);

/// How long a party that ends gives a barrier's state lock held by another (stopped)
/// before it leaves its slot claimed.
const LEAVE_PATIENCE: Duration = Duration::from_millis(100);

/// How long a wait that finds every slot taken looks again before it refuses (see
/// `wait_until`).
const ENDING_PARTY: Duration = Duration::from_millis(20);
const PENDING: u32 = 0;
const PASSED: u32 = 1;
const BROKEN: u32 = 2;

/// The generation after `g` (even): a round that ends moves it on by 2; a party that
/// gives up on its round without the state lock (its holder kept from running) makes
/// it odd, and whichever of the two comes first decides how the round ends for every
/// party (see [`Core::pass_round`] and [`Core::give_up_unlocked`]).
fn next_generation(g: u32) -> u32 {
    (g | 1).wrapping_add(1)
}

/// Whether a party gave up on the round of generation `g` without the state lock.
fn withdrawn(g: u32) -> bool {
    g & 1 != 0
}

/// A barrier for a fixed number of parties (threads, in any processes): each
/// [`wait`](Barrier::wait) blocks until all parties have called it, then all go on
/// together. Python's `Barrier`, with the same broken state.
///
/// A barrier breaks when it is [`abort`](Barrier::abort)ed, when a wait times out, or
/// when a party dies (see below); every current and later wait then fails with
/// [`BarrierError::Broken`] until [`reset`](Barrier::reset). A party is known to the
/// barrier once it has waited on it; if a known party dies before arriving (its process
/// killed or crashed, its thread ended by a panic), the others get `Broken` instead of
/// waiting forever. A party that ends on purpose (a thread that returns, a child
/// process whose function returned) leaves: another thread or process may take its
/// place, as in Python, where any threads may be the parties of each generation (a
/// process started per phase). A party that dies before its first wait cannot be told
/// from a slow one, nor one that left from one that comes late: use
/// [`wait_timeout`](Barrier::wait_timeout) where that matters. The threads of a process
/// that drops its last handle to the barrier leave it too (they could not wait on it
/// again; one that receives a handle later is a party anew). (A thread's panic is
/// seen by a panic hook the barrier installs, in front of the one in place then; a hook
/// set later that does not call the one before it hides panics from the barrier, whose
/// panicking parties then count as having left. A thread that goes on after a panic
/// is caught, by a [`ThreadPool`](crate::ThreadPool) around its task, or by the
/// program and followed by another wait on the barrier, leaves when it returns; one
/// that catches a panic itself and never waits again counts as having died.)
///
/// # Examples
///
/// ```no_run
/// use multiproc::Barrier;
///
/// fn party(barrier: Barrier) -> bool {
///     barrier.wait().unwrap().is_leader()
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let barrier = Barrier::new(3)?;
/// let a = multiproc::spawn(party, barrier.clone())?;
/// let b = multiproc::spawn(party, barrier.clone())?;
/// let me = barrier.wait()?.is_leader();
/// let leaders = [me, a.join()?, b.join()?].iter().filter(|&&l| l).count();
/// assert_eq!(leaders, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Barrier {
    held: Arc<Held>,
}

impl serde::Serialize for Barrier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.held.core.obj.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Barrier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Object::deserialize(d, Kind::Barrier, Elem::NONE).map(Barrier::hold)
    }
}

/// A barrier's mapping, and what works on its shared state.
struct Core {
    obj: Object,
}

/// This process's hold on a barrier: every handle to the barrier in the process shares
/// it (a handle received where one is open already takes that one's, see [`OPEN`]), so
/// that it ends with the process's last handle, and a thread's slot is known by its
/// barrier however the thread came by its handle. As it ends, the threads of this
/// process that waited on the barrier leave it: without a handle they cannot wait on it
/// again (one received later claims a slot anew).
struct Held {
    core: Core,
    key: Option<SegmentKey>,
}

/// A segment's device and inode.
type SegmentKey = (u64, u64);

/// The barriers open in this process, by their segment.
static OPEN: Mutex<Vec<(SegmentKey, Weak<Held>)>> = Mutex::new(Vec::new());

impl Drop for Held {
    fn drop(&mut self) {
        let this: *const Held = self;
        // A handle received as this one went (too late to take it) holds the barrier
        // anew: the claims move to it, as their threads may wait through it.
        let successor = self.key.and_then(|key| {
            let mut open = unpoisoned::lock(&OPEN);
            open.retain(|(_, h)| !std::ptr::eq(h.as_ptr(), this));
            open.iter()
                .filter(|(k, _)| *k == key)
                .find_map(|(_, h)| h.upgrade())
        });
        let claims = take_claims(|c| std::ptr::eq(c.held.as_ptr(), this));
        if let Some(successor) = &successor {
            let mut list = unpoisoned::lock(&CLAIMS);
            list.extend(claims.into_iter().map(|c| Claim {
                held: Arc::downgrade(successor),
                ..c
            }));
            drop(list);
            return;
        }
        // A thread that drops the handle as it unwinds is a party that dies: its slot
        // stays claimed.
        let dying = std::thread::panicking().then(sys::thread_identity);
        for claim in claims {
            if Some(claim.me) != dying {
                self.core.leave(claim.index, claim.me, false);
            }
        }
    }
}

/// How a [`Barrier::wait`] ended when the barrier was passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BarrierWaitResult {
    index: usize,
    parties: usize,
}

impl BarrierWaitResult {
    /// The order of arrival, from 0 to `parties - 1` (Python's return value).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this party arrived last and released the others: exactly one party of
    /// each generation is the leader.
    pub fn is_leader(&self) -> bool {
        self.index + 1 == self.parties
    }
}

impl Barrier {
    /// The most parties a barrier can have.
    pub const MAX_PARTIES: usize = 1 << 16;

    /// A barrier for `parties` parties.
    ///
    /// # Errors
    ///
    /// [`ShmError::InvalidArgument`] for zero parties or more than
    /// [`MAX_PARTIES`](Self::MAX_PARTIES); or if the shared memory cannot be created.
    pub fn new(parties: usize) -> Result<Barrier, ShmError> {
        if parties == 0 || parties > Barrier::MAX_PARTIES {
            return Err(ShmError::InvalidArgument(format!(
                "a barrier needs 1 to {} parties, not {parties}",
                Barrier::MAX_PARTIES
            )));
        }
        let words = BarrierWords::SLOTS_OFFSET - ObjectHeader::WORDS_OFFSET
            + parties * std::mem::size_of::<BarrierSlot>();
        let obj = Object::new(Shape::plain(Kind::Barrier, words), |o| {
            o.words::<BarrierWords>()
                .parties
                .store(parties as u32, SeqCst);
        })?;
        Ok(Barrier::hold(obj))
    }

    /// The handle to `obj`: this process's hold on the barrier if it has one already.
    fn hold(obj: Object) -> Barrier {
        let key = sys::file_id(obj.data().0.fd()).ok();
        let mut open = unpoisoned::lock(&OPEN);
        open.retain(|(_, h)| h.strong_count() > 0);
        let here = key.and_then(|key| {
            open.iter()
                .filter(|(k, _)| *k == key)
                .find_map(|(_, h)| h.upgrade())
        });
        if let Some(held) = here {
            return Barrier { held };
        }
        let held = Arc::new(Held {
            core: Core { obj },
            key,
        });
        if let Some(key) = key {
            open.push((key, Arc::downgrade(&held)));
        }
        Barrier { held }
    }

    /// The number of parties.
    pub fn parties(&self) -> usize {
        self.held.core.parties()
    }

    /// How many parties are waiting now.
    pub fn n_waiting(&self) -> usize {
        self.held.core.words().arrived.load(SeqCst) as usize
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.held.core.words().broken.load(SeqCst) != 0
    }

    /// Waits until every party has called `wait`.
    ///
    /// # Errors
    ///
    /// [`BarrierError::Broken`] if the barrier is or becomes broken while waiting;
    /// [`BarrierError::TooManyParties`] if more live threads than the barrier's parties
    /// use it (after looking again for 20 ms: a thread that has just ended, joined,
    /// stays known to the kernel for a moment).
    pub fn wait(&self) -> Result<BarrierWaitResult, BarrierError> {
        self.held.core.wait_until(&self.held, None)
    }

    /// As [`wait`](Self::wait), for at most `timeout`; if it passes, the barrier breaks
    /// (as in Python) and this wait fails with [`BarrierError::Timeout`].
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait), and `Timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<BarrierWaitResult, BarrierError> {
        self.held
            .core
            .wait_until(&self.held, Instant::now().checked_add(timeout))
    }

    /// Breaks the barrier: current and later waits fail with `Broken` until
    /// [`reset`](Self::reset).
    pub fn abort(&self) {
        let core = &self.held.core;
        let _state = core.lock_state();
        core.break_locked();
    }

    /// Returns the barrier to its initial state: waits in progress fail with `Broken`,
    /// later ones work. Parties that died are forgotten.
    pub fn reset(&self) {
        self.held.core.reset();
    }
}

impl Core {
    fn words(&self) -> &BarrierWords {
        self.obj.words()
    }

    /// How many slots the segment really has room for (a received handle's parties
    /// count is not trusted beyond that).
    fn slots(&self) -> impl Iterator<Item = &BarrierSlot> {
        let room = (self.obj.words_len() + ObjectHeader::WORDS_OFFSET)
            .saturating_sub(BarrierWords::SLOTS_OFFSET)
            / std::mem::size_of::<BarrierSlot>();
        let n = self.parties().min(room);
        (0..n).map(move |i| {
            self.obj.at::<BarrierSlot>(
                BarrierWords::SLOTS_OFFSET + i * std::mem::size_of::<BarrierSlot>(),
            )
        })
    }

    /// The number of parties.
    fn parties(&self) -> usize {
        self.words().parties.load(SeqCst) as usize
    }

    fn reset(&self) {
        let _state = self.lock_state();
        let w = self.words();
        if w.arrived.load(SeqCst) > 0 || withdrawn(w.generation.load(SeqCst)) {
            self.break_locked();
        }
        for slot in self.slots() {
            // A party released (or broken) but not yet awake to read how its wait
            // ended keeps its slot, so that it reads its own outcome (a reset right
            // after a generation passed turned its pass into `Broken`).
            let unread = matches!(slot.outcome.load(SeqCst), PASSED | BROKEN)
                && sys::identity_alive(slot.identity.load(SeqCst));
            if slot.waiting.load(SeqCst) == 0 && !unread {
                slot.identity.store(0, SeqCst);
            }
        }
        w.broken.store(0, SeqCst);
    }

    fn wait_until(
        &self,
        held: &Arc<Held>,
        deadline: Option<Instant>,
    ) -> Result<BarrierWaitResult, BarrierError> {
        let w = self.words();
        let parties = self.parties();
        let me = sys::thread_identity();
        // A thread that waits again goes on after any panic it caught (one that waits
        // as it unwinds, in a guard's `drop`, is ending by that panic).
        set_panicked(std::thread::panicking());
        let mut patience: Option<Instant> = None;
        // A slot this thread took now: remembered once the state lock is let go.
        let mut claimed = None;
        let (state, slot) = loop {
            // A party whose deadline is (nearly) up still arrives: the state's lock may be
            // held a moment by a waiter looking at the other parties, and a timeout spent
            // on that would break the barrier for parties that were all there.
            let Some(state) = self.lock_state_late(deadline) else {
                return self.give_up_unlocked(None, BarrierError::Timeout);
            };
            if withdrawn(w.generation.load(SeqCst)) {
                // A party gave up on this round without the lock: it is broken.
                self.break_locked();
            }
            if w.broken.load(SeqCst) != 0 {
                return Err(BarrierError::Broken);
            }
            if let Some((slot, new)) = self.claim(me) {
                if new {
                    claimed = slot_index(self, slot);
                }
                break (state, slot);
            }
            // Every slot taken. A party whose thread has just ended (joined, say) is
            // still known to the kernel for a moment, and its slot is freed only once
            // it is gone: look again for a while before refusing.
            let now = Instant::now();
            let end = *patience.get_or_insert(now + ENDING_PARTY);
            if now >= end || deadline.is_some_and(|d| now >= d) {
                return Err(BarrierError::TooManyParties);
            }
            drop(state);
            std::thread::sleep(Duration::from_micros(100));
        };
        let index = w.arrived.fetch_add(1, SeqCst);
        if index as usize + 1 >= parties {
            // The last to arrive: release everyone.
            let passed = self.pass_round();
            drop(state);
            if let Some(i) = claimed {
                remember_claim(held, i, me);
            }
            return if passed {
                Ok(BarrierWaitResult {
                    index: index as usize,
                    parties,
                })
            } else {
                Err(BarrierError::Broken)
            };
        }
        slot.outcome.store(PENDING, SeqCst);
        slot.index.store(index, SeqCst);
        slot.waiting.store(1, SeqCst);
        let generation = w.generation.load(SeqCst);
        drop(state);
        if let Some(i) = claimed {
            remember_claim(held, i, me);
        }

        let moved = || w.generation.load(SeqCst) != generation;
        let spin_end = Instant::now() + SPIN;
        spin_until(deadline.map_or(spin_end, |d| d.min(spin_end)), moved);
        let mut check_every = FIRST_CHECK;
        let mut next_check = Instant::now() + check_every;
        // The lock, waiting no longer than this wait may; `None` once the deadline
        // has passed (then with a moment's patience for a holder that is merely busy).
        let lock_in_time = || self.lock_state_late(deadline);
        loop {
            // A generation made odd is a round given up on without the lock, whose flag
            // may not be raised yet: the holder given up on may be stopped, and the
            // lock is not waited for then either.
            if w.broken.load(SeqCst) != 0 || withdrawn(w.generation.load(SeqCst)) {
                // Broken: under the state lock (the generation moved too), or by a
                // timed wait that could not take it (a holder stopped), which only
                // raised the flag and woke the sleepers.
                let Some(_state) = self.lock_state_late(Some(Instant::now())) else {
                    return self
                        .give_up_unlocked(Some((slot, me, generation)), BarrierError::Broken);
                };
                if let Some(result) = self.outcome(slot, me, parties) {
                    return result;
                }
                self.break_locked();
                slot.outcome.store(PENDING, SeqCst);
                return Err(BarrierError::Broken);
            }
            if moved() {
                let Some(_state) = lock_in_time() else {
                    return self
                        .give_up_unlocked(Some((slot, me, generation)), BarrierError::Timeout);
                };
                if let Some(result) = self.outcome(slot, me, parties) {
                    return result;
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                let Some(_state) = lock_in_time() else {
                    return self
                        .give_up_unlocked(Some((slot, me, generation)), BarrierError::Timeout);
                };
                if let Some(result) = self.outcome(slot, me, parties) {
                    return result;
                }
                self.break_locked();
                slot.outcome.store(PENDING, SeqCst);
                return Err(BarrierError::Timeout);
            }
            if now >= next_check {
                // An untimed wait gives a holder that does not let go (stopped) until the
                // next check, and looks again then: meanwhile it must still see the flag
                // a timed wait that could not lock raises.
                let by = match deadline {
                    Some(_) => None,
                    None => Some(now + check_every),
                };
                let locked = match by {
                    None => lock_in_time(),
                    by => self.lock_state_by(by),
                };
                match locked {
                    Some(_state) => {
                        if let Some(result) = self.outcome(slot, me, parties) {
                            return result;
                        }
                        if self.a_party_died() {
                            self.break_locked();
                            slot.outcome.store(PENDING, SeqCst);
                            return Err(BarrierError::Broken);
                        }
                    }
                    None if deadline.is_some() => {
                        return self
                            .give_up_unlocked(Some((slot, me, generation)), BarrierError::Timeout);
                    }
                    None => {}
                }
                check_every = (check_every * 2).min(MAX_CHECK);
                next_check = Instant::now() + check_every;
            }
            let wake_at = deadline.map_or(next_check, |d| d.min(next_check));
            w.sleepers.fetch_add(1, SeqCst);
            sys::futex_wait(
                &w.generation,
                generation,
                Some(wake_at.saturating_duration_since(now)),
            );
            w.sleepers.fetch_sub(1, SeqCst);
        }
    }

    /// The slot of the thread `me`: the one it claimed before, else a free one (one
    /// never claimed, or left), else one whose thread died while not waiting (a party
    /// replaced by another thread: taken last, so that a death stays in view while
    /// there is room); and whether it is new to `me`.
    fn claim(&self, me: u64) -> Option<(&BarrierSlot, bool)> {
        if let Some(mine) = self.slots().find(|s| s.identity.load(SeqCst) == me) {
            return Some((mine, false));
        }
        let slot = self
            .slots()
            .find(|s| s.identity.load(SeqCst) == 0)
            .or_else(|| {
                self.slots().find(|s| {
                    s.waiting.load(SeqCst) == 0 && !sys::identity_alive(s.identity.load(SeqCst))
                })
            })?;
        slot.identity.store(me, SeqCst);
        slot.waiting.store(0, SeqCst);
        Some((slot, true))
    }

    /// Frees slot `index` if the thread `me` holds it and is not waiting: the party
    /// leaves (its thread ends on purpose). With `read_only`, only if the thread has
    /// read the outcome of its last wait (another thread of a process that ends, which
    /// may still be about to read it: freed, its slot read as a round that broke). A
    /// state lock that is not let go within `LEAVE_PATIENCE` (its holder stopped)
    /// leaves the slot claimed.
    /// Whether the slot was kept for an unread outcome (`read_only`) or an unanswered
    /// lock, rather than freed or found not the thread's.
    fn leave(&self, index: usize, me: u64, read_only: bool) -> bool {
        let Some(_state) = self.lock_state_by(Some(Instant::now() + LEAVE_PATIENCE)) else {
            return true;
        };
        let Some(slot) = self.slots().nth(index) else {
            return false;
        };
        if slot.identity.load(SeqCst) != me || slot.waiting.load(SeqCst) != 0 {
            return false;
        }
        if read_only && slot.outcome.load(SeqCst) != PENDING {
            return true;
        }
        slot.outcome.store(PENDING, SeqCst);
        slot.identity.store(0, SeqCst);
        false
    }

    /// How this thread's wait ended, if it has (under the state lock).
    fn outcome(
        &self,
        slot: &BarrierSlot,
        me: u64,
        parties: usize,
    ) -> Option<Result<BarrierWaitResult, BarrierError>> {
        if slot.identity.load(SeqCst) != me {
            // A reset freed the slot after breaking this wait.
            return Some(Err(BarrierError::Broken));
        }
        // Read once: a reset may free the slot from now on.
        let result = match slot.outcome.load(SeqCst) {
            PASSED => Ok(BarrierWaitResult {
                index: slot.index.load(SeqCst) as usize,
                parties,
            }),
            BROKEN => Err(BarrierError::Broken),
            _ => return None,
        };
        slot.outcome.store(PENDING, SeqCst);
        Some(result)
    }

    /// Whether a known party that is not waiting has died (under the state lock).
    fn a_party_died(&self) -> bool {
        self.slots().any(|slot| {
            let owner = slot.identity.load(SeqCst);
            owner != 0 && slot.waiting.load(SeqCst) == 0 && !sys::identity_alive(owner)
        })
    }

    /// The last party's release of its round (under the state lock): the round passes
    /// unless a party gave up on it meanwhile without the lock; then it breaks. Whether
    /// it passed.
    fn pass_round(&self) -> bool {
        let w = self.words();
        if let Some(g) = self.write_passes() {
            // Last, as the parties wake on it (moved on first, it sent them for this lock
            // while it was still held): a party that gave up meanwhile made it odd, and
            // the round breaks after all.
            if w.generation
                .compare_exchange(g, next_generation(g), SeqCst, SeqCst)
                .is_ok()
            {
                w.releasing.store(0, Relaxed);
                self.wake_all();
                return true;
            }
            // The passes just written are turned into breaks there.
        }
        self.break_locked();
        false
    }

    /// The first half of a release (under the state lock): the waiting parties' passes
    /// written, the release marked as under way. The round's generation, or `None` if
    /// it was given up on already.
    fn write_passes(&self) -> Option<u32> {
        let w = self.words();
        let g = w.generation.load(SeqCst);
        if withdrawn(g) {
            return None;
        }
        // Read only by a holder after this one, under the lock.
        w.releasing.store(g | 1, Relaxed);
        self.end_generation(PASSED);
        Some(g)
    }

    /// Turns the passes of a release that did not happen into breaks (under the state
    /// lock). They were read by none: a party reads its outcome under this lock, or
    /// without it once the generation moved on evenly (`give_up_unlocked`). Every other
    /// slot's party was in that round (it could not end without them), so only the
    /// releasing party's own can hold an older pass, which it has read or never will.
    fn unpass(&self) {
        for slot in self.slots() {
            if slot.outcome.load(SeqCst) == PASSED {
                slot.outcome.store(BROKEN, SeqCst);
            }
        }
    }

    /// Breaks the barrier and ends the waits in progress (under the state lock).
    fn break_locked(&self) {
        let w = self.words();
        if w.releasing.load(Relaxed) == w.generation.load(SeqCst) | 1 {
            // A release of this round that did not move the generation on: it found the
            // round given up on, or its party died meanwhile (perhaps half-way through
            // its passes). Every party had arrived, so the passes are its, unread (see
            // `unpass`), and the round breaks.
            self.unpass();
        }
        w.releasing.store(0, Relaxed);
        w.broken.store(1, SeqCst);
        self.end_generation(BROKEN);
        // After the slots: a party giving up without the lock that finds the generation
        // moved finds its outcome written. (A party that makes it odd meanwhile gave up
        // on a round that breaks anyway.)
        w.generation
            .store(next_generation(w.generation.load(SeqCst)), SeqCst);
        self.wake_all();
    }

    /// Ends the current generation (whose number was moved on, or is about to be):
    /// every waiting party gets `outcome` (the caller wakes them).
    fn end_generation(&self, outcome: u32) {
        let w = self.words();
        for slot in self.slots() {
            if slot.waiting.load(SeqCst) != 0 {
                slot.outcome.store(outcome, SeqCst);
                slot.waiting.store(0, SeqCst);
            }
        }
        w.arrived.store(0, SeqCst);
    }

    /// Wakes every sleeping waiter.
    fn wake_all(&self) {
        let w = self.words();
        if w.sleepers.load(SeqCst) > 0 {
            sys::futex_wake(&w.generation, u32::MAX);
        }
    }

    /// Takes the lock on the barrier's state. If its holder died in the middle of an
    /// update, the state cannot be trusted: the barrier breaks.
    fn lock_state(&self) -> StateGuard<'_> {
        loop {
            if let Some(guard) = self.lock_state_by(None) {
                return guard;
            }
        }
    }

    /// As [`lock_state`](Self::lock_state), waiting until `deadline` at most: a party
    /// stopped (`SIGSTOP`, a debugger) while it holds the lock must not hold up a timed
    /// wait past its deadline.
    fn lock_state_by(&self, deadline: Option<Instant>) -> Option<StateGuard<'_>> {
        let got = self.words().lock.lock(deadline)?;
        let guard = StateGuard(self);
        if got == Acquired::OwnerDied {
            self.break_locked();
        }
        Some(guard)
    }

    /// The state lock for a timed wait: until `deadline`, then, past it, as long as its
    /// holder runs ([`LATE_LOCK_PATIENCE`] at most), not once it is seen stopped.
    fn lock_state_late(&self, deadline: Option<Instant>) -> Option<StateGuard<'_>> {
        if let Some(guard) = self.lock_state_by(deadline) {
            return Some(guard);
        }
        let got = self.words().lock.lock_unless_stopped(LATE_LOCK_PATIENCE)?;
        let guard = StateGuard(self);
        if got == Acquired::OwnerDied {
            self.break_locked();
        }
        Some(guard)
    }

    /// A wait is over (timed out, or the barrier broken) and the state lock is held by
    /// someone who does not let go (stopped, or kept from running): the barrier breaks
    /// without it, as a timeout breaks it (the holder and every later wait see
    /// `broken`), and this party, if it waits (`slot`: its slot, thread and generation),
    /// gives up on its round, ending with `error`: it makes the generation odd, and a
    /// last party about to release the round finds that and breaks it. Unless the round
    /// was decided first (the generation moved on under the lock): then the party ends
    /// as its round did, waiting for the holder to write how if it must, as every
    /// party's end does.
    fn give_up_unlocked(
        &self,
        slot: Option<(&BarrierSlot, u64, u32)>,
        error: BarrierError,
    ) -> Result<BarrierWaitResult, BarrierError> {
        let w = self.words();
        if let Some((slot, me, g)) = slot {
            // A generation odd as this party arrived: another gave up on it first (a
            // round that can no longer pass).
            let gave_up = if withdrawn(g) {
                Ok(g)
            } else {
                w.generation
                    .compare_exchange(g, g.wrapping_add(1), SeqCst, SeqCst)
            };
            match gave_up {
                // Gave up on it, or another party did first: it breaks. (An odd number
                // of a later round is not this round's end: this one was decided.)
                Ok(_) => {}
                Err(now) if now == g.wrapping_add(1) => {}
                // Decided under the lock: its outcome is written (then it stays there
                // for this party to read: a reset keeps the slot of a live party whose
                // outcome is unread), or about to be.
                Err(_) => {
                    let _state = (slot.waiting.load(SeqCst) != 0).then(|| self.lock_state());
                    return self
                        .outcome(slot, me, self.parties())
                        .unwrap_or(Err(BarrierError::Broken));
                }
            }
            slot.waiting.store(0, SeqCst);
        }
        w.broken.store(1, SeqCst);
        // The waiters look at the flag when they wake: wake them now (one about to
        // sleep sees it at its next liveness check, within `MAX_CHECK`).
        self.wake_all();
        Err(error)
    }
}

/// The position of `slot` among the barrier's slots.
fn slot_index(barrier: &Core, slot: &BarrierSlot) -> Option<usize> {
    barrier.slots().position(|s| std::ptr::eq(s, slot))
}

/// A slot a thread of this process claimed: freed when the thread ends on purpose, or
/// when the process lets go of its last handle to the barrier.
struct Claim {
    held: Weak<Held>,
    index: usize,
    me: u64,
    /// The process that claimed it (a child forked from this one has a copy of the
    /// list, and must not free its parent's slots).
    pid: u32,
}

impl Claim {
    fn leave(self) {
        if let Some(held) = self.held.upgrade() {
            held.core.leave(self.index, self.me, false);
        }
    }

    /// As [`leave`](Self::leave), for another thread's claim: only if that thread has
    /// read its last outcome. The claim back if its slot was kept.
    fn leave_if_read(self) -> Option<Claim> {
        let held = self.held.upgrade()?;
        held.core.leave(self.index, self.me, true).then_some(self)
    }
}

/// The slots this process's threads claimed, as long as they are parties.
static CLAIMS: Mutex<Vec<Claim>> = Mutex::new(Vec::new());
/// Whether a slot was ever claimed here (or in the process this one was forked from):
/// until then [`process_ends`] has nothing to do, and does not lock [`CLAIMS`].
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// The barriers' process-wide lists, held across a fork (`spawn_fork`), so that none is
/// copied held mid-update by another thread: the child, which takes its claims off the
/// list as it ends, would wait for ever.
pub(crate) fn lock_for_fork() -> impl Sized {
    (
        unpoisoned::lock(&OPEN),
        unpoisoned::lock(&CLAIMS),
        unpoisoned::lock(&PANICKED_THREADS),
    )
}

/// Takes this process's claims that `which` picks off the list (and forgets those of the
/// process it was forked from).
fn take_claims(which: impl Fn(&Claim) -> bool) -> Vec<Claim> {
    let pid = sys::process_id();
    let mut claims = unpoisoned::lock(&CLAIMS);
    claims.retain(|c| c.pid == pid);
    let (taken, kept) = std::mem::take(&mut *claims).into_iter().partition(which);
    *claims = kept;
    taken
}

/// A thread that claimed a slot: as it ends (its thread-locals dropped), its slots
/// leave their barriers, unless it panicked.
struct ThreadEnd(Cell<u64>);

impl Drop for ThreadEnd {
    fn drop(&mut self) {
        let me = self.0.get();
        let claims = take_claims(|c| c.me == me);
        unpoisoned::lock(&PANICKED_THREADS).retain(|&t| t != me);
        if PANICKED.try_with(Cell::get).unwrap_or(false) {
            return;
        }
        for claim in claims {
            claim.leave();
        }
    }
}

thread_local! {
    static THREAD_END: ThreadEnd = const { ThreadEnd(Cell::new(0)) };
    /// This thread panicked (set by a panic hook installed with the first claim): its
    /// slots stay claimed when it ends, and the other parties learn it died.
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

/// The threads of this process (by identity) that claimed a slot and panicked since
/// (their `PANICKED`): a process that ends normally leaves its other threads' slots
/// but theirs, which other parties must learn died.
static PANICKED_THREADS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Sets this thread's `PANICKED`, and its place in [`PANICKED_THREADS`] once it has
/// claimed a slot. From the panic hook the list is only tried (the panic may have come
/// while this thread held it).
fn set_panicked(panicked: bool) {
    let _ = PANICKED.try_with(|p| p.set(panicked));
    let me = THREAD_END.try_with(|end| end.0.get()).unwrap_or(0);
    if me == 0 {
        return;
    }
    let list = if panicked {
        unpoisoned::try_lock(&PANICKED_THREADS)
    } else {
        Some(unpoisoned::lock(&PANICKED_THREADS))
    };
    if let Some(mut list) = list {
        list.retain(|&t| t != me);
        if panicked {
            list.push(me);
        }
    }
}

/// A panic on this thread was caught by multiproc (around a thread pool's task, a
/// supervisor's or a server's step): the thread goes on, and ends, later, as one that
/// returns (its slots leave their barriers), unless it is unwinding from another panic
/// still (a catch in a `drop` on the way). A panic the program catches itself is not
/// seen so: such a thread counts as having died unless it waits on a barrier again, or
/// multiproc catches a later panic of its own.
pub(crate) fn panic_caught() {
    set_panicked(std::thread::panicking());
}

/// Notes that this thread (`me`) claimed slot `index` of `held`'s barrier.
fn remember_claim(held: &Arc<Held>, index: usize, me: u64) {
    static HOOK: Once = Once::new();
    // A thread that unwinds may not change the hook (it would abort): a later claim
    // installs it.
    if !std::thread::panicking() {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                set_panicked(true);
                previous(info);
            }));
        });
    }
    // (A thread whose thread-locals are already gone keeps its claim until the
    // process lets go of the barrier.)
    let _ = THREAD_END.try_with(|end| end.0.set(me));
    let pid = sys::process_id();
    CLAIMED.store(true, SeqCst);
    let mut claims = unpoisoned::lock(&CLAIMS);
    // A claim of the same barrier made before (a `reset` freed this thread's slot) is
    // replaced.
    claims.retain(|c| {
        c.pid == pid && !(c.me == me && std::ptr::eq(c.held.as_ptr(), Arc::as_ptr(held)))
    });
    claims.push(Claim {
        held: Arc::downgrade(held),
        index,
        me,
        pid,
    });
}

/// The process's exit work is done and it ends now, `normally` as for
/// [`process_ends`]: the slots that pass left (of its other threads that had not read
/// their last outcome: they may have read it since, and no thread of this process
/// waits at a barrier any more) leave too, but those of threads that panicked.
pub(crate) fn process_ended(normally: bool) {
    if !normally || !CLAIMED.load(SeqCst) {
        return;
    }
    let pid = sys::process_id();
    if !unpoisoned::lock(&CLAIMS).iter().any(|c| c.pid == pid) {
        return;
    }
    let panicked = unpoisoned::lock(&PANICKED_THREADS).clone();
    for claim in take_claims(|c| !panicked.contains(&c.me)) {
        claim.leave();
    }
}

/// The process ends: with `normally` (its function returned, whatever panics it
/// caught, or it exits with status 0), the slots of its threads leave their barriers
/// (a process ends without running its threads' destructors: a thread of its own that
/// waited, still running or parked, left its slot claimed, and the barrier broke for
/// the others), but those of a thread that panicked (and runs on, its panic caught by
/// the program), a party that died, and those whose last outcome is not read yet;
/// otherwise those of this thread stay claimed, and the other parties learn it died.
pub(crate) fn process_ends(normally: bool) {
    // A process none of whose threads waits at a barrier (most) need not learn its
    // thread's identity, which a child that ends right after its call would compute
    // here for the first time (a read of `/proc/TID/stat`), nor write to memory it
    // shares with its fork server until then (each page written is copied): it looks
    // only at a flag, which a thread stores before it makes its first claim (a thread
    // that claims as the process ends is not waited for).
    if !CLAIMED.load(SeqCst) {
        return;
    }
    let pid = sys::process_id();
    if !unpoisoned::lock(&CLAIMS).iter().any(|c| c.pid == pid) {
        return;
    }
    if normally {
        // This thread's leave; so do the others', but those of a thread that panicked
        // (and runs on: one whose panic the program caught), which died, and the slot
        // of one that has not read its last outcome yet (it may read it as the exit
        // work runs).
        let me = sys::thread_identity();
        let panicked = unpoisoned::lock(&PANICKED_THREADS).clone();
        let mut kept = Vec::new();
        for claim in take_claims(|c| c.me == me || !panicked.contains(&c.me)) {
            if claim.me == me {
                claim.leave();
            } else {
                kept.extend(claim.leave_if_read());
            }
        }
        // Left at the end of the exit work ([`process_ended`]).
        unpoisoned::lock(&CLAIMS).extend(kept);
    } else {
        let me = sys::thread_identity();
        drop(take_claims(|c| c.me == me));
    }
}

/// The barrier's state lock, held; released when dropped.
struct StateGuard<'a>(&'a Core);

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        self.0.words().lock.unlock();
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn until(what: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !what() {
            assert!(t0.elapsed() < Duration::from_secs(30), "timed out");
            std::thread::yield_now();
        }
    }

    /// A timed wait whose deadline passes while the last party, arrived, holds the state
    /// lock and is kept from running for a while (preempted on a busy machine): it
    /// waits for that party, which runs, and passes with the others. It waited a
    /// millisecond, then broke the barrier and said `Timeout` while the generation
    /// passed for everyone else.
    #[test]
    fn a_timed_wait_waits_for_a_slow_last_party() {
        let b = Barrier::new(2).unwrap();
        let timed = b.clone();
        let started = Instant::now();
        let timeout = Duration::from_millis(500);
        let timed = std::thread::spawn(move || timed.wait_timeout(timeout));
        until(|| b.n_waiting() == 1);
        // The last party, arrived: holds the state lock until 50 ms past the waiter's
        // deadline, then releases everyone, as `wait_until` does.
        let core = &b.held.core;
        let state = core.lock_state();
        let until = started + timeout + Duration::from_millis(50);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        assert!(core.pass_round());
        drop(state);
        assert!(timed.join().unwrap().is_ok());
        assert!(!b.is_broken());
    }

    /// A party that waits 100 ms at most arrives, then the last one, as `wait_until`
    /// does, and holds the state lock (the guard).
    fn a_timed_party_then_the_last(
        b: &Barrier,
    ) -> (
        std::thread::JoinHandle<Result<BarrierWaitResult, BarrierError>>,
        StateGuard<'_>,
    ) {
        let before = b.n_waiting();
        let timed = b.clone();
        let timed = std::thread::spawn(move || timed.wait_timeout(Duration::from_millis(100)));
        until(|| b.n_waiting() == before + 1);
        let core = &b.held.core;
        let state = core.lock_state();
        core.words().arrived.fetch_add(1, SeqCst);
        (timed, state)
    }

    /// The last party, arrived, holds the state lock and is kept from running past a
    /// timed party's deadline and its patience for the lock (600 ms): `release_first`
    /// says whether it releases the round before or after that time.
    fn a_last_party_held_up(
        release_first: bool,
    ) -> (bool, Result<BarrierWaitResult, BarrierError>) {
        let b = Barrier::new(2).unwrap();
        let (timed, state) = a_timed_party_then_the_last(&b);
        let core = &b.held.core;
        let mut passed = None;
        if release_first {
            passed = Some(core.pass_round());
        }
        std::thread::sleep(Duration::from_millis(600));
        let passed = passed.unwrap_or_else(|| core.pass_round());
        drop(state);
        let timed = timed.join().unwrap();
        assert_eq!(b.is_broken(), !passed);
        (passed, timed)
    }

    /// A timed party that gave up on a last party holding the state lock before it
    /// released the round: the round breaks for the last party too. It passed, while
    /// the timed party said `Timeout`.
    #[test]
    fn a_round_a_timed_party_gave_up_on_breaks() {
        let (passed, timed) = a_last_party_held_up(false);
        assert!(
            !passed,
            "the last party passed a round its timed party left"
        );
        assert_eq!(timed.err(), Some(BarrierError::Timeout));
    }

    /// A timed party whose round passed before its deadline while the last party still
    /// holds the state lock passes: it said `Timeout`, and broke the next round.
    #[test]
    fn a_timed_party_whose_round_passed_passes() {
        let (passed, timed) = a_last_party_held_up(true);
        assert!(passed);
        assert_eq!(timed.map(|r| r.index), Ok(0));
    }

    /// A last party that dies after writing the passes and before it moves the generation
    /// on, while a timed party gives up on it: the next holder of the lock breaks the
    /// round for every party. The untimed party passed, while the timed one said
    /// `Timeout`.
    #[test]
    fn a_release_cut_short_by_a_death_breaks_the_round() {
        let b = Barrier::new(3).unwrap();
        let untimed = b.clone();
        let untimed = std::thread::spawn(move || untimed.wait());
        until(|| b.n_waiting() == 1);
        let (timed, state) = a_timed_party_then_the_last(&b);
        let core = &b.held.core;
        // The first half of `pass_round`; then the party is held up past the timed
        // party's patience, and dies (the next holder's `OwnerDied` breaks the barrier).
        assert!(core.write_passes().is_some());
        assert_eq!(timed.join().unwrap().err(), Some(BarrierError::Timeout));
        core.break_locked();
        assert!(
            core.slots().all(|s| s.outcome.load(SeqCst) != PASSED),
            "a pass of a round another party gave up on was left"
        );
        drop(state);
        assert_eq!(
            untimed.join().unwrap().err(),
            Some(BarrierError::Broken),
            "a party passed a round another gave up on"
        );
    }

    /// A break takes back the passes of a release of its own round that did not move
    /// the generation on (its party died half-way through them: some parties passed,
    /// others broke), and only those: not an earlier round's pass its party has yet to
    /// read, when a break cut short and a party that gave up left the generation odd
    /// with no party arrived.
    #[test]
    fn a_break_takes_back_only_the_passes_of_a_release_cut_short() {
        let b = Barrier::new(2).unwrap();
        let core = &b.held.core;
        let w = core.words();
        let (first, second) = {
            let mut slots = core.slots();
            (slots.next().unwrap(), slots.next().unwrap())
        };
        let state = core.lock_state();
        first.outcome.store(PASSED, SeqCst);
        w.generation.store(w.generation.load(SeqCst) | 1, SeqCst);
        w.arrived.store(0, SeqCst);
        core.break_locked();
        assert_eq!(
            first.outcome.load(SeqCst),
            PASSED,
            "an earlier round's pass was taken back"
        );
        // Half-way through a release's passes.
        let g = w.generation.load(SeqCst);
        w.releasing.store(g | 1, Relaxed);
        second.waiting.store(1, SeqCst);
        second.outcome.store(PENDING, SeqCst);
        core.break_locked();
        assert_eq!(
            (first.outcome.load(SeqCst), second.outcome.load(SeqCst)),
            (BROKEN, BROKEN)
        );
        drop(state);
    }

    /// A party that arrived in a round already given up on (its generation odd) and
    /// cannot take the lock gives up at once with its own error: it waited for the
    /// lock's holder (with no limit) and said `Broken`.
    #[test]
    fn a_party_of_a_round_given_up_on_gives_up_at_once() {
        let b = Barrier::new(2).unwrap();
        let core = &b.held.core;
        let slot = core.slots().next().unwrap();
        // The stopped holder.
        assert!(core.words().lock.lock(None).is_some());
        let g = core.words().generation.load(SeqCst) | 1;
        core.words().generation.store(g, SeqCst);
        slot.waiting.store(1, SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        let me = sys::thread_identity();
        slot.identity.store(me, SeqCst);
        let held = Arc::clone(&b.held);
        // Not joined: a party that never returns must fail this test, not hang it.
        std::thread::spawn(move || {
            let core = &held.core;
            let slot = core.slots().next().unwrap();
            let _ = tx.send(core.give_up_unlocked(Some((slot, me, g)), BarrierError::Timeout));
        });
        let ended = rx.recv_timeout(Duration::from_secs(10));
        b.held.core.words().lock.unlock();
        assert_eq!(ended.map(|r| r.err()), Ok(Some(BarrierError::Timeout)));
        assert!(b.is_broken());
    }

    /// A timed wait that cannot take the state lock (its holder stopped) breaks the
    /// barrier without it: the parties already waiting must learn it, not sleep on.
    #[test]
    fn a_timed_wait_that_cannot_lock_ends_the_other_waits() {
        let b = Barrier::new(3).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = b.clone();
        // Not joined: a waiter that never ends must fail this test, not hang it.
        std::thread::spawn(move || tx.send(waiting.wait()).unwrap());
        until(|| b.n_waiting() == 1);
        // The stopped holder.
        assert!(b.held.core.words().lock.lock(None).is_some());
        let timed = b.clone();
        let timed = std::thread::spawn(move || timed.wait_timeout(Duration::from_millis(10)));
        assert_eq!(timed.join().unwrap().err(), Some(BarrierError::Timeout));
        let ended = rx.recv_timeout(Duration::from_secs(10));
        b.held.core.words().lock.unlock();
        assert_eq!(
            ended.map(|r| r.err()),
            Ok(Some(BarrierError::Broken)),
            "the waiting party did not learn that the barrier broke"
        );
    }
}
