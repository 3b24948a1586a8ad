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
//! So each spare notes, in a word it shares with the server, that it has run; a spare
//! found not to have run [`STARVED`] after its fork counts as starved. Two starved
//! among the last 16 spares forked the kernel's way, and the next [`PINNED_FORKS`]
//! spares are forked held to the server's CPU: the server holds itself there for the
//! fork, the spare inherits the hold, and both let go at once, so the spare stays where
//! it was put until it first sleeps and is free from then on. After those, spares go
//! the kernel's way again, and the count starts over. On an idle machine the kernel's
//! way is the better one (it spreads a spare's start-up and the previous child's run
//! over two CPUs: holding every spare measured 7–23% slower there), and spares starve
//! there rarely (a few in 2,000 spawns, never two within 16).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
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
    /// The pid of the last spare that ran, shared with the spares (`None` if the
    /// memory could not be had: spares then always go the kernel's way).
    started: Option<&'static AtomicU32>,
    /// Forks still to hold to the server's CPU.
    pin_left: u32,
    /// The last 16 spares forked the kernel's way, the latest in the lowest bit: 1 for
    /// one that starved.
    history: u16,
}

impl Placement {
    /// In the server, before it forks: maps the shared word (a page of its own, which
    /// every process the server forks keeps mapped).
    pub(super) fn new() -> Placement {
        Placement {
            started: sys::shared_word().ok(),
            pin_left: 0,
            history: 0,
        }
    }

    /// Whether the next spare is forked held to the server's CPU.
    pub(super) fn pin_next(&mut self) -> bool {
        if self.pin_left == 0 {
            return false;
        }
        self.pin_left -= 1;
        true
    }

    /// In a spare, first thing: it has run.
    pub(super) fn started(&self) {
        if let Some(w) = self.started {
            w.store(sys::getpid(), Relaxed);
        }
    }

    /// The spare `pid` (forked held, if `pinned`) got its assignment `waited` after
    /// its fork.
    pub(super) fn assigned(&mut self, pid: u32, pinned: bool, waited: Duration) {
        let Some(w) = self.started else { return };
        if !pinned {
            self.learn(waited >= STARVED && w.load(Relaxed) != pid);
        }
    }

    /// Learns whether a spare forked the kernel's way starved.
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

    fn fresh(started: Option<&'static AtomicU32>) -> Placement {
        Placement {
            started,
            pin_left: 0,
            history: 0,
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
        let mut p = fresh(Some(Box::leak(Box::new(AtomicU32::new(0)))));
        // Held spares that had not run: ignored.
        for pid in 1..10 {
            p.assigned(pid, true, Duration::from_millis(5));
        }
        assert!(!p.pin_next());
        // Spares the kernel placed that had not run after 5 ms: two pin.
        p.assigned(11, false, Duration::from_millis(5));
        p.assigned(12, false, Duration::from_millis(5));
        assert!(p.pin_next());
    }

    #[test]
    fn a_spare_that_ran_or_was_assigned_early_did_not_starve() {
        let w: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let mut p = fresh(Some(w));
        for pid in 1..40 {
            w.store(pid, Relaxed);
            p.assigned(pid, false, Duration::from_millis(5));
            p.assigned(pid + 1000, false, Duration::from_micros(100));
        }
        assert!(!p.pin_next());
    }
}
