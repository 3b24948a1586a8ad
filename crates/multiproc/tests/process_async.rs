//! Async all the way, between real processes: a `JoinHandle` awaited under tokio and
//! under async-io's executor while another child is killed (no thread per child), a
//! result too large for the socket's buffer, the pidfd as `AsFd`; `put_async` on a full
//! bounded queue woken when a getter frees room; `send_async`; `Event::wait_async` set
//! by another process. Nothing is left behind.

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{Helper, trial};
use multiproc::{Event, ProcessError, Queue, Signal};

const T: Duration = Duration::from_secs(60);

fn main() {
    common::main_checked(
        vec![
            trial(
                "join_handles_awaited_under_tokio",
                join_handles_awaited_under_tokio,
            ),
            trial(
                "join_handles_awaited_under_async_io",
                join_handles_awaited_under_async_io,
            ),
            trial("a_large_result_awaited", a_large_result_awaited),
            trial(
                "an_awaited_handle_sleeps_while_its_child_exits",
                an_awaited_handle_sleeps_while_its_child_exits,
            ),
            trial(
                "an_awaited_crash_waits_asleep_for_its_status",
                an_awaited_crash_waits_asleep_for_its_status,
            ),
            trial("pidfd_as_sentinel", pidfd_as_sentinel),
            trial(
                "a_handle_awaited_with_no_descriptor_left_gets_its_value",
                a_handle_awaited_with_no_descriptor_left_gets_its_value,
            ),
            trial(
                "a_first_await_with_two_descriptors_left_gets_its_value",
                a_first_await_with_two_descriptors_left_gets_its_value,
            ),
            trial(
                "put_async_wakes_when_room_frees",
                put_async_wakes_when_room_frees,
            ),
            trial(
                "event_wait_async_across_processes",
                event_wait_async_across_processes,
            ),
        ],
        |mode| match mode {
            "stopped_relay" => helper_stopped_relay(),
            "no_descriptor_left" => helper_no_descriptor_left(),
            "two_descriptors_left" => helper_two_descriptors_left(),
            _ => panic!("unknown helper mode {mode}"),
        },
        Duration::from_secs(600),
        common::no_new_dev_shm,
    );
}

fn after_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Bounds a future by `T` (async-io's timer, any runtime).
async fn within<F: std::future::Future>(f: F) -> F::Output {
    futures_lite::future::or(f, async {
        async_io::Timer::after(T).await;
        panic!("not done within {T:?}");
    })
    .await
}

/// Awaits `quick` and a child killed meanwhile, on whatever runtime drives it.
async fn quick_and_killed() {
    // Timed from before the spawn: the child's 300 ms may start before `spawn` returns.
    let t0 = Instant::now();
    let quick = multiproc::spawn(after_ms, 300).unwrap();
    let doomed = multiproc::spawn(forever, ()).unwrap();
    let killer = doomed.process();
    let kill = async {
        async_io::Timer::after(Duration::from_millis(100)).await;
        killer.kill().unwrap();
    };
    let ((q, d), ()) = within(futures_lite::future::zip(
        futures_lite::future::zip(quick, doomed),
        kill,
    ))
    .await;
    assert_eq!(q.unwrap(), 300);
    assert!(
        matches!(d, Err(ProcessError::Signaled(s)) if s == Signal::KILL),
        "{d:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(250));
}

/// The threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn join_handles_awaited_under_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(quick_and_killed());
    // Many children awaited at once cost no thread each.
    let before = threads();
    rt.block_on(async {
        let children: Vec<_> = (0..20)
            .map(|i| multiproc::spawn(after_ms, 100 + i * 10).unwrap())
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for c in children {
            set.spawn(c);
        }
        let peak = threads();
        let mut sum = 0;
        while let Some(r) = within(set.join_next()).await {
            sum += r.unwrap().unwrap();
        }
        assert_eq!(sum, (0..20).map(|i| 100 + i * 10).sum::<u64>());
        assert!(peak <= before + 4, "{before} threads, then {peak}");
    });
    // Polled again after its value: `Joined`.
    let mut c = multiproc::spawn(after_ms, 0).unwrap();
    assert_eq!(rt.block_on(within(&mut c)).unwrap(), 0);
    assert!(matches!(rt.block_on(&mut c), Err(ProcessError::Joined)));
}

fn join_handles_awaited_under_async_io() {
    async_io::block_on(quick_and_killed());
    // A panic comes back as data, awaited too.
    let c = multiproc::spawn(|_: ()| -> u64 { panic!("awaited panic") }, ()).unwrap();
    let e = async_io::block_on(within(c)).unwrap_err();
    assert!(e.to_string().contains("awaited panic"), "{e}");
}

fn big(n: usize) -> String {
    "7".repeat(n)
}

fn a_large_result_awaited() {
    // 16 MiB: the child blocks sending it until the parent reads, so the pidfd alone
    // would never say "done".
    let c = multiproc::spawn(big, 16 << 20).unwrap();
    let got = async_io::block_on(within(c)).unwrap();
    assert_eq!(got.len(), 16 << 20);
    assert!(got.bytes().all(|b| b == b'7'));
}

/// Whether `fd` becomes readable within `ms`.
/// Returns 7 once it has started a child of its own (not a daemon) that sleeps `ms`: its
/// exit, after its result is sent, joins that child.
fn returns_then_joins(ms: u64) -> u32 {
    multiproc::Builder::new()
        .daemon(false)
        .spawn(after_ms, ms)
        .unwrap();
    7
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A handle awaited while its child, its result sent, still exits (joining a child of
/// its own for 3 s) sleeps: the result channel, at its end and so readable for good, is
/// watched no more once the outcome is in. It woke the task again and again, spinning.
fn an_awaited_handle_sleeps_while_its_child_exits() {
    let c = multiproc::spawn(returns_then_joins, 3000).unwrap();
    let t0 = Instant::now();
    let cpu0 = thread_cpu();
    assert_eq!(async_io::block_on(within(c)).unwrap(), 7);
    let (cpu, wall) = (thread_cpu() - cpu0, t0.elapsed());
    assert!(
        wall >= Duration::from_secs(2),
        "joined before the exit: {wall:?}"
    );
    assert!(
        cpu < Duration::from_millis(500),
        "the await took {cpu:?} of CPU in {wall:?}"
    );
}

fn set_then_forever(started: Event) {
    started.set();
    forever(());
}

/// A child killed while its fork server is stopped: it has exited (its pidfd says so),
/// and its status, the join's answer, comes only once the server runs again. The
/// awaited handle sleeps meanwhile, on the server's status pipe: other futures on the
/// same thread run (a poll that waited for the status held the thread until the server
/// answered), and the wait takes no CPU (the pidfd, readable for good, is not watched).
/// A thread asking for the status meanwhile waits for it without holding up the
/// handle's other calls (`is_alive`, `terminate`), which waited for that thread.
fn helper_stopped_relay() {
    let started = Event::new().unwrap();
    let child = multiproc::spawn(set_then_forever, started.clone()).unwrap();
    assert!(started.wait_timeout(T), "the child never started");
    let server = common::fork_server_of(std::process::id()).unwrap();
    let resume = common::stopped(server);
    child.process().kill().unwrap();
    assert!(readable(child.as_fd(), 60_000), "the child never exited");
    // A thread asking how it ended waits (a second) for the status; meanwhile the
    // handle's other calls do not wait for that thread.
    std::thread::scope(|s| {
        let asking = s.spawn(|| child.exit_status());
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        assert!(!child.is_alive());
        child.terminate().unwrap();
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "is_alive and terminate took {took:?}"
        );
        assert_eq!(
            asking.join().unwrap(),
            None,
            "a status while the server is stopped"
        );
    });
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let resumer = std::thread::spawn({
        let stopped = stopped.clone();
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            stopped.store(false, std::sync::atomic::Ordering::SeqCst);
            drop(resume);
        }
    });
    let ticks = std::cell::Cell::new(0u32);
    let cpu0 = thread_cpu();
    let (joined, ()) = async_io::block_on(within(futures_lite::future::zip(child, async {
        while stopped.load(std::sync::atomic::Ordering::SeqCst) {
            async_io::Timer::after(Duration::from_millis(50)).await;
            ticks.set(ticks.get() + 1);
        }
    })));
    let cpu = thread_cpu() - cpu0;
    resumer.join().unwrap();
    assert!(
        matches!(joined, Err(ProcessError::Signaled(s)) if s == Signal::KILL),
        "{joined:?}"
    );
    // About 30 ticks of 50 ms in the 1.5 s; none where the handle's poll held the
    // thread until the server answered.
    assert!(
        ticks.get() >= 5,
        "{} ticks while the server was stopped",
        ticks.get()
    );
    assert!(
        cpu < Duration::from_millis(500),
        "the await took {cpu:?} of CPU"
    );
    println!("done true");
}

fn an_awaited_crash_waits_asleep_for_its_status() {
    let mut h = Helper::start("stopped_relay");
    assert_eq!(h.expect("done ", T), "true", "{}", h.stderr_now());
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// In a helper (its descriptor limit lowered): a child awaited once the process has
/// no descriptor left, after the reactor was started, says what it returned.
fn helper_no_descriptor_left() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The reactor runs: a first child awaited.
    assert_eq!(
        rt.block_on(multiproc::spawn(after_ms, 0).unwrap()).unwrap(),
        0
    );
    let child = multiproc::spawn(after_ms, 300).unwrap();
    let held = common::use_up_descriptors();
    let got = rt.block_on(async {
        tokio::time::timeout(T, child)
            .await
            .map_err(|_| "no end within 60 s")
    });
    drop(held);
    println!("awaited {got:?}");
}

/// A handle awaited while its process has no descriptor left gets its child's value, as
/// a blocking join does: the poll could not register a descriptor to watch, and the
/// await ended with `Io(EMFILE)` (the handle consumed, the value lost). It looks again
/// every 10 ms until it can.
fn a_handle_awaited_with_no_descriptor_left_gets_its_value() {
    let mut h = Helper::start("no_descriptor_left");
    assert_eq!(h.expect("awaited ", T), "Ok(Ok(300))", "{}", h.stderr_now());
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// The first `.await` of a handle in a process (async-io's reactor not yet started)
/// with two descriptors free gets its child's value, as one with none free does: the
/// reactor's start takes two and panicked without them, out of the `.await`.
fn a_first_await_with_two_descriptors_left_gets_its_value() {
    let mut h = Helper::start("two_descriptors_left");
    assert_eq!(h.expect("awaited ", T), "Ok(300)", "{}", h.stderr_now());
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

fn helper_two_descriptors_left() {
    // Nothing of async-io has run in this process: the await below starts its reactor.
    let child = multiproc::spawn(after_ms, 300).unwrap();
    let mut held = common::use_up_descriptors();
    held.truncate(held.len().saturating_sub(2));
    let got = futures_lite::future::block_on(child);
    drop(held);
    println!("awaited {got:?}");
}

fn readable(fd: std::os::fd::BorrowedFd<'_>, ms: i32) -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let t = rustix::event::Timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: (ms % 1000) as i64 * 1_000_000,
    };
    poll(&mut fds, Some(&t)).unwrap() == 1
}

fn pidfd_as_sentinel() {
    let mut c = multiproc::spawn(after_ms, 200).unwrap();
    assert!(!readable(c.as_fd(), 0), "readable while the child runs");
    assert!(
        readable(c.as_fd(), 60_000),
        "not readable once the child ended"
    );
    assert_eq!(c.join_timeout(T).unwrap(), 200);
    // A ChildProcess view has it too.
    let d = multiproc::spawn(after_ms, 100).unwrap();
    let view = d.process();
    assert!(!readable(view.as_fd(), 0));
    assert_eq!(d.join().unwrap(), 100);
    assert!(readable(view.as_fd(), 0));
}

/// Takes one item after `ms`, then the rest; returns them.
fn slow_getter((q, ms, n): (Queue<u32>, u64, usize)) -> Vec<u32> {
    std::thread::sleep(Duration::from_millis(ms));
    (0..n).map(|_| q.get_timeout(T).unwrap()).collect()
}

fn put_async_wakes_when_room_frees() {
    let q: Queue<u32> = Queue::bounded(2).unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    let t0 = Instant::now();
    let getter = multiproc::spawn(slow_getter, (q.clone(), 300, 4)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(within(async {
        // The queue is full: this waits until the getter takes one (after 300 ms), on
        // the queue's doorbell, without blocking the runtime's only thread.
        let put = q.put_async(3);
        let ticks = async {
            let mut n = 0;
            while n < 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                n += 1;
            }
            n
        };
        let (put, ticks) = tokio::join!(put, ticks);
        put.unwrap();
        assert_eq!(ticks, 3, "the runtime's thread was blocked");
        q.put_async(4).await.unwrap();
    }));
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(getter.join().unwrap(), [1, 2, 3, 4]);
    // A pipe's sender, the same way; a dropped receiver ends the wait.
    let (tx, rx) = multiproc::pipe::<u64>().unwrap();
    async_io::block_on(within(tx.send_async(5))).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), 5);
    drop(rx);
    assert!(async_io::block_on(within(tx.send_async(6))).is_err());
}

fn set_after((e, ms): (Event, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    e.set();
}

fn event_wait_async_across_processes() {
    let e = Event::new().unwrap();
    let t0 = Instant::now();
    let setter = multiproc::spawn(set_after, (e.clone(), 200)).unwrap();
    async_io::block_on(within(e.wait_async())).unwrap();
    assert!(e.is_set());
    assert!(t0.elapsed() >= Duration::from_millis(150));
    setter.join().unwrap();
    // Set already: at once; under tokio too, with two waiters.
    async_io::block_on(within(e.wait_async())).unwrap();
    e.clear();
    let setter = multiproc::spawn(set_after, (e.clone(), 100)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(within(async {
        let (a, b) = tokio::join!(e.wait_async(), e.wait_async());
        a.unwrap();
        b.unwrap();
    }));
    setter.join().unwrap();
}
