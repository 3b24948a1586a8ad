//! A producer process and a consumer process share a queue; `None` ends the stream.
//!
//! The Python program:
//!
//! ```python
//! import multiprocessing, time
//!
//! def producer(q):
//!     for i in range(5):
//!         print(f"Producing {i}")
//!         q.put(i)
//!         time.sleep(0.5)
//!     q.put(None)
//!
//! def consumer(q):
//!     while (item := q.get()) is not None:
//!         print(f"Consuming {item}")
//!
//! if __name__ == "__main__":
//!     q = multiprocessing.Queue()
//!     p = multiprocessing.Process(target=producer, args=(q,))
//!     c = multiprocessing.Process(target=consumer, args=(q,))
//!     p.start(); c.start()
//!     p.join(); c.join()
//! ```
//!
//! Output (each item is consumed right after it is produced):
//!
//! ```text
//! Producing 0
//! Consuming 0
//! Producing 1
//! Consuming 1
//! ...
//! Producing 4
//! Consuming 4
//! ```
//!
//! Unlike Python's, the queue has no feeder thread: whatever `put` accepted is in shared
//! memory, and stays there for the consumer even if the producer is killed right after.

use multiproc::Queue;
use multiproc_examples::sleep;

fn producer(q: Queue<Option<u32>>) {
    for i in 0..5 {
        println!("Producing {i}");
        q.put(Some(i)).expect("put");
        sleep(0.5);
    }
    q.put(None).expect("put");
}

fn consumer(q: Queue<Option<u32>>) {
    while let Some(item) = q.get().expect("get") {
        println!("Consuming {item}");
    }
}

pub fn run() {
    let q = Queue::new().expect("queue");
    let p = multiproc::spawn(producer, q.clone()).expect("start producer");
    let c = multiproc::spawn(consumer, q).expect("start consumer");
    p.join().expect("producer");
    c.join().expect("consumer");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
