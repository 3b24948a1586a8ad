//! Pipes and queues between real processes: exactly-once delivery, no loss when a
//! producer exits or is killed right after `put`, processes killed at random moments,
//! disconnection, large messages, handles passed around, `wait`, async.
#![allow(unsafe_code)] // `spawn_fork` is unsafe by contract; these tests uphold it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Helper, trial};
use multiproc::{
    JoinableQueue, Queue, Receiver, RecvError, RecvTimeoutError, SendError, Sender, Value,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const T: Duration = Duration::from_secs(60);

fn main() {
    common::main(
        vec![
            trial("four_by_four_exactly_once", four_by_four_exactly_once),
            trial(
                "handles_past_the_users_in_flight_limit_wait",
                handles_past_the_users_in_flight_limit_wait,
            ),
            trial("consumer_killed_mid_stream", consumer_killed_mid_stream),
            trial(
                "a_coding_panic_leaves_no_descriptor_behind",
                a_coding_panic_leaves_no_descriptor_behind,
            ),
            trial(
                "producer_exits_right_after_put",
                producer_exits_right_after_put,
            ),
            trial(
                "producer_killed_right_after_put",
                producer_killed_right_after_put,
            ),
            trial("producers_killed_at_random", producers_killed_at_random),
            trial("consumers_killed_at_random", consumers_killed_at_random),
            trial("getter_killed_while_blocked", getter_killed_while_blocked),
            trial("one_gib_message", one_gib_message),
            trial(
                "unbounded_queue_takes_a_gib_before_any_consumer",
                unbounded_queue_takes_a_gib_before_any_consumer,
            ),
            trial("handles_through_a_queue", handles_through_a_queue),
            trial(
                "twenty_queues_go_to_a_child_in_one_message",
                twenty_queues_go_to_a_child_in_one_message,
            ),
            trial(
                "put_ref_and_send_ref_keep_the_item",
                put_ref_and_send_ref_keep_the_item,
            ),
            trial(
                "disconnected_when_the_sender_is_killed",
                disconnected_when_the_sender_is_killed,
            ),
            trial(
                "each_pipe_finds_its_killed_receiver",
                each_pipe_finds_its_killed_receiver,
            ),
            trial("duplex_ping_pong", duplex_ping_pong),
            trial(
                "a_serialize_that_sends_on_its_own_channel_panics_rather_than_hang",
                a_serialize_that_sends_on_its_own_channel_panics_rather_than_hang,
            ),
            trial(
                "ends_moved_into_a_forked_child_stay_connected",
                ends_moved_into_a_forked_child_stay_connected,
            ),
            trial(
                "wait_for_receivers_and_processes",
                wait_for_receivers_and_processes,
            ),
            trial(
                "joinable_queue_across_processes",
                joinable_queue_across_processes,
            ),
            trial(
                "bounded_queue_blocks_the_producer",
                bounded_queue_blocks_the_producer,
            ),
            trial(
                "a_used_bounded_queue_takes_its_items_before_any_consumer",
                a_used_bounded_queue_takes_its_items_before_any_consumer,
            ),
            trial(
                "mismatched_types_are_decode_errors",
                mismatched_types_are_decode_errors,
            ),
            trial("async_receive_under_tokio", async_receive_under_tokio),
            trial(
                "a_dropped_async_receive_leaves_the_ring_to_other_receivers",
                a_dropped_async_receive_leaves_the_ring_to_other_receivers,
            ),
            trial(
                "a_dropped_async_put_leaves_the_ring_to_other_producers",
                a_dropped_async_put_leaves_the_ring_to_other_producers,
            ),
            trial(
                "an_async_send_does_not_hold_the_executor_while_another_holds_the_lock",
                an_async_send_does_not_hold_the_executor_while_another_holds_the_lock,
            ),
            trial(
                "async_puts_waiting_for_room_together_do_not_spin",
                async_puts_waiting_for_room_together_do_not_spin,
            ),
            trial(
                "stopped_consumer_holds_up_no_timed_get",
                stopped_consumer_holds_up_no_timed_get,
            ),
            trial(
                "stopped_producer_holds_up_no_timed_put",
                stopped_producer_holds_up_no_timed_put,
            ),
            trial(
                "send_to_a_dead_receiver_with_a_full_side_socket",
                send_to_a_dead_receiver_with_a_full_side_socket,
            ),
            trial(
                "a_try_send_to_a_full_pipe_whose_receiver_was_killed_is_disconnected",
                a_try_send_to_a_full_pipe_whose_receiver_was_killed_is_disconnected,
            ),
            trial(
                "a_large_message_waits_for_a_free_descriptor",
                a_large_message_waits_for_a_free_descriptor,
            ),
            trial(
                "a_large_message_waits_for_address_space",
                a_large_message_waits_for_address_space,
            ),
            trial(
                "a_failed_spawn_gives_back_its_receivers_count",
                a_failed_spawn_gives_back_its_receivers_count,
            ),
            trial(
                "a_map_that_fails_half_way_gives_back_its_receivers_count",
                a_map_that_fails_half_way_gives_back_its_receivers_count,
            ),
            trial(
                "a_wait_lets_go_of_a_dropped_handles_channel",
                a_wait_lets_go_of_a_dropped_handles_channel,
            ),
            trial("no_descriptor_leaks", no_descriptor_leaks),
        ],
        helpers,
        Duration::from_secs(900),
    );
}

fn helpers(mode: &str) {
    match mode {
        "leaks" => helper_leaks(),
        other => panic!("unknown helper mode {other}"),
    }
}

/// Joins every handle, within `T` each.
/// Holds a pipe's receiving end and reads nothing, until killed.
fn hold_receiver(rx: Receiver<multiproc::Lock>) {
    let _rx = rx;
    std::thread::sleep(T);
}

/// Messages that carry handles travel on the channel's side socket. A send that waits
/// for room there ends with `Disconnected` once the receivers are gone, instead of
/// waiting for ever (nobody will read the socket again).
fn send_to_a_dead_receiver_with_a_full_side_socket() {
    let (tx, rx) = multiproc::pipe::<multiproc::Lock>().unwrap();
    let mut child = multiproc::spawn(hold_receiver, rx).unwrap();
    let mut sent = 0u32;
    loop {
        match tx.send_timeout(multiproc::Lock::new().unwrap(), Duration::from_millis(50)) {
            Ok(()) => sent += 1,
            Err(multiproc::SendTimeoutError::Timeout(_)) => break,
            Err(e) => panic!("after {sent} sends: {e}"),
        }
        assert!(sent < 100_000, "the side socket never filled");
    }
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = tx.send(multiproc::Lock::new().unwrap());
        done_tx.send(r.map_err(|e| e.to_string())).unwrap();
    });
    assert!(
        done.recv_timeout(Duration::from_millis(200)).is_err(),
        "a send went through a full socket"
    );
    child.kill().unwrap();
    assert!(child.join_timeout(T).is_err());
    let r = done
        .recv_timeout(Duration::from_secs(10))
        .expect("a send to a receiver that died waited for ever");
    assert!(r.is_err(), "{r:?} after {sent} sends");
}

fn hold_numbers(rx: Receiver<u64>) {
    let _rx = rx;
    std::thread::sleep(T);
}

/// A `try_send` to a full pipe whose receiver was SIGKILLed with its process says
/// `Disconnected` (the kernel is asked before a full ring says `Full`): it said `Full`
/// until the next of the sends that ask the kernel every so many.
fn a_try_send_to_a_full_pipe_whose_receiver_was_killed_is_disconnected() {
    let (tx, rx) = multiproc::pipe::<u64>().unwrap();
    fill_then_kill(&tx, multiproc::spawn(hold_numbers, rx).unwrap(), |n| n);
    assert!(
        matches!(
            tx.try_send(0),
            Err(multiproc::TrySendError::Disconnected(0))
        ),
        "a full pipe whose receiver was killed said Full"
    );
    // Nor one that travels beside the ring: over 2 MiB, or carrying a handle (both said
    // `Full`, and an async send was told so again and again, for a thousand sends).
    let (tx, rx) = multiproc::pipe::<(ByteBuf, Option<multiproc::Event>)>().unwrap();
    let child = multiproc::spawn(hold_bufs, rx).unwrap();
    fill_then_kill(&tx, child, |_| (ByteBuf(vec![1; 8]), None));
    let large = (ByteBuf(vec![2; 3 << 20]), None);
    let handle = (ByteBuf(Vec::new()), Some(multiproc::Event::new().unwrap()));
    for (what, msg) in [("of over 2 MiB", large), ("carrying a handle", handle)] {
        assert!(
            matches!(
                tx.try_send(msg),
                Err(multiproc::TrySendError::Disconnected(_))
            ),
            "a message {what} to a full pipe whose receiver was killed: not \
             Disconnected"
        );
    }
}

/// Sends `nth(0)`, `nth(1)`, ... with `try_send` until the pipe is full, then kills the
/// child that holds its receiver and joins it.
fn fill_then_kill<T: Serialize, R>(
    tx: &Sender<T>,
    mut child: multiproc::JoinHandle<R>,
    nth: impl Fn(u64) -> T,
) where
    R: serde::de::DeserializeOwned,
{
    let mut sent = 0u64;
    loop {
        match tx.try_send(nth(sent)) {
            Ok(()) => sent += 1,
            Err(multiproc::TrySendError::Full(_)) => break,
            Err(e) => panic!("after {sent} sends: {e}"),
        }
        assert!(sent < 10_000_000, "the pipe never filled");
    }
    child.kill().unwrap();
    assert!(child.join_timeout(T).is_err());
}

fn hold_bufs(rx: Receiver<(ByteBuf, Option<multiproc::Event>)>) {
    let _rx = rx;
    std::thread::sleep(T);
}

/// Handles sent and not yet read count against the sending user's descriptor limit
/// (past its soft `RLIMIT_NOFILE` in flight the kernel refuses with `ETOOMANYREFS`, for
/// a user without `CAP_SYS_RESOURCE`: a channel handle is 8 descriptors): a timed send
/// past it times out, as for a full socket, and one that waits goes through once a
/// consumer reads. It failed with an I/O error ("Too many references").
fn handles_past_the_users_in_flight_limit_wait() {
    let mut child = multiproc::spawn(sends_handles_unprivileged, ()).unwrap();
    let said: String = child.join_timeout(T).unwrap();
    assert!(said.starts_with("timed out after "), "{said}");
    assert!(said.ends_with(", then went through"), "{said}");
}

/// As an unprivileged user with 64 descriptors, sends channel handles until a timed
/// send does not go through, then one that waits while a thread reads one: what
/// happened.
fn sends_handles_unprivileged(_: ()) -> String {
    // SAFETY: plain system calls that change this process's credentials and limits;
    // its other threads (if any) hold nothing that depends on them.
    unsafe {
        if libc::geteuid() == 0
            && (libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0)
        {
            return format!("cannot leave root: {}", std::io::Error::last_os_error());
        }
        let limit = libc::rlimit {
            rlim_cur: 64,
            rlim_max: 64,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return format!(
                "cannot lower the limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let (tx, rx) = multiproc::pipe::<Sender<u32>>().unwrap();
    let (inner, _inner_rx) = multiproc::pipe::<u32>().unwrap();
    let mut sent = 0;
    loop {
        match tx.send_timeout(inner.clone(), Duration::from_millis(100)) {
            Ok(()) => sent += 1,
            Err(multiproc::SendTimeoutError::Timeout(_)) => break,
            Err(e) => return format!("after {sent} sends: {e}"),
        }
        if sent == 100 {
            return "100 sends went through".into();
        }
    }
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        rx.recv_timeout(T).map(drop).map_err(|e| e.to_string())
    });
    let waited = tx.send(inner.clone());
    let read = reader.join().unwrap();
    match (waited, read) {
        (Ok(()), Ok(())) => format!("timed out after {sent} sends, then went through"),
        (w, r) => format!("timed out after {sent} sends, then {w:?} (read: {r:?})"),
    }
}

fn join_all<R: serde::de::DeserializeOwned>(handles: Vec<multiproc::JoinHandle<R>>) -> Vec<R> {
    handles
        .into_iter()
        .map(|mut h| h.join_timeout(T).unwrap())
        .collect()
}

fn produce((q, id, n): (Queue<Option<(u32, u64)>>, u32, u64)) {
    for seq in 0..n {
        q.put(Some((id, seq))).unwrap();
    }
}

fn consume(q: Queue<Option<(u32, u64)>>) -> Vec<(u32, u64)> {
    let mut got = Vec::new();
    while let Some(item) = q.get_timeout(T).unwrap() {
        got.push(item);
    }
    got
}

fn four_by_four_exactly_once() {
    let q = Queue::bounded(1000).unwrap();
    let consumers: Vec<_> = (0..4)
        .map(|_| multiproc::spawn(consume, q.clone()).unwrap())
        .collect();
    let producers: Vec<_> = (0..4)
        .map(|id| multiproc::spawn(produce, (q.clone(), id, 25_000)).unwrap())
        .collect();
    join_all(producers);
    for _ in 0..4 {
        q.put(None).unwrap();
    }
    let received: Vec<(u32, u64)> = join_all(consumers).into_iter().flatten().collect();
    assert_eq!(received.len(), 100_000);
    let distinct: BTreeSet<_> = received.iter().collect();
    assert_eq!(distinct.len(), 100_000, "an item was delivered twice");
    assert!(q.is_empty());
}

/// Reports each item it takes on `report` before looking at the next.
fn consume_and_report((q, report): (Queue<Option<u64>>, Sender<u64>)) {
    while let Some(item) = q.get_timeout(T).unwrap() {
        report.send(item).unwrap();
    }
}

fn consumer_killed_mid_stream() {
    const N: u64 = 20_000;
    let q = Queue::bounded(64).unwrap();
    let (report, reports) = multiproc::pipe::<u64>().unwrap();
    let (victim_report, victim_reports) = multiproc::pipe::<u64>().unwrap();
    let victim = multiproc::spawn(consume_and_report, (q.clone(), victim_report)).unwrap();
    let producer = std::thread::spawn({
        let q = q.clone();
        move || {
            for i in 0..N {
                q.put(Some(i)).unwrap();
            }
        }
    });
    // The victim alone takes the start of the stream...
    let mut taken_by_victim = BTreeSet::new();
    while taken_by_victim.len() < 500 {
        taken_by_victim.insert(victim_reports.recv_timeout(T).unwrap());
    }
    // ...then the others join in and the victim is killed wherever it is: the bounded
    // queue keeps the producer from being done by then.
    let survivors: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(consume_and_report, (q.clone(), report.clone())).unwrap())
        .collect();
    drop(report);
    victim.kill().unwrap();
    assert!(matches!(
        victim.join(),
        Err(multiproc::ProcessError::Signaled(_))
    ));
    taken_by_victim.extend(victim_reports.try_iter());
    producer.join().unwrap();
    for _ in 0..2 {
        q.put(None).unwrap();
    }
    join_all(survivors);
    let mut seen = taken_by_victim.clone();
    let mut count = taken_by_victim.len();
    for item in reports.try_iter() {
        assert!(seen.insert(item), "item {item} delivered twice");
        count += 1;
    }
    // At most the one item the victim had taken but not yet reported is unaccounted for.
    assert!(
        count as u64 >= N - 1 && count as u64 <= N,
        "{count} of {N} items"
    );
    assert!(q.is_empty());
}

fn put_then_exit((q, n, kill): (Queue<u64>, u64, bool)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
    if kill {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
    }
    std::process::exit(0);
}

fn no_loss_after(kill: bool) {
    const N: u64 = 10_000;
    let q = Queue::new().unwrap();
    let mut child = multiproc::spawn(put_then_exit, (q.clone(), N, kill)).unwrap();
    // The child really ended as it meant to, right after its last put.
    match child.join_timeout(T) {
        Err(multiproc::ProcessError::Signaled(sig)) if kill => {
            assert_eq!(sig, multiproc::Signal::KILL);
        }
        Err(multiproc::ProcessError::Exited(0)) if !kill => {}
        other => panic!("the producer ended unexpectedly: {other:?}"),
    }
    for i in 0..N {
        assert_eq!(q.get_timeout(T).unwrap(), i, "item {i} of {N}");
    }
    assert!(q.try_get().unwrap_err().is_empty());
}

fn producer_exits_right_after_put() {
    no_loss_after(false);
}

fn producer_killed_right_after_put() {
    no_loss_after(true);
}

/// Large enough that a kill often lands while the producer holds the lock, copying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    producer: u32,
    seq: u64,
    pad: ByteBuf,
}

fn produce_forever((q, id): (Queue<Item>, u32)) {
    for seq in 0.. {
        let item = Item {
            producer: id,
            seq,
            pad: ByteBuf(vec![id as u8; 16 << 10]),
        };
        q.put(item).unwrap();
    }
}

fn produce_n((q, id, n): (Queue<Item>, u32, u64)) {
    for seq in 0..n {
        q.put(Item {
            producer: id,
            seq,
            pad: ByteBuf(vec![id as u8; 16 << 10]),
        })
        .unwrap();
    }
}

/// SIGKILLs a child and checks that the kill is how it ended (or that it never got to
/// start): one that ended by itself would mean a broken test, not a passing one.
fn kill_and_check<R: serde::de::DeserializeOwned>(mut child: multiproc::JoinHandle<R>, what: &str) {
    child.kill().unwrap();
    let ended = child.join_timeout(T).map(drop);
    assert!(
        matches!(
            ended,
            Err(multiproc::ProcessError::Signaled(multiproc::Signal::KILL)
                | multiproc::ProcessError::Lost(_))
        ),
        "a {what} ended by itself: {ended:?}"
    );
}

fn producers_killed_at_random() {
    let q: Queue<Item> = Queue::bounded(32).unwrap();
    let steady: Vec<_> = (0..2)
        .map(|id| multiproc::spawn(produce_n, (q.clone(), id, 3000)).unwrap())
        .collect();
    let mut per_producer: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let take = |per_producer: &mut BTreeMap<u32, Vec<u64>>, q: &Queue<Item>, n: usize| {
        for _ in 0..n {
            let item = q.get_timeout(T).expect("the queue kept working");
            assert!(
                item.pad.0.iter().all(|&b| b == item.producer as u8),
                "a corrupt item"
            );
            per_producer
                .entry(item.producer)
                .or_default()
                .push(item.seq);
        }
    };
    // Ten doomed producers in turn, each killed after a random stretch of puts: once
    // its first item has come, so that it is putting (or waiting for room) when killed.
    for round in 0..10u32 {
        let id = 100 + round;
        let doomed = multiproc::spawn(produce_forever, (q.clone(), id)).unwrap();
        let end = Instant::now() + T;
        while per_producer.get(&id).is_none_or(Vec::is_empty) {
            assert!(Instant::now() < end, "producer {id} put nothing");
            take(&mut per_producer, &q, 1);
        }
        take(&mut per_producer, &q, 20 + (round as usize * 37) % 90);
        kill_and_check(doomed, "producer");
    }
    // Drain until the steady producers' items have all arrived (the queue is bounded, so
    // they finish only as it is drained); the doomed ones' may have ended early.
    let steady_done =
        |p: &BTreeMap<u32, Vec<u64>>| (0..2).all(|id| p.get(&id).map_or(0, Vec::len) == 3000);
    while !steady_done(&per_producer) {
        let item = q
            .get_timeout(T)
            .expect("the steady producers' items stopped coming");
        per_producer
            .entry(item.producer)
            .or_default()
            .push(item.seq);
    }
    join_all(steady);
    for (producer, seqs) in &per_producer {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "producer {producer}: out of order or duplicated"
        );
        if *producer < 2 {
            assert_eq!(seqs.len(), 3000, "producer {producer} lost items");
            assert_eq!(seqs.last(), Some(&2999));
        }
    }
}

/// Takes items and reports each one, until the sentinel (producer `u32::MAX`).
fn consume_until_sentinel((q, report): (Queue<Item>, Sender<(u32, u64)>)) {
    loop {
        let item = q.get_timeout(T).unwrap();
        if item.producer == u32::MAX {
            return;
        }
        report.send((item.producer, item.seq)).unwrap();
    }
}

fn consumers_killed_at_random() {
    const N: u64 = 4000;
    let q: Queue<Item> = Queue::bounded(16).unwrap();
    let (report, reports) = multiproc::pipe::<(u32, u64)>().unwrap();
    let mut producer = multiproc::spawn(produce_n, (q.clone(), 7, N)).unwrap();
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let note =
        |seen: &mut BTreeMap<u64, u32>, (_, seq): (u32, u64)| *seen.entry(seq).or_default() += 1;
    let mut killed = 0u64;
    let deadline = Instant::now() + T;
    while (seen.len() as u64) < N - 200 {
        // Bounded: consumers that fail at once would otherwise loop here for ever.
        assert!(
            Instant::now() < deadline,
            "only {} of {N} items seen after {killed} consumers",
            seen.len()
        );
        let doomed = multiproc::spawn(consume_until_sentinel, (q.clone(), report.clone())).unwrap();
        // Let it take a varying number of items, then kill it wherever it is.
        let until = Instant::now() + Duration::from_millis(20 + (killed * 13) % 40);
        while Instant::now() < until {
            if let Ok(r) = reports.recv_timeout(Duration::from_millis(5)) {
                note(&mut seen, r);
            }
        }
        kill_and_check(doomed, "consumer");
        killed += 1;
    }
    let mut last = multiproc::spawn(consume_until_sentinel, (q.clone(), report.clone())).unwrap();
    producer.join_timeout(T).unwrap();
    q.put(Item {
        producer: u32::MAX,
        seq: 0,
        pad: ByteBuf(Vec::new()),
    })
    .unwrap();
    // The last consumer returns at the sentinel, after reporting everything it took.
    while !matches!(last.join_timeout(Duration::from_millis(10)), Ok(())) {
        for r in reports.try_iter() {
            note(&mut seen, r);
        }
    }
    for r in reports.try_iter() {
        note(&mut seen, r);
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "an item was delivered twice"
    );
    // Each killed consumer may have taken one item it never reported.
    assert!(
        seen.len() as u64 >= N - killed,
        "{} of {N} with {killed} kills",
        seen.len()
    );
    assert!(q.is_empty(), "the queue is stuck with {} items", q.len());
}

/// Bytes that serde encodes as one block (like `serde_bytes::ByteBuf`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ByteBuf(Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Puts `n` items of 64 KiB, counting in `acked` each put that returned.
fn produce_counted((q, id, n, acked): (Queue<Item>, u32, u64, Value<u64>)) {
    for seq in 0..n {
        q.put(Item {
            producer: id,
            seq,
            pad: ByteBuf(vec![id as u8; 64 << 10]),
        })
        .unwrap();
        acked.store(seq + 1);
    }
}

/// Gets until every putter is gone: the items' (producer, seq), and how many were
/// corrupt.
fn consume_all(mut q: Queue<Item>) -> (Vec<(u32, u64)>, usize) {
    q.close();
    let mut got = Vec::new();
    let mut corrupt = 0;
    loop {
        match q.get_timeout(T) {
            Ok(item) => {
                if item.pad.0.len() != 64 << 10
                    || !item.pad.0.iter().all(|&b| b == item.producer as u8)
                {
                    corrupt += 1;
                }
                got.push((item.producer, item.seq));
            }
            Err(RecvTimeoutError::Disconnected) => return (got, corrupt),
            Err(e) => panic!("{e}"),
        }
    }
}

fn unbounded_queue_takes_a_gib_before_any_consumer() {
    // Python's `Queue()`: a program may put everything before it starts a consumer.
    let q: Queue<Item> = Queue::new().unwrap();
    let (acked_a, acked_b) = (Value::new(0u64).unwrap(), Value::new(0u64).unwrap());
    const A: u64 = 12 << 10; // 768 MiB
    const B: u64 = 8 << 10; // up to 512 MiB; killed about half-way
    let mut a = multiproc::spawn(produce_counted, (q.clone(), 1, A, acked_a.clone())).unwrap();
    let b = multiproc::spawn(produce_counted, (q.clone(), 2, B, acked_b.clone())).unwrap();
    assert!(
        common::eventually(Duration::from_secs(300), || acked_b.load() >= B / 2),
        "producer B is stuck at {}",
        acked_b.load()
    );
    kill_and_check(b, "producer");
    assert_eq!(a.join_timeout(Duration::from_secs(300)).unwrap(), ());
    let put_b = acked_b.load();
    assert!(put_b < B, "B finished before it was killed");
    assert!(
        (A + put_b) << 16 >= 1 << 30,
        "only {} MiB were put",
        (A + put_b) >> 4
    );
    // All of it waits in the queue (and perhaps the put B was in when killed).
    let waiting = q.len() as u64;
    assert!(
        waiting == A + put_b || waiting == A + put_b + 1,
        "{waiting} waiting, {} put",
        A + put_b
    );
    assert_eq!(acked_a.load(), A);
    // Only now the consumers: four processes drain it all.
    let consumers: Vec<_> = (0..4)
        .map(|_| multiproc::spawn(consume_all, q.clone()).unwrap())
        .collect();
    let mut q = q;
    q.close();
    let mut seen: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut total = 0;
    for (got, corrupt) in join_all(consumers) {
        assert_eq!(corrupt, 0, "corrupt items");
        for (producer, seq) in got {
            total += 1;
            assert!(
                seen.entry(producer).or_default().insert(seq),
                "producer {producer}'s item {seq} delivered twice"
            );
        }
    }
    let a_seen = &seen[&1];
    assert_eq!(a_seen.len() as u64, A, "items of A lost");
    assert_eq!(a_seen.last(), Some(&(A - 1)));
    // Every put of B that returned is there; the one it was in when killed may be too.
    let b_seen = &seen[&2];
    assert!(
        (0..put_b).all(|s| b_seen.contains(&s)),
        "B's acknowledged items lost: {} of {put_b} arrived",
        b_seen.range(..put_b).count()
    );
    assert!(
        b_seen.iter().all(|&s| s <= put_b),
        "B's items out of thin air"
    );
    assert_eq!(total, a_seen.len() + b_seen.len());
    assert!(q.is_empty());
}

fn send_gib(tx: Sender<ByteBuf>) {
    let data: Vec<u8> = (0..1usize << 30).map(|i| (i % 251) as u8).collect();
    tx.send(ByteBuf(data)).unwrap();
}

fn one_gib_message() {
    let (tx, rx) = multiproc::pipe::<ByteBuf>().unwrap();
    let mut child = multiproc::spawn(send_gib, tx).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(300)).unwrap();
    child.join_timeout(T).unwrap();
    assert_eq!(got.0.len(), 1 << 30);
    assert!(got.0.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

fn answer_on_received_sender(q: Queue<Sender<String>>) {
    let tx = q.get_timeout(T).unwrap();
    tx.send(format!("hello from {}", std::process::id()))
        .unwrap();
}

fn forward_queue(outer: Queue<Queue<u32>>) {
    let inner = outer.get_timeout(T).unwrap();
    inner.put(42).unwrap();
}

fn handles_through_a_queue() {
    let q = Queue::new().unwrap();
    let mut child = multiproc::spawn(answer_on_received_sender, q.clone()).unwrap();
    let (tx, rx) = multiproc::pipe::<String>().unwrap();
    q.put(tx).unwrap();
    let msg = rx.recv_timeout(T).unwrap();
    assert_eq!(msg, format!("hello from {}", child.pid()));
    child.join_timeout(T).unwrap();

    let outer = Queue::new().unwrap();
    let inner = Queue::new().unwrap();
    let mut child = multiproc::spawn(forward_queue, outer.clone()).unwrap();
    outer.put(inner.clone()).unwrap();
    assert_eq!(inner.get_timeout(T).unwrap(), 42);
    child.join_timeout(T).unwrap();
}

/// Gets a number from each queue and puts it back doubled; a closed handle refuses
/// to put and still gets.
fn double_on_each((queues, mut closed): (Vec<Queue<u64>>, Queue<u64>)) -> (usize, bool, u64) {
    for q in &queues {
        let x = q.get_timeout(T).unwrap();
        q.put(2 * x).unwrap();
    }
    let refused = closed.put(1).is_err();
    let got = closed.get_timeout(T).unwrap();
    closed.close();
    (queues.len(), refused, got)
}

/// A fan-out of twenty queues goes to a child as one spawn argument and works both ways
/// there: a queue handle travels as one channel's descriptors and both its tokens (9),
/// where its two halves one after the other took 16, and a message carries at most 253
/// (sixteen queues failed with a codec error). A closed handle arrives closed.
fn twenty_queues_go_to_a_child_in_one_message() {
    let queues: Vec<Queue<u64>> = (0..20).map(|_| Queue::new().unwrap()).collect();
    for (i, q) in queues.iter().enumerate() {
        q.put(i as u64).unwrap();
    }
    let closed = Queue::new().unwrap();
    closed.put(7).unwrap();
    let mut theirs = closed.clone();
    theirs.close();
    let mut child = multiproc::spawn(double_on_each, (queues.clone(), theirs)).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), (20, true, 7));
    for (i, q) in queues.iter().enumerate() {
        assert_eq!(q.get_timeout(T).unwrap(), 2 * i as u64);
    }
    // And in one message on a pipe, taken in by this process.
    let (tx, rx) = multiproc::pipe::<Vec<Queue<u64>>>().unwrap();
    tx.send(queues.clone()).unwrap();
    let back = rx.recv_timeout(T).unwrap();
    back[19].put(5).unwrap();
    assert_eq!(queues[19].get_timeout(T).unwrap(), 5);
}

/// Each item's length and a sum of its bytes, for `n` items got from `q`.
fn lengths_and_sums((q, n): (Queue<String>, usize)) -> Vec<(usize, u64)> {
    (0..n)
        .map(|_| length_and_sum(&q.get_timeout(T).unwrap()))
        .collect()
}

fn length_and_sum(s: &str) -> (usize, u64) {
    (s.len(), s.bytes().map(u64::from).sum())
}

/// `put_ref` and `send_ref` send a copy of an item the caller keeps, as Python's `put`
/// does: small items inline, a large one (past what the ring takes inline) out of line,
/// each again and again; a consumer process gets every copy intact. A closed handle
/// gives the reference back.
fn put_ref_and_send_ref_keep_the_item() {
    let small = "a small item".to_string();
    let big: String = (0..5 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let q = Queue::new().unwrap();
    let mut child = multiproc::spawn(lengths_and_sums, (q.clone(), 6)).unwrap();
    for _ in 0..3 {
        q.put_ref(&small).unwrap();
        q.put_ref(&big).unwrap();
    }
    let got = child.join_timeout(T).unwrap();
    let want = [length_and_sum(&small), length_and_sum(&big)].repeat(3);
    assert_eq!(got, want);
    assert_eq!(big.len(), 5 << 20, "the caller keeps its item");

    let (tx, rx) = multiproc::pipe::<String>().unwrap();
    tx.send_ref(&big).unwrap();
    tx.send_ref(&small).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), big);
    assert_eq!(rx.recv_timeout(T).unwrap(), small);

    let jq = JoinableQueue::new().unwrap();
    jq.put_ref(&small).unwrap();
    assert_eq!(jq.unfinished(), 1);
    assert_eq!(jq.get_timeout(T).unwrap(), small);
    jq.task_done().unwrap();
    assert!(jq.join_timeout(T));

    let mut closed = q.clone();
    closed.close();
    match closed.put_ref(&small) {
        Err(e @ SendError::Disconnected(back)) => {
            assert!(std::ptr::eq(back, &small));
            // Its words say so (not only that every receiver is gone).
            assert!(e.to_string().contains("closed queue handle"), "{e}");
        }
        other => panic!("a closed handle put: {other:?}"),
    }
    drop(rx);
    assert!(matches!(
        tx.send_ref(&small),
        Err(SendError::Disconnected(_))
    ));
}

fn hold_and_hang((rx, ready): ((Receiver<u64>, Receiver<u64>), Sender<()>)) {
    ready.send(()).unwrap();
    std::thread::sleep(Duration::from_secs(120));
    drop(rx);
}

/// A thread that sends on two pipes in turn, whose receivers are SIGKILLed with their
/// process: each pipe finds its receiver gone within a bounded number of its own sends.
/// (Receivers killed are found by asking the kernel every so many sends; counted per
/// thread, every look fell on the same one of the two pipes, and the other took sends
/// for ever, its memory growing.)
fn each_pipe_finds_its_killed_receiver() {
    let (a_tx, a_rx) = multiproc::pipe::<u64>().unwrap();
    let (b_tx, b_rx) = multiproc::pipe::<u64>().unwrap();
    let (ready_tx, ready_rx) = multiproc::pipe::<()>().unwrap();
    let holder = multiproc::Builder::new()
        .spawn(hold_and_hang, ((a_rx, b_rx), ready_tx))
        .unwrap();
    ready_rx.recv_timeout(T).unwrap();
    holder.kill().unwrap();
    assert!(matches!(
        holder.join(),
        Err(multiproc::ProcessError::Signaled(_))
    ));
    let (mut a_gone, mut b_gone) = (None, None);
    for i in 0..20_000u64 {
        if a_tx.send(i).is_err() {
            a_gone.get_or_insert(i);
        }
        if b_tx.send(i).is_err() {
            b_gone.get_or_insert(i);
        }
        if a_gone.is_some() && b_gone.is_some() {
            break;
        }
    }
    assert!(
        a_gone.is_some() && b_gone.is_some(),
        "sends that found the receiver gone: {a_gone:?} {b_gone:?} (of 20000 each)"
    );
}

fn send_then_hang(tx: Sender<u32>) {
    tx.send(1).unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

fn disconnected_when_the_sender_is_killed() {
    let (tx, rx) = multiproc::pipe::<u32>().unwrap();
    let child = multiproc::spawn(send_then_hang, tx).unwrap();
    // The only sender now lives in the child.
    assert_eq!(rx.recv_timeout(T).unwrap(), 1);
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    child.kill().unwrap();
    let started = Instant::now();
    assert!(matches!(
        rx.recv_timeout(T),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

fn pong(conn: multiproc::Connection<u64, u64>) {
    while let Ok(n) = conn.recv() {
        conn.send(n + 1).unwrap();
    }
}

/// The sender a [`Reentrant`] value sends on as it is serialized.
static REENTRANT_TX: std::sync::OnceLock<Sender<Reentrant>> = std::sync::OnceLock::new();

/// A value whose `Serialize` (when `.0`) sends another on [`REENTRANT_TX`].
#[derive(Deserialize, Debug, PartialEq)]
struct Reentrant(bool);

impl Serialize for Reentrant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 {
            let _ = REENTRANT_TX.get().unwrap().send(Reentrant(false));
        }
        s.serialize_bool(self.0)
    }
}

/// A value whose `Serialize` sends on the channel it is being sent on waits for the
/// channel's send lock that its own thread holds: the send panics, saying so, rather
/// than hang for ever; the lock is let go with the unwinding, and the channel goes on.
fn a_serialize_that_sends_on_its_own_channel_panics_rather_than_hang() {
    let (tx, rx) = multiproc::pipe::<Reentrant>().unwrap();
    REENTRANT_TX.set(tx.clone()).ok().unwrap();
    let (done, ended) = std::sync::mpsc::channel();
    let sending = tx.clone();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sending.send(Reentrant(true))
        }));
        let _ = done.send(r.map(|_| ()).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    });
    let ended = ended.recv_timeout(T).expect("the send hung");
    let message = ended.expect_err("the send went through");
    assert!(message.contains("thread that holds it"), "{message}");
    // The measuring pass sent one value; the channel is not left locked.
    assert_eq!(rx.recv_timeout(T).unwrap(), Reentrant(false));
    tx.send(Reentrant(false)).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), Reentrant(false));
}

fn duplex_ping_pong() {
    let (ours, theirs) = multiproc::duplex::<u64, u64>().unwrap();
    let mut child = multiproc::spawn(pong, theirs).unwrap();
    let mut n = 0;
    for _ in 0..10_000 {
        ours.send(n).unwrap();
        n = ours.recv_timeout(T).unwrap();
    }
    assert_eq!(n, 10_000);
    drop(ours);
    child.join_timeout(T).unwrap();
}

/// A pipe's receiving end, or a duplex end, moved into a `spawn_fork` closure (the
/// parent's copy goes as the fork returns; the child's was never counted) is there for
/// the parent's sends while the child lives, and gone once it has ended.
fn ends_moved_into_a_forked_child_stay_connected() {
    let (tx, rx) = multiproc::pipe::<u32>().unwrap();
    // SAFETY: the child only receives on its pipe and returns what it got.
    let mut child = unsafe {
        multiproc::Builder::new().spawn_fork(move || rx.recv_timeout(T).map_err(|e| e.to_string()))
    }
    .unwrap();
    assert!(!tx.is_disconnected());
    tx.send(7).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), Ok(7));
    assert!(tx.is_disconnected());
    assert!(matches!(tx.send(8), Err(SendError::Disconnected(8))));

    let (ours, theirs) = multiproc::duplex::<u64, u64>().unwrap();
    // SAFETY: the child only answers on its end.
    let mut child = unsafe {
        multiproc::Builder::new().spawn_fork(move || {
            let n = theirs.recv_timeout(T).map_err(|e| e.to_string())?;
            theirs.send(n + 1).map_err(|e| e.to_string())
        })
    }
    .unwrap();
    ours.send(41).unwrap();
    assert_eq!(ours.recv_timeout(T).unwrap(), 42);
    assert_eq!(child.join_timeout(T).unwrap(), Ok(()));
    assert!(matches!(ours.send(1), Err(SendError::Disconnected(1))));
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn wait_for_receivers_and_processes() {
    let (tx_a, rx_a) = multiproc::pipe::<u32>().unwrap();
    let (_tx_b, rx_b) = multiproc::pipe::<u32>().unwrap();
    let q = Queue::<u8>::new().unwrap();
    let sleeper = multiproc::spawn(sleep_ms, 2000).unwrap();
    // Nothing ready: times out.
    let t = Instant::now();
    assert!(
        multiproc::wait(&[&rx_a, &rx_b, &q], Some(Duration::from_millis(50)))
            .unwrap()
            .is_empty()
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
    // A message on the first.
    tx_a.send(1).unwrap();
    assert_eq!(
        multiproc::wait(&[&rx_a, &rx_b, &sleeper], Some(T)).unwrap(),
        vec![0]
    );
    assert_eq!(rx_a.recv().unwrap(), 1);
    // The process ending wakes the wait.
    assert_eq!(
        multiproc::wait(&[&rx_a, &rx_b, &sleeper], Some(T)).unwrap(),
        vec![2]
    );
    // A sender going away makes its receiver ready (a receive would not block).
    drop(tx_a);
    assert_eq!(multiproc::wait(&[&rx_a, &rx_b], Some(T)).unwrap(), vec![0]);
    let mut sleeper = sleeper;
    sleeper.join_timeout(T).unwrap();
    // A child returning more than its channel's buffer holds sends it only as it is
    // read: the wait reads it meanwhile, so the child ends and the wait says so (for
    // each start method); the join then has it.
    for method in [
        multiproc::StartMethod::ForkServer,
        multiproc::StartMethod::Spawn,
    ] {
        let mut big = multiproc::Builder::new()
            .start_method(method)
            .spawn(bytes_of, 4 << 20)
            .unwrap();
        assert_eq!(
            multiproc::wait(&[&big], Some(Duration::from_secs(20))).unwrap(),
            vec![0],
            "{method:?}: the child never ended"
        );
        assert!(!big.is_alive());
        let back = big.join_timeout(T).unwrap();
        assert!(back.len() == 4 << 20 && back.iter().all(|&b| b == 7));
    }
}

fn bytes_of(n: usize) -> Vec<u8> {
    vec![7; n]
}

fn recv_one(rx: multiproc::Receiver<u32>) -> u32 {
    rx.recv_timeout(T).unwrap_or(0)
}

/// A spawn that fails once its arguments are encoded gives back the count a receiver
/// in them added: the pipe, whose only receiver that was, is disconnected at once.
fn a_failed_spawn_gives_back_its_receivers_count() {
    let (tx, rx) = multiproc::pipe::<u32>().unwrap();
    let spawned = multiproc::Builder::new()
        .current_dir("/nonexistent/multiproc-test")
        .spawn(recv_one, rx);
    assert!(spawned.is_err());
    assert!(
        matches!(
            tx.try_send(1),
            Err(multiproc::TrySendError::Disconnected(1))
        ),
        "the failed spawn left a receiver counted"
    );
}

/// An item of a map: a receiver, one that does not encode, or a number.
#[derive(Serialize, Deserialize)]
enum MapItem {
    Carries(multiproc::Receiver<u32>),
    Fails(common::Unserializable),
    Number(u32),
}

fn number_of(item: MapItem) -> u32 {
    match item {
        MapItem::Number(n) => n,
        MapItem::Carries(_) | MapItem::Fails(_) => 0,
    }
}

/// A map whose items are encoded a batch at a time, one of which fails to encode after
/// another of its batch carried a receiver: the map fails, and the receiver's count
/// comes back (the pipe, whose only receiver that was, is disconnected), rather than
/// stay with an encoding that was never sent.
fn a_map_that_fails_half_way_gives_back_its_receivers_count() {
    let (tx, rx) = multiproc::pipe::<u32>().unwrap();
    let pool = multiproc::Pool::new(1).unwrap();
    // One item a chunk: the first batch is the first chunk alone, the second the next
    // two.
    let items = vec![
        MapItem::Number(1),
        MapItem::Carries(rx),
        MapItem::Fails(common::Unserializable),
    ];
    assert!(pool.map_chunked(number_of, items, 1).is_err());
    assert!(
        matches!(
            tx.try_send(1),
            Err(multiproc::TrySendError::Disconnected(1))
        ),
        "the failed map left a receiver counted"
    );
}

/// A wait on a child's view, while the child sends a large result, does not keep the
/// result's channel open once the handle is dropped unjoined: the child, no longer
/// read, is let go (its send fails) and ends, and the wait says so.
fn a_wait_lets_go_of_a_dropped_handles_channel() {
    let big = multiproc::spawn(bytes_of, 256 << 20).unwrap();
    let view = big.process();
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        waiting_tx.send(()).unwrap();
        multiproc::wait(&[&view], Some(Duration::from_secs(30))).unwrap()
    });
    waiting_rx.recv_timeout(T).unwrap();
    // Time for the wait to be reading (256 MiB takes it far longer than this).
    std::thread::sleep(Duration::from_millis(200));
    drop(big);
    assert_eq!(waiter.join().unwrap(), vec![0], "the child never ended");
}

fn work_and_mark_done(q: JoinableQueue<u32>) -> u32 {
    let mut sum = 0;
    loop {
        match q.get_timeout(Duration::from_millis(500)) {
            Ok(n) => {
                sum += n;
                q.task_done().unwrap();
            }
            Err(RecvTimeoutError::Timeout) => return sum,
            Err(e) => panic!("{e}"),
        }
    }
}

fn joinable_queue_across_processes() {
    let q = JoinableQueue::new().unwrap();
    for n in 1..=100 {
        q.put(n).unwrap();
    }
    assert_eq!(q.unfinished(), 100);
    let workers: Vec<_> = (0..3)
        .map(|_| multiproc::spawn(work_and_mark_done, q.clone()).unwrap())
        .collect();
    assert!(
        q.join_timeout(T),
        "join timed out with {} unfinished",
        q.unfinished()
    );
    assert_eq!(q.unfinished(), 0);
    assert_eq!(join_all(workers).iter().sum::<u32>(), 5050);
    assert!(q.task_done().is_err());
}

fn drain_slowly((q, n): (Queue<u32>, u32)) -> Vec<u32> {
    (0..n).map(|_| q.get_timeout(T).unwrap()).collect()
}

fn bounded_queue_blocks_the_producer() {
    let q = Queue::bounded(2).unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert!(q.try_put(3).unwrap_err().is_full());
    assert!(
        q.put_timeout(3, Duration::from_millis(50))
            .unwrap_err()
            .is_timeout()
    );
    let mut child = multiproc::spawn(drain_slowly, (q.clone(), 4)).unwrap();
    q.put_timeout(3, T).unwrap();
    q.put_timeout(4, T).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), vec![1, 2, 3, 4]);
}

/// An item of 4 KB numbered `i`.
fn block(i: u32) -> ByteBuf {
    ByteBuf(vec![i as u8; 4000])
}

fn put_blocks((q, from, n): (Queue<ByteBuf>, u32, u32)) {
    for i in from..from + n {
        if let Err(e) = q.put_timeout(block(i), Duration::from_secs(10)) {
            panic!("item {i} waited 10 s for room: {e}");
        }
    }
}

/// A bounded queue that has been used holds as many items before any consumer comes
/// as a new one: items put while nobody reads fit up to its bound (within its 4 MiB of
/// memory), whether or not the queue's memory has just started over at its beginning
/// (which happens once an empty queue is past its first 64 KiB). Before, that start-over
/// left room for about 16 such items until a consumer came by: a producer that puts
/// its items and exits before the consumer starts waited for room forever, and
/// `try_put` said full.
fn a_used_bounded_queue_takes_its_items_before_any_consumer() {
    let q = Queue::<ByteBuf>::bounded(1000).unwrap();
    // Used, each item taken at once, until its memory is past the first 64 KiB.
    for i in 0..17 {
        q.put(block(i)).unwrap();
        assert_eq!(q.get_timeout(T).unwrap(), block(i));
    }
    // A process puts 300 items (about 1.2 MB; its first starts the memory over) and
    // exits before anything is taken.
    let mut child = multiproc::spawn(put_blocks, (q.clone(), 0, 300)).unwrap();
    if let Err(e) = child.join_timeout(T) {
        panic!("the producer did not finish: {e}");
    }
    // 200 more without waiting.
    for i in 300..500 {
        if let Err(e) = q.try_put(block(i)) {
            panic!("item {i} refused: {e}");
        }
    }
    for i in 0..500 {
        assert_eq!(q.get_timeout(T).unwrap(), block(i), "item {i}");
    }
    assert!(q.try_get().is_err(), "nothing more was put");
}

/// Serializes as a string; insists on a number when deserialized.
#[derive(Debug)]
struct Lopsided;

impl Serialize for Lopsided {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("not a number")
    }
}

impl<'de> Deserialize<'de> for Lopsided {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(|_| Lopsided)
    }
}

/// Schema drift: a newer sender writes a field the receiver's version does not read.
#[derive(Debug)]
struct Drifted;

impl Serialize for Drifted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (7u32, "a field from a newer version").serialize(s)
    }
}

impl<'de> Deserialize<'de> for Drifted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(|_| Drifted)
    }
}

fn send_mismatched((a, b): (Sender<Lopsided>, Sender<Drifted>)) {
    a.send(Lopsided).unwrap();
    b.send(Drifted).unwrap();
}

fn mismatched_types_are_decode_errors() {
    let (a_tx, a_rx) = multiproc::pipe::<Lopsided>().unwrap();
    let (b_tx, b_rx) = multiproc::pipe::<Drifted>().unwrap();
    let mut child = multiproc::spawn(send_mismatched, (a_tx.clone(), b_tx.clone())).unwrap();
    child.join_timeout(T).unwrap();
    let Err(RecvTimeoutError::Codec(e)) = a_rx.recv_timeout(T) else {
        panic!("decoded a string as a number")
    };
    assert!(e.message().contains("Lopsided"), "{e}");
    let Err(RecvTimeoutError::Codec(e)) = b_rx.recv_timeout(T) else {
        panic!("ignored trailing bytes")
    };
    assert!(e.message().contains("left over"), "{e}");
    // The bad message was consumed; the pipe goes on.
    b_tx.send(Drifted).unwrap();
    assert!(matches!(
        b_rx.try_recv(),
        Err(multiproc::TryRecvError::Codec(_))
    ));
    assert!(b_rx.try_recv().unwrap_err().is_empty());

    // A joinable queue's item that does not decode was taken, and is still a task to
    // mark done.
    let jq = JoinableQueue::<Lopsided>::new().unwrap();
    jq.put(Lopsided).unwrap();
    assert!(matches!(jq.get_timeout(T), Err(RecvTimeoutError::Codec(_))));
    assert_eq!(jq.unfinished(), 1);
    assert!(!jq.join_timeout(Duration::from_millis(20)));
    jq.task_done().unwrap();
    assert!(jq.join_timeout(T));
    assert!(jq.try_get().unwrap_err().is_empty());
}

fn send_later((tx, n): (Sender<u32>, u32)) {
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..n {
        tx.send(i).unwrap();
    }
}

fn async_receive_under_tokio() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = multiproc::pipe::<u32>().unwrap();
    let q = Queue::<u32>::new().unwrap();
    let mut producer = multiproc::spawn(send_later, (tx, 100)).unwrap();
    let q2 = q.clone();
    let total = runtime.block_on(async move {
        let from_queue = tokio::spawn(async move { q2.get_async().await.unwrap() });
        // The queue's getter is waiting in another task; give it something.
        q.put(1000).unwrap();
        let mut sum = 0;
        for _ in 0..100 {
            sum += tokio::time::timeout(T, rx.recv_async())
                .await
                .unwrap()
                .unwrap();
        }
        // After the producer's last sender is gone, the async receive says so.
        let end = tokio::time::timeout(T, rx.recv_async()).await.unwrap();
        assert!(matches!(end, Err(RecvError::Disconnected)));
        sum + tokio::time::timeout(T, from_queue).await.unwrap().unwrap()
    });
    producer.join_timeout(T).unwrap();
    assert_eq!(total, 4950 + 1000);
}

/// A child running `f` on `end`, which sets the event it is given and then waits on
/// `end` (a receive, or a put into a full queue), and sends on the pipe what it got or
/// put; returned stopped (`SIGSTOP`) once past its look and its 5 ms nap, asleep on the
/// doorbell, with the pipe's receiving end.
fn asleep_and_stopped<E: Serialize + serde::de::DeserializeOwned + 'static>(
    f: fn((E, multiproc::Event, Sender<u32>)),
    end: E,
) -> (multiproc::JoinHandle<()>, Receiver<u32>, common::Stopped) {
    let (ack_tx, ack_rx) = multiproc::pipe::<u32>().unwrap();
    let ready = multiproc::Event::new().unwrap();
    let b = multiproc::spawn(f, (end, ready.clone(), ack_tx)).unwrap();
    assert!(ready.wait_timeout(T));
    std::thread::sleep(Duration::from_millis(20));
    let stopped = common::stopped(b.pid());
    (b, ack_rx, stopped)
}

/// Sets `ready`, receives one message on `rx` and sends it back on `ack`.
fn receive_and_ack((rx, ready, ack): (Receiver<u32>, multiproc::Event, Sender<u32>)) {
    ready.set();
    let v = rx.recv().unwrap();
    ack.send(v).unwrap();
}

/// An async receive dropped (by `select!`, a timeout) after a message rang the doorbell
/// it slept on, and before it took the message, silenced the ring: a blocking receiver
/// of another process, asleep on the same doorbell (stopped meanwhile, so that it does
/// not take the ring first), slept on until its next look, up to 100 ms later. The
/// dropped receive rings again for it.
fn a_dropped_async_receive_leaves_the_ring_to_other_receivers() {
    let (tx, rx) = multiproc::pipe::<u32>().unwrap();
    let (mut b, ack_rx, stopped) = asleep_and_stopped(receive_and_ack, rx.clone());
    {
        let mut receive = std::pin::pin!(rx.recv_async());
        // Pending, and counted among the doorbell's sleepers.
        let polled = futures_lite::future::block_on(futures_lite::future::poll_once(&mut receive));
        assert!(polled.is_none(), "nothing was sent yet");
        tx.send(7).unwrap();
    }
    drop(stopped);
    let continued = Instant::now();
    assert_eq!(ack_rx.recv_timeout(T).unwrap(), 7);
    let took = continued.elapsed();
    b.join_timeout(T).unwrap();
    assert!(
        took < Duration::from_millis(40),
        "the other receiver slept on for {took:?} with the message waiting"
    );
}

/// Sets `ready`, puts 2 on `q` (waiting for room) and then says so on `ack`.
fn put_and_ack((q, ready, ack): (Queue<u32>, multiproc::Event, Sender<u32>)) {
    ready.set();
    q.put(2).unwrap();
    ack.send(2).unwrap();
}

/// As above, for producers: an async put dropped after a get rang the producers'
/// doorbell silenced the ring, and a producer of another process waiting for room
/// slept on with room there; the dropped put rings again for it.
fn a_dropped_async_put_leaves_the_ring_to_other_producers() {
    let q = Queue::<u32>::bounded(1).unwrap();
    q.put(1).unwrap();
    let (mut b, ack_rx, stopped) = asleep_and_stopped(put_and_ack, q.clone());
    {
        let mut put = std::pin::pin!(q.put_async(3));
        let polled = futures_lite::future::block_on(futures_lite::future::poll_once(&mut put));
        assert!(polled.is_none(), "the queue is full");
        assert_eq!(q.get_timeout(T).unwrap(), 1);
    }
    drop(stopped);
    let continued = Instant::now();
    assert_eq!(ack_rx.recv_timeout(T).unwrap(), 2);
    let took = continued.elapsed();
    b.join_timeout(T).unwrap();
    assert_eq!(q.get_timeout(T).unwrap(), 2);
    assert!(
        took < Duration::from_millis(40),
        "the other producer slept on for {took:?} with room there"
    );
}

/// How many times a slow [`MaybeSlow`] was serialized.
static SLOW_SERIALIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A value whose `Serialize`, when `.0`, takes 60 ms the second time (a small message
/// is measured, then serialized under the channel's send lock).
#[derive(Deserialize, Debug, PartialEq)]
struct MaybeSlow(bool);

impl Serialize for MaybeSlow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 && SLOW_SERIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            std::thread::sleep(Duration::from_millis(60));
        }
        s.serialize_bool(self.0)
    }
}

/// An async send that finds the producers' lock held by a thread that runs on (a slow
/// `Serialize`, or a holder preempted on a busy machine) gives the executor its thread
/// back: it waited for the lock up to 20 ms, twice a poll, on the executor's thread
/// (a current-thread runtime froze for 40 ms at a time), and then slept on a doorbell
/// nobody rang for the lock's release.
fn an_async_send_does_not_hold_the_executor_while_another_holds_the_lock() {
    let (tx, rx) = multiproc::pipe::<MaybeSlow>().unwrap();
    let slow = {
        let tx = tx.clone();
        std::thread::spawn(move || tx.send(MaybeSlow(true)).unwrap())
    };
    // Serialized the second time: the slow sender holds the lock for 60 ms.
    assert!(common::eventually(T, || SLOW_SERIALIZED
        .load(std::sync::atomic::Ordering::SeqCst)
        == 2));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // From before the send's first poll: a poll that holds the thread counts too.
    let start = Instant::now();
    let longest_gap = runtime.block_on(async {
        // The longest time between two ticks of another task, while the send waits.
        let ticker = std::cell::RefCell::new(Duration::ZERO);
        let measured = async {
            let mut last = start;
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let gap = last.elapsed();
                let mut t = ticker.borrow_mut();
                *t = (*t).max(gap);
                last = Instant::now();
            }
        };
        tokio::select! {
            biased;
            sent = tokio::time::timeout(T, tx.send_async(MaybeSlow(false))) => {
                sent.expect("the send did not end").unwrap();
            }
            () = measured => {}
        }
        ticker.into_inner()
    });
    slow.join().unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), MaybeSlow(true));
    assert_eq!(rx.recv_timeout(T).unwrap(), MaybeSlow(false));
    assert!(
        longest_gap < Duration::from_millis(30),
        "the executor's thread was held {longest_gap:?} at a time"
    );
}

/// The CPU time this thread has used, in clock ticks (`/proc/thread-self/stat`).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Two async puts waiting for room in one full queue sleep until room comes (or their
/// timeout): each wake-up passing the doorbell on to the other, they woke each other
/// for ever, at full CPU.
fn async_puts_waiting_for_room_together_do_not_spin() {
    let q = Queue::<u32>::bounded(1).unwrap();
    q.put(0).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = thread_cpu_ticks();
    runtime.block_on(async {
        let wait = Duration::from_millis(400);
        let (a, b) = tokio::join!(
            tokio::time::timeout(wait, q.put_async(1)),
            tokio::time::timeout(wait, q.put_async(2)),
        );
        assert!(a.is_err() && b.is_err(), "the queue stayed full");
    });
    let used = thread_cpu_ticks() - before;
    // A tick is 10 ms: 400 ms of spinning is about 40.
    assert!(used < 10, "{used} ticks of CPU in 400 ms of waiting");
    assert_eq!(q.get_timeout(T).unwrap(), 0);
    assert!(
        q.get_timeout(Duration::ZERO).is_err(),
        "a dropped put went in"
    );
}

fn echo_count((rx, tx): (Receiver<ByteBuf>, Sender<usize>)) {
    while let Ok(b) = rx.recv() {
        tx.send(b.0.len()).unwrap();
    }
}

fn helper_leaks() {
    // Warm up: the fork server and the async reactor exist from here on.
    let run = |rounds: usize| {
        for i in 0..rounds {
            let (tx, rx) = multiproc::pipe::<ByteBuf>().unwrap();
            let (back_tx, back_rx) = multiproc::pipe::<usize>().unwrap();
            let child = multiproc::spawn(echo_count, (rx, back_tx)).unwrap();
            // Small (in the ring), medium (side message), large (memory file).
            for size in [10usize, 300 << 10, 3 << 20] {
                tx.send(ByteBuf(vec![i as u8; size])).unwrap();
                assert_eq!(back_rx.recv_timeout(T).unwrap(), size);
            }
            drop(tx);
            child.join().unwrap();
            let q = Queue::<Sender<u8>>::new().unwrap();
            let (s, r) = multiproc::pipe::<u8>().unwrap();
            q.put(s).unwrap();
            q.get().unwrap().send(1).unwrap();
            r.recv().unwrap();
        }
    };
    run(2);
    let before = common::fd_count();
    run(50);
    println!("fds {before} {}", common::fd_count());
}

/// Gets from `q` once while what `short` returns is held (what the get says), then,
/// with it dropped, takes two messages: their lengths.
fn get_while_short<G>(q: &Queue<String>, short: impl FnOnce() -> G) -> (String, usize, usize) {
    let held = short();
    let first = match q.get_timeout(T) {
        Ok(s) => format!("a message of {} bytes", s.len()),
        Err(e) => format!("{e:?}"),
    };
    drop(held);
    let a = q.get_timeout(T).map_or(0, |s| s.len());
    let b = q.get_timeout(T).map_or(0, |s| s.len());
    (first, a, b)
}

/// Puts a message of `len` bytes and a small one, runs `getter` in a child, and checks
/// that its first get failed saying `says` and that it then got both messages.
fn large_message_waits(
    len: usize,
    getter: fn(Queue<String>) -> (String, usize, usize),
    says: &str,
) {
    let q = Queue::new().unwrap();
    q.put("x".repeat(len)).unwrap();
    q.put("y".repeat(10)).unwrap();
    let mut child = multiproc::spawn(getter, q.clone()).unwrap();
    let (first, a, b) = child.join_timeout(T).unwrap();
    assert!(first.contains(says), "{first}");
    assert_eq!((a, b), (len, 10), "the first get said {first}");
    assert!(q.is_empty());
}

/// With no descriptor free, gets from `q` once, then again with descriptors (see
/// [`get_while_short`]).
fn get_out_of_descriptors(q: Queue<String>) -> (String, usize, usize) {
    get_while_short(&q, common::use_up_descriptors)
}

/// A message too large for the ring travels in a memory file of its own, whose
/// descriptor the receiver must take in. A receiver with no descriptor free is told so,
/// and the message waits for its next get: it was taken off the socket, its file lost,
/// and the next get skipped it as the leftover of a dead consumer.
fn a_large_message_waits_for_a_free_descriptor() {
    large_message_waits(3 << 20, get_out_of_descriptors, "Too many open files");
}

/// Short of address space, gets from `q` once, then again with its limit as it was
/// (see [`get_while_short`]).
fn get_short_of_address_space(q: Queue<String>) -> (String, usize, usize) {
    get_while_short(&q, common::AddressSpaceCap::new)
}

/// A message too large for the ring travels in a memory file of its own, which the
/// receiver maps. A receiver whose address space has no room for it (its `RLIMIT_AS`)
/// is told so, and the message waits for its next get: it was taken off the socket,
/// reported as corruption, and the next get skipped it as the leftover of a dead
/// consumer.
fn a_large_message_waits_for_address_space() {
    large_message_waits(
        16 << 20,
        get_short_of_address_space,
        "Cannot allocate memory",
    );
}

fn no_descriptor_leaks() {
    let mut h = Helper::start("leaks");
    let fds = h.expect("fds ", Duration::from_secs(120));
    let (before, after) = fds.split_once(' ').unwrap();
    assert_eq!(before, after, "descriptors leaked");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// Takes items for ever (until killed).
fn drain_forever(q: Queue<ByteBuf>) {
    loop {
        let _ = q.get();
    }
}

/// Puts copies of one item for ever (until killed).
fn fill_forever((q, len): (Queue<ByteBuf>, usize)) {
    let item = ByteBuf(vec![7u8; len]);
    loop {
        let _ = q.put(item.clone());
    }
}

/// How far past its own timeout a call may return on a busy machine (a call held up
/// by the stopped peer would not return at all until it is continued).
const SLACK: Duration = Duration::from_secs(2);

/// Runs rounds of: stop `peer` at a random moment of its work, then check that
/// `timed_calls` (which returns whether the stopped peer was seen holding things up,
/// e.g. items waiting that could not be taken) returns in time; continue the peer.
/// Runs `rounds` rounds, and more (up to ten times as many) until `want_caught` of them
/// caught the peer inside the lock. Returns how many did.
fn stop_rounds(
    peer: u32,
    rounds: usize,
    want_caught: usize,
    mut timed_calls: impl FnMut() -> bool,
) -> usize {
    let mut caught = 0;
    for round in 0..rounds * 10 {
        if round >= rounds && caught >= want_caught {
            break;
        }
        let busy_until = Instant::now() + Duration::from_micros(fastrand::u64(0..2_000));
        while Instant::now() < busy_until {
            std::hint::spin_loop();
        }
        common::stop_or_continue(peer, true);
        let started = Instant::now();
        if timed_calls() {
            caught += 1;
        }
        let took = started.elapsed();
        common::stop_or_continue(peer, false);
        assert!(
            took < SLACK,
            "timed calls took {took:?} with a stopped peer"
        );
    }
    caught
}

/// A consumer and a producer run flat out on one queue; one of them is stopped at random
/// moments, sometimes while it holds its side's lock, copying an item. The test's own
/// timed and non-blocking calls on that side must return in time.
fn stopped_peer_rounds(stop_consumer: bool) {
    for len in [16usize, 1 << 20] {
        // Items are bytes, copied in and out of the ring in one block, so that a side
        // spends much of its time in its lock (a `Vec<u8>` is coded byte by byte,
        // outside it). A consumer to catch in its lock must always have items to copy
        // out: a bounded queue kept full by the producer. A producer to catch in its
        // lock must always have room: an unbounded queue.
        let q = if stop_consumer {
            Queue::<ByteBuf>::bounded(64).unwrap()
        } else {
            Queue::<ByteBuf>::new().unwrap()
        };
        let consumer = multiproc::spawn(drain_forever, q.clone()).unwrap();
        let producer = multiproc::spawn(fill_forever, (q.clone(), len)).unwrap();
        let peer = if stop_consumer {
            consumer.pid()
        } else {
            producer.pid()
        };
        // Copying 1 MiB takes long enough that some stops land inside the lock; the
        // rounds go on until a few did (small items are copied too fast to insist).
        let want_caught = if len == 1 << 20 { 3 } else { 0 };
        let caught = stop_rounds(peer, 100, want_caught, || {
            let timeout = Duration::from_millis(50);
            let t0 = Instant::now();
            let (timed, tried) = if stop_consumer {
                // The running producer keeps items waiting: only the consumers' lock
                // can be in the way.
                let waiting = !q.is_empty();
                let timed = q.get_timeout(timeout).is_err();
                let tried = q.try_get().is_err();
                // An async get under a timeout returns too (it gave the runtime its
                // thread back): on a thread of its own, so that one that never yields
                // fails the test rather than hang it.
                let (tx, rx) = std::sync::mpsc::channel();
                let q2 = q.clone();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    let got = runtime
                        .block_on(async { tokio::time::timeout(timeout, q2.get_async()).await });
                    let _ = tx.send(got.is_err());
                });
                let awaited = rx
                    .recv_timeout(timeout + SLACK)
                    .expect("an async get held up by a stopped consumer never returned");
                (waiting && timed, tried && awaited)
            } else {
                // The running consumer keeps room: only the producers' lock can be in
                // the way.
                let timed = q.put_timeout(ByteBuf(vec![2u8; len]), timeout).is_err();
                let tried = q.try_put(ByteBuf(vec![3u8; len])).is_err();
                (timed, tried)
            };
            assert!(t0.elapsed() < timeout + SLACK);
            timed && tried
        });
        for mut peer in [consumer, producer] {
            peer.kill().unwrap();
            let _ = peer.join_timeout(T);
        }
        let who = if stop_consumer {
            "consumer"
        } else {
            "producer"
        };
        eprintln!("{len}-byte items: the {who} was stopped holding its lock {caught} times");
        assert!(
            caught >= want_caught,
            "the {who} was caught holding its lock {caught} times, not {want_caught}"
        );
    }
}

fn stopped_consumer_holds_up_no_timed_get() {
    stopped_peer_rounds(true);
}

fn stopped_producer_holds_up_no_timed_put() {
    stopped_peer_rounds(false);
}

fn get_one(q: Queue<u64>) -> u64 {
    q.get().unwrap()
}

/// A getter SIGKILLed while it sleeps in `get` on an empty queue (seen asleep, not slept
/// for) takes nothing with it: the next item goes to the next getter, and the queue
/// works on.
fn getter_killed_while_blocked() {
    let q = Queue::<u64>::bounded(4).unwrap();
    let mut doomed = multiproc::spawn(get_one, q.clone()).unwrap();
    assert!(common::eventually(T, || common::asleep_in(
        doomed.pid(),
        "poll"
    )));
    doomed.kill().unwrap();
    assert!(doomed.join_timeout(T).is_err());
    let mut next = multiproc::spawn(get_one, q.clone()).unwrap();
    assert!(common::eventually(T, || common::asleep_in(
        next.pid(),
        "poll"
    )));
    q.put(42).unwrap();
    assert_eq!(next.join_timeout(T).unwrap(), 42);
    q.put(7).unwrap();
    assert_eq!(q.get_timeout(T).unwrap(), 7);
    assert!(q.is_empty());
}

/// Encodes as nothing but a panic.
struct Boom;

impl Serialize for Boom {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("Boom does not encode")
    }
}

/// Encodes as a byte; decoding it panics.
struct BadDecode;

impl Serialize for BadDecode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(0)
    }
}

impl<'de> Deserialize<'de> for BadDecode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d)?;
        panic!("BadDecode does not decode")
    }
}

/// A `Serialize` or `Deserialize` that panics in the middle of a value that carries a
/// handle leaves no copy of the handle's descriptors behind on the thread: once every
/// sender is gone, the receiver is told so, and the next encode on the thread is whole.
fn a_coding_panic_leaves_no_descriptor_behind() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let (tx, rx) = multiproc::pipe::<u8>().unwrap();
    let q: Queue<(Sender<u8>, Boom)> = Queue::new().unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| q.put((tx, Boom)))).is_err());
    assert!(matches!(
        rx.recv_timeout(T),
        Err(RecvTimeoutError::Disconnected)
    ));
    let (tx, rx) = multiproc::pipe::<u8>().unwrap();
    let q: Queue<(BadDecode, Sender<u8>)> = Queue::new().unwrap();
    q.put((BadDecode, tx)).unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| q.get())).is_err());
    assert!(matches!(
        rx.recv_timeout(T),
        Err(RecvTimeoutError::Disconnected)
    ));
    // The thread encodes and decodes handles as before.
    let (tx, rx) = multiproc::pipe::<u8>().unwrap();
    let q: Queue<Sender<u8>> = Queue::new().unwrap();
    q.put(tx).unwrap();
    let tx = q.get_timeout(T).unwrap();
    tx.send(5).unwrap();
    assert!(matches!(rx.recv_timeout(T), Ok(5)));
    drop(tx);
    assert!(matches!(
        rx.recv_timeout(T),
        Err(RecvTimeoutError::Disconnected)
    ));
}
