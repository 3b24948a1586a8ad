//! Async code awaits pool tasks and a queue without blocking its runtime.
//!
//! The Python program:
//!
//! ```python
//! import asyncio, multiprocessing
//! from concurrent.futures import ProcessPoolExecutor
//!
//! def cpu_bound(n):
//!     return sum(i * i for i in range(n))
//!
//! def producer(q):
//!     for i in range(3):
//!         q.put(f"message {i}")
//!     q.put(None)
//!
//! async def consumer(q):
//!     loop = asyncio.get_running_loop()
//!     while (item := await loop.run_in_executor(None, q.get)) is not None:
//!         print(f"consumed {item}")
//!
//! async def main():
//!     loop = asyncio.get_running_loop()
//!     q = multiprocessing.Queue()
//!     multiprocessing.Process(target=producer, args=(q,)).start()
//!     with ProcessPoolExecutor(2) as pool:
//!         sums, _ = await asyncio.gather(
//!             asyncio.gather(*(loop.run_in_executor(pool, cpu_bound, n)
//!                              for n in (10, 1000, 100000))),
//!             consumer(q))
//!     print(sums)
//!
//! if __name__ == "__main__":
//!     asyncio.run(main())
//! ```
//!
//! Output:
//!
//! ```text
//! consumed message 0
//! consumed message 1
//! consumed message 2
//! [285, 332833500, 333328333350000]
//! ```
//!
//! Python needs a thread per blocking `q.get` (`run_in_executor`); here the queue and the
//! pool's tasks are futures themselves, so one tokio thread runs it all.

use multiproc::{Pool, Queue};

fn cpu_bound(n: u64) -> u64 {
    (0..n).map(|i| i * i).sum()
}

fn producer(q: Queue<Option<String>>) {
    for i in 0..3 {
        q.put(Some(format!("message {i}"))).expect("put");
    }
    q.put(None).expect("put");
}

async fn consumer(q: Queue<Option<String>>) {
    while let Some(item) = q.get_async().await.expect("get") {
        println!("consumed {item}");
    }
}

async fn gather(pool: &Pool) -> Vec<u64> {
    let tasks: Vec<_> = [10, 1000, 100_000]
        .into_iter()
        .map(|n| pool.submit(cpu_bound, n).expect("submit"))
        .collect();
    let mut sums = Vec::new();
    for task in tasks {
        sums.push(task.await.expect("task"));
    }
    sums
}

pub fn run() {
    let q = Queue::new().expect("queue");
    let p = multiproc::spawn(producer, q.clone()).expect("start producer");
    let pool = Pool::new(2).expect("pool");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let (sums, ()) = runtime.block_on(async { tokio::join!(gather(&pool), consumer(q)) });
    println!("{sums:?}");
    p.join().expect("producer");
    pool.join();
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
