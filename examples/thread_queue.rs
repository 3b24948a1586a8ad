//! The threading twin of `process_queue`: a producer thread and a consumer thread share
//! the same `multiproc::Queue` type; `None` ends the stream.
//!
//! The Python program:
//!
//! ```python
//! import queue, threading, time
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
//! q = queue.Queue()
//! threads = [threading.Thread(target=producer, args=(q,)),
//!            threading.Thread(target=consumer, args=(q,))]
//! for t in threads: t.start()
//! for t in threads: t.join()
//! ```
//!
//! Output:
//!
//! ```text
//! Producing 0
//! Consuming 0
//! ...
//! Producing 4
//! Consuming 4
//! ```

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
    let threads = [
        std::thread::spawn({
            let q = q.clone();
            move || producer(q)
        }),
        std::thread::spawn(move || consumer(q)),
    ];
    for t in threads {
        t.join().expect("thread");
    }
}

#[allow(dead_code)]
fn main() {
    run();
}
