//! The lock under every process-shared structure: a futex lock that knows its owner, so
//! that a waiter can tell when the owner died holding it and take it over.
//!
//! The 64-bit `state` holds the owner's thread identity (thread id plus start time, see
//! `sys::thread_identity`) or 0. Taking the lock is one compare-and-swap; a waiter spins
//! briefly, then sleeps on the 32-bit `epoch` futex, which a releaser bumps (and wakes)
//! only when someone is asleep. A sleeper wakes up now and then to check that the owner
//! still lives; if it does not, the sleeper swaps the dead identity for its own and
//! reports [`Acquired::OwnerDied`], and the lock works on as before. No kernel robust
//! list is involved (glibc owns each thread's), and thread ids that are reused after a
//! death are told apart by their start times. A holder that took the lock over and
//! could not repair what the dead owner left lets it go as [`ABANDONED`], which the
//! next taker takes over at once, as from a dead owner.
//!
//! Lost wake-ups are impossible: a sleeper reads `epoch`, increments `sleepers`, raises
//! `wake` and then re-reads `state` before sleeping on `epoch` (not if it reads 0 or
//! [`ABANDONED`]); a releaser stores 0 (or `ABANDONED`) into `state` and then, if
//! `sleepers` is non-zero and it can clear `wake`, bumps `epoch` and wakes one sleeper. All these accesses are sequentially consistent, so either the
//! sleeper sees the lock free, or the releaser sees the sleeper (and its bump of `epoch`
//! makes the sleep return at once if it had not begun). Clearing `wake` makes a holder
//! that releases and retakes the lock in a loop call the kernel once per sleep rather
//! than once per release (as glibc's mutex does with its "contended" state); a sleeper
//! that takes the lock after sleeping raises `wake` again if others still sleep, so
//! that its release wakes the next one.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

pub(crate) use crate::shm::layout::LockWords;
use crate::sys;

/// How long a sleeper whose waker wakes only one sleeper sleeps at most before it looks
/// again (see [`wait_for`]).
pub(crate) const RECHECK: Duration = Duration::from_millis(100);

/// The `state` of a lock let go by a holder that could not finish repairing what a dead
/// holder left half-done (an unbounded channel's producer that cannot map the overflow
/// segment the repair needs): an identity no thread has (thread id 0), so that the next
/// taker takes the lock over as from a dead owner, at once, and repairs in its turn.
pub(crate) const ABANDONED: u64 = 1 << 32;

/// How long a waiter spins before it sleeps.
const SPIN: Duration = Duration::from_micros(10);
/// When a sleeper first checks that the owner still lives; then twice as long each
/// time, up to `MAX_CHECK`.
const FIRST_CHECK: Duration = Duration::from_millis(2);
const MAX_CHECK: Duration = Duration::from_millis(100);
/// How often [`LockWords::lock_unless_stopped`] looks at whether the holder is stopped.
const STOP_CHECK: Duration = Duration::from_micros(200);

/// Whether the owner `owner` of a lock will never let go of it, so that the lock is
/// taken over: it died, and is not a thread of this process that leaked a guard of the
/// data the lock guards (see [`leaked`](super::leaked)); or it let the lock go as
/// [`ABANDONED`].
fn gone(owner: u64) -> bool {
    owner == ABANDONED || (!sys::identity_alive(owner) && !super::leaked::leaked_by(owner))
}

/// How the lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// From its last owner, who released it.
    Clean,
    /// From an owner that died holding it: what it protects may be half-updated.
    OwnerDied,
}

impl LockWords {
    /// Takes the lock only if it is free: one whose holder died is left for a caller
    /// that takes it over and knows it did ([`try_lock`](Self::try_lock),
    /// [`lock`](Self::lock)).
    #[inline]
    pub(crate) fn try_lock_free(&self) -> bool {
        self.state
            .compare_exchange(0, sys::thread_identity(), SeqCst, SeqCst)
            .is_ok()
    }

    /// Takes the lock if it is free, or held by a thread that no longer exists.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<Acquired> {
        let me = sys::thread_identity();
        match self.state.compare_exchange(0, me, SeqCst, SeqCst) {
            Ok(_) => Some(Acquired::Clean),
            Err(owner) if owner != me && gone(owner) => self
                .state
                .compare_exchange(owner, me, SeqCst, SeqCst)
                .ok()
                .map(|_| Acquired::OwnerDied),
            Err(_) => None,
        }
    }

    /// Takes the lock for a call that must not block on a peer that cannot let go:
    /// waits while the holder runs (it holds the lock for the microseconds a copy takes,
    /// but may have been preempted), at most `limit`, and gives up as soon as the holder
    /// is seen stopped (`SIGSTOP`, a debugger; one in a frozen cgroup shows as sleeping,
    /// and is waited for the whole `limit`). A holder that died is taken over, as by
    /// [`lock`](Self::lock).
    #[inline]
    pub(crate) fn lock_unless_stopped(&self, limit: Duration) -> Option<Acquired> {
        // Free (the usual case): taken without a look at the clock.
        let me = sys::thread_identity();
        if self.state.compare_exchange(0, me, SeqCst, SeqCst).is_ok() {
            return Some(Acquired::Clean);
        }
        self.lock_unless_stopped_contended(limit)
    }

    #[cold]
    #[inline(never)]
    fn lock_unless_stopped_contended(&self, limit: Duration) -> Option<Acquired> {
        let end = Instant::now() + limit;
        loop {
            let slice = (Instant::now() + STOP_CHECK).min(end);
            if let Some(got) = self.lock(Some(slice)) {
                return Some(got);
            }
            let owner = self.state.load(SeqCst);
            if owner == 0 {
                continue;
            }
            if gone(owner) {
                if self.take_from_dead(owner, sys::thread_identity()) {
                    return Some(Acquired::OwnerDied);
                }
                continue;
            }
            if Instant::now() >= end || sys::identity_stopped(owner) {
                return None;
            }
        }
    }

    /// Takes the lock, waiting until `deadline` (`None`: as long as it takes). `None`
    /// if the deadline passed first.
    #[inline]
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> Option<Acquired> {
        let me = sys::thread_identity();
        if self.state.compare_exchange(0, me, SeqCst, SeqCst).is_ok() {
            return Some(Acquired::Clean);
        }
        self.lock_contended(me, deadline)
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self, me: u64, deadline: Option<Instant>) -> Option<Acquired> {
        let spin_end = Instant::now() + SPIN;
        let won = spin_backing_off(spin_end.min(deadline.unwrap_or(spin_end)), || {
            self.state.load(SeqCst) == 0
                && self.state.compare_exchange(0, me, SeqCst, SeqCst).is_ok()
        });
        if won {
            return Some(Acquired::Clean);
        }
        let mut check_every = FIRST_CHECK;
        let mut next_check = Instant::now() + check_every;
        loop {
            let epoch = self.epoch.load(SeqCst);
            let owner = self.state.load(SeqCst);
            // This very thread holds it: an untimed wait would never end (a channel's
            // send lock taken again by a value's `Serialize` that sends on the same
            // channel). Said, rather than hung.
            assert!(
                !(owner == me && deadline.is_none()),
                "a multiproc lock was waited for by the thread that holds it, which would wait \
                 for ever (a value's Serialize that sends on the channel it is being sent on?)"
            );
            if owner == 0 {
                if self.state.compare_exchange(0, me, SeqCst, SeqCst).is_ok() {
                    self.pass_on_wake();
                    return Some(Acquired::Clean);
                }
                continue;
            }
            if owner == ABANDONED {
                if self.take_from_dead(owner, me) {
                    return Some(Acquired::OwnerDied);
                }
                continue;
            }
            let now = Instant::now();
            if now >= next_check {
                if owner != me && gone(owner) {
                    if self.take_from_dead(owner, me) {
                        return Some(Acquired::OwnerDied);
                    }
                    continue;
                }
                check_every = (check_every * 2).min(MAX_CHECK);
                next_check = now + check_every;
            }
            let wake_at = match deadline {
                // At its deadline a waiter looks at the owner once more: a wait shorter
                // than the first check (a poll with a timeout of 1 ms, say) would
                // otherwise never find a dead owner.
                Some(d) if now >= d => {
                    if owner != me && gone(owner) && self.take_from_dead(owner, me) {
                        return Some(Acquired::OwnerDied);
                    }
                    // This waiter may be the one an unlock woke, whose lock another thread
                    // took first: the wake-up passes on to the sleepers left, or they
                    // would sleep until their next look although the lock comes free.
                    self.pass_on_wake();
                    if self.state.load(SeqCst) == 0 {
                        self.wake_one();
                    }
                    return None;
                }
                Some(d) => d.min(next_check),
                None => next_check,
            };
            self.sleepers.fetch_add(1, SeqCst);
            self.wake.store(1, SeqCst);
            // Abandoned is as good as free here: its releaser wakes only sleepers it
            // counted, which this one may not have been yet.
            if !matches!(self.state.load(SeqCst), 0 | ABANDONED) {
                sys::futex_wait(
                    &self.epoch,
                    epoch,
                    Some(wake_at.saturating_duration_since(now)),
                );
            }
            self.sleepers.fetch_sub(1, SeqCst);
        }
    }

    /// Swaps the identity of `owner`, a thread seen dead, for `me`; whether this thread
    /// won the lock that way (another waiter may have been first).
    fn take_from_dead(&self, owner: u64, me: u64) -> bool {
        let won = self
            .state
            .compare_exchange(owner, me, SeqCst, SeqCst)
            .is_ok();
        if won {
            self.pass_on_wake();
        }
        won
    }

    /// After taking the lock on the sleeping path: if others still sleep, the next
    /// release must wake one of them.
    fn pass_on_wake(&self) {
        if self.sleepers.load(SeqCst) > 0 {
            self.wake.store(1, SeqCst);
        }
    }

    /// Releases the lock (the caller holds it).
    #[inline]
    pub(crate) fn unlock(&self) {
        self.unlock_to(0);
    }

    /// Releases the lock (the caller holds it), leaving `state`: 0 (free) or
    /// [`ABANDONED`], which the next taker is told is a dead owner's
    /// ([`Acquired::OwnerDied`]), and repairs. One store either way, no branch on
    /// which: a channel's guard chooses at every send and receive.
    #[inline]
    pub(crate) fn unlock_to(&self, state: u64) {
        debug_assert!(state == 0 || state == ABANDONED);
        self.state.store(state, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            self.wake_one();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_one(&self) {
        if self.wake.load(SeqCst) != 0 && self.wake.swap(0, SeqCst) != 0 {
            self.epoch.fetch_add(1, SeqCst);
            sys::futex_wake(&self.epoch, 1);
        }
    }

    /// Whether some thread holds the lock (it may have died holding it).
    #[inline]
    pub(crate) fn is_locked(&self) -> bool {
        self.state.load(SeqCst) != 0
    }

    /// The identity of the thread that holds the lock (it may have died holding it),
    /// if one does.
    pub(crate) fn holder(&self) -> Option<u64> {
        Some(self.state.load(SeqCst)).filter(|&h| h != 0)
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        self.state.load(SeqCst) == sys::thread_identity()
    }
}

/// Waits until `ready()` is true (it may take what it is waiting for, a permit say) or
/// `deadline` passes, sleeping on the futex `word` while it holds `idle`, counted in
/// `sleepers`. Whoever changes `word` away from `idle` must then wake the word if
/// `sleepers` is non-zero. Spins briefly first. Returns the last `ready()`.
///
/// `recheck`: the longest one sleep lasts before `ready()` is asked again. For words
/// whose waker wakes one sleeper: the kernel may pick one that a signal is killing, and
/// its wake-up is then lost to the others ([`RECHECK`]).
pub(crate) fn wait_for(
    word: &AtomicU32,
    idle: u32,
    sleepers: &AtomicU32,
    deadline: Option<Instant>,
    recheck: Option<Duration>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    if ready() {
        return true;
    }
    let spin_end = Instant::now() + look_time();
    if spin_until(deadline.map_or(spin_end, |d| d.min(spin_end)), &mut ready) {
        return true;
    }
    loop {
        let timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return ready(),
            },
            None => None,
        };
        let timeout = match (timeout, recheck) {
            (Some(t), Some(r)) => Some(t.min(r)),
            (t, r) => t.or(r),
        };
        // Counted before the kernel compares the word: a waker that changes the word
        // after that comparison sees the count and wakes us. All SeqCst.
        sleepers.fetch_add(1, SeqCst);
        sys::futex_wait(word, idle, timeout);
        sleepers.fetch_sub(1, SeqCst);
        if ready() {
            return true;
        }
    }
}

/// Spins until `done` or `deadline`, looking first after `FIRST_PAUSES` pause
/// instructions, then less and less often (up to every `MAX_PAUSES`); true if `done`.
/// For a contended lock: a waiter that looks at once and often usually catches the lock
/// in the moment between its holder's release and retake, and the two then take turns,
/// moving the lock's cache line between processors at every turn. Measured here (two
/// processes incrementing a counter under one lock, a pause being about 23 ns), looking
/// at once and then every pause or so gave 0.5 to 0.9 times the throughput of a
/// process-shared pthread mutex (which does not spin), and this schedule about 2 times.
fn spin_backing_off(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    const FIRST_PAUSES: u32 = 32;
    const MAX_PAUSES: u32 = 128;
    let mut pauses = FIRST_PAUSES;
    loop {
        for _ in 0..pauses {
            std::hint::spin_loop();
        }
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        pauses = (pauses * 2).min(MAX_PAUSES);
    }
}

/// How long [`spin_until`] spins before it starts yielding between looks.
pub(crate) const SPIN_ONLY: Duration = Duration::from_micros(1);

/// Spins until `done` or `deadline`; true if `done`. How waiters wait a little before
/// they sleep.
///
/// For up to a microsecond it only spins: a peer running on another CPU answers within
/// that. As long as spinning pays off, that is: the calling thread's [`AdaptiveSpin`]
/// learns when its spins keep running out (its peers wait for its very CPU: two
/// processes passing messages on one CPU while another job has the other, say), and
/// then it does not spin at all. Then it yields the CPU between looks, since the peer
/// may be waiting for this very CPU: with more busy threads than CPUs, a waiter that
/// spins without yielding can burn its whole spin while the thread it waits for cannot
/// run. It yields only while the thread's [budget for yields](crowding) lasts: without
/// it, it returns, and the caller sleeps.
pub(crate) fn spin_until(deadline: Instant, done: impl FnMut() -> bool) -> bool {
    THREAD_SPIN.with(|spin| spin.wait(deadline, done))
}

thread_local! {
    /// The spin of [`spin_until`].
    static THREAD_SPIN: AdaptiveSpin = const { AdaptiveSpin::per_thread() };
}

/// How long a wait of [`wait_for`] looks for its answer before it sleeps: [`SPIN`], or
/// [`AFTER_TURNS`] while the thread's last waits were answered after yields that ran
/// another thread (it and its peer were taking turns on one CPU).
///
/// When one of two peers taking turns on a CPU moves to another (see
/// [`AdaptiveSpin::MOVE_AFTER`]), the move takes tens of microseconds (the other CPU
/// may have to come out of idle), and the one left behind, which answers at once and
/// then waits, would sleep after 10 µs. The mover's wake-up then brought it to the
/// mover's new CPU (on this virtual machine the kernel does not wake a task onto a CPU
/// whose virtual CPU the host has descheduled, as an idle one is), and the two shared
/// a CPU again (`perf record -e sched:sched_wakeup,sched:sched_migrate_task`, the
/// benchmark's event group).
fn look_time() -> Duration {
    let turns = THREAD_SPIN.with(|spin| spin.handed.load(Relaxed));
    if turns >= AdaptiveSpin::TURNS_SEEN {
        AFTER_TURNS
    } else {
        SPIN
    }
}

/// How long [`wait_for`] looks while the thread has been taking turns on one CPU.
const AFTER_TURNS: Duration = Duration::from_micros(200);

/// A yield that returns within this likely came straight back, having found nothing
/// else to run: on the 2-CPU machine of an earlier `BENCHMARKS.md` an empty
/// `sched_yield` took 0.46 µs at least and under 1 µs in 97% of 100,000 calls, while a round trip of two
/// processes yielding to each other on one CPU takes 4.4 µs or more there (its
/// `sched_yield` row). Only a hint: on other machines two switches can take less, so a
/// wait that learns from it asks the kernel too ([`no_switch_since_last_asked`]).
const CAME_BACK: Duration = Duration::from_micros(2);

/// How [`yield_until`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Yields {
    /// `done` was seen true.
    found: bool,
    /// When the wait for it began.
    began: Instant,
    /// Every yield came back within [`CAME_BACK`], and there was at least one: this CPU
    /// likely had nothing else to run while the thread waited.
    idle: bool,
    /// `done` was seen after a yield that ran another thread for a while (not for a time
    /// slice): likely the very thread waited for, on this CPU.
    handed: bool,
}

/// Yields between looks at `done` until it is true or `deadline` passes, while the
/// thread's [budget for yields](crowding) lasts (one look only without it).
fn yield_until(deadline: Instant, mut done: impl FnMut() -> bool) -> Yields {
    let mut before = Instant::now();
    if crowding::seen(before) {
        return Yields {
            found: done(),
            began: before,
            idle: false,
            handed: false,
        };
    }
    let began = before;
    let mut yields = 0u32;
    let mut idle = true;
    loop {
        if done() {
            return Yields {
                found: true,
                began,
                idle: idle && yields > 0,
                handed: !idle,
            };
        }
        if before >= deadline {
            return Yields {
                found: false,
                began,
                idle: false,
                handed: false,
            };
        }
        yield_cpu();
        yields += 1;
        let after = Instant::now();
        if crowding::yielded(before, after) {
            // Another job had this CPU for a slice: the next yield would likely give it
            // away again; sleeping instead lets the waker's wake-up put this thread back.
            return Yields {
                found: done(),
                began,
                idle: false,
                handed: false,
            };
        }
        idle &= after.saturating_duration_since(before) < CAME_BACK;
        before = after;
    }
}

#[cfg(test)]
thread_local! {
    /// What [`yield_cpu`] does on this thread instead of yielding, for tests that need
    /// a yield to find the CPU free, or taken.
    static TEST_YIELD: std::cell::Cell<Option<fn()>> = const { std::cell::Cell::new(None) };
    /// What [`no_switch_since_last_asked`] reads on this thread instead of the kernel's
    /// count, for tests.
    static TEST_SWITCHES: std::cell::Cell<Option<SwitchCount>> =
        const { std::cell::Cell::new(None) };
    /// What a spin does on this thread instead of looking for an idle CPU and moving
    /// there.
    static TEST_MOVE: std::cell::Cell<Option<fn()>> =
        const { std::cell::Cell::new(None) };
}

/// Where a test's count of involuntary switches comes from.
#[cfg(test)]
type SwitchCount = fn() -> Option<u64>;

/// Whether the kernel has not taken the CPU from this thread while it could run (a
/// preemption, a yield that ran another thread) since the thread last asked; false the
/// first time, and where the kernel does not say. One system call (about 0.45 µs
/// here), made only by a wait whose yields all came back quickly.
fn no_switch_since_last_asked() -> bool {
    thread_local! {
        static LAST: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    }
    #[cfg(test)]
    let now = match TEST_SWITCHES.with(std::cell::Cell::get) {
        Some(instead) => instead(),
        None => sys::involuntary_switches(),
    };
    #[cfg(not(test))]
    let now = sys::involuntary_switches();
    now.is_some() && LAST.with(|last| last.replace(now)) == now
}

/// Moves the calling thread to another CPU if one looks idle.
fn move_to_an_idle_cpu() {
    // Nothing changes if none looks idle, the thread is kept to some CPUs, or a call
    // is refused.
    let _ = sys::move_to_an_idle_cpu();
}

/// Gives the CPU to another thread that wants it, if any.
#[inline]
fn yield_cpu() {
    #[cfg(test)]
    if let Some(instead) = TEST_YIELD.with(std::cell::Cell::get) {
        return instead();
    }
    std::thread::yield_now();
}

/// Spins (without yielding) until `done` or `end`; if `done`, about how long that took
/// (see below). A look at the clock every 16 looks at `done`; a gap between two that
/// shows that the thread was preempted ends the spin (the peer has likely answered, or
/// will not soon).
///
/// The time is not read again once `done`: a look at the clock costs about 30 ns on a
/// virtual machine, and every hand-off that a spin catches would pay it on its path
/// (`multiproc-bench loop manager_one`: three such looks in each round trip, the
/// client's and the server's). It is the time at the last look scaled by the looks at
/// `done` since, or nothing if `done` came before the first look (16 looks at most: a
/// few hundred nanoseconds for a look at one channel, under the least that
/// [`AdaptiveSpin`] learns; the spin runs those 16 looks whatever its budget). A thread kept
/// off its CPU after its last look (for less than the gap that ends a spin) is estimated
/// short by its absence, which errs toward a shorter spin next time.
fn spin_for(start: Instant, end: Instant, done: &mut impl FnMut() -> bool) -> Option<Duration> {
    let mut last = start;
    let mut i: u32 = 0;
    loop {
        if done() {
            let at_last = i - i % 16;
            if at_last == 0 {
                return Some(Duration::ZERO);
            }
            let spent = last.saturating_duration_since(start);
            let took = spent.as_nanos().saturating_mul(u128::from(i)) / u128::from(at_last);
            return Some(Duration::from_nanos(
                u64::try_from(took).unwrap_or(u64::MAX),
            ));
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(16) {
            let now = Instant::now();
            if now >= end || crowding::preempted(last, now) {
                return None;
            }
            last = now;
        }
        std::hint::spin_loop();
    }
}

/// How much of its time a thread may lose to yields that give its CPU away for a whole
/// time slice: a token bucket per thread.
///
/// A yield pays off when nothing else wants the CPU (it returns at once) or when the
/// thread waited for is the one that gets it (it returns once the peer is done with its
/// turn, having saved both a sleep and a wake-up). It costs dearly when another job
/// wants the CPU too: that job then runs for its whole time slice (milliseconds under
/// EEVDF, which moves the yielder's deadline a slice later), while a thread that slept
/// on its futex or doorbell instead would have been put back by its waker's wake-up
/// within microseconds. On a machine with more busy threads than CPUs every wait that
/// yields then costs a slice: a manager round trip took 1.3 to 1.8 ms instead of tens
/// of microseconds. Which of the two a yield meets shows only afterwards, in how long
/// it took, and a long yield may still have gone to a thread of the same program that
/// used the slice well (two clients of one manager sharing a CPU): so a thread keeps
/// a budget for yields that took a slice (`GAVE_AWAY`): it fills at a quarter of the
/// time that passes, up to 16 ms, and each such yield is taken from it. While the
/// budget is spent the thread's waits do not yield at all: they spin for at most
/// [`SPIN_ONLY`], then sleep. A thread so loses at most about a quarter of its time
/// (after the first 16 ms) to yields that went elsewhere, instead of every wait
/// costing a slice. A long yield also ends the wait that made it: the next would most
/// likely give the CPU away again.
pub(crate) mod crowding {
    use std::cell::Cell;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// A gap longer than this between two looks at the clock, in a spin or across one
    /// yield, means another thread had the CPU (a yield that finds nothing else to run
    /// returns within microseconds, one that switches to the peer waited for returns
    /// once the peer is done with its turn).
    const PREEMPTED: Duration = Duration::from_micros(200);
    /// A yield that took longer than this gave the CPU away for a time slice.
    const GAVE_AWAY: Duration = Duration::from_millis(1);
    /// The budget fills at one part in this many of the time that passes...
    const SHARE: u64 = 4;
    /// ...up to this many nanoseconds.
    const BURST: i64 = 16_000_000;

    thread_local! {
        /// The budget, in nanoseconds, as of `FILLED`.
        static BUDGET: Cell<i64> = const { Cell::new(BURST) };
        /// When the budget was last filled, in nanoseconds after `BASE`.
        static FILLED: Cell<u64> = const { Cell::new(0) };
    }

    /// Nanoseconds from a point fixed for the process (and its forks) to `at`.
    pub(crate) fn nanos(at: Instant) -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the calling thread's budget for yields is spent at `now`: its waits
    /// should not yield.
    #[inline]
    pub(crate) fn seen(now: Instant) -> bool {
        let budget = BUDGET.get();
        if budget >= BURST {
            return false;
        }
        let now = nanos(now);
        let earned = now.saturating_sub(FILLED.get()) / SHARE;
        let budget = budget
            .saturating_add(i64::try_from(earned).unwrap_or(i64::MAX))
            .min(BURST);
        BUDGET.set(budget);
        FILLED.set(now);
        budget <= 0
    }

    /// Whether a thread that looked at the clock at `before` and again at `after` was
    /// kept off its CPU in between (then it should sleep rather than yield again).
    #[inline]
    pub(crate) fn preempted(before: Instant, after: Instant) -> bool {
        after.saturating_duration_since(before) >= PREEMPTED
    }

    /// Takes a yield that ran from `before` to `after` from the budget if it gave the
    /// CPU away for long; true if it did.
    #[inline]
    pub(crate) fn yielded(before: Instant, after: Instant) -> bool {
        let took = after.saturating_duration_since(before);
        if took < GAVE_AWAY {
            return false;
        }
        charge(after, took);
        true
    }

    #[cold]
    fn charge(now: Instant, took: Duration) {
        // Filled up to `now` first (an untouched full budget has no fill time).
        let _ = seen(now);
        FILLED.set(nanos(now));
        let took = i64::try_from(took.as_nanos()).unwrap_or(i64::MAX);
        // No lower than one burst short: a thread stopped for seconds in a yield (a
        // debugger, `SIGSTOP`) earns its yields back within a few tens of milliseconds.
        BUDGET.set(BUDGET.get().saturating_sub(took).max(-BURST));
    }
}

/// A spin that learns whether spinning pays off, as glibc's adaptive mutexes do: a
/// waiter spins (without yielding) up to its budget; a wait the spin ended sets the
/// budget to twice what that wait took (within bounds), a spin that ran out halves it,
/// down to nothing (yield at once). While spins keep running out, one wait in
/// [`AdaptiveSpin::PROBE_EVERY`] spins a little anyway, to notice that the peer has a
/// CPU again. An answer seen between yields that found nothing else to run on this
/// CPU (each came back within [`CAME_BACK`], and the kernel counts no switch away from
/// the thread since it last asked), in a wait that began without a budget, sets the
/// budget as a spin's answer does: spinning there costs no other thread anything.
///
/// Spinning pays off only while the awaited thread runs on another CPU: then it answers
/// within a microsecond or two. When it waits for this very CPU (a busy machine, more
/// threads than CPUs), every nanosecond spun delays it.
///
/// Learning from free yields keeps two spinning peers from settling into yielding at
/// each other. Once one stalls (an interrupt, a kernel thread), the other's spins run
/// out and shrink to nothing, its answers then come a yield's round trip later (about
/// a microsecond here), so the first one's spins run out too, and a probe (a quarter of
/// the most and 2 µs at most for [`AdaptiveSpin::new`]: 750 ns for a manager client)
/// rarely outlasts the other side's yield. A manager client alone with its
/// server on two CPUs stayed in that state for whole runs (`multiproc-bench loop
/// manager_one 100000`, 5 runs of 11 on one day): 4 to 9 µs a call and 2 to 7 yields a
/// call, against 1.3 to 1.7 µs.
#[derive(Debug)]
pub(crate) struct AdaptiveSpin {
    /// The most to spin, in nanoseconds.
    max: u64,
    /// How long a probe spins, in nanoseconds.
    probe: u64,
    /// The current budget, in nanoseconds.
    budget: AtomicU64,
    waits: AtomicU32,
    /// Waits in a row answered after a yield that ran another thread.
    handed: AtomicU32,
    /// How many such waits make the thread look for an idle CPU to move to, before
    /// [`AdaptiveSpin::offset`].
    move_after: AtomicU32,
    /// How many times it looked.
    asked: AtomicU32,
    /// When it last looked, in nanoseconds of the monotonic clock.
    asked_at: AtomicU64,
}

impl AdaptiveSpin {
    /// While spins run out, one wait in this many probes.
    pub(crate) const PROBE_EVERY: u32 = 16;
    /// How long a probe spins at most, in nanoseconds (a quarter of the most if less):
    /// a peer that runs answers within it.
    const PROBE_NANOS: u64 = 2_000;
    /// After this many waits in a row answered after a yield that ran another thread
    /// (plus [`AdaptiveSpin::offset`]), the thread moves to another CPU if one looks
    /// idle.
    ///
    /// Such answers mean that the thread waited for runs on this very CPU: the two pass
    /// the CPU back and forth with each yield. On a busy machine that is the cheapest
    /// hand-off there is. With an idle CPU beside them it is a trap: two processes that
    /// both stay runnable (they yield, they never sleep) look to the kernel's load
    /// balancer like tasks that just ran, whose caches are warm, and it left them
    /// sharing one CPU for 10 to 25 ms (`multiproc-bench loop event 40000`, one run in
    /// three or four, most often just after the child started), each hand-off a switch
    /// (about 3 µs) instead of a cache line's move (50 to 250 ns). Sleeping instead of
    /// yielding now and then did not get them apart: the kernel woke the sleeper on the
    /// CPU it slept on. So the thread asks the kernel whether some CPU is likely idle
    /// (one read of `/proc/loadavg`) and, if so, moves itself off this one
    /// ([`sys::move_to_an_idle_cpu`]; only a thread that may run on every CPU: one kept
    /// to some is left where it is). It does so as its next wait begins, when its own
    /// message is out and the peer, left alone on the old CPU, can answer it at once:
    /// moved at the end of a wait instead, before answering, the thread kept the peer
    /// waiting through the move (tens of microseconds), the peer slept, and the
    /// thread's wake-up brought it to the new CPU too (`perf record -e
    /// sched:sched_migrate_task`, in the benchmark's event group). Each look, whether the
    /// thread moved or not, doubles the count for the next one, up to
    /// [`Self::MOVE_AFTER`] × 1024; a run of such waits that begins a second or more
    /// after the last look starts from [`Self::MOVE_AFTER`] again.
    const MOVE_AFTER: u32 = 64;
    /// Waits in a row answered after a yield that ran another thread from which
    /// [`look_time`] looks longer.
    const TURNS_SEEN: u32 = 8;
    /// What `handed` holds once the count is reached: the next wait looks for an idle
    /// CPU as it begins.
    const MOVE_DUE: u32 = u32::MAX;
    /// A look for an idle CPU this long ago is forgotten: the next comes after
    /// [`Self::MOVE_AFTER`] such waits again.
    const FORGET_MOVES: Duration = Duration::from_secs(1);

    /// A spin of at most `max`, starting at the most.
    pub(crate) fn new(max: Duration) -> Self {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        AdaptiveSpin {
            max,
            probe: (max / 4).min(Self::PROBE_NANOS),
            budget: AtomicU64::new(max),
            waits: AtomicU32::new(0),
            handed: AtomicU32::new(0),
            move_after: AtomicU32::new(Self::MOVE_AFTER),
            asked: AtomicU32::new(0),
            asked_at: AtomicU64::new(0),
        }
    }

    /// The spin of [`spin_until`], one per thread: at most [`SPIN_ONLY`], and a probe
    /// as long (a peer on another CPU answers within a few hundred nanoseconds: a
    /// shorter probe would rarely catch it).
    const fn per_thread() -> Self {
        const MAX: u64 = SPIN_ONLY.as_nanos() as u64;
        AdaptiveSpin {
            max: MAX,
            probe: MAX,
            budget: AtomicU64::new(MAX),
            waits: AtomicU32::new(0),
            handed: AtomicU32::new(0),
            move_after: AtomicU32::new(Self::MOVE_AFTER),
            asked: AtomicU32::new(0),
            asked_at: AtomicU64::new(0),
        }
    }

    /// Waits until `done` or `deadline`: spins up to the budget, then yields between
    /// looks. True if `done`.
    pub(crate) fn wait(&self, deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
        if self.handed.load(Relaxed) == Self::MOVE_DUE {
            self.move_off_a_shared_cpu();
        }
        let stored = self.budget.load(Relaxed);
        let mut budget = stored;
        // Counted only while there is no budget: the waits between probes.
        let probe = budget == 0
            && self
                .waits
                .fetch_add(1, Relaxed)
                .is_multiple_of(Self::PROBE_EVERY);
        if probe {
            budget = self.probe;
        }
        let mut start = None;
        if budget > 0 {
            let start = *start.insert(Instant::now());
            let spin_end = deadline.min(start + Duration::from_nanos(budget));
            if let Some(took) = spin_for(start, spin_end, &mut done) {
                self.learn(stored, || took);
                self.not_handed();
                return true;
            }
            // A probe that caught nothing leaves it at nothing; below a tenth of a
            // microsecond a spin catches nothing either: yield at once (unless the
            // answer comes between yields on a free CPU, below).
            let halved = budget / 2;
            self.budget
                .store(if probe || halved < 100 { 0 } else { halved }, Relaxed);
        }
        let yields = yield_until(deadline, done);
        if yields.handed {
            // (Saturating: the clones of a channel's receiver share one spin.)
            let handed = self.handed.load(Relaxed).saturating_add(1);
            if handed == 1 {
                self.forget_old_moves();
            }
            let due = handed >= self.move_after.load(Relaxed).saturating_add(self.offset());
            self.handed
                .store(if due { Self::MOVE_DUE } else { handed }, Relaxed);
        } else {
            self.not_handed();
        }
        if stored == 0 && yields.found && yields.idle && no_switch_since_last_asked() {
            // Nothing else wanted this CPU while the answer came (the yields came back
            // at once, and none ran another thread): a spin would have cost no other
            // thread anything, since a yield that finds nothing to run keeps the CPU as
            // busy, and it sees the answer a kernel round trip sooner. Only a wait that
            // began without a budget asks the kernel: one with a budget lets it run
            // out first, so the question is asked once per run-out, not per wait.
            let began = start.unwrap_or(yields.began);
            self.learn(self.budget.load(Relaxed), || began.elapsed());
        }
        yields.found
    }

    /// The thread and the one it waits for have been taking turns on one CPU: moves
    /// to another if one looks idle (see [`Self::MOVE_AFTER`]).
    #[cold]
    #[inline(never)]
    fn move_off_a_shared_cpu(&self) {
        self.handed.store(0, Relaxed);
        self.asked.fetch_add(1, Relaxed);
        self.asked_at.store(sys::monotonic_ns(), Relaxed);
        #[cfg(test)]
        match TEST_MOVE.with(std::cell::Cell::get) {
            Some(instead) => instead(),
            None => move_to_an_idle_cpu(),
        }
        #[cfg(not(test))]
        move_to_an_idle_cpu();
        // Moved or not, twice as many such waits before the next look: a move that
        // did not last (three processes taking turns on two CPUs, say) would
        // otherwise be tried again and again.
        let after = self
            .move_after
            .load(Relaxed)
            .saturating_mul(2)
            .min(Self::MOVE_AFTER << 10);
        self.move_after.store(after, Relaxed);
    }

    /// Starts the count of waits before a look for an idle CPU over from
    /// [`Self::MOVE_AFTER`] if the last look was long ago ([`Self::FORGET_MOVES`]).
    #[cold]
    #[inline(never)]
    fn forget_old_moves(&self) {
        let since = sys::monotonic_ns().saturating_sub(self.asked_at.load(Relaxed));
        if u128::from(since) >= Self::FORGET_MOVES.as_nanos() {
            self.move_after.store(Self::MOVE_AFTER, Relaxed);
        }
    }

    /// Below [`Self::MOVE_AFTER`], and different for each thread and each time it looks:
    /// two threads taking turns count the same waits, and if both moved at once they
    /// could end up sharing the other CPU.
    fn offset(&self) -> u32 {
        let mixed = (sys::thread_identity() ^ u64::from(self.asked.load(Relaxed)))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 58) as u32 % Self::MOVE_AFTER
    }

    /// A wait whose answer did not come after a yield that ran another thread (a spin
    /// caught it, the yields found nothing else to run, or the thread is to sleep):
    /// the run of such waits is over.
    #[inline]
    fn not_handed(&self) {
        if self.handed.load(Relaxed) != 0 {
            self.handed.store(0, Relaxed);
        }
    }

    /// Sets the budget after an answer caught by a spin, or seen between yields on a CPU
    /// nothing else wanted: twice what it took (`took`, read only if it matters),
    /// within bounds. `stored` is the budget as it was read.
    #[inline]
    fn learn(&self, stored: u64, took: impl FnOnce() -> Duration) {
        let least = Self::PROBE_NANOS.min(self.max);
        let next = if least == self.max {
            // Nothing to measure: any answer sets the most.
            self.max
        } else {
            u64::try_from(took().as_nanos())
                .unwrap_or(u64::MAX)
                .saturating_mul(2)
                .clamp(least, self.max)
        };
        if next != stored {
            self.budget.store(next, Relaxed);
        }
    }
}

/// A wait that looks again and again for its answer, yielding the CPU between looks,
/// before the caller sleeps, for as long as that has been paying off: for answers that
/// usually come within tens or hundreds of microseconds (the fork server's reply to a
/// spawn, a child's result and exit status after a quick call, a spare child's
/// assignment). A sleep makes the answerer wake the waiter, which on an idle CPU costs
/// the time that CPU takes to come out of idle (tens of microseconds on a virtual
/// machine) on top of the switch; a waiter that still runs sees the answer at once.
///
/// It learns from every wait how long the answer took, whether it was seen while
/// looking or after a sleep: an answer that came within half of `most` sets the budget
/// to twice what it took (at least `least`); a longer one sets it to nothing, so that a
/// waiter for answers that take long (a child that runs for a while) sleeps at once
/// and loses no CPU. It starts at nothing: the first wait sleeps and measures. A look
/// that runs out makes the next 2 waits sleep at once, then 4 after the next one, up to
/// 64: answers that have become slow cost few looks.
///
/// Looking pays off only while there is a CPU to spare. On a machine whose CPUs are all
/// busy, a yield can hand the CPU to another job for its whole time slice (milliseconds),
/// where a sleeper would have been woken within microseconds: a yield that
/// [gave the CPU away](crowding::yielded) ends the wait's looking, and no wait of this
/// process looks for [`AdaptiveLook::BACK_OFF`] after that; nor while the thread's
/// [budget for yields](crowding) is spent. (A fork inherits the back-off.)
#[derive(Debug)]
pub(crate) struct AdaptiveLook {
    least: u64,
    most: u64,
    /// How long the next wait looks, in nanoseconds.
    budget: AtomicU64,
    /// Looks in a row that ran out.
    strikes: AtomicU32,
    /// Waits still to sleep at once after the last look that ran out.
    skip: AtomicU32,
}

/// Until when (nanoseconds on [`crowding`]'s clock) no wait of this process looks: a
/// look saw the CPUs all taken.
static LOOK_AGAIN_AT: AtomicU64 = AtomicU64::new(0);

/// A wait begun by [`AdaptiveLook::look`]: whether the answer was seen while looking,
/// and when the wait began (to learn from with [`AdaptiveLook::answered`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    pub(crate) found: bool,
    start: Instant,
}

impl AdaptiveLook {
    /// How long no wait looks after one saw the CPUs all taken.
    pub(crate) const BACK_OFF: Duration = Duration::from_millis(200);

    pub(crate) const fn new(least: Duration, most: Duration) -> Self {
        AdaptiveLook {
            least: least.as_nanos() as u64,
            most: most.as_nanos() as u64,
            budget: AtomicU64::new(0),
            strikes: AtomicU32::new(0),
            skip: AtomicU32::new(0),
        }
    }

    /// Looks at `done` until it is true, the budget runs out, `deadline` passes or a
    /// yield shows the CPUs all taken.
    pub(crate) fn look(&self, deadline: Option<Instant>, mut done: impl FnMut() -> bool) -> Look {
        let start = Instant::now();
        let mut look = Look {
            found: false,
            start,
        };
        let budget = self.budget.load(Relaxed);
        if budget == 0
            || crowding::nanos(start) < LOOK_AGAIN_AT.load(Relaxed)
            || crowding::seen(start)
        {
            return look;
        }
        let skip = self.skip.load(Relaxed);
        if skip > 0 {
            self.skip.store(skip - 1, Relaxed);
            return look;
        }
        let end = start + Duration::from_nanos(budget);
        let end = deadline.map_or(end, |d| d.min(end));
        let mut before = start;
        loop {
            if done() {
                look.found = true;
                if self.strikes.load(Relaxed) != 0 {
                    self.strikes.store(0, Relaxed);
                }
                return look;
            }
            if before >= end {
                // Ran out: sleep at once for the next 2, 4, ... 64 waits.
                let strikes = (self.strikes.load(Relaxed) + 1).min(6);
                self.strikes.store(strikes, Relaxed);
                self.skip.store(1 << strikes, Relaxed);
                return look;
            }
            std::thread::yield_now();
            let after = Instant::now();
            if crowding::yielded(before, after) {
                // Another job had this CPU for a time slice: sleep from now on, for a
                // while.
                self.budget.store(0, Relaxed);
                let again = crowding::nanos(after) + Self::BACK_OFF.as_nanos() as u64;
                LOOK_AGAIN_AT.store(again, Relaxed);
                look.found = done();
                return look;
            }
            before = after;
        }
    }

    /// The answer the wait `look` began for is here (seen while looking or after a
    /// sleep): learns how long it took.
    pub(crate) fn answered(&self, look: Look) {
        self.took(look.start.elapsed());
    }

    /// Learns that an answer took `took` (nothing while the process backs off).
    pub(crate) fn took(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let next = if took <= self.most / 2
            && crowding::nanos(Instant::now()) >= LOOK_AGAIN_AT.load(Relaxed)
        {
            (took * 2).clamp(self.least, self.most)
        } else {
            0
        };
        if self.budget.load(Relaxed) != next {
            self.budget.store(next, Relaxed);
        }
    }

    /// How long the next wait looks.
    #[cfg(test)]
    pub(crate) fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget.load(Relaxed))
    }

    /// For tests: when the process last backed off (0: never, or reset).
    #[cfg(test)]
    pub(crate) fn back_off_mark() -> u64 {
        LOOK_AGAIN_AT.load(Relaxed)
    }

    /// For tests: forgets a back-off.
    #[cfg(test)]
    pub(crate) fn reset_back_off() {
        LOOK_AGAIN_AT.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn excludes_and_releases() {
        let lock = Arc::new(LockWords::default());
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        assert_eq!(lock.lock(None), Some(Acquired::Clean));
                        // A non-atomic read-modify-write, made safe by the lock.
                        let v = counter.load(SeqCst);
                        counter.store(v + 1, SeqCst);
                        lock.unlock();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(SeqCst), 40_000);
        assert!(!lock.is_locked());
    }

    #[test]
    fn times_out_while_held() {
        let lock = LockWords::default();
        assert_eq!(lock.try_lock(), Some(Acquired::Clean));
        assert!(lock.held_by_me());
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                let t = Instant::now();
                let r = lock.lock(Some(Instant::now() + Duration::from_millis(50)));
                (r, t.elapsed())
            })
            .join()
            .unwrap()
        });
        assert_eq!(other.0, None);
        assert!(other.1 >= Duration::from_millis(50));
        lock.unlock();
        assert_eq!(lock.try_lock(), Some(Acquired::Clean));
        lock.unlock();
    }

    #[test]
    fn a_dead_owner_is_detected() {
        let lock = LockWords::default();
        // A thread that exits holding the lock.
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(lock.try_lock(), Some(Acquired::Clean)));
        });
        assert!(lock.is_locked());
        assert_eq!(lock.lock(None), Some(Acquired::OwnerDied));
        assert!(lock.held_by_me());
        lock.unlock();
        assert_eq!(lock.try_lock(), Some(Acquired::Clean));
        lock.unlock();
    }

    /// A lock let go as abandoned is taken over as from a dead owner, by a taker that
    /// finds it so and by one asleep on it when it is let go: each is told that the
    /// last holder died.
    #[test]
    fn an_abandoned_lock_is_taken_over_at_once() {
        let lock = LockWords::default();
        assert_eq!(lock.try_lock(), Some(Acquired::Clean));
        lock.unlock_to(ABANDONED);
        assert!(lock.is_locked());
        assert_eq!(lock.try_lock(), Some(Acquired::OwnerDied));
        lock.unlock_to(ABANDONED);
        assert_eq!(lock.lock(None), Some(Acquired::OwnerDied));
        // Let go while another thread sleeps on it.
        let (r, waited) = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let start = Instant::now();
                let r = lock.lock(Some(Instant::now() + Duration::from_secs(10)));
                lock.unlock();
                (r, start.elapsed())
            });
            let end = Instant::now() + Duration::from_secs(10);
            while lock.sleepers.load(SeqCst) == 0 && Instant::now() < end {
                std::thread::yield_now();
            }
            lock.unlock_to(ABANDONED);
            waiter.join().unwrap()
        });
        assert_eq!(r, Some(Acquired::OwnerDied));
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(lock.try_lock(), Some(Acquired::Clean));
        lock.unlock();
    }

    /// Yields that took a slice are taken from the thread's budget; once it is spent the
    /// thread's waits stop yielding (they return to their caller, to sleep), and the
    /// budget fills again at a quarter of the time that passes.
    #[test]
    fn yields_that_give_the_cpu_away_use_up_a_budget() {
        // A thread of its own: the budget is per thread.
        std::thread::spawn(|| {
            let ms = Duration::from_millis;
            // Instants ahead of now: the budget's clock may have started just now.
            let t0 = Instant::now() + Duration::from_secs(1);
            assert!(!crowding::seen(t0));
            assert!(!crowding::yielded(t0, t0 + Duration::from_micros(900)));
            assert!(crowding::yielded(t0, t0 + ms(10)));
            assert!(!crowding::seen(t0 + ms(10)), "6 ms are left");
            // 5 ms earned over the 20, 20 taken: 9 ms short.
            assert!(crowding::yielded(t0 + ms(10), t0 + ms(30)));
            assert!(crowding::seen(t0 + ms(30)));
            assert!(
                crowding::seen(t0 + ms(66)),
                "36 ms earn the 9 back, no more"
            );
            assert!(!crowding::seen(t0 + ms(70)));

            // Spent: a wait no longer yields until its deadline, but still sees `done`.
            assert!(crowding::yielded(t0 + ms(70), t0 + ms(100)));
            let start = Instant::now();
            assert!(!spin_until(start + Duration::from_secs(5), || false));
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "a thread without a budget yielded until the deadline"
            );
            assert!(spin_until(start + Duration::from_secs(5), || true));
            let spin = AdaptiveSpin::new(Duration::from_micros(3));
            let start = Instant::now();
            assert!(!spin.wait(start + Duration::from_secs(5), || false));
            assert!(start.elapsed() < Duration::from_secs(2));

            // A yield that lasted 10 s (a stopped process) takes at most one burst more
            // than the budget has: 64 ms earn it back, not 40 s.
            let t1 = t0 + Duration::from_secs(2);
            assert!(crowding::yielded(t1, t1 + Duration::from_secs(10)));
            let t2 = t1 + Duration::from_secs(10);
            assert!(crowding::seen(t2 + ms(60)));
            assert!(!crowding::seen(t2 + ms(68)));
        })
        .join()
        .unwrap();
    }

    /// A yield, for [`TEST_YIELD`], that gave the CPU to another thread for 50 µs
    /// (spent spinning: a sleep could outlast the millisecond that takes from the
    /// thread's budget for yields on a loaded machine).
    fn taken_yield() {
        let end = Instant::now() + Duration::from_micros(50);
        while Instant::now() < end {
            std::hint::spin_loop();
        }
    }

    /// Waits on `spin` for an answer that comes at the second look until the budget is
    /// back: without a budget that look comes after a yield, here one that gives the
    /// CPU away (which teaches nothing), until a probe catches the answer while
    /// spinning. Returns the waits it took.
    fn waits_until_a_probe_answers(spin: &AdaptiveSpin) -> u32 {
        TEST_YIELD.with(|y| y.set(Some(taken_yield)));
        let mut waits = 0;
        while spin.budget.load(Relaxed) == 0 {
            waits += 1;
            assert!(
                waits <= AdaptiveSpin::PROBE_EVERY,
                "no probe in {waits} waits"
            );
            let mut looks = 0;
            assert!(spin.wait(Instant::now() + Duration::from_secs(5), || {
                looks += 1;
                looks > 1
            }));
        }
        TEST_YIELD.with(|y| y.set(None));
        waits
    }

    /// A spin that catches its answer says about how long it took without a look at
    /// the clock after it: an answer there at once took nothing; one that comes 50 µs
    /// in is estimated at no more than the time that passed (give or take the 16 looks
    /// between two looks at the clock) and, unless the thread was kept off its CPU after
    /// its last look at the clock, at no less than 40 µs. (A spin preempted for long
    /// ends without an answer.)
    #[test]
    fn a_spin_estimates_how_long_its_answer_took() {
        let start = Instant::now();
        assert_eq!(
            spin_for(start, start + Duration::from_secs(5), &mut || true),
            Some(Duration::ZERO)
        );
        let mut close = 0;
        for _ in 0..20 {
            let start = Instant::now();
            let at = start + Duration::from_micros(50);
            let took = spin_for(start, start + Duration::from_secs(5), &mut || {
                Instant::now() >= at
            });
            let passed = start.elapsed();
            let Some(took) = took else { continue };
            assert!(
                took <= passed.mul_f64(1.5),
                "an answer after {passed:?} estimated at {took:?}"
            );
            close += usize::from(took >= Duration::from_micros(40));
        }
        assert!(close > 0, "no estimate of 20 came near 50 µs");
    }

    /// Spins that run out shrink the budget to nothing; then one wait in
    /// `PROBE_EVERY` spins anyway, and a probe that is answered brings spinning back.
    #[test]
    fn adaptive_spin_learns_whether_spinning_pays() {
        told_undisturbed(adaptive_spin_story);
    }

    fn adaptive_spin_story() {
        let spin = AdaptiveSpin::new(Duration::from_micros(3));
        assert_eq!(spin.budget.load(Relaxed), 3_000);
        // A peer that never answers: each spin runs out and halves the budget.
        for _ in 0..8 {
            assert!(!spin.wait(Instant::now(), || false));
        }
        assert_eq!(spin.budget.load(Relaxed), 0);
        // Probes that catch nothing leave it at nothing.
        for _ in 0..3 * AdaptiveSpin::PROBE_EVERY {
            assert!(!spin.wait(Instant::now(), || false));
            assert_eq!(spin.budget.load(Relaxed), 0);
        }
        let waits = waits_until_a_probe_answers(&spin);
        assert!(waits >= 1);
        // Twice what the wait took, at least the probe's length, at most the most.
        let budget = spin.budget.load(Relaxed);
        assert!((750..=3_000).contains(&budget), "{budget}");
        // Answered at once: it stays a spinner.
        for _ in 0..100 {
            assert!(spin.wait(Instant::now() + Duration::from_secs(5), || true));
        }
        assert!(spin.budget.load(Relaxed) >= 750);

        // The per-thread spin probes for as long as it may spin at most: an answer
        // caught by a probe brings the whole budget back.
        let spin = AdaptiveSpin::per_thread();
        for _ in 0..8 {
            assert!(!spin.wait(Instant::now(), || false));
        }
        assert_eq!(spin.budget.load(Relaxed), 0);
        waits_until_a_probe_answers(&spin);
        assert_eq!(spin.budget.load(Relaxed), SPIN_ONLY.as_nanos() as u64);
    }

    /// An answer that a spin did not wait for (no budget) but that came while this
    /// thread's yields found its CPU free brings spinning back: nothing else wanted the
    /// CPU, so a spin would have cost no one anything and seen the answer sooner. One
    /// that came while yields gave the CPU away (slow yields, or the kernel counting a
    /// switch) teaches nothing.
    #[test]
    // Elsewhere the kernel's count is not read, and nothing is learned from yields.
    #[cfg(target_os = "linux")]
    fn an_answer_between_free_yields_brings_spinning_back() {
        std::thread::spawn(|| {
            // The budget after an answer seen at the third look (after two yields that
            // do `yield_does`), from nothing; `None` if this thread was held up so long
            // that the wait ended early (a loaded machine).
            let learned = |yield_does: fn()| {
                let spin = AdaptiveSpin::new(Duration::from_micros(3));
                for _ in 0..8 {
                    assert!(!spin.wait(Instant::now(), || false));
                }
                assert_eq!(spin.budget.load(Relaxed), 0);
                // Not a probe: the next wait does not spin.
                spin.waits.store(1, Relaxed);
                TEST_YIELD.with(|y| y.set(Some(yield_does)));
                let mut looks = 0;
                let found = spin.wait(Instant::now() + Duration::from_secs(5), || {
                    looks += 1;
                    looks > 2
                });
                TEST_YIELD.with(|y| y.set(None));
                (found && looks == 3).then(|| spin.budget.load(Relaxed))
            };
            // A yield that finds nothing else to run returns at once; one that ran
            // another thread returns after its turn. A preemption (which the kernel
            // counts) makes a free yield look taken: a few tries.
            let free = (0..20)
                .filter_map(|_| learned(|| {}))
                .find(|&budget| budget > 0)
                .expect("free yields never brought spinning back");
            // Twice what it took, at least the least, at most the most.
            assert!((2_000..=3_000).contains(&free), "{free}");

            // Yields that took their time: the CPU went to another thread.
            for _ in 0..5 {
                assert_eq!(
                    learned(taken_yield).unwrap_or(0),
                    0,
                    "a yield that gave the CPU away taught the spin"
                );
            }

            // Quick yields, but the kernel counts a switch away from the thread each
            // time it is asked (a yield that ran a peer quickly, on a fast machine).
            TEST_SWITCHES.with(|c| {
                c.set(Some(|| {
                    thread_local! {
                        // Never the kernel's count of this thread, stored by the tries
                        // above.
                        static COUNT: std::cell::Cell<u64> =
                            const { std::cell::Cell::new(u64::MAX / 2) };
                    }
                    Some(COUNT.with(|n| n.replace(n.get() + 1)))
                }))
            });
            for _ in 0..5 {
                assert_eq!(
                    learned(|| {}).unwrap_or(0),
                    0,
                    "a wait whose thread was switched away taught the spin"
                );
            }
            // Nor where the kernel does not say.
            TEST_SWITCHES.with(|c| c.set(Some(|| None)));
            for _ in 0..5 {
                assert_eq!(learned(|| {}).unwrap_or(0), 0);
            }
            TEST_SWITCHES.with(|c| c.set(None));
        })
        .join()
        .unwrap();
    }

    /// Waits answered after a yield that ran another thread (the peer, on this very
    /// CPU), many in a row, make the thread look for an idle CPU to move to; each look
    /// halves how often it looks, until a run begins a second after the last look. An
    /// answer that comes while the thread runs starts the count over.
    #[test]
    // Elsewhere the monotonic clock may start at nothing (the forgetting below goes a
    // second back), and no thread moves.
    #[cfg(target_os = "linux")]
    fn taking_turns_on_one_cpu_moves_the_thread_if_another_is_idle() {
        thread_local! {
            static YIELDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
            static ASKED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        // The peer ran while this thread yielded, and answered.
        fn peer_answered() {
            taken_yield();
            YIELDED.set(true);
        }
        std::thread::spawn(|| {
            let spin = AdaptiveSpin::new(Duration::from_micros(3));
            let deadline = Instant::now() + Duration::from_secs(20);
            // One wait with no budget (not a probe), whose answer comes after the yield,
            // again until it counts: on a loaded machine a yield held up past a
            // millisecond, or a spent budget for yields, leaves it uncounted.
            let handed_wait = |spin: &AdaptiveSpin| loop {
                assert!(Instant::now() < deadline, "no wait was counted");
                let (before, asked) = (spin.handed.load(Relaxed), ASKED.get());
                spin.budget.store(0, Relaxed);
                spin.waits.store(1, Relaxed);
                TEST_YIELD.with(|y| y.set(Some(peer_answered)));
                spin.wait(Instant::now() + Duration::from_secs(5), || {
                    YIELDED.replace(false)
                });
                TEST_YIELD.with(|y| y.set(None));
                if spin.handed.load(Relaxed) != before || ASKED.get() != asked {
                    return before;
                }
            };
            // Waits until the spin looks for an idle CPU: the count it had reached. It
            // looks as the wait after the one that reached the count begins.
            let until_asked = |spin: &AdaptiveSpin| {
                let asked = ASKED.get();
                loop {
                    let before = handed_wait(spin);
                    assert_eq!(ASKED.get(), asked, "looked before the count was reached");
                    if spin.handed.load(Relaxed) == AdaptiveSpin::MOVE_DUE {
                        handed_wait(spin);
                        assert_eq!(ASKED.get(), asked + 1);
                        // The count starts over, with that wait.
                        assert!(spin.handed.load(Relaxed) <= 1);
                        return before + 1;
                    }
                }
            };
            let most = AdaptiveSpin::MOVE_AFTER;
            let threshold = |spin: &AdaptiveSpin| spin.move_after.load(Relaxed) + spin.offset();

            // An answer caught by a spin: the peer has a CPU of its own.
            for _ in 0..10 {
                handed_wait(&spin);
            }
            // (An uncounted wait ends the run too.)
            while spin.handed.load(Relaxed) == 0 {
                handed_wait(&spin);
            }
            spin.budget.store(3_000, Relaxed);
            assert!(spin.wait(Instant::now() + Duration::from_secs(5), || true));
            assert_eq!(spin.handed.load(Relaxed), 0);
            // A wait that ends without its answer (its caller sleeps) ends the run too.
            while spin.handed.load(Relaxed) == 0 {
                handed_wait(&spin);
            }
            assert!(!spin.wait(Instant::now(), || false));
            assert_eq!(spin.handed.load(Relaxed), 0);

            // Asked after MOVE_AFTER, then after twice as many, four times, eight times
            // (each plus the thread's offset for that time): whether the thread moved
            // or not, since a move may not last.
            TEST_MOVE.with(|m| m.set(Some(|| ASKED.set(ASKED.get() + 1))));
            // (A look is never forgotten here, however long a loaded machine holds the
            // thread up: that is tested below.)
            let never = u64::MAX / 2;
            spin.asked_at.store(never, Relaxed);
            for base in [most, 2 * most, 4 * most, 8 * most] {
                assert_eq!(spin.move_after.load(Relaxed), base);
                assert!(spin.offset() < most);
                let expected = threshold(&spin);
                assert_eq!(until_asked(&spin), expected);
                spin.asked_at.store(never, Relaxed);
            }
            assert_eq!(spin.move_after.load(Relaxed), 16 * most);
            // A look a second ago is forgotten, at the first such wait of a run.
            spin.budget.store(3_000, Relaxed);
            assert!(spin.wait(Instant::now() + Duration::from_secs(5), || true));
            assert_eq!(spin.handed.load(Relaxed), 0);
            let long_ago = sys::monotonic_ns().saturating_sub(1_000_000_000);
            spin.asked_at.store(long_ago, Relaxed);
            handed_wait(&spin);
            assert_eq!(spin.move_after.load(Relaxed), most);
            assert_eq!(spin.handed.load(Relaxed), 1);
            spin.asked_at.store(sys::monotonic_ns(), Relaxed);
            let expected = threshold(&spin);
            assert_eq!(until_asked(&spin), expected);
            assert_eq!(spin.move_after.load(Relaxed), 2 * most);
            TEST_MOVE.with(|m| m.set(None));
        })
        .join()
        .unwrap();
    }

    /// A wait looks longer before it sleeps while the thread has been taking turns on
    /// one CPU with its peer (its last waits answered after yields that ran another
    /// thread), and as long as ever otherwise.
    #[test]
    fn a_wait_looks_longer_after_taking_turns() {
        std::thread::spawn(|| {
            assert_eq!(look_time(), SPIN);
            let turns = |n| THREAD_SPIN.with(|spin| spin.handed.store(n, Relaxed));
            turns(AdaptiveSpin::TURNS_SEEN - 1);
            assert_eq!(look_time(), SPIN);
            turns(AdaptiveSpin::TURNS_SEEN);
            assert_eq!(look_time(), AFTER_TURNS);
            turns(AdaptiveSpin::MOVE_DUE);
            assert_eq!(look_time(), AFTER_TURNS);
            // An answer caught by a spin ends the run, and the long looks with it.
            THREAD_SPIN.with(|spin| spin.budget.store(1_000, Relaxed));
            assert!(spin_until(Instant::now() + Duration::from_secs(5), || true));
            assert_eq!(look_time(), SPIN);
            assert!(AFTER_TURNS > SPIN);
        })
        .join()
        .unwrap();
    }

    /// One run of the look's story (a process that backs off meanwhile, because a
    /// yield gave the CPU away for a slice, tells it differently).
    fn adaptive_look_story() {
        let us = Duration::from_micros;
        AdaptiveLook::reset_back_off();
        let look = AdaptiveLook::new(us(20), Duration::from_millis(2));
        let looks = std::cell::Cell::new(0u32);
        let seen = &looks;
        let counting = |answer: bool| {
            move || {
                seen.set(seen.get() + 1);
                answer
            }
        };
        // It starts at nothing: the first wait sleeps at once and measures.
        assert!(!look.look(None, counting(true)).found);
        assert_eq!(looks.get(), 0);
        // Answers within half of the most: twice what they took, at least the least.
        look.took(us(5));
        assert_eq!(look.budget(), us(20));
        look.took(us(300));
        assert_eq!(look.budget(), us(600));
        // Slower ones: nothing.
        look.took(us(1001));
        assert_eq!(look.budget(), Duration::ZERO);
        // An answer seen while looking sets the budget from how long it took.
        look.took(us(500));
        let found = look.look(None, counting(true));
        assert!(found.found && looks.get() == 1);
        look.answered(found);
        assert!(look.budget() >= us(20) && look.budget() < us(1000));
        // A look that runs out (a yield between looks): the next 2 waits sleep at
        // once, then 4 after the next that runs out; one that finds its answer ends
        // that.
        look.took(us(50));
        let start = Instant::now();
        assert!(!look.look(None, counting(false)).found);
        assert!(start.elapsed() >= us(100));
        for skipped in [2, 4] {
            let before = looks.get();
            for _ in 0..skipped {
                assert!(!look.look(None, counting(true)).found);
            }
            assert_eq!(looks.get(), before, "{skipped} waits sleep at once");
            assert!(!look.look(None, counting(false)).found);
            assert!(looks.get() > before);
        }
        for _ in 0..8 {
            look.look(None, counting(true));
        }
        assert!(look.look(None, counting(true)).found, "found again");
        assert!(look.look(None, counting(true)).found, "and no more skips");
        // A deadline bounds a look.
        look.took(us(900));
        let start = Instant::now();
        let l = look.look(Some(start + us(50)), counting(false));
        assert!(!l.found && start.elapsed() < us(1800));
    }

    #[test]
    fn adaptive_look_learns_how_long_answers_take() {
        told_undisturbed(adaptive_look_story);
    }

    /// Tells `story`, a test that measures time, until the scheduler leaves it alone.
    /// The scheduler can spoil such a story: a yield that gives the CPU away for a
    /// slice makes the process back off (and looks differ), a thread kept off its CPU
    /// between two steps finds an answer slower than it was, and one whose budget for
    /// yields is spent stops yielding. Each try runs on a thread of its own (a fresh
    /// budget, see `crowding`); one that failed while disturbed (a back-off, or an
    /// involuntary switch counted for its thread) is told again, for up to 20 s. A
    /// failure of a try that was not disturbed is a failure.
    fn told_undisturbed(story: fn()) {
        let until = Instant::now() + Duration::from_secs(20);
        let mut tries = 0;
        loop {
            tries += 1;
            let (told, disturbed) = std::thread::spawn(move || {
                AdaptiveLook::reset_back_off();
                let switches = sys::involuntary_switches();
                let told = std::panic::catch_unwind(story);
                let disturbed =
                    AdaptiveLook::back_off_mark() != 0 || sys::involuntary_switches() != switches;
                (told, disturbed)
            })
            .join()
            .expect("the story's thread");
            match told {
                Ok(()) => return,
                Err(panic) if !disturbed => std::panic::resume_unwind(panic),
                _ => {}
            }
            assert!(
                Instant::now() < until,
                "all {tries} tries failed while the scheduler disturbed them"
            );
        }
    }
}
