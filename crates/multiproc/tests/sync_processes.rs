//! Locks, events, barriers and shared memory between real processes, including the
//! ugly paths: owners SIGKILLed while holding a lock, a barrier party killed, creators
//! of named segments killed. Nothing may be left in `/dev/shm` afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{Helper, trial};
use multiproc::{
    Array, Barrier, BarrierError, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore,
    SharedMemory, ShmError, TryLockError, TryLockResult, Value, bytemuck,
};

const T: Duration = Duration::from_secs(60);

fn main() {
    common::main_checked(
        vec![
            trial("lock_owner_killed_holding_it", lock_owner_killed_holding_it),
            trial(
                "an_owner_out_of_descriptors_is_alive",
                an_owner_out_of_descriptors_is_alive,
            ),
            trial(
                "short_timeouts_find_a_dead_owner",
                short_timeouts_find_a_dead_owner,
            ),
            trial(
                "an_event_pulse_releases_its_waiters",
                an_event_pulse_releases_its_waiters,
            ),
            trial(
                "rlock_owner_killed_holding_it",
                rlock_owner_killed_holding_it,
            ),
            trial(
                "value_owner_killed_holding_its_lock",
                value_owner_killed_holding_its_lock,
            ),
            trial(
                "array_owner_exits_holding_its_lock",
                array_owner_exits_holding_its_lock,
            ),
            trial("killed_waiters_block_nobody", killed_waiters_block_nobody),
            trial(
                "barrier_party_killed_while_waiting",
                barrier_party_killed_while_waiting,
            ),
            trial("ten_processes_add_to_a_value", ten_processes_add_to_a_value),
            trial(
                "separate_lock_guards_load_and_store",
                separate_lock_guards_load_and_store,
            ),
            trial("semaphore_limits_processes", semaphore_limits_processes),
            trial(
                "bounded_semaphore_over_release_in_a_child",
                bounded_semaphore_over_release_in_a_child,
            ),
            trial("event_wakes_every_process", event_wakes_every_process),
            trial("condition_producer_consumer", condition_producer_consumer),
            trial(
                "barrier_four_processes_thousand_rounds",
                barrier_four_processes_thousand_rounds,
            ),
            trial(
                "barrier_party_killed_breaks_it",
                barrier_party_killed_breaks_it,
            ),
            trial(
                "barrier_timeout_breaks_it_until_reset",
                barrier_timeout_breaks_it_until_reset,
            ),
            trial(
                "barrier_new_processes_each_phase",
                barrier_new_processes_each_phase,
            ),
            trial(
                "a_party_thread_that_panicked_dies_with_its_process",
                a_party_thread_that_panicked_dies_with_its_process,
            ),
            trial(
                "a_party_that_exits_with_0_or_waited_on_another_thread_leaves_a_barrier",
                a_party_that_exits_with_0_or_waited_on_another_thread_leaves_a_barrier,
            ),
            trial(
                "a_pool_thread_whose_task_panicked_leaves_a_barrier",
                a_pool_thread_whose_task_panicked_leaves_a_barrier,
            ),
            trial(
                "barrier_party_stopped_holding_its_lock",
                barrier_party_stopped_holding_its_lock,
            ),
            trial("value_of_structs", value_of_structs),
            trial(
                "array_of_100m_f64_written_in_halves",
                array_of_100m_f64_written_in_halves,
            ),
            trial(
                "shared_memory_anonymous_and_named",
                shared_memory_anonymous_and_named,
            ),
            trial(
                "shared_memory_copies_any_range_and_keeps_aligned_words_whole",
                shared_memory_copies_any_range_and_keeps_aligned_words_whole,
            ),
            trial(
                "a_named_segment_larger_than_dev_shm_is_an_error",
                a_named_segment_larger_than_dev_shm_is_an_error,
            ),
            trial(
                "a_creator_killed_while_taking_the_memory_leaves_nothing",
                a_creator_killed_while_taking_the_memory_leaves_nothing,
            ),
            trial(
                "named_segments_of_a_killed_creator_are_removed",
                named_segments_of_a_killed_creator_are_removed,
            ),
            trial(
                "a_segment_opened_as_its_creator_sizes_it",
                a_segment_opened_as_its_creator_sizes_it,
            ),
            trial(
                "a_named_value_is_not_opened_as_raw_bytes",
                a_named_value_is_not_opened_as_raw_bytes,
            ),
            trial(
                "creator_and_its_fork_server_killed_together",
                creator_and_its_fork_server_killed_together,
            ),
            trial("creator_process_group_killed", creator_process_group_killed),
            trial(
                "segment_tracker_killed_is_replaced",
                segment_tracker_killed_is_replaced,
            ),
            trial(
                "normal_exit_leaves_no_segment_tracker",
                normal_exit_leaves_no_segment_tracker,
            ),
            trial(
                "opener_exiting_keeps_the_segment",
                opener_exiting_keeps_the_segment,
            ),
            trial(
                "a_creator_out_of_descriptors_removes_its_segment",
                a_creator_out_of_descriptors_removes_its_segment,
            ),
            trial(
                "a_waiter_out_of_descriptors_finds_an_unreaped_holder_dead",
                a_waiter_out_of_descriptors_finds_an_unreaped_holder_dead,
            ),
            trial(
                "a_link_at_a_segments_name_is_not_followed",
                a_link_at_a_segments_name_is_not_followed,
            ),
            trial(
                "named_value_layout_is_checked",
                named_value_layout_is_checked,
            ),
            trial("bad_arguments_are_errors", bad_arguments_are_errors),
            trial(
                "no_descriptor_or_mapping_leaks",
                no_descriptor_or_mapping_leaks,
            ),
        ],
        helpers,
        Duration::from_secs(900),
        common::no_new_dev_shm,
    );
}

fn helpers(mode: &str) {
    match mode {
        "create_named_then_wait" => helper_create_named_then_wait(),
        "tracked_segments" => helper_tracked_segments(),
        "leaks" => helper_leaks(),
        "small_dev_shm" => helper_small_dev_shm(),
        "reserving_creator" => helper_reserving_creator(),
        other => panic!("unknown helper mode {other}"),
    }
}

/// A name no other test (or run) uses.
fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "mptest-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn owner_died<G>(r: TryLockResult<G>) -> G {
    match r {
        Err(TryLockError::OwnerDied(e)) => e.into_inner(),
        Ok(_) => panic!("expected OwnerDied, the lock was taken cleanly"),
        Err(TryLockError::WouldBlock) => panic!("expected OwnerDied, timed out"),
    }
}

fn clean<G>(r: TryLockResult<G>) -> G {
    match r {
        Ok(g) => g,
        Err(e) => panic!("expected a clean lock: {e:?}"),
    }
}

/// Holds the lock and says so, then sleeps until killed.
fn hold_lock((lock, held): (Lock, Event)) {
    let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
    held.set();
    std::thread::sleep(Duration::from_secs(3600));
}

fn lock_owner_killed_holding_it() {
    let lock = Lock::new().unwrap();
    let held = Event::new().unwrap();
    let mut child = multiproc::spawn(hold_lock, (lock.clone(), held.clone())).unwrap();
    assert!(held.wait_timeout(T));
    assert!(lock.is_locked());
    assert!(lock.try_lock().unwrap_err().is_would_block());
    // A waiter that is already asleep when the owner dies.
    let (killed_at, got) = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let r = lock.lock_timeout(T);
            let at = Instant::now();
            let g = owner_died(r);
            drop(g);
            at
        });
        std::thread::sleep(Duration::from_millis(100));
        let killed_at = Instant::now();
        child.kill().unwrap();
        (killed_at, waiter.join().unwrap())
    });
    assert!(
        got.duration_since(killed_at) < Duration::from_secs(5),
        "the waiter took {:?} to notice",
        got.duration_since(killed_at)
    );
    assert!(child.join_timeout(T).is_err());
    // Works as before afterwards, and the death is reported once.
    drop(clean(lock.try_lock()));
    drop(lock.lock().unwrap());
    assert!(!lock.is_locked());
}

/// With every descriptor it may open in use (so that nothing under `/proc` can be
/// read), a new thread takes the lock, says so, and holds it until `release`.
fn hold_lock_out_of_descriptors((lock, held, release): (Lock, Event, Event)) {
    let open = common::use_up_descriptors();
    std::thread::spawn(move || {
        let _g = lock.lock().unwrap();
        held.set();
        assert!(release.wait_timeout(T));
    })
    .join()
    .unwrap();
    drop(open);
}

/// A lock's owner is alive however little it can do: one that could not read its own
/// start time (no descriptor free) was taken for dead by the first waiter that looked,
/// which then held the lock with it.
fn an_owner_out_of_descriptors_is_alive() {
    let lock = Lock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let mut child = multiproc::spawn(
        hold_lock_out_of_descriptors,
        (lock.clone(), held.clone(), release.clone()),
    )
    .unwrap();
    assert!(held.wait_timeout(T));
    // Long enough for the waiter to look at the owner many times.
    let r = lock.lock_timeout(Duration::from_millis(300));
    assert!(
        matches!(r, Err(TryLockError::WouldBlock)),
        "a live owner's lock was taken: {:?}",
        r.map(|_| ())
    );
    release.set();
    drop(clean(lock.lock_timeout(T)));
    child.join_timeout(T).unwrap();
}

/// Runs `f` in a child with `handle` and an event it raises once it holds the handle's
/// lock; SIGKILLs it then.
fn killed_holding<H>(f: fn((H, Event)), handle: H)
where
    H: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let held = Event::new().unwrap();
    let mut child = multiproc::spawn(f, (handle, held.clone())).unwrap();
    assert!(held.wait_timeout(T));
    child.kill().unwrap();
    let _ = child.join_timeout(T);
}

/// Timeouts shorter than a sleeper's first look at the owner (2 ms): a poll with
/// `lock_timeout(1 ms)` or `Duration::ZERO` met `WouldBlock` for ever when the owner
/// had died; it now finds the death at its deadline.
fn short_timeouts_find_a_dead_owner() {
    let lock = Lock::new().unwrap();
    killed_holding(hold_lock, lock.clone());
    drop(owner_died(lock.lock_timeout(Duration::from_millis(1))));
    drop(clean(lock.lock_timeout(Duration::from_millis(1))));
    let v = Value::new([0u64; 2]).unwrap();
    killed_holding(half_update, v.clone());
    assert_eq!(*owner_died(v.lock_timeout(Duration::ZERO)), [1, 0]);
}

/// Waits for `go` after saying it is about to; whether it was raised.
fn wait_for_go((go, waiting): (Event, Event)) -> bool {
    waiting.set();
    go.wait_timeout(Duration::from_secs(20))
}

/// A `set` then `clear` while a process sleeps in `wait`: the waiter returns, as
/// Python's `threading.Event.wait` does (it saw the flag down when it woke, and slept
/// on).
fn an_event_pulse_releases_its_waiters() {
    let go = Event::new().unwrap();
    let waiting = Event::new().unwrap();
    let mut child = multiproc::spawn(wait_for_go, (go.clone(), waiting.clone())).unwrap();
    assert!(waiting.wait_timeout(T));
    assert!(common::eventually(T, || common::asleep_on_futex(
        child.pid()
    )));
    let pulsed = Instant::now();
    go.set();
    go.clear();
    assert!(child.join_timeout(T).unwrap(), "the waiter timed out");
    assert!(
        pulsed.elapsed() < Duration::from_secs(10),
        "{:?}",
        pulsed.elapsed()
    );
    assert!(!go.is_set());
    // A wait that begins after the pulse waits for the next raising.
    assert!(!go.wait_timeout(Duration::from_millis(20)));
    go.set();
    assert!(go.wait_timeout(Duration::ZERO));
}

fn hold_rlock((lock, held): (RLock, Event)) {
    let _a = lock.lock().unwrap();
    let _b = lock.lock().unwrap();
    let _c = lock.lock().unwrap();
    held.set();
    std::thread::sleep(Duration::from_secs(3600));
}

fn rlock_owner_killed_holding_it() {
    let lock = RLock::new().unwrap();
    let held = Event::new().unwrap();
    let mut child = multiproc::spawn(hold_rlock, (lock.clone(), held.clone())).unwrap();
    assert!(held.wait_timeout(T));
    assert!(lock.try_lock().unwrap_err().is_would_block());
    child.kill().unwrap();
    let _ = child.join_timeout(T);
    let g = owner_died(lock.lock_timeout(T));
    assert!(lock.is_owned());
    let again = lock.lock().unwrap();
    drop(again);
    assert!(lock.is_owned(), "the dead owner's holds were not forgotten");
    drop(g);
    assert!(!lock.is_locked());
}

/// Writes half of the value under its lock, says so, and sleeps until killed.
fn half_update((v, held): (Value<[u64; 2]>, Event)) {
    let mut g = v.lock().unwrap();
    g[0] = 1;
    held.set();
    std::thread::sleep(Duration::from_secs(3600));
    g[1] = 1;
}

fn value_owner_killed_holding_its_lock() {
    let v = Value::new([0u64; 2]).unwrap();
    killed_holding(half_update, v.clone());
    // `load` cannot say the owner died: it reads what it left and keeps the news for
    // the next `lock`.
    assert_eq!(v.load(), [1, 0]);
    // Nor can its debug print (it took the news away: the next lock was clean).
    assert_eq!(format!("{v:?}"), "Value { value: [1, 0] }");
    let mut g = owner_died(v.lock_timeout(T));
    assert_eq!(*g, [1, 0]);
    g[1] = 1;
    drop(g);
    assert_eq!(*v.lock().unwrap(), [1, 1]);
}

/// Takes the array's lock and exits the process without releasing it.
fn exit_holding(a: Array<u32>) {
    let g = a.lock().unwrap();
    std::mem::forget(g);
    std::process::exit(7);
}

fn array_owner_exits_holding_its_lock() {
    let a = Array::<u32>::from_slice(&[1, 2, 3]).unwrap();
    let mut child = multiproc::spawn(exit_holding, a.clone()).unwrap();
    assert!(matches!(
        child.join_timeout(T),
        Err(multiproc::ProcessError::Exited(7))
    ));
    let g = owner_died(a.lock_timeout(T));
    assert_eq!(&*g, &[1, 2, 3]);
    drop(g);
    assert_eq!(a.get(2), Some(3));
}

/// Blocks on each primitive in turn, for as long as it takes.
fn block_on((lock, sem, event, cond, which): (Lock, Semaphore, Event, Condition, u8)) {
    match which {
        0 => drop(lock.lock()),
        1 => sem.acquire().forget(),
        2 => event.wait(),
        _ => {
            let g = cond.lock().unwrap();
            drop(cond.wait(g));
        }
    }
}

/// Holders are fine; waiters are SIGKILLed while asleep: those still waiting, and the
/// primitives themselves, carry on.
fn killed_waiters_block_nobody() {
    let lock = Lock::new().unwrap();
    let sem = Semaphore::new(0).unwrap();
    let event = Event::new().unwrap();
    let cond = Condition::new().unwrap();
    let all = (lock.clone(), sem.clone(), event.clone(), cond.clone());
    let held = lock.lock().unwrap();
    let start = |which: u8| {
        let (l, s, e, c) = all.clone();
        multiproc::spawn(block_on, (l, s, e, c, which)).unwrap()
    };
    let doomed: Vec<_> = (0..4).map(start).collect();
    let survivors: Vec<_> = (0..4).map(start).collect();
    // Every one of them asleep in its primitive (seen, not slept for).
    assert!(common::eventually(T, || doomed
        .iter()
        .chain(&survivors)
        .all(|c| common::asleep_on_futex(c.pid()))));
    for mut d in doomed {
        d.kill().unwrap();
        assert!(d.join_timeout(T).is_err());
    }
    drop(held);
    sem.release();
    event.set();
    // The condition's waiter must be asleep in `wait` (holding nothing) to be notified.
    assert!(common::eventually(T, || {
        cond.notify_all();
        survivors.iter().all(|s| !s.is_alive())
    }));
    for mut s in survivors {
        s.join_timeout(T).unwrap();
    }
    drop(lock.try_lock().unwrap());
    assert_eq!(sem.available_permits(), 0);
}

fn add_thousand(v: Value<i64>) {
    for _ in 0..1000 {
        *v.lock().unwrap() += 1;
    }
}

fn ten_processes_add_to_a_value() {
    let v = Value::new(0i64).unwrap();
    let children: Vec<_> = (0..10)
        .map(|_| multiproc::spawn(add_thousand, v.clone()).unwrap())
        .collect();
    for mut c in children {
        c.join_timeout(T).unwrap();
    }
    assert_eq!(v.load(), 10_000);
}

fn add_under_lock((v, lock): (Value<u32>, Lock)) {
    for _ in 0..500 {
        let _g = lock.lock().unwrap();
        // Not atomic on its own: the outer lock makes it so.
        v.store(v.load() + 1);
    }
}

fn separate_lock_guards_load_and_store() {
    let v = Value::new(0u32).unwrap();
    let lock = Lock::new().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| multiproc::spawn(add_under_lock, (v.clone(), lock.clone())).unwrap())
        .collect();
    for mut c in children {
        c.join_timeout(T).unwrap();
    }
    assert_eq!(v.load(), 2000);
}

/// Holds a permit for a while, recording how many holders there are at most.
fn use_permit((sem, inside, most): (Semaphore, Value<u32>, Value<u32>)) {
    for _ in 0..20 {
        let _p = sem.acquire_timeout(T).expect("no permit");
        let now = {
            let mut n = inside.lock().unwrap();
            *n += 1;
            *n
        };
        {
            let mut m = most.lock().unwrap();
            *m = (*m).max(now);
        }
        std::thread::sleep(Duration::from_millis(1));
        *inside.lock().unwrap() -= 1;
    }
}

fn semaphore_limits_processes() {
    let sem = Semaphore::new(3).unwrap();
    let inside = Value::new(0u32).unwrap();
    let most = Value::new(0u32).unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| multiproc::spawn(use_permit, (sem.clone(), inside.clone(), most.clone())).unwrap())
        .collect();
    for mut c in children {
        c.join_timeout(T).unwrap();
    }
    assert!(most.load() <= 3, "{} holders at once", most.load());
    assert!(most.load() >= 2, "the permits were never shared");
    assert_eq!(sem.available_permits(), 3);
}

fn over_release(sem: BoundedSemaphore) -> (bool, bool) {
    sem.acquire().forget();
    (sem.release().is_ok(), sem.release().is_err())
}

fn bounded_semaphore_over_release_in_a_child() {
    let sem = BoundedSemaphore::new(2).unwrap();
    let mut child = multiproc::spawn(over_release, sem.clone()).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), (true, true));
    assert_eq!(sem.available_permits(), 2);
}

fn wait_then_count((go, arrived): (Event, Value<u32>)) -> bool {
    let woke = go.wait_timeout(T);
    *arrived.lock().unwrap() += 1;
    woke
}

fn event_wakes_every_process() {
    let go = Event::new().unwrap();
    let arrived = Value::new(0u32).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| multiproc::spawn(wait_then_count, (go.clone(), arrived.clone())).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        arrived.load(),
        0,
        "a waiter went on before the event was set"
    );
    assert!(!go.is_set());
    let set_at = Instant::now();
    go.set();
    for mut c in children {
        assert!(c.join_timeout(T).unwrap());
    }
    // Woken by `set`, not by their timeouts.
    assert!(
        set_at.elapsed() < Duration::from_secs(20),
        "{:?}",
        set_at.elapsed()
    );
    assert_eq!(arrived.load(), 4);
    go.clear();
    assert!(!go.wait_timeout(Duration::from_millis(20)));
}

/// A bounded buffer of 8 in an array, with head and tail counters in a value, guarded by
/// the condition's lock.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Buffer {
    cond: Condition,
    slots: Array<u64>,
    /// [items put, items taken]
    counts: Value<[u64; 2]>,
}

const SLOTS: u64 = 8;

impl Buffer {
    fn new() -> Buffer {
        Buffer {
            cond: Condition::new().unwrap(),
            slots: Array::new(SLOTS as usize).unwrap(),
            counts: Value::new([0, 0]).unwrap(),
        }
    }

    fn put(&self, x: u64) {
        let g = self.cond.lock().unwrap();
        let (g, timeout) = self
            .cond
            .wait_timeout_while(g, T, || {
                let [put, taken] = self.counts.load();
                put - taken == SLOTS
            })
            .unwrap();
        assert!(!timeout.timed_out());
        let [put, taken] = self.counts.load();
        self.slots.set((put % SLOTS) as usize, x).unwrap();
        self.counts.store([put + 1, taken]);
        self.cond.notify_all();
        drop(g);
    }

    fn take(&self) -> u64 {
        let g = self.cond.lock().unwrap();
        let (g, timeout) = self
            .cond
            .wait_timeout_while(g, T, || {
                let [put, taken] = self.counts.load();
                put == taken
            })
            .unwrap();
        assert!(!timeout.timed_out());
        let [put, taken] = self.counts.load();
        let x = self.slots.get((taken % SLOTS) as usize).unwrap();
        self.counts.store([put, taken + 1]);
        self.cond.notify_all();
        drop(g);
        x
    }
}

fn produce((buf, from, n): (Buffer, u64, u64)) {
    for x in from..from + n {
        buf.put(x);
    }
}

fn consume((buf, n): (Buffer, u64)) -> u64 {
    (0..n).map(|_| buf.take()).sum()
}

fn condition_producer_consumer() {
    let buf = Buffer::new();
    let producers: Vec<_> = (0..2)
        .map(|i| multiproc::spawn(produce, (buf.clone(), i * 1000, 1000)).unwrap())
        .collect();
    let consumer = multiproc::spawn(consume, (buf.clone(), 1000)).unwrap();
    let mine: u64 = (0..1000).map(|_| buf.take()).sum();
    for mut p in producers {
        p.join_timeout(T).unwrap();
    }
    let mut consumer = consumer;
    let theirs = consumer.join_timeout(T).unwrap();
    assert_eq!(mine + theirs, (0..2000).sum::<u64>());
    assert_eq!(buf.counts.load(), [2000, 2000]);
}

/// Each round: add one to the counter, wait; everyone must then see all the round's
/// additions. Returns how often this party led, and how many checks failed.
fn barrier_rounds((barrier, counter, rounds): (Barrier, Value<u64>, u64)) -> (u64, u64) {
    let parties = barrier.parties() as u64;
    let (mut led, mut wrong) = (0, 0);
    for round in 0..rounds {
        *counter.lock().unwrap() += 1;
        if barrier.wait_timeout(T).unwrap().is_leader() {
            led += 1;
        }
        let seen = counter.load();
        if seen < parties * (round + 1) || seen > parties * (round + 2) {
            wrong += 1;
        }
        barrier.wait_timeout(T).unwrap();
    }
    (led, wrong)
}

fn barrier_four_processes_thousand_rounds() {
    let barrier = Barrier::new(4).unwrap();
    let counter = Value::new(0u64).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            multiproc::spawn(barrier_rounds, (barrier.clone(), counter.clone(), 1000)).unwrap()
        })
        .collect();
    let (mut led, mut wrong) = (0, 0);
    for mut c in children {
        let (l, w) = c.join_timeout(T).unwrap();
        led += l;
        wrong += w;
    }
    assert_eq!(wrong, 0);
    assert_eq!(led, 1000, "exactly one leader per round");
    assert_eq!(counter.load(), 4000);
    assert!(!barrier.is_broken());
}

/// Passes the barrier once, then either keeps waiting or sleeps until killed.
fn party((barrier, stay): (Barrier, bool)) -> Result<(), BarrierError> {
    barrier.wait_timeout(T)?;
    if stay {
        barrier.wait_timeout(T).map(|_| ())
    } else {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(())
    }
}

fn barrier_party_killed_breaks_it() {
    let barrier = Barrier::new(3).unwrap();
    let mut stays = multiproc::spawn(party, (barrier.clone(), true)).unwrap();
    let mut dies = multiproc::spawn(party, (barrier.clone(), false)).unwrap();
    barrier.wait_timeout(T).unwrap();
    // Round two: `dies` will never arrive.
    std::thread::sleep(Duration::from_millis(50));
    dies.kill().unwrap();
    let started = Instant::now();
    assert_eq!(barrier.wait_timeout(T), Err(BarrierError::Broken));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(stays.join_timeout(T).unwrap(), Err(BarrierError::Broken));
    let _ = dies.join_timeout(T);
    assert!(barrier.is_broken());
    assert_eq!(barrier.wait(), Err(BarrierError::Broken));
    // A reset forgets the dead party: two new ones and this thread pass it.
    barrier.reset();
    let a = multiproc::spawn(party, (barrier.clone(), false)).unwrap();
    let b = multiproc::spawn(party, (barrier.clone(), false)).unwrap();
    assert!(barrier.wait_timeout(T).is_ok());
    for mut c in [a, b] {
        c.kill().unwrap();
        let _ = c.join_timeout(T);
    }
}

/// Sleeps `ms`, then waits once; panics afterwards when told to.
fn phase_party((barrier, ms, panic): (Barrier, u64, bool)) -> Result<usize, BarrierError> {
    std::thread::sleep(Duration::from_millis(ms));
    let r = barrier.wait_timeout(T).map(|r| r.index());
    assert!(!panic, "a party panics after its wait");
    r
}

/// New processes each phase, as with Python's `Barrier`: a party whose function
/// returned left, and the one that takes its place may come late (the first waiter
/// took the ended process for a party that died, and the barrier broke). One that
/// panics after its wait died: the next phase breaks.
fn barrier_new_processes_each_phase() {
    let barrier = Barrier::new(3).unwrap();
    let join = |mut h: multiproc::JoinHandle<Result<usize, BarrierError>>| {
        h.join_timeout(T).expect("a party did not end")
    };
    for phase in 0..3 {
        let early = multiproc::spawn(phase_party, (barrier.clone(), 0, false)).unwrap();
        let late = multiproc::spawn(phase_party, (barrier.clone(), 200, false)).unwrap();
        assert!(barrier.wait_timeout(T).is_ok(), "phase {phase}");
        assert!(join(early).is_ok(), "phase {phase}");
        assert!(join(late).is_ok(), "phase {phase}");
    }
    let mut panics = multiproc::spawn(phase_party, (barrier.clone(), 0, true)).unwrap();
    let passes = multiproc::spawn(phase_party, (barrier.clone(), 0, false)).unwrap();
    assert!(barrier.wait_timeout(T).is_ok());
    assert!(join(passes).is_ok());
    assert!(panics.join_timeout(T).is_err(), "the party did not panic");
    // A new party comes, but the one that panicked is a party that died.
    let next = multiproc::spawn(phase_party, (barrier.clone(), 0, false)).unwrap();
    assert_eq!(barrier.wait_timeout(T), Err(BarrierError::Broken));
    assert_eq!(join(next), Err(BarrierError::Broken));
}

/// Waits once, then exits with status 0 from inside the function.
fn wait_then_exit(barrier: Barrier) -> Result<usize, BarrierError> {
    let r = barrier.wait_timeout(T).map(|r| r.index());
    assert!(r.is_ok(), "{r:?}");
    std::process::exit(0)
}

/// Waits once on a thread of its own, which then stays parked; returns once that
/// thread has passed.
fn wait_on_a_thread(barrier: Barrier) -> Result<usize, BarrierError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(barrier.wait_timeout(T).map(|r| r.index()));
        std::thread::park();
    });
    rx.recv_timeout(T).expect("the thread's wait ended")
}

/// Waits once on a thread of its own, which then panics, catches its panic itself and
/// stays parked; returns once that thread has caught it.
fn wait_then_panic_on_a_thread(barrier: Barrier) -> Result<usize, BarrierError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = barrier.wait_timeout(T).map(|r| r.index());
        let _ = std::panic::catch_unwind(|| panic!("a party's thread panics"));
        let _ = tx.send(r);
        std::thread::park();
    });
    rx.recv_timeout(T).expect("the thread's wait ended")
}

/// A process whose function returns while a thread of its own that waited has
/// panicked (the program caught the panic, and the thread runs on) does not take that
/// thread's slot with it: that party died, and the next round breaks (its slot was
/// freed as the process ended, and a late party took its place).
fn a_party_thread_that_panicked_dies_with_its_process() {
    let barrier = Barrier::new(2).unwrap();
    let mut party = multiproc::spawn(wait_then_panic_on_a_thread, barrier.clone()).unwrap();
    assert!(barrier.wait_timeout(T).is_ok());
    assert!(party.join_timeout(T).unwrap().is_ok());
    let mut late = multiproc::spawn(phase_party, (barrier.clone(), 300, false)).unwrap();
    assert_eq!(barrier.wait_timeout(T), Err(BarrierError::Broken));
    assert_eq!(late.join_timeout(T).unwrap(), Err(BarrierError::Broken));
}

/// A party process that exits with status 0 from its function, and one whose function
/// returns while a thread of its own that waited still runs, leave the barrier as one
/// whose function returned does: a party that comes late takes their place (their
/// slots stayed claimed by threads gone with their process, and the barrier broke).
fn a_party_that_exits_with_0_or_waited_on_another_thread_leaves_a_barrier() {
    // Where the C library does not say the status to exit functions (not glibc), a
    // party that exits counts as dead, whatever its status.
    let exits = cfg!(target_env = "gnu").then_some((
        "exits with 0",
        wait_then_exit as fn(Barrier) -> Result<usize, BarrierError>,
    ));
    let threads = (
        "waited on a thread",
        wait_on_a_thread as fn(Barrier) -> Result<usize, BarrierError>,
    );
    for (what, f) in exits.into_iter().chain([threads]) {
        let barrier = Barrier::new(2).unwrap();
        let mut party = multiproc::spawn(f, barrier.clone()).unwrap();
        assert!(barrier.wait_timeout(T).is_ok(), "{what}");
        let _ = party.join_timeout(T);
        assert!(!party.is_alive(), "{what}");
        let mut late = multiproc::spawn(phase_party, (barrier.clone(), 300, false)).unwrap();
        assert!(barrier.wait_timeout(T).is_ok(), "{what}: the barrier broke");
        assert!(late.join_timeout(T).unwrap().is_ok(), "{what}");
    }
}

/// A thread pool's thread that waited on a barrier, then ran a task that panicked (the
/// pool caught it and went on), leaves the barrier when the pool ends it, as a thread
/// that returns: another thread takes its place. (The barrier took it for a party that
/// died, as it had seen the panic and not that it was caught: the next wait broke.)
fn a_pool_thread_whose_task_panicked_leaves_a_barrier() {
    let barrier = Barrier::new(2).unwrap();
    let pool = multiproc::ThreadPool::new(1).unwrap();
    let b = barrier.clone();
    let mut waited = pool
        .submit(move || b.wait_timeout(T).map(|r| r.index()))
        .unwrap();
    assert!(barrier.wait_timeout(T).is_ok());
    assert!(waited.wait_timeout(T).unwrap().is_ok());
    let mut panicked = pool.submit(|| -> u8 { panic!("a task panics") }).unwrap();
    assert!(matches!(
        panicked.wait_timeout(T),
        Err(multiproc::TaskError::Panicked(_))
    ));
    // The pool's thread ends, having returned. The next party comes late: meanwhile
    // this waiter looks at the parties it knows.
    pool.join();
    let mut next = multiproc::spawn(phase_party, (barrier.clone(), 300, false)).unwrap();
    assert!(barrier.wait_timeout(T).is_ok(), "the barrier broke");
    assert!(next.join_timeout(T).unwrap().is_ok());
}

fn wait_once(barrier: Barrier) -> Result<usize, BarrierError> {
    barrier.wait_timeout(T).map(|r| r.index())
}

fn barrier_timeout_breaks_it_until_reset() {
    let barrier = Barrier::new(3).unwrap();
    let mut other = multiproc::spawn(wait_once, barrier.clone()).unwrap();
    // The third party never comes (it never waited, so only a timeout can tell).
    assert_eq!(
        barrier.wait_timeout(Duration::from_millis(300)),
        Err(BarrierError::Timeout)
    );
    assert_eq!(other.join_timeout(T).unwrap(), Err(BarrierError::Broken));
    assert_eq!(barrier.wait(), Err(BarrierError::Broken));
    barrier.reset();
    assert!(!barrier.is_broken());
    let a = multiproc::spawn(wait_once, barrier.clone()).unwrap();
    let b = multiproc::spawn(wait_once, barrier.clone()).unwrap();
    let mut indices = vec![barrier.wait_timeout(T).unwrap().index()];
    for mut c in [a, b] {
        indices.push(c.join_timeout(T).unwrap().unwrap());
    }
    indices.sort();
    assert_eq!(indices, [0, 1, 2]);
    // Abort breaks it for a waiter already asleep.
    let mut sleeper = multiproc::spawn(wait_once, barrier.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    barrier.abort();
    assert_eq!(sleeper.join_timeout(T).unwrap(), Err(BarrierError::Broken));
}

#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Particle {
    position: [f64; 3],
    velocity: [f64; 3],
    id: u64,
}

fn step((p, v): (Value<Particle>, Value<[f64; 3]>)) {
    let mut p = p.lock().unwrap();
    for i in 0..3 {
        p.position[i] += p.velocity[i];
    }
    v.store(p.position);
}

fn value_of_structs() {
    let p = Value::new(Particle {
        position: [0.0, 1.0, 2.0],
        velocity: [0.5, 0.25, -1.0],
        id: 42,
    })
    .unwrap();
    let v = Value::new([0.0f64; 3]).unwrap();
    multiproc::spawn(step, (p.clone(), v.clone()))
        .unwrap()
        .join_timeout(T)
        .unwrap();
    assert_eq!(p.load().position, [0.5, 1.25, 1.0]);
    assert_eq!(p.load().id, 42);
    assert_eq!(v.load(), [0.5, 1.25, 1.0]);
}

const BIG: usize = 100_000_000;
const CHUNK: usize = 1 << 20;

/// Writes `a[i] = i` for its half, a chunk at a time under the lock.
fn write_half((a, half): (Array<f64>, usize)) {
    let (start, end) = (half * BIG / 2, (half + 1) * BIG / 2);
    let mut buf = Vec::with_capacity(CHUNK);
    let mut at = start;
    while at < end {
        let n = CHUNK.min(end - at);
        buf.clear();
        buf.extend((at..at + n).map(|i| i as f64));
        a.write(at, &buf).unwrap();
        at += n;
    }
}

fn array_of_100m_f64_written_in_halves() {
    let a = Array::<f64>::new(BIG).unwrap();
    let halves: Vec<_> = (0..2)
        .map(|h| multiproc::spawn(write_half, (a.clone(), h)).unwrap())
        .collect();
    for mut h in halves {
        h.join_timeout(T).unwrap();
    }
    let mut buf = vec![0.0; CHUNK];
    let mut at = 0;
    while at < BIG {
        let n = CHUNK.min(BIG - at);
        a.read(at, &mut buf[..n]).unwrap();
        for (k, x) in buf[..n].iter().enumerate() {
            assert_eq!(*x, (at + k) as f64, "element {}", at + k);
        }
        at += n;
    }
}

fn give_back(shm: SharedMemory) -> SharedMemory {
    shm
}

fn write_greeting(shm: SharedMemory) {
    shm.write(0, b"hello").unwrap();
}

/// A `/dev/shm` of 1 MiB (a container's is 64 MiB by default): a named segment that does
/// not fit is refused when it is created, with the room there is, instead of handing out
/// memory whose first touch past the room is a `SIGBUS`; one that fits has every byte.
/// Nothing is left there. The helper runs in a mount namespace of its own, with a tmpfs
/// of its own on `/dev/shm` (both gone with it).
fn a_named_segment_larger_than_dev_shm_is_an_error() {
    let mut h = Helper::start("small_dev_shm");
    let big = h.expect("big ", T);
    assert!(
        big.starts_with("refused StorageFull")
            && big.contains("no room for 4194304 bytes in /dev/shm")
            && big.contains("of its 1048576 are free"),
        "{big}"
    );
    assert_eq!(h.expect("first ", T), "written");
    let second = h.expect("second ", T);
    assert!(second.starts_with("refused StorageFull"), "{second}");
    assert_eq!(h.expect("left ", T), "mptest-first");
    assert_eq!(h.expect("after ", T), "");
    assert!(h.wait(T).success());
}

/// A named segment takes its memory when it is created (1 GiB: about 0.4 s here), and
/// is tracked before: a creator SIGKILLed meanwhile, its segment still empty, leaves no
/// name (and so no memory) behind.
fn a_creator_killed_while_taking_the_memory_leaves_nothing() {
    let free = rustix::fs::statvfs("/dev/shm").unwrap();
    assert!(
        free.f_bavail * free.f_frsize >= RESERVED_BY_THE_CREATOR * 2,
        "this test needs {} bytes free in /dev/shm",
        RESERVED_BY_THE_CREATOR * 2
    );
    let name = unique("reserving");
    let exe = std::env::current_exe().unwrap();
    let mut h = Helper::start_with("reserving_creator", exe, &[("MPTEST_SHM_NAME", &name)]);
    assert_eq!(h.expect("creating", T), "");
    let path = std::path::Path::new("/dev/shm").join(&name);
    // Killed once its memory is being taken: the segment has blocks, and no size yet.
    let until = Instant::now() + T;
    let taking = loop {
        let meta = std::fs::metadata(&path);
        if meta.is_ok_and(|m| std::os::unix::fs::MetadataExt::blocks(&m) > 0)
            || Instant::now() > until
        {
            break std::fs::metadata(&path).map(|m| m.len());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let tree = h.sigkill();
    let gone = common::eventually(CLEANUP, || !path.exists());
    for p in tree {
        common::kill_and_reap(p);
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        taking.ok(),
        Some(0),
        "not killed while the memory was being taken"
    );
    assert!(gone, "the killed creator's segment is still in /dev/shm");
}

/// What the creator of `a_creator_killed_while_taking_the_memory_leaves_nothing` makes.
const RESERVED_BY_THE_CREATOR: u64 = 1 << 30;

fn helper_reserving_creator() {
    let name = std::env::var("MPTEST_SHM_NAME").unwrap();
    println!("creating");
    let shm = SharedMemory::create(&name, RESERVED_BY_THE_CREATOR as usize).unwrap();
    println!("created");
    std::thread::sleep(Duration::from_secs(3600));
    drop(shm);
}

/// Makes this process's `/dev/shm` a tmpfs of `size` bytes of its own, in a mount
/// namespace of its own (as root, or as any user where user namespaces are allowed).
#[allow(unsafe_code)]
fn private_dev_shm(size: usize) {
    let fail = |what: &str| -> ! {
        panic!(
            "{what}: {} (this test needs root with CAP_SYS_ADMIN, or unprivileged user \
             namespaces in a process of one thread)",
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: system calls that change only this process's namespaces and mounts, with
    // valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            let (uid, gid) = (libc::getuid(), libc::getgid());
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                fail("unshare");
            }
            std::fs::write("/proc/self/setgroups", "deny").unwrap();
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).unwrap();
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).unwrap();
        }
        let none = std::ptr::null();
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(c"none".as_ptr(), c"/".as_ptr(), none, flags, none.cast()) != 0 {
            fail("making mounts private");
        }
        let options = std::ffi::CString::new(format!("size={size}")).unwrap();
        let (tmpfs, at) = (c"tmpfs".as_ptr(), c"/dev/shm".as_ptr());
        if libc::mount(tmpfs, at, tmpfs, 0, options.as_ptr().cast()) != 0 {
            fail("mounting a tmpfs on /dev/shm");
        }
    }
}

fn helper_small_dev_shm() {
    private_dev_shm(1 << 20);
    let outcome = |r: Result<SharedMemory, ShmError>| match r {
        Ok(_) => "created".to_string(),
        Err(ShmError::Io(e)) => format!("refused {:?} {e}", e.kind()),
        Err(e) => format!("refused otherwise: {e}"),
    };
    println!(
        "big {}",
        outcome(SharedMemory::create("mptest-big", 4 << 20))
    );
    let first = SharedMemory::create("mptest-first", 600 << 10).unwrap();
    first.write(0, &vec![7; first.len()]).unwrap();
    println!("first written");
    println!(
        "second {}",
        outcome(SharedMemory::create("mptest-second", 600 << 10))
    );
    let names = |()| {
        let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names.join(",")
    };
    println!("left {}", names(()));
    drop(first);
    println!("after {}", names(()));
}

fn open_and_write(name: String) {
    let shm = SharedMemory::open(&name).unwrap();
    assert!(!shm.is_creator());
    shm.write(10, b"by name").unwrap();
}

/// `read` and `write` copy every range exactly, whatever its alignment and length; and
/// a read racing writes from another thread (no lock) sees each 8-byte-aligned word of
/// the segment as one write left it, never half of one and half of another.
fn shared_memory_copies_any_range_and_keeps_aligned_words_whole() {
    let shm = SharedMemory::new(64).unwrap();
    let mut model = [0u8; 64];
    for offset in 0..24 {
        for len in 0..=40 {
            let data: Vec<u8> = (0..len)
                .map(|i| (offset * 41 + len * 7 + i) as u8)
                .collect();
            shm.write(offset, &data).unwrap();
            model[offset..offset + len].copy_from_slice(&data);
            let mut back = vec![0u8; len];
            shm.read(offset, &mut back).unwrap();
            assert_eq!(back, data, "offset {offset}, {len} bytes");
            let mut all = [0u8; 64];
            shm.read(0, &mut all).unwrap();
            assert_eq!(all, model, "after a write at {offset} of {len} bytes");
        }
    }
    assert!(shm.write(60, &[0; 5]).is_err());

    let shm = SharedMemory::new(256).unwrap();
    // From offset 1: the rest of the first word, then whole words.
    race_writes(&shm, 1, 250, |seen| {
        for word in seen[8..248].chunks(8) {
            assert!(
                word.iter().all(|&b| b == word[0]),
                "a torn word {word:02x?} in {seen:02x?}"
            );
        }
    });
    // A range within one word (bytes 1 to 7 of the first) is written whole too: every
    // access is to a whole word, so a read of the word never sees half of a write.
    race_writes(&shm, 1, 7, |seen| {
        assert!(
            seen[1..8].iter().all(|&b| b == seen[1]),
            "a torn write {:02x?}",
            &seen[..8]
        );
    });
}

/// Writes `len` bytes at `at` of `shm` over and over from another thread, all of one
/// value then all of another, while this one reads the first 256 bytes for 300 ms from
/// the writer's first write and hands each read to `check`.
fn race_writes(shm: &SharedMemory, at: usize, len: usize, check: impl Fn(&[u8; 256])) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    /// Stops the writer however this thread leaves (a failed check included).
    struct Stop(std::sync::Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Stop(std::sync::Arc::new(AtomicBool::new(false)));
    let written = std::sync::Arc::new(AtomicU64::new(0));
    let writer = std::thread::spawn({
        let (shm, stop, written) = (
            shm.clone(),
            std::sync::Arc::clone(&stop.0),
            std::sync::Arc::clone(&written),
        );
        move || {
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let byte = if writes.is_multiple_of(2) { 0x11 } else { 0x22 };
                shm.write(at, &vec![byte; len]).unwrap();
                writes += 1;
                written.store(writes, Ordering::Relaxed);
            }
            writes
        }
    });
    assert!(
        common::eventually(T, || written.load(Ordering::Relaxed) > 0),
        "the writer never wrote"
    );
    let end = std::time::Instant::now() + Duration::from_millis(300);
    let mut reads = 0u64;
    while std::time::Instant::now() < end {
        let mut seen = [0u8; 256];
        shm.read(0, &mut seen).unwrap();
        check(&seen);
        reads += 1;
    }
    drop(stop);
    let writes = writer.join().unwrap();
    assert!(reads > 0 && writes > 0, "{reads} reads, {writes} writes");
}

fn shared_memory_anonymous_and_named() {
    let before = common::dev_shm();
    let anon = SharedMemory::new(4096).unwrap();
    assert_eq!(anon.name(), None);
    multiproc::spawn(write_greeting, anon.clone())
        .unwrap()
        .join_timeout(T)
        .unwrap();
    let mut buf = [0u8; 5];
    anon.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // Tests beside this one make named segments meanwhile (named `mptest-...`): any
    // other new entry would be the anonymous segment's.
    let appeared: Vec<String> = common::dev_shm()
        .difference(&before)
        .filter(|n| !n.starts_with("mptest-"))
        .cloned()
        .collect();
    assert!(
        appeared.is_empty(),
        "an anonymous segment appeared in /dev/shm: {appeared:?}"
    );

    let name = unique("shm");
    let named = SharedMemory::create(&name, 1 << 16).unwrap();
    assert!(named.is_creator());
    assert!(common::shm_exists(&name));
    // Passed as a handle, and opened by name.
    multiproc::spawn(write_greeting, named.clone())
        .unwrap()
        .join_timeout(T)
        .unwrap();
    multiproc::spawn(open_and_write, name.clone())
        .unwrap()
        .join_timeout(T)
        .unwrap();
    let mut buf = [0u8; 17];
    named.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello\0\0\0\0\0by name");
    assert_eq!(
        SharedMemory::open_sized(&name, 1 << 16).unwrap().len(),
        1 << 16
    );
    assert!(matches!(
        SharedMemory::open_sized(&name, 100),
        Err(ShmError::Mismatch { .. })
    ));
    assert!(matches!(
        SharedMemory::create(&name, 10),
        Err(ShmError::AlreadyExists(_))
    ));
    let clone = named.clone();
    // A handle that comes back from a child, and one opened by name here, are the
    // creator's too: the name stays while any of them lives.
    let back = multiproc::spawn(give_back, named.clone())
        .unwrap()
        .join_timeout(T)
        .unwrap();
    let opened = SharedMemory::open(&name).unwrap();
    assert!(back.is_creator() && opened.is_creator());
    drop(named);
    assert!(common::shm_exists(&name), "unlinked while a handle is left");
    drop(clone);
    assert!(
        common::shm_exists(&name),
        "unlinked while a handle that came back is left"
    );
    drop(back);
    assert!(
        common::shm_exists(&name),
        "unlinked while a handle opened by name is left"
    );
    drop(opened);
    assert!(
        !common::shm_exists(&name),
        "the creator's drop did not unlink"
    );
    assert!(matches!(
        SharedMemory::open(&name),
        Err(ShmError::NotFound(_))
    ));
}

/// A named `Value` or `Array` is no raw segment: `SharedMemory::open` refuses it (bytes
/// written through it would change a `&mut T` a guard has handed out), saying what to
/// open it with; a raw segment still opens.
fn a_named_value_is_not_opened_as_raw_bytes() {
    let name = unique("value-raw");
    let v = Value::create_named(&name, 7u64).unwrap();
    let guard = v.lock().unwrap();
    match SharedMemory::open(&name) {
        Err(ShmError::Mismatch { why, .. }) => assert!(why.contains("Value::open_named"), "{why}"),
        other => panic!(
            "a Value's segment opened as raw bytes: {:?}",
            other.map(|s| s.len())
        ),
    }
    assert_eq!(*guard, 7);
    drop(guard);
    let name = unique("array-raw");
    let a = Array::<u32>::create_named(&name, 4).unwrap();
    assert!(matches!(
        SharedMemory::open(&name),
        Err(ShmError::Mismatch { .. })
    ));
    drop((v, a));
    let name = unique("raw");
    let raw = SharedMemory::create(&name, 64).unwrap();
    raw.write(0, b"MPOBJ00").unwrap();
    assert_eq!(SharedMemory::open(&name).unwrap().len(), 64);
}

/// A named segment opened between its creation and its sizing (its creator's two
/// steps) is waited for: it opened as empty, and failed. One that stays empty is
/// refused after a second.
fn a_segment_opened_as_its_creator_sizes_it() {
    let name = unique("sizing");
    let path = std::path::Path::new("/dev/shm").join(&name);
    let file = std::fs::File::create(&path).unwrap();
    // The opener, on a thread of its own, finds the segment empty; it is sized once
    // the opener is seen asleep (waiting for the size) or has returned.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let opener = {
        let name = name.clone();
        std::thread::spawn(move || {
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            SharedMemory::open(&name).map(|shm| shm.len())
        })
    };
    let tid = tid_rx.recv_timeout(T).unwrap();
    let asleep = || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .ok()
            .and_then(|stat| Some(stat[stat.rfind(')')? + 1..].trim_start().starts_with('S')))
            .unwrap_or(false)
    };
    assert!(common::eventually(T, || asleep() || opener.is_finished()));
    file.set_len(8192).unwrap();
    let opened = opener.join().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(opened.unwrap(), 8192);

    let name = unique("empty");
    let path = std::path::Path::new("/dev/shm").join(&name);
    std::fs::File::create(&path).unwrap();
    let started = std::time::Instant::now();
    let opened = SharedMemory::open(&name);
    let took = started.elapsed();
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(&opened, Err(ShmError::Mismatch { why, .. }) if why.contains("empty")),
        "{opened:?}"
    );
    assert!(took < T, "an empty segment's open took {took:?}");
}

/// Holds a segment until killed.
fn hold_segment(shm: SharedMemory) {
    shm.write(0, &[1]).unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

/// Helper mode: creates named segments, and anonymous ones that a child of its own holds
/// too, prints the names, and waits to be killed with that child.
fn helper_create_named_then_wait() {
    let shm_name = unique("killed-shm");
    let value_name = unique("killed-value");
    let shm = SharedMemory::create(&shm_name, 8192).unwrap();
    let value = Value::create_named(&value_name, 5u64).unwrap();
    let anonymous = SharedMemory::new(1 << 20).unwrap();
    let child = multiproc::spawn(hold_segment, anonymous.clone()).unwrap();
    println!("names {shm_name} {value_name}");
    std::thread::sleep(Duration::from_secs(3600));
    drop((shm, value, anonymous, child));
}

fn named_segments_of_a_killed_creator_are_removed() {
    let h = Helper::start("create_named_then_wait");
    let names = h.expect("names ", T);
    let (shm_name, value_name) = names.split_once(' ').unwrap();
    assert!(common::shm_exists(shm_name) && common::shm_exists(value_name));
    // Another process maps one before the creator dies: it keeps working afterwards.
    let value = Value::<u64>::open_named(value_name).unwrap();
    assert_eq!(value.load(), 5);
    // Only the creator is killed: its fork server (which nobody kills) cleans up. Its
    // other children become this process's (a subreaper), to be stopped afterwards.
    let mut h = h;
    let tree = h.sigkill();
    let gone = common::eventually(T, || {
        !common::shm_exists(shm_name) && !common::shm_exists(value_name)
    });
    for p in tree {
        common::kill_and_reap(p);
    }
    assert!(gone, "the killed creator's segments are still in /dev/shm");
    value.store(6);
    assert_eq!(value.load(), 6);
}

/// How long a dead creator's segments may take to be removed.
const CLEANUP: Duration = Duration::from_secs(10);

/// Helper mode: says `ready`, then takes commands on stdin: `create` makes a named
/// segment (kept) and prints `created NAME`; `exit` returns from `main` normally with
/// the segments still alive (their handles forgotten), for the exit work to remove.
fn helper_tracked_segments() {
    let mut kept = Vec::new();
    println!("ready");
    for line in std::io::stdin().lines() {
        match line.unwrap().as_str() {
            "create" => {
                let name = unique("tracked");
                kept.push(SharedMemory::create(&name, 4096).unwrap());
                println!("created {name}");
            }
            "exit" => {
                std::mem::forget(kept);
                return;
            }
            other => panic!("unknown command {other}"),
        }
    }
}

/// A tracked-segments helper that has created `n` named segments, and their names.
fn creator_of(n: usize) -> (Helper, Vec<String>) {
    let mut h = Helper::start("tracked_segments");
    h.expect("ready", T);
    let names = (0..n)
        .map(|_| {
            h.send("create");
            h.expect("created ", T)
        })
        .collect();
    (h, names)
}

/// The segment trackers (running) below process `root`.
fn trackers_of(root: u32) -> Vec<u32> {
    let below = common::descendants_of(root);
    common::named("mp-shmtracker")
        .into_iter()
        .filter(|p| below.contains(p))
        .collect()
}

/// The one tracker below `root`, once it has named itself (it is forked before the
/// creation returns, and names itself a moment later); `None` if none shows up.
fn tracker_of(root: u32) -> Option<u32> {
    let mut found = Vec::new();
    common::eventually(T, || {
        found = trackers_of(root);
        !found.is_empty()
    });
    assert!(found.len() <= 1, "more than one tracker: {found:?}");
    found.first().copied()
}

/// Whether process `pid` is a segment tracker, running or a zombie.
fn is_tracker(pid: u32) -> bool {
    common::processes()
        .iter()
        .any(|(p, _, _, comm)| *p == pid && comm == "mp-shmtracker")
}

fn sigkill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

fn all_gone(names: &[String]) -> bool {
    common::eventually(CLEANUP, || names.iter().all(|n| !common::shm_exists(n)))
}

/// Kills the creator (with `kill`, given its pid), then checks that its segments are
/// removed within [`CLEANUP`] and that whatever it started ends on its own: this
/// process, a subreaper, reaps it; what does not end is killed, and fails the test.
fn killed_creator_cleans_up(mut h: Helper, names: &[String], kill: impl FnOnce(u32)) {
    let creator = h.child.id();
    let tree = common::descendants_of(creator);
    kill(creator);
    let _ = h.child.wait();
    let gone = all_gone(names);
    let left = common::reap_all(&tree, T);
    assert!(gone, "segments left in /dev/shm: {names:?}");
    assert!(left.is_empty(), "left running: {left:?}");
}

/// `kill -9 -PGID`.
fn kill_group(leader: u32) {
    let group = rustix::process::Pid::from_raw(leader as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::KILL).unwrap();
}

/// `kill -9 SERVER CREATOR`: the fork server first, so that it cannot clean up after a
/// creator that outlived it by an instant (it used to be the one that unlinked).
fn creator_and_its_fork_server_killed_together() {
    let (h, names) = creator_of(2);
    let server = common::fork_server_of(h.child.id()).expect("the creator's fork server");
    killed_creator_cleans_up(h, &names, |creator| {
        sigkill(server);
        sigkill(creator);
    });
}

/// `kill -9 -PGID` of the creator's process group: creator, fork server, spare and
/// daemon children at once. The tracker, in a session of its own, is not hit.
fn creator_process_group_killed() {
    let (h, names) = creator_of(3);
    // Once the tracker shows up, it is among what must end on its own.
    let _ = tracker_of(h.child.id());
    killed_creator_cleans_up(h, &names, kill_group);
}

/// A tracker killed while its creator lives is replaced when the creator next creates
/// a segment, and the new one learns every segment: both are removed when the creator
/// is killed later.
fn segment_tracker_killed_is_replaced() {
    let (mut h, mut names) = creator_of(1);
    let creator = h.child.id();
    let first = tracker_of(creator).expect("a tracker for the creator");
    sigkill(first);
    // Its parent, the fork server, reaps it: not even a zombie is left.
    assert!(
        common::eventually(T, || !is_tracker(first)),
        "the killed tracker was not reaped"
    );
    assert!(
        common::shm_exists(&names[0]),
        "a dead tracker removed a live segment"
    );
    h.send("create");
    names.push(h.expect("created ", T));
    let second = tracker_of(creator).expect("the tracker was not replaced");
    assert_ne!(second, first);
    killed_creator_cleans_up(h, &names, kill_group);
}

/// Creates a named segment and returns with it alive.
fn create_and_forget(name: String) {
    std::mem::forget(SharedMemory::create(&name, 4096).unwrap());
}

/// A creator that returns from `main` with segments still alive: its exit work has the
/// tracker remove them and waits for it, so neither a tracker nor a zombie is left. The
/// same for a child whose function returns (the run's final sweep finds any process
/// it left).
fn normal_exit_leaves_no_segment_tracker() {
    let name = unique("child-forgot");
    multiproc::spawn(create_and_forget, name.clone())
        .unwrap()
        .join_timeout(T)
        .unwrap();
    assert!(!common::shm_exists(&name), "a child's exit left {name}");

    let (mut h, names) = creator_of(2);
    let creator = h.child.id();
    let tracker = tracker_of(creator).expect("a tracker for the creator");
    h.send("exit");
    let status = h.wait(T);
    assert!(status.success(), "{status:?}: {}", h.stderr_now());
    // At once: the exit waited for the tracker, and the fork server reaped it.
    assert!(
        !is_tracker(tracker),
        "the tracker outlived its creator (running, or a zombie nobody reaped)"
    );
    let kept: Vec<_> = names.iter().filter(|n| common::shm_exists(n)).collect();
    assert!(
        kept.is_empty(),
        "left in /dev/shm after a normal exit: {kept:?}"
    );
}

fn open_and_exit(name: String) -> u64 {
    Value::<u64>::open_named(&name).unwrap().load()
}

fn opener_exiting_keeps_the_segment() {
    let name = unique("kept");
    let v = Value::create_named(&name, 9u64).unwrap();
    for _ in 0..3 {
        let mut c = multiproc::spawn(open_and_exit, name.clone()).unwrap();
        assert_eq!(c.join_timeout(T).unwrap(), 9);
    }
    assert!(
        common::shm_exists(&name),
        "an opener's exit removed the segment"
    );
    assert_eq!(Value::<u64>::open_named(&name).unwrap().load(), 9);
    drop(v);
    assert!(!common::shm_exists(&name));
}

/// Creates the segment `name`, then drops it with no descriptor allowed (the limit set
/// to 0: the segment's own, closed by the drop, does not free one); whether opening
/// was indeed refused, and whether the name was still there right after the drop
/// (looked at with `stat`, which takes no descriptor).
fn create_and_drop_out_of_descriptors(name: String) -> (bool, bool) {
    let shm = SharedMemory::create(&name, 4096).unwrap();
    let none = common::SoftLimit::set(libc::RLIMIT_NOFILE, 0);
    let refused = std::fs::File::open("/dev/null").is_err();
    drop(shm);
    let left = std::fs::symlink_metadata(format!("/dev/shm/{name}")).is_ok();
    drop(none);
    (refused, left)
}

/// A creator with no descriptor free removes its segment as it drops it: the check that
/// the name is still its file opened the segment, and with the open failing it was
/// left in `/dev/shm` for good (its tracker told to forget it).
fn a_creator_out_of_descriptors_removes_its_segment() {
    let name = unique("no-fds");
    let mut child = multiproc::spawn(create_and_drop_out_of_descriptors, name.clone()).unwrap();
    let (used_up, left_at_drop) = child.join_timeout(T).unwrap();
    let left = common::shm_exists(&name);
    if left {
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
    }
    assert!(
        used_up,
        "the child could still open descriptors: proves nothing"
    );
    assert!(!left_at_drop, "the segment outlived its last handle's drop");
    assert!(!left, "the segment was left behind");
}

/// Forks a child that takes `lock` and sleeps, kills it and leaves it unreaped (a
/// zombie: this process, its parent, has not joined it), then takes the lock with no
/// descriptor allowed: whether opening was indeed refused, and what the take said.
#[allow(unsafe_code)] // `spawn_fork` is unsafe by contract, upheld here; `kill` is a plain call.
fn lock_after_an_unreaped_holder_without_descriptors(lock: Lock) -> (bool, String) {
    let held = Event::new().unwrap();
    let (theirs, said) = (lock.clone(), held.clone());
    // SAFETY: this process runs no other thread of its own that could hold a lock at
    // the fork; the child only locks, says so and sleeps.
    let mut holder = unsafe {
        multiproc::Builder::new().spawn_fork(move || {
            let _held = theirs.lock();
            said.set();
            std::thread::sleep(Duration::from_secs(60));
        })
    }
    .unwrap();
    assert!(held.wait_timeout(T));
    let pid = holder.pid();
    // SAFETY: a plain call, on this process's own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let zombie = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
    };
    assert!(common::eventually(T, zombie), "the holder is not a zombie");
    let none = common::SoftLimit::set(libc::RLIMIT_NOFILE, 0);
    let refused = std::fs::File::open("/dev/null").is_err();
    let took = match lock.lock_timeout(Duration::from_secs(2)) {
        Ok(_) => "taken cleanly",
        Err(TryLockError::OwnerDied(_)) => "owner died",
        Err(TryLockError::WouldBlock) => "timed out",
    };
    drop(none);
    let _ = holder.join_timeout(T);
    (refused, took.to_string())
}

/// A waiter out of descriptors (under `Limits::open_files`, say) whose lock's holder was
/// killed and is not reaped yet (its parent, the waiter, has not joined it) finds the
/// owner dead. It could not open the holder's `/proc` state, and took the holder for
/// alive: an untimed `lock` waited for ever, the join that would reap it never coming.
fn a_waiter_out_of_descriptors_finds_an_unreaped_holder_dead() {
    let lock = Lock::new().unwrap();
    let mut child =
        multiproc::spawn(lock_after_an_unreaped_holder_without_descriptors, lock).unwrap();
    let (refused, took) = child.join_timeout(T).unwrap();
    assert!(
        refused,
        "the child could still open descriptors: proves nothing"
    );
    assert_eq!(took, "owner died");
}

/// Files removed when dropped, the test passing or not.
struct RemovedAtEnd(Vec<std::path::PathBuf>);

impl Drop for RemovedAtEnd {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A symbolic link at a segment's name (`/dev/shm` is writable by everyone) is not
/// followed: opened by that name, the file it points to was mapped and written.
fn a_link_at_a_segments_name_is_not_followed() {
    let name = unique("link");
    let target = std::env::temp_dir().join(format!("{name}.target"));
    let link = std::path::Path::new("/dev/shm").join(&name);
    let _removed = RemovedAtEnd(vec![link.clone(), target.clone()]);
    std::fs::write(&target, [7u8; 4096]).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let opened = SharedMemory::open(&name);
    if let Ok(shm) = &opened {
        let _ = shm.write(0, &[0]);
    }
    let value = Value::<u64>::open_named(&name);
    assert!(
        matches!(&opened, Err(ShmError::Io(e)) if e.to_string().contains("symbolic link")),
        "{opened:?}"
    );
    assert!(value.is_err(), "{value:?}");
    assert_eq!(std::fs::read(&target).unwrap(), [7u8; 4096]);
}

fn named_value_layout_is_checked() {
    let name = unique("layout");
    let _v = Value::create_named(&name, 1u64).unwrap();
    let mismatch = |r: Result<(), ShmError>, what: &str| match r {
        Err(ShmError::Mismatch { why, .. }) => assert!(why.contains(what), "{why}"),
        other => panic!("expected a mismatch about {what}: {other:?}"),
    };
    mismatch(Value::<u32>::open_named(&name).map(drop), "not `u32`");
    mismatch(Value::<i64>::open_named(&name).map(drop), "not `i64`");
    mismatch(Array::<u64>::open_named(&name).map(drop), "expected Array");
    assert_eq!(Value::<u64>::open_named(&name).unwrap().load(), 1);

    // A segment multiproc did not make.
    let raw_name = unique("raw");
    let raw = SharedMemory::create(&raw_name, 4096).unwrap();
    raw.write(0, &[0xAB; 4096]).unwrap();
    mismatch(
        Value::<u64>::open_named(&raw_name).map(drop),
        "not a multiproc object",
    );
    let tiny_name = unique("tiny");
    let _tiny = SharedMemory::create(&tiny_name, 16).unwrap();
    mismatch(Value::<u64>::open_named(&tiny_name).map(drop), "too small");

    // A segment cut short by someone else: its header no longer matches its size.
    let arr_name = unique("cut");
    let arr = Array::<u64>::create_named(&arr_name, 10_000).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(std::path::Path::new("/dev/shm").join(&arr_name))
        .unwrap();
    file.set_len(8192).unwrap();
    mismatch(
        Array::<u64>::open_named(&arr_name).map(drop),
        "header describes",
    );
    drop(arr);

    // A header rewritten by someone else to describe data over the lock's words (of the
    // right total size), or a Value of two elements: refused, not mapped.
    use std::os::unix::fs::FileExt;
    let at_dev_shm = |name: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(std::path::Path::new("/dev/shm").join(name))
            .unwrap()
    };
    let word = |n: u64| n.to_le_bytes();
    let over_name = unique("overlap");
    let over = Value::create_named(&over_name, 7u64).unwrap();
    let file = at_dev_shm(&over_name);
    let size = file.metadata().unwrap().len();
    // `ObjectHeader`: the length at byte 40, the data's offset at 48; words from 128.
    file.write_all_at(&word((size - 128) / 8), 40).unwrap();
    file.write_all_at(&word(128), 48).unwrap();
    mismatch(
        Value::<u64>::open_named(&over_name).map(drop),
        "corrupt header",
    );
    drop(over);
    // Made by a build of another object layout (1: before the lock's words grew the
    // word that says a sleeper wants waking; opened, each read the other's words
    // wrong). The version is the `u32` at byte 12.
    let old_name = unique("old_layout");
    let old = Value::create_named(&old_name, 7u64).unwrap();
    at_dev_shm(&old_name)
        .write_all_at(&1u32.to_le_bytes(), 12)
        .unwrap();
    mismatch(
        Value::<u64>::open_named(&old_name).map(drop),
        "object layout 1",
    );
    drop(old);
    let two_name = unique("two");
    let two = Value::create_named(&two_name, 7u64).unwrap();
    let file = at_dev_shm(&two_name);
    file.set_len(file.metadata().unwrap().len() + 8).unwrap();
    file.write_all_at(&word(2), 40).unwrap();
    mismatch(
        Value::<u64>::open_named(&two_name).map(drop),
        "holding 2 elements",
    );
    drop(two);

    assert!(matches!(
        Value::<u64>::open_named(&unique("missing")),
        Err(ShmError::NotFound(_))
    ));
    for bad in ["", "/", "a/b", "..", &"x".repeat(300)] {
        assert!(
            matches!(
                SharedMemory::create(bad, 10),
                Err(ShmError::InvalidName { .. })
            ),
            "{bad:?} accepted"
        );
    }
}

fn bad_arguments_are_errors() {
    assert!(matches!(Barrier::new(0), Err(ShmError::InvalidArgument(_))));
    assert!(matches!(
        Barrier::new(Barrier::MAX_PARTIES + 1),
        Err(ShmError::InvalidArgument(_))
    ));
    assert!(matches!(
        Semaphore::new(u32::MAX),
        Err(ShmError::InvalidArgument(_))
    ));
    assert!(matches!(
        Array::<u64>::new(usize::MAX / 4),
        Err(ShmError::InvalidArgument(_))
    ));
    assert!(matches!(
        SharedMemory::new(0),
        Err(ShmError::InvalidArgument(_))
    ));
    let sem = BoundedSemaphore::new(1).unwrap();
    assert_eq!(sem.release(), Err(multiproc::OverRelease { bound: 1 }));
    let a = Array::<u8>::new(10).unwrap();
    assert!(a.write(8, &[1, 2, 3]).is_err());
    assert!(a.write(usize::MAX, &[1]).is_err());
    assert!(a.read(11, &mut []).is_err());
    assert_eq!(a.get(10), None);
    assert!(a.set(10, 1).is_err());
    assert_eq!(a.to_vec(), [0; 10], "a failed write changed something");
    let shm = SharedMemory::new(100).unwrap();
    assert!(shm.write(99, &[1, 2]).is_err());
    assert!(shm.read(usize::MAX, &mut [0]).is_err());
    let empty = Array::<u64>::new(0).unwrap();
    assert!(empty.is_empty());
    assert!(empty.lock().unwrap().is_empty());
}

/// Uses every object in a child: locks, waits, reads and writes.
fn use_everything(
    (lock, rlock, sem, event, cond, barrier, value, array, shm): (
        Lock,
        RLock,
        Semaphore,
        Event,
        Condition,
        Barrier,
        Value<u64>,
        Array<u8>,
        SharedMemory,
    ),
) {
    drop(lock.lock().unwrap());
    drop(rlock.lock().unwrap());
    drop(sem.acquire());
    event.set();
    cond.notify_all();
    barrier.wait_timeout(T).unwrap();
    value.store(value.load() + 1);
    array.set(0, 1).unwrap();
    shm.write(0, &[1]).unwrap();
}

fn helper_leaks() {
    let run = |rounds: usize| {
        for _ in 0..rounds {
            let name = unique("leak");
            let objects = (
                Lock::new().unwrap(),
                RLock::new().unwrap(),
                Semaphore::new(1).unwrap(),
                Event::new().unwrap(),
                Condition::new().unwrap(),
                Barrier::new(2).unwrap(),
                Value::new(0u64).unwrap(),
                Array::<u8>::new(100).unwrap(),
                SharedMemory::create(&name, 4096).unwrap(),
            );
            let barrier = objects.5.clone();
            let child = multiproc::spawn(use_everything, objects.clone()).unwrap();
            barrier.wait_timeout(T).unwrap();
            child.join().unwrap();
            drop(objects);
            assert!(!common::shm_exists(&name));
        }
    };
    run(2);
    let (fds, maps) = (common::fd_count(), common::map_count());
    run(30);
    println!(
        "fds {fds} {} maps {maps} {}",
        common::fd_count(),
        common::map_count()
    );
}

fn no_descriptor_or_mapping_leaks() {
    let mut h = Helper::start_counting_mappings("leaks");
    let line = h.expect("fds ", Duration::from_secs(120));
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts[0], parts[1], "descriptors leaked: {line}");
    assert_eq!(parts[3], parts[4], "mappings leaked: {line}");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// Resets the barrier for ever (until killed): most of its time is spent holding the
/// barrier's state lock.
fn reset_forever(barrier: Barrier) {
    loop {
        barrier.reset();
    }
}

/// A process stopped (`SIGSTOP`) while it holds the barrier's state lock does not hold
/// up a timed wait past its deadline: the wait fails (`Timeout`, or `Broken` when the
/// process broke it by resetting a wait in progress), in time, 100 times over.
fn barrier_party_stopped_holding_its_lock() {
    let barrier = Barrier::new(2).unwrap();
    let mut resetter = multiproc::spawn(reset_forever, barrier.clone()).unwrap();
    let pid = resetter.pid();
    let signal = |sig| {
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(p, sig).unwrap();
    };
    for _ in 0..100 {
        let spin_until = Instant::now() + Duration::from_micros(fastrand::u64(0..1_000));
        while Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        signal(rustix::process::Signal::STOP);
        assert!(common::eventually(T, || common::state_of(pid) == 'T'));
        let t0 = Instant::now();
        let r = barrier.wait_timeout(Duration::from_millis(50));
        let took = t0.elapsed();
        signal(rustix::process::Signal::CONT);
        assert!(common::eventually(T, || common::state_of(pid) != 'T'));
        assert!(
            matches!(r, Err(BarrierError::Timeout | BarrierError::Broken)),
            "{r:?}"
        );
        assert!(took < Duration::from_secs(2), "the wait took {took:?}");
    }
    resetter.kill().unwrap();
    let _ = resetter.join_timeout(T);
}

fn wait_at(barrier: Barrier) -> Result<usize, BarrierError> {
    barrier.wait_timeout(T).map(|r| r.index())
}

/// A party SIGKILLed while it waits at the barrier (asleep there, seen, not slept for):
/// the parties still alive are not left hanging: they pass together or the barrier
/// breaks for both, and after a reset the barrier serves a new round.
fn barrier_party_killed_while_waiting() {
    let barrier = Barrier::new(3).unwrap();
    let mut doomed = multiproc::spawn(wait_at, barrier.clone()).unwrap();
    assert!(common::eventually(T, || common::asleep_on_futex(
        doomed.pid()
    )));
    assert_eq!(barrier.n_waiting(), 1);
    doomed.kill().unwrap();
    assert!(doomed.join_timeout(T).is_err());
    let mut other = multiproc::spawn(wait_at, barrier.clone()).unwrap();
    let mine = barrier.wait_timeout(T).map(|r| r.index());
    let theirs = other.join_timeout(T).unwrap();
    assert!(
        (mine.is_ok() && theirs.is_ok()) || (mine.is_err() && theirs.is_err()),
        "the live parties disagree: {mine:?} {theirs:?}"
    );
    assert_ne!(mine, Err(BarrierError::Timeout), "a live party hung");
    barrier.reset();
    let rounds: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(wait_at, barrier.clone()).unwrap())
        .collect();
    assert!(barrier.wait_timeout(T).is_ok());
    for mut r in rounds {
        assert!(r.join_timeout(T).unwrap().is_ok());
    }
}
