//! Channel behaviour tests ported from crossbeam-channel's `tests/array.rs` and
//! `tests/list.rs` (MIT OR Apache-2.0, <https://github.com/crossbeam-rs/crossbeam>),
//! run between threads of one process.
//!
//! crossbeam's `bounded(n)` is multiproc's `Queue::bounded(n)` (`send`/`recv` are
//! `put`/`get`); its `unbounded()` is `pipe()`. The waits are crossbeam's own. Left
//! out: tests of `select!`, of drop counts of in-memory values and of panicking
//! destructors, which do not apply to messages that travel as serde data.

mod watchdog;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use multiproc::{
    Queue, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};

/// crossbeam's `ms(n)`, at crossbeam's own scale: these tests are about ordering in
/// time, and their margins (hundreds of milliseconds) must hold on two busy CPUs beside
/// the stress tests of this binary.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bounded<T>(n: usize) -> (Queue<T>, Queue<T>) {
    let q = Queue::bounded(n).unwrap();
    (q.clone(), q)
}

/// A receiving handle that can no longer put: dropping every *sending* handle then
/// disconnects it, as dropping crossbeam's `Sender`s does.
fn receiver<T>(q: Queue<T>) -> Queue<T> {
    let mut q = q;
    q.close();
    q
}

#[test]
fn smoke() {
    let (s, r) = bounded(1);
    s.put(7).unwrap();
    assert_eq!(r.try_get().ok(), Some(7));
    s.put(8).unwrap();
    assert_eq!(r.get().ok(), Some(8));
    assert!(r.try_get().unwrap_err().is_empty());
    assert!(r.get_timeout(ms(1000)).unwrap_err().is_timeout());
}

#[test]
fn capacity() {
    for i in 1..10 {
        let (s, r) = bounded::<()>(i);
        assert_eq!(s.capacity(), Some(i));
        assert_eq!(r.capacity(), Some(i));
    }
}

#[test]
fn len_empty_full() {
    let (s, r) = bounded(2);
    assert_eq!((s.len(), s.is_empty(), s.is_full()), (0, true, false));
    s.put(()).unwrap();
    assert_eq!((r.len(), r.is_empty(), r.is_full()), (1, false, false));
    s.put(()).unwrap();
    assert_eq!((s.len(), s.is_empty(), s.is_full()), (2, false, true));
    r.get().unwrap();
    assert_eq!((r.len(), r.is_empty(), r.is_full()), (1, false, false));
}

#[test]
fn try_recv() {
    let (s, r) = bounded(100);
    let r = receiver(r);
    thread::scope(|scope| {
        scope.spawn(move || {
            assert!(r.try_get().unwrap_err().is_empty());
            thread::sleep(ms(1500));
            assert_eq!(r.try_get().ok(), Some(7));
            thread::sleep(ms(500));
            assert!(r.try_get().unwrap_err().is_disconnected());
        });
        scope.spawn(move || {
            thread::sleep(ms(1000));
            s.put(7).unwrap();
        });
    });
}

#[test]
fn recv() {
    let (s, r) = bounded(100);
    let r = receiver(r);
    thread::scope(|scope| {
        scope.spawn(move || {
            assert_eq!(r.get().ok(), Some(7));
            thread::sleep(ms(1000));
            assert_eq!(r.get().ok(), Some(8));
            thread::sleep(ms(1000));
            assert_eq!(r.get().ok(), Some(9));
            assert!(matches!(r.get(), Err(RecvError::Disconnected)));
        });
        scope.spawn(move || {
            thread::sleep(ms(1500));
            s.put(7).unwrap();
            s.put(8).unwrap();
            s.put(9).unwrap();
        });
    });
}

#[test]
fn recv_timeout() {
    let (s, r) = bounded::<i32>(100);
    let r = receiver(r);
    thread::scope(|scope| {
        scope.spawn(move || {
            assert!(matches!(
                r.get_timeout(ms(1000)),
                Err(RecvTimeoutError::Timeout)
            ));
            assert_eq!(r.get_timeout(ms(1000)).ok(), Some(7));
            assert!(matches!(
                r.get_timeout(ms(1000)),
                Err(RecvTimeoutError::Disconnected)
            ));
        });
        scope.spawn(move || {
            thread::sleep(ms(1500));
            s.put(7).unwrap();
        });
    });
}

#[test]
fn try_send() {
    let (tx, rx) = multiproc::pipe::<i32>().unwrap();
    let (s, r) = bounded(1);
    thread::scope(|scope| {
        scope.spawn(move || {
            assert!(s.try_put(1).is_ok());
            assert!(matches!(s.try_put(2), Err(TrySendError::Full(2))));
            thread::sleep(ms(1500));
            assert!(s.try_put(3).is_ok());
        });
        scope.spawn(move || {
            thread::sleep(ms(1000));
            assert_eq!(r.try_get().ok(), Some(1));
            assert!(r.try_get().unwrap_err().is_empty());
            assert_eq!(r.get().ok(), Some(3));
        });
    });
    // The disconnected half of crossbeam's test: every receiver gone.
    drop(rx);
    assert!(matches!(tx.try_send(4), Err(TrySendError::Disconnected(4))));
}

#[test]
fn send() {
    let (s, r) = bounded(1);
    thread::scope(|scope| {
        scope.spawn(|| {
            s.put(7).unwrap();
            thread::sleep(ms(1000));
            s.put(8).unwrap();
            thread::sleep(ms(1000));
            s.put(9).unwrap();
            thread::sleep(ms(1000));
            s.put(10).unwrap();
        });
        scope.spawn(|| {
            thread::sleep(ms(1500));
            assert_eq!(r.get().ok(), Some(7));
            assert_eq!(r.get().ok(), Some(8));
            assert_eq!(r.get().ok(), Some(9));
        });
    });
}

#[test]
fn send_timeout() {
    let (s, r) = bounded(2);
    thread::scope(|scope| {
        scope.spawn(|| {
            assert!(s.put_timeout(1, ms(1000)).is_ok());
            assert!(s.put_timeout(2, ms(1000)).is_ok());
            assert!(matches!(
                s.put_timeout(3, ms(500)),
                Err(SendTimeoutError::Timeout(3))
            ));
            thread::sleep(ms(1000));
            assert!(s.put_timeout(4, ms(1000)).is_ok());
        });
        scope.spawn(|| {
            thread::sleep(ms(1000));
            assert_eq!(r.get().ok(), Some(1));
            thread::sleep(ms(1000));
            assert_eq!(r.get().ok(), Some(2));
            assert_eq!(r.get().ok(), Some(4));
        });
    });
}

#[test]
fn send_after_disconnect() {
    let (s, r) = multiproc::pipe().unwrap();
    s.send(1).unwrap();
    s.send(2).unwrap();
    s.send(3).unwrap();
    drop(r);
    assert!(matches!(s.send(4), Err(SendError::Disconnected(4))));
    assert!(matches!(s.try_send(5), Err(TrySendError::Disconnected(5))));
    assert!(matches!(
        s.send_timeout(6, ms(500)),
        Err(SendTimeoutError::Disconnected(6))
    ));
}

#[test]
fn recv_after_disconnect() {
    let (s, r) = multiproc::pipe().unwrap();
    s.send(1).unwrap();
    s.send(2).unwrap();
    s.send(3).unwrap();
    drop(s);
    assert_eq!(r.recv().ok(), Some(1));
    assert_eq!(r.recv().ok(), Some(2));
    assert_eq!(r.recv().ok(), Some(3));
    assert!(matches!(r.recv(), Err(RecvError::Disconnected)));
}

#[test]
fn len() {
    const COUNT: usize = 25_000;
    const CAP: usize = 1000;
    let (s, r) = bounded(CAP);
    assert_eq!((s.len(), r.len()), (0, 0));
    for _ in 0..CAP / 10 {
        for i in 0..50 {
            s.put(i).unwrap();
            assert_eq!(s.len(), i + 1);
        }
        for i in 0..50 {
            r.get().unwrap();
            assert_eq!(r.len(), 50 - i - 1);
        }
    }
    assert_eq!((s.len(), r.len()), (0, 0));
    for i in 0..CAP {
        s.put(i).unwrap();
        assert_eq!(s.len(), i + 1);
    }
    for _ in 0..CAP {
        r.get().unwrap();
    }
    assert_eq!((s.len(), r.len()), (0, 0));
    thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..COUNT {
                assert_eq!(r.get().ok(), Some(i));
                assert!(r.len() <= CAP);
            }
        });
        scope.spawn(|| {
            for i in 0..COUNT {
                s.put(i).unwrap();
                assert!(s.len() <= CAP);
            }
        });
    });
    assert_eq!((s.len(), r.len()), (0, 0));
}

#[test]
fn disconnect_wakes_sender() {
    let (s, r) = multiproc::pipe::<()>().unwrap();
    // Fill the pipe so that the next send blocks.
    while s.try_send(()).is_ok() {}
    thread::scope(|scope| {
        scope.spawn(move || {
            assert!(matches!(s.send(()), Err(SendError::Disconnected(()))));
        });
        scope.spawn(move || {
            thread::sleep(ms(1000));
            drop(r);
        });
    });
}

#[test]
fn disconnect_wakes_receiver() {
    let (s, r) = multiproc::pipe::<()>().unwrap();
    thread::scope(|scope| {
        scope.spawn(move || {
            assert!(matches!(r.recv(), Err(RecvError::Disconnected)));
        });
        scope.spawn(move || {
            thread::sleep(ms(1000));
            drop(s);
        });
    });
}

#[test]
fn spsc() {
    const COUNT: usize = 100_000;
    let (s, r) = bounded(3);
    let r = receiver(r);
    thread::scope(|scope| {
        scope.spawn(move || {
            for i in 0..COUNT {
                assert_eq!(r.get().ok(), Some(i));
            }
            assert!(matches!(r.get(), Err(RecvError::Disconnected)));
        });
        scope.spawn(move || {
            for i in 0..COUNT {
                s.put(i).unwrap();
            }
        });
    });
}

#[test]
fn mpmc() {
    const COUNT: usize = 25_000;
    const THREADS: usize = 4;
    let (s, r) = bounded::<usize>(3);
    let v: Vec<AtomicUsize> = (0..COUNT).map(|_| AtomicUsize::new(0)).collect();
    thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..COUNT {
                    let n = r.get().unwrap();
                    v[n].fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for _ in 0..THREADS {
            scope.spawn(|| {
                for i in 0..COUNT {
                    s.put(i).unwrap();
                }
            });
        }
    });
    for c in v {
        assert_eq!(c.load(Ordering::SeqCst), THREADS);
    }
}

#[test]
fn stress_oneshot() {
    const COUNT: usize = 1_000;
    for _ in 0..COUNT {
        let (s, r) = bounded(1);
        thread::scope(|scope| {
            scope.spawn(|| r.get().unwrap());
            scope.spawn(|| s.put(0).unwrap());
        });
    }
}

#[test]
fn stress_iter() {
    const COUNT: usize = 100_000;
    let (request_s, request_r) = multiproc::pipe().unwrap();
    let (response_s, response_r) = multiproc::pipe().unwrap();
    thread::scope(|scope| {
        scope.spawn(move || {
            let mut count = 0;
            loop {
                for x in response_r.try_iter() {
                    count += x;
                    if count == COUNT {
                        return;
                    }
                }
                request_s.send(()).unwrap();
            }
        });
        for () in request_r.iter() {
            if response_s.send(1).is_err() {
                break;
            }
        }
    });
}

#[test]
fn stress_timeout_two_threads() {
    const COUNT: usize = 100;
    let (s, r) = bounded(2);
    thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..COUNT {
                if i % 2 == 0 {
                    thread::sleep(ms(50));
                }
                while s.put_timeout(i, ms(10)).is_err() {}
            }
        });
        scope.spawn(|| {
            for i in 0..COUNT {
                if i % 2 == 0 {
                    thread::sleep(ms(50));
                }
                loop {
                    if let Ok(x) = r.get_timeout(ms(10)) {
                        assert_eq!(x, i);
                        break;
                    }
                }
            }
        });
    });
}

#[test]
fn linearizable() {
    const COUNT: usize = 25_000;
    const THREADS: usize = 4;
    let (s, r) = bounded(THREADS);
    thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..COUNT {
                    s.put(0).unwrap();
                    r.try_get().unwrap();
                }
            });
        }
    });
}

/// A message that carries the receiver the next message will arrive on.
#[derive(serde::Serialize, serde::Deserialize)]
struct Link(Option<multiproc::Receiver<Link>>);

#[test]
fn channel_through_channel() {
    // crossbeam sends `Box<dyn Any>` holding a receiver; here the receiver itself is the
    // message: handles are serde values.
    const COUNT: usize = 200;
    let (s, r) = multiproc::pipe::<Link>().unwrap();
    thread::scope(|scope| {
        scope.spawn(move || {
            let mut s = s;
            for _ in 0..COUNT {
                let (new_s, new_r) = multiproc::pipe().unwrap();
                s.send(Link(Some(new_r))).unwrap();
                s = new_s;
            }
            s.send(Link(None)).unwrap();
        });
        scope.spawn(move || {
            let mut r = r;
            let mut hops = 0;
            while let Link(Some(next)) = r.recv().unwrap() {
                r = next;
                hops += 1;
            }
            assert_eq!(hops, COUNT);
        });
    });
}

#[test]
fn unbounded_pipe_holds_what_its_buffer_holds() {
    // crossbeam's list flavour never blocks a sender; a pipe blocks when its shared
    // buffer is full rather than growing without bound. Everything sent arrives.
    let (s, r) = multiproc::pipe::<u64>().unwrap();
    let mut sent = 0u64;
    while s.try_send(sent).is_ok() {
        sent += 1;
    }
    assert!(sent > 10_000, "only {sent} fit");
    assert!(matches!(s.try_send(0), Err(TrySendError::Full(0))));
    for i in 0..sent {
        assert_eq!(r.try_recv().ok(), Some(i));
    }
    assert!(r.try_recv().unwrap_err().is_empty());
}

#[test]
fn iter_and_try_recv_on_disconnect() {
    let (s, r) = multiproc::pipe::<u32>().unwrap();
    for i in 0..5 {
        s.send(i).unwrap();
    }
    drop(s);
    assert_eq!(r.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert!(matches!(r.try_recv(), Err(TryRecvError::Disconnected)));
}
