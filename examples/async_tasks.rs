//! asyncio's everyday programs, with tokio alone and with multiproc's processes, side by
//! side: tasks gathered, a queue with a producer, a consumer and a sentinel, and
//! exceptions (an error value, a crash, a timeout). The work that needs a process (CPU,
//! code that may crash) goes to a `Pool` or `spawn`; `Task`s, `JoinHandle`s and queues
//! are futures, so one tokio thread awaits them all, without a thread per wait.
//!
//! The Python programs:
//!
//! ```python
//! import asyncio
//!
//! # 1. create_task + gather
//! async def square(n):
//!     await asyncio.sleep(0.1 * n)
//!     return n * n
//!
//! async def gather_squares():
//!     tasks = [asyncio.create_task(square(n)) for n in (3, 1, 2)]
//!     print(await asyncio.gather(*tasks))          # [9, 1, 4]
//!
//! # 2. an asyncio.Queue, a producer and a consumer, None as the sentinel
//! async def producer(q):
//!     for i in range(3):
//!         await q.put(f"message {i}")
//!     await q.put(None)
//!
//! async def consumer(q):
//!     while (item := await q.get()) is not None:
//!         print(f"consumed {item}")
//!
//! async def queue_program():
//!     q = asyncio.Queue(maxsize=2)
//!     await asyncio.gather(producer(q), consumer(q))
//!
//! # 3. exceptions: gathered as values, and a timeout
//! async def parse(text):
//!     if not text.isdigit():
//!         raise ValueError(f"not a number: {text!r}")
//!     return int(text)
//!
//! async def exceptions():
//!     results = await asyncio.gather(*(parse(t) for t in ("1", "x", "3")),
//!                                    return_exceptions=True)
//!     for r in results:
//!         print(f"error: {r}" if isinstance(r, Exception) else f"ok: {r}")
//!     try:
//!         await asyncio.wait_for(asyncio.sleep(10), timeout=0.1)
//!     except asyncio.TimeoutError:
//!         print("timed out")
//!
//! async def main():
//!     await gather_squares()
//!     await queue_program()
//!     await exceptions()
//!
//! asyncio.run(main())
//! ```
//!
//! Output (each part once with tokio alone, once with processes):
//!
//! ```text
//! [9, 1, 4]
//! [9, 1, 4]
//! consumed message 0
//! consumed message 1
//! consumed message 2
//! consumed message 0
//! consumed message 1
//! consumed message 2
//! ok: 1
//! error: not a number: "x"
//! ok: 3
//! timed out
//! ok: 1
//! error: not a number: "x"
//! ok: 3
//! a crash is an error too: the worker running the task died (killed by SIGABRT)
//! timed out
//! ```

use std::fmt;
use std::time::Duration;

use multiproc::{Pool, Queue, TaskError};
use multiproc_examples::{paced, sleep};

// 1. create_task + gather --------------------------------------------------------------

/// tokio alone: tasks of this process.
async fn gather_squares_tokio() -> Vec<u64> {
    let tasks: Vec<_> = [3, 1, 2]
        .into_iter()
        .map(|n| {
            tokio::spawn(async move {
                tokio::time::sleep(paced(0.1 * n as f64)).await;
                n * n
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn square(n: u64) -> u64 {
    sleep(0.1 * n as f64); // imagine CPU work here
    n * n
}

/// With processes: the same shape, the work in a pool's workers.
async fn gather_squares_processes(pool: &Pool) -> Vec<u64> {
    let tasks: Vec<_> = [3, 1, 2]
        .into_iter()
        .map(|n| pool.submit(square, n).expect("submit"))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

// 2. a queue with a sentinel -----------------------------------------------------------

/// tokio alone: a bounded channel (`asyncio.Queue(maxsize=2)`).
async fn queue_tokio() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<String>>(2);
    let producer = async move {
        for i in 0..3 {
            tx.send(Some(format!("message {i}"))).await.expect("send");
        }
        tx.send(None).await.expect("send");
    };
    let consumer = async move {
        while let Some(Some(item)) = rx.recv().await {
            println!("consumed {item}");
        }
    };
    tokio::join!(producer, consumer);
}

/// A producer in a process of its own.
fn produce(q: Queue<Option<String>>) {
    for i in 0..3 {
        q.put(Some(format!("message {i}"))).expect("put");
    }
    q.put(None).expect("put");
}

/// With processes: a multiproc queue that any process can use, awaited here.
async fn queue_processes() {
    let q = Queue::bounded(2).expect("queue");
    let child = multiproc::spawn(produce, q.clone()).expect("spawn");
    while let Some(item) = q.get_async().await.expect("get") {
        println!("consumed {item}");
    }
    // The child is a future too: awaiting it is joining it.
    child.await.expect("producer");
    // Putting from async code: `put_async` waits for room without blocking the thread.
    let echo = Queue::bounded(1).expect("queue");
    echo.put_async(1u32).await.expect("put");
    assert_eq!(echo.get_async().await.expect("get"), 1);
}

// 3. exceptions ------------------------------------------------------------------------

/// `ValueError`, as a typed error that can cross processes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct NotANumber(String);

impl fmt::Display for NotANumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a number: {:?}", self.0)
    }
}

fn parse(text: String) -> Result<u64, NotANumber> {
    text.parse().map_err(|_| NotANumber(text))
}

/// tokio alone: errors are values.
async fn exceptions_tokio() {
    let tasks: Vec<_> = ["1", "x", "3"]
        .into_iter()
        .map(|t| tokio::spawn(async move { parse(t.to_string()) }))
        .collect();
    for t in tasks {
        match t.await.expect("task") {
            Ok(n) => println!("ok: {n}"),
            Err(e) => println!("error: {e}"),
        }
    }
    match tokio::time::timeout(paced(0.1), tokio::time::sleep(Duration::from_secs(10))).await {
        Ok(()) => println!("finished"),
        Err(_) => println!("timed out"),
    }
}

fn crash(_: ()) -> u64 {
    std::process::abort()
}

/// With processes: an `Err` comes back as the task's failure with the typed error in it,
/// a crash as an error value too, and a task that takes too long is cancelled (its
/// worker killed).
async fn exceptions_processes(pool: &Pool) {
    let tasks: Vec<_> = ["1", "x", "3"]
        .into_iter()
        .map(|t| pool.submit_fallible(parse, t.to_string()).expect("submit"))
        .collect();
    for t in tasks {
        match t.await {
            Ok(n) => println!("ok: {n}"),
            Err(TaskError::Failed(f)) => {
                let e: NotANumber = f.decode().expect("the error decodes");
                println!("error: {e}");
            }
            Err(e) => println!("unexpected: {e}"),
        }
    }
    match pool.submit(crash, ()).expect("submit").await {
        Err(e @ TaskError::WorkerDied(_)) => println!("a crash is an error too: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    let mut slow = pool.submit(square, 100).expect("submit");
    match tokio::time::timeout(paced(0.1), &mut slow).await {
        Ok(r) => println!("finished: {r:?}"),
        Err(_) => {
            slow.cancel();
            println!("timed out");
        }
    }
}

pub fn run() {
    let pool = Pool::new(2).expect("pool");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        println!("{:?}", gather_squares_tokio().await);
        println!("{:?}", gather_squares_processes(&pool).await);
        queue_tokio().await;
        queue_processes().await;
        exceptions_tokio().await;
        exceptions_processes(&pool).await;
    });
    pool.join();
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
