//! Where the fork server's spares run.
//!
//! The kernel puts a forked child on the CPU it finds least loaded. While another job
//! keeps a CPU busy, that is often the busy CPU (it has fewer tasks queued than the
//! server's, where the child just assigned is waking up), and the spare then waits
//! there for the other job's time slice, milliseconds, while the server's CPU goes
//! idle: the kernel does not pull a waiting task onto a CPU whose idle spells are
//! short, as the server's are. A spare that has not run by its assignment delays the
//! spawn it is given by that wait (`perf sched timehist` of `multiproc-bench loop
//! spawn` under one busy loop on 2 CPUs: about one spare in three waited 1–3 ms).
//!
//! So the server numbers its spares, and each spare, as it first runs, raises a word it
//! shares with the server to its number (never lowers it: a spare that runs late
//! cannot hide that a later one ran). A spare whose assignment comes [`STARVED`] or
//! more after its fork and finds the word below its number had not run: it starved.
//! Two starved among the last 16 spares placed by the kernel and assigned, and the
//! next [`PINNED_FORKS`] spares are forked held to the server's CPU: the server holds
//! itself there for the fork and lets go as the fork returns; the spare inherits the
//! hold and lets go as it first runs, by then queued on the server's CPU, where it runs
//! once the server sleeps (unless the kernel's balancing moves it first). After those,
//! spares go the kernel's way again, and the count starts over. On an idle machine the
//! kernel's way is the better one (it spreads a spare's start-up and the previous
//! child's run over two CPUs: holding every spare measured 7–23% slower there), and
//! spares starve there rarely (a few in 2,000 spawns, never two within 16).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::sys;

/// Spares forked held to the server's CPU once spares starve.
const PINNED_FORKS: u32 = 64;
/// A spare that has not run this long after its fork waits for a CPU another job has.
const STARVED: Duration = Duration::from_micros(250);
/// Starved spares, among the last 16 forked the kernel's way, that start a run of held
/// forks.
const STARVED_TO_PIN: u32 = 2;

/// The server's record of where its spares run.
pub(super) struct Placement {
    /// The highest number of a spare that ran, shared with the spares (`None` if the
    /// memory could not be had: spares then always go the kernel's way).
    started: Option<&'static AtomicU64>,
    /// The number of the last spare forked.
    spares: u64,
    /// Forks still to hold to the server's CPU.
    pin_left: u32,
    /// The last 16 spares placed by the kernel and assigned, the latest in the lowest
    /// bit: 1 for one that starved.
    history: u16,
    /// Every spare is held (a test's setting, see [`Placement::new`]).
    always: bool,
    /// Holding failed to end once: no spare is held again.
    gave_up: bool,
}

impl Placement {
    /// In the server, before it forks: maps the shared word (a page of its own, which
    /// every process the server forks keeps mapped). In a build with debug assertions,
    /// `MULTIPROC_TEST_HOLD_SPARES` in the environment holds every spare, so that tests
    /// can check the held path on any machine.
    pub(super) fn new() -> Placement {
        Placement {
            started: sys::shared_word().ok(),
            spares: 0,
            pin_left: 0,
            history: 0,
            always: cfg!(debug_assertions)
                && std::env::var_os("MULTIPROC_TEST_HOLD_SPARES").is_some(),
            gave_up: false,
        }
    }

    /// Whether the next spare is forked held to the server's CPU.
    pub(super) fn pin_next(&mut self) -> bool {
        if self.gave_up {
            return false;
        }
        if self.always {
            return true;
        }
        if self.pin_left == 0 {
            return false;
        }
        self.pin_left -= 1;
        true
    }

    /// Whether every spare is held (the tests' setting, see [`Placement::new`]).
    pub(super) fn holds_all(&self) -> bool {
        self.always
    }

    /// Holding failed to end (the server could not let go): no more holds.
    pub(super) fn give_up(&mut self) {
        self.gave_up = true;
    }

    /// Numbers the next spare.
    pub(super) fn next_spare(&mut self) -> u64 {
        self.spares += 1;
        self.spares
    }

    /// In the spare numbered `seq`, first thing: it has run.
    pub(super) fn started(&self, seq: u64) {
        if let Some(w) = self.started {
            w.fetch_max(seq, Relaxed);
        }
    }

    /// The spare numbered `seq` (forked held, if `pinned`) got its assignment `waited`
    /// after its fork. (The server forks a spare only once the last one is assigned,
    /// so no later spare has run yet.)
    pub(super) fn assigned(&mut self, seq: u64, pinned: bool, waited: Duration) {
        let Some(w) = self.started else { return };
        if !pinned {
            self.learn(waited >= STARVED && w.load(Relaxed) < seq);
        }
    }

    /// Learns whether a spare placed by the kernel starved.
    fn learn(&mut self, starved: bool) {
        self.history = (self.history << 1) | u16::from(starved);
        if self.history.count_ones() >= STARVED_TO_PIN {
            self.pin_left = PINNED_FORKS;
            self.history = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(started: Option<&'static AtomicU64>) -> Placement {
        Placement {
            started,
            spares: 0,
            pin_left: 0,
            history: 0,
            always: false,
            gave_up: false,
        }
    }

    /// A placement with a shared word of its own.
    fn watched() -> Placement {
        fresh(Some(Box::leak(Box::new(AtomicU64::new(0)))))
    }

    /// Forks `n` spares (held, if `pinned`) and assigns each 5 ms on, none having run.
    fn assign_unstarted(p: &mut Placement, n: usize, pinned: bool) {
        for _ in 0..n {
            let seq = p.next_spare();
            p.assigned(seq, pinned, Duration::from_millis(5));
        }
    }

    /// A placement that saw a starved spare, `apart` that did not, and another starved.
    fn starved_twice(apart: usize) -> Placement {
        let mut p = fresh(None);
        p.learn(true);
        (0..apart).for_each(|_| p.learn(false));
        p.learn(true);
        p
    }

    #[test]
    fn a_lone_starved_spare_pins_nothing() {
        // The first starved one has left the window of 16.
        assert!(!starved_twice(15).pin_next());
    }

    #[test]
    fn two_starved_within_16_pin_the_next_64_then_the_count_starts_over() {
        let mut p = starved_twice(14);
        for _ in 0..PINNED_FORKS {
            assert!(p.pin_next());
        }
        assert!(!p.pin_next());
        // The two that started the run count no more.
        p.learn(true);
        assert!(!p.pin_next());
        p.learn(true);
        assert!(p.pin_next());
    }

    #[test]
    fn held_spares_teach_nothing() {
        let mut p = watched();
        // Held spares that had not run: ignored.
        assign_unstarted(&mut p, 10, true);
        assert!(!p.pin_next());
        // Spares the kernel placed that had not run after 5 ms: two pin.
        assign_unstarted(&mut p, 2, false);
        assert!(p.pin_next());
    }

    #[test]
    fn a_spare_that_ran_or_was_assigned_early_did_not_starve() {
        let mut p = watched();
        for _ in 0..40 {
            let ran = p.next_spare();
            p.started(ran);
            p.assigned(ran, false, Duration::from_millis(5));
            let early = p.next_spare();
            p.assigned(early, false, Duration::from_micros(100));
        }
        assert!(!p.pin_next());
    }

    /// A starved spare that runs after the next one has run does not make the next one
    /// look starved.
    #[test]
    fn a_late_start_hides_no_later_one() {
        let mut p = watched();
        let starved = p.next_spare();
        p.assigned(starved, false, Duration::from_millis(1));
        let next = p.next_spare();
        p.started(next);
        p.started(starved);
        p.assigned(next, false, Duration::from_millis(1));
        // One starved spare alone holds nothing.
        assert!(!p.pin_next());
    }

    #[test]
    fn giving_up_ends_holding() {
        let mut p = fresh(None);
        p.always = true;
        assert!(p.pin_next());
        p.give_up();
        assert!(!p.pin_next());
        p.learn(true);
        p.learn(true);
        assert!(!p.pin_next());
    }
}
