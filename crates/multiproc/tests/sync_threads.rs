//! The same primitives between threads of one process: what Python's `threading`
//! programs use, with the same robustness (a thread that ends holding a lock).

mod common;
mod watchdog;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use multiproc::{
    Array, Barrier, BarrierError, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore,
    ShmSafe, TryLockError, Value,
};

const T: Duration = Duration::from_secs(60);

#[test]
fn ten_threads_add_to_a_value() {
    let v = Value::new(0u64).unwrap();
    std::thread::scope(|s| {
        for _ in 0..10 {
            s.spawn(|| {
                for _ in 0..1000 {
                    *v.lock().unwrap() += 1;
                }
            });
        }
    });
    assert_eq!(v.load(), 10_000);
}

#[test]
fn a_lock_excludes_threads() {
    let lock = Lock::new().unwrap();
    let inside = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..2000 {
                    let _g = lock.lock().unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert!(!lock.is_locked());
}

#[test]
fn thread_that_ends_holding_a_lock() {
    let lock = Lock::new().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| std::mem::forget(lock.lock().unwrap()));
    });
    assert!(lock.is_locked());
    match lock.lock_timeout(T) {
        Err(TryLockError::OwnerDied(e)) => drop(e.into_inner()),
        other => panic!("{other:?}"),
    }
    drop(lock.try_lock().unwrap());
}

/// A thread that ends holding a guard of a `Value` or an `Array` leaked it (a guard
/// unwinds with its thread otherwise), and a reference to the data made from it may
/// outlive the thread: the lock stays held in this process rather than being taken
/// over, which made a second `&mut` to the same memory in safe code.
#[test]
fn a_leaked_value_guard_of_an_ended_thread_is_not_taken_over() {
    let value = Value::new(1u64).unwrap();
    let array = Array::<u32>::new(4).unwrap();
    let (leaked, slice): (&mut u64, &mut [u32]) = std::thread::scope(|s| {
        s.spawn(|| {
            let v = Box::leak(Box::new(value.lock().unwrap()));
            let a = Box::leak(Box::new(array.lock().unwrap()));
            (&mut **v, &mut **a)
        })
        .join()
        .unwrap()
    });
    // The thread has ended (joined): a waiter looks at the owner within its timeout.
    let v = value.lock_timeout(Duration::from_millis(400));
    let a = array.lock_timeout(Duration::from_millis(400));
    assert!(matches!(v, Err(TryLockError::WouldBlock)), "{v:?}");
    assert!(matches!(a, Err(TryLockError::WouldBlock)), "{a:?}");
    drop((v, a));
    assert!(value.try_lock().unwrap_err().is_would_block());
    *leaked += 1;
    slice[0] = 7;
    assert_eq!((*leaked, slice[0]), (2, 7));
    // A plain `Lock` has no data behind it: a leaked guard of an ended thread is still
    // taken over, and said to be (`thread_that_ends_holding_a_lock`), unless that thread
    // leaked a guard of data too.
    let lock = Lock::new().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| std::mem::forget(lock.lock().unwrap()));
    });
    assert!(matches!(
        lock.lock_timeout(T),
        Err(TryLockError::OwnerDied(_))
    ));
}

#[test]
fn relocking_a_lock_is_refused() {
    let lock = Lock::new().unwrap();
    let g = lock.lock().unwrap();
    assert!(lock.try_lock().unwrap_err().is_would_block());
    let t = Instant::now();
    assert!(lock.lock_timeout(T).unwrap_err().is_would_block());
    assert!(t.elapsed() < T / 2, "waited for a lock it holds itself");
    // A timeout too long for the clock is still a timed wait: refused, not a panic.
    for long in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        assert!(lock.lock_timeout(long).unwrap_err().is_would_block());
        let v = Value::new(0u32).unwrap();
        let held = v.lock().unwrap();
        assert!(v.lock_timeout(long).unwrap_err().is_would_block());
        drop(held);
    }
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(lock.lock())));
    assert!(
        again.is_err(),
        "locking twice on one thread must panic, not hang"
    );
    drop(g);
    assert!(!lock.is_locked());
    // An array's copy methods take its lock: under its guard they panic, saying so.
    let a = Array::from_slice(&[1u32, 2]).unwrap();
    let held = a.lock().unwrap();
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.get(0)));
    let message = again.expect_err("get under the array's own guard must panic");
    let message = message
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| message.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(message.contains("Array"), "{message}");
    drop(held);
    assert_eq!(a.get(1), Some(2));
}

#[test]
fn rlock_is_reentrant_per_thread() {
    let lock = RLock::new().unwrap();
    let a = lock.lock().unwrap();
    let b = lock.try_lock().unwrap();
    assert!(lock.is_owned());
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(!lock.is_owned());
            assert!(lock.try_lock().unwrap_err().is_would_block());
        });
    });
    drop(a);
    assert!(lock.is_locked());
    drop(b);
    assert!(!lock.is_locked());
    std::thread::scope(|s| {
        s.spawn(|| drop(lock.lock_timeout(T).unwrap()));
    });
}

#[test]
fn semaphore_limits_threads() {
    let sem = Semaphore::new(2).unwrap();
    let inside = AtomicU32::new(0);
    let most = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                for _ in 0..50 {
                    let _p = sem.acquire();
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert!(most.load(Ordering::SeqCst) <= 2);
    assert_eq!(sem.available_permits(), 2);
    let a = sem.acquire();
    let _b = sem.acquire();
    assert!(sem.acquire_timeout(Duration::from_millis(20)).is_none());
    drop(a);
    assert!(sem.acquire_timeout(T).is_some());
}

#[test]
fn semaphore_release_wakes_a_waiter() {
    let sem = Semaphore::new(0).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| sem.acquire_timeout(T).map(|p| p.forget()).is_some());
        std::thread::sleep(Duration::from_millis(50));
        sem.release();
        assert!(waiter.join().unwrap());
    });
    assert_eq!(sem.available_permits(), 0);
}

#[test]
fn bounded_semaphore_refuses_over_release() {
    let sem = BoundedSemaphore::new(2).unwrap();
    assert!(sem.release().is_err());
    sem.acquire().forget();
    sem.acquire().forget();
    assert!(sem.try_acquire().is_none());
    sem.release().unwrap();
    sem.release().unwrap();
    assert_eq!(sem.release(), Err(multiproc::OverRelease { bound: 2 }));
    assert_eq!(sem.available_permits(), 2);
}

#[test]
fn event_wakes_every_thread() {
    let ev = Event::new().unwrap();
    let woke = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                ev.wait();
                woke.fetch_add(1, Ordering::SeqCst);
            });
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(woke.load(Ordering::SeqCst), 0);
        ev.set();
    });
    assert_eq!(woke.load(Ordering::SeqCst), 4);
    assert!(ev.is_set());
    ev.clear();
    let t = Instant::now();
    assert!(!ev.wait_timeout(Duration::from_millis(30)));
    assert!(t.elapsed() >= Duration::from_millis(30));
}

#[test]
fn condition_producer_consumer_threads() {
    let cond = Condition::new().unwrap();
    let queue = Value::new([0u64; 2]).unwrap(); // [produced, consumed]
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..1000 {
                let g = cond.lock().unwrap();
                let g = cond
                    .wait_while(g, || {
                        let [p, c] = queue.load();
                        p - c >= 4
                    })
                    .unwrap();
                let [p, c] = queue.load();
                queue.store([p + 1, c]);
                cond.notify_all();
                drop(g);
            }
        });
        for _ in 0..1000 {
            let g = cond.lock().unwrap();
            let (g, r) = cond
                .wait_timeout_while(g, T, || {
                    let [p, c] = queue.load();
                    p == c
                })
                .unwrap();
            assert!(!r.timed_out());
            let [p, c] = queue.load();
            queue.store([p, c + 1]);
            cond.notify();
            drop(g);
        }
    });
    assert_eq!(queue.load(), [1000, 1000]);
}

#[test]
fn condition_wait_times_out() {
    let cond = Condition::new().unwrap();
    let g = cond.lock().unwrap();
    let t = Instant::now();
    let (g, r) = cond.wait_timeout(g, Duration::from_millis(30)).unwrap();
    assert!(r.timed_out());
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert!(
        cond.get_lock().is_locked(),
        "the lock is held again after the wait"
    );
    drop(g);
    assert!(!cond.get_lock().is_locked());
}

/// Two timed waiters, one notification: one is notified, the other times out and says
/// so (it said it was notified, as the sequence had moved).
#[test]
fn condition_timeout_goes_to_the_waiter_not_notified() {
    let cond = Condition::new().unwrap();
    let waiting = AtomicU32::new(0);
    let timeout = Duration::from_millis(600);
    let outcomes: Vec<(bool, Duration)> = std::thread::scope(|s| {
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let g = cond.lock().unwrap();
                    waiting.fetch_add(1, Ordering::SeqCst);
                    let t = Instant::now();
                    let (g, r) = cond.wait_timeout(g, timeout).unwrap();
                    drop(g);
                    (r.timed_out(), t.elapsed())
                })
            })
            .collect();
        let until = Instant::now() + T;
        while waiting.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < until, "the waiters never waited");
            std::thread::yield_now();
        }
        // Both wait once the lock is free again.
        let g = cond.lock().unwrap();
        cond.notify();
        drop(g);
        waiters.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let timed_out: Vec<_> = outcomes.iter().filter(|o| o.0).collect();
    assert_eq!(timed_out.len(), 1, "{outcomes:?}");
    assert!(timed_out[0].1 >= timeout, "{outcomes:?}");
}

#[test]
fn conditions_share_a_lock() {
    let lock = Lock::new().unwrap();
    let a = Condition::with_lock(&lock).unwrap();
    let b = Condition::with_lock(&lock).unwrap();
    let g = lock.lock().unwrap();
    let (g, _) = a.wait_timeout(g, Duration::from_millis(1)).unwrap();
    let (g, _) = b.wait_timeout(g, Duration::from_millis(1)).unwrap();
    drop(g);
    let other = Lock::new().unwrap();
    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let g = other.lock().unwrap();
        let _ = a.wait_timeout(g, Duration::from_millis(1));
    }));
    assert!(
        wrong.is_err(),
        "waiting with another lock's guard must panic"
    );
    assert!(!other.is_locked(), "the guard was released on the way out");
}

#[test]
fn barrier_four_threads_thousand_rounds() {
    let barrier = Barrier::new(4).unwrap();
    let leaders = AtomicU32::new(0);
    let counter = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for round in 1..=1000 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if barrier.wait_timeout(T).unwrap().is_leader() {
                        leaders.fetch_add(1, Ordering::SeqCst);
                    }
                    assert!(counter.load(Ordering::SeqCst) >= 4 * round);
                    barrier.wait_timeout(T).unwrap();
                }
            });
        }
    });
    assert_eq!(leaders.load(Ordering::SeqCst), 1000);
}

/// A party thread that panics after a generation died: the others get `Broken` in the
/// next one rather than wait for it.
#[test]
fn barrier_party_thread_that_panics_breaks_it() {
    let barrier = Barrier::new(3).unwrap();
    std::thread::scope(|s| {
        let stays = s.spawn(|| {
            barrier.wait_timeout(T).unwrap();
            barrier.wait_timeout(T)
        });
        let panics = s.spawn(|| {
            barrier.wait_timeout(T).unwrap();
            panic!("a party panics");
        });
        barrier.wait_timeout(T).unwrap();
        assert!(panics.join().is_err());
        let t = Instant::now();
        assert_eq!(barrier.wait_timeout(T), Err(BarrierError::Broken));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(stays.join().unwrap(), Err(BarrierError::Broken));
    });
}

/// New threads each round, as Python allows: a party thread that returned left, and
/// the one that takes its place may come late. The first waiter took the ended
/// thread for a party that died, and the barrier broke.
#[test]
fn barrier_new_threads_each_round() {
    let barrier = Barrier::new(2).unwrap();
    for round in 0..3 {
        std::thread::scope(|s| {
            let late = s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                barrier.wait_timeout(T)
            });
            assert!(barrier.wait_timeout(T).is_ok(), "round {round}");
            assert!(late.join().unwrap().is_ok(), "round {round}");
        });
        // And a thread of this round that passes alone with the main thread.
        std::thread::scope(|s| {
            s.spawn(|| barrier.wait_timeout(T).unwrap());
            std::thread::sleep(Duration::from_millis(100));
            barrier.wait_timeout(T).unwrap();
        });
    }
    assert!(!barrier.is_broken());
}

/// A reset right after a generation passed leaves that generation's result alone: a
/// party released but not yet awake still passes (it read `Broken`, its slot freed).
#[test]
fn barrier_reset_right_after_a_pass() {
    let barrier = Barrier::new(2).unwrap();
    for round in 0..50 {
        std::thread::scope(|s| {
            let waiter = s.spawn(|| barrier.wait_timeout(T));
            let t0 = Instant::now();
            while barrier.n_waiting() == 0 {
                assert!(t0.elapsed() < T, "the other party never came");
                std::thread::yield_now();
            }
            assert!(barrier.wait_timeout(T).is_ok());
            barrier.reset();
            let passed = waiter.join().unwrap();
            assert!(
                passed.is_ok(),
                "round {round}: a reset turned a pass into {passed:?}"
            );
        });
    }
}

/// Descriptors of barriers this process holds.
fn barrier_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("multiproc-Barrier"))
        .count()
}

/// Two long-lived threads wait on a fresh barrier each round, every other handle
/// dropped: nothing of the barriers stays. Each thread's claim kept its barrier mapped
/// (and its descriptor open) until the thread ended.
#[test]
fn barrier_per_round_between_long_lived_threads_keeps_nothing() {
    let (acks, acked) = std::sync::mpsc::channel();
    let parties: Vec<_> = (0..2)
        .map(|_| {
            let (tx, rx) = std::sync::mpsc::channel::<Barrier>();
            let acks = acks.clone();
            let thread = std::thread::spawn(move || {
                for barrier in rx {
                    let passed = barrier.wait_timeout(T).is_ok();
                    drop(barrier);
                    acks.send(passed).unwrap();
                }
            });
            (tx, thread)
        })
        .collect();
    let before = barrier_fds();
    for round in 0..300 {
        let barrier = Barrier::new(2).unwrap();
        for (tx, _) in &parties {
            tx.send(barrier.clone()).unwrap();
        }
        drop(barrier);
        for _ in &parties {
            assert_eq!(acked.recv_timeout(T), Ok(true), "round {round}");
        }
    }
    let after = barrier_fds();
    for (tx, thread) in parties {
        drop(tx);
        thread.join().unwrap();
    }
    // (Other tests of this binary hold a few barriers of their own meanwhile.)
    assert!(
        after < before + 50,
        "{before} barrier descriptors before 300 rounds, {after} after"
    );
}

/// A party that came by a second handle to its barrier (received again, here through a
/// queue) stays a party when its first handle is dropped: its death breaks the barrier.
/// Its slot was freed as it claimed one on another barrier, and the other party waited
/// in vain.
#[test]
fn barrier_party_with_a_handle_received_again_is_still_known_when_it_dies() {
    let barrier = Barrier::new(2).unwrap();
    let queue = multiproc::Queue::<Barrier>::new().unwrap();
    std::thread::scope(|s| {
        let party = s.spawn(|| {
            let first = queue.get_timeout(T).unwrap();
            first.wait_timeout(T).unwrap();
            drop(first);
            let again = queue.get_timeout(T).unwrap();
            Barrier::new(1).unwrap().wait_timeout(T).unwrap();
            drop(again);
            panic!("the party dies");
        });
        queue.put(barrier.clone()).unwrap();
        barrier.wait_timeout(T).unwrap();
        queue.put(barrier.clone()).unwrap();
        assert!(party.join().is_err());
    });
    let t = Instant::now();
    assert_eq!(
        barrier.wait_timeout(Duration::from_secs(5)),
        Err(BarrierError::Broken)
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn barrier_refuses_extra_threads() {
    let barrier = Barrier::new(1).unwrap();
    assert!(barrier.wait().unwrap().is_leader());
    // A second live thread: the one slot is taken by this one, which lives.
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(barrier.wait(), Err(BarrierError::TooManyParties)));
    });
    barrier.reset();
    std::thread::scope(|s| {
        s.spawn(|| assert!(barrier.wait().unwrap().is_leader()));
    });
}

#[test]
fn array_guard_is_a_slice() {
    let a = Array::from_slice(&[3u32, 1, 2]).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| a.lock().unwrap().sort());
    });
    assert_eq!(a.to_vec(), [1, 2, 3]);
    assert_eq!(a.len(), 3);
}

/// A type made `ShmSafe` by hand rather than through `bytemuck`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Pair {
    a: u32,
    b: u32,
}

// SAFETY: `repr(C)` of two `u32`s: no padding, every bit pattern valid, no pointers.
#[allow(unsafe_code)]
unsafe impl ShmSafe for Pair {}

#[test]
fn hand_made_shm_safe_type() {
    let v = Value::new(Pair { a: 1, b: 2 }).unwrap();
    v.lock().unwrap().b = 5;
    assert_eq!(v.load(), Pair { a: 1, b: 5 });
    assert_eq!(format!("{v:?}"), "Value { value: Pair { a: 1, b: 5 } }");
}

#[test]
fn timer_runs_once_after_its_delay_unless_cancelled() {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let fired = multiproc::Timer::spawn(Duration::from_millis(200), move || {
        tx.send(t0.elapsed()).unwrap();
    })
    .unwrap();
    let after = rx.recv_timeout(T).unwrap();
    assert!(after >= Duration::from_millis(200), "{after:?}");
    assert!(common::eventually(T, || fired.is_finished()));
    assert!(!fired.cancel(), "too late to cancel");
    fired.join().unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "ran twice"
    );
    // Cancelled before its time: never runs, and its thread ends at once.
    let (tx, rx) = mpsc::channel::<()>();
    let never =
        multiproc::Timer::spawn_named("never".into(), Duration::from_secs(3600), move || {
            tx.send(()).unwrap();
        })
        .unwrap();
    assert!(never.cancel());
    assert!(!never.cancel());
    assert!(never.is_finished());
    never.join().unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    // A name no thread can have: refused, not a panic, and the function never runs.
    let (tx, rx) = mpsc::channel::<()>();
    let refused = multiproc::Timer::spawn_named("a\0b".into(), Duration::ZERO, move || {
        tx.send(()).unwrap();
    });
    assert_eq!(
        refused.map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    // A panic comes back from join.
    let panics = multiproc::Timer::spawn(Duration::ZERO, || panic!("timer panic")).unwrap();
    assert!(common::eventually(T, || panics.is_finished()));
    assert!(panics.join().is_err());
}
