//! Ten threads each add 1 to a shared counter 1,000 times under a lock: 10,000. The
//! threading twin of `process_lock_value`, with the same `Lock` and `Value` types.
//!
//! The Python program:
//!
//! ```python
//! import threading
//!
//! counter = 0
//! lock = threading.Lock()
//!
//! def add():
//!     global counter
//!     for _ in range(1000):
//!         with lock:
//!             counter += 1
//!
//! threads = [threading.Thread(target=add) for _ in range(10)]
//! for t in threads:
//!     t.start()
//! for t in threads:
//!     t.join()
//! print(f"Final counter: {counter}")
//! ```
//!
//! Output:
//!
//! ```text
//! Final counter: 10000
//! ```

use multiproc::{Lock, Value};

pub fn run() {
    let counter = Value::new(0).expect("value");
    let lock = Lock::new().expect("lock");
    std::thread::scope(|s| {
        for _ in 0..10 {
            s.spawn(|| {
                for _ in 0..1000 {
                    let _held = lock.lock().expect("the lock's owner died");
                    counter.store(counter.load() + 1);
                }
            });
        }
    });
    println!("Final counter: {}", counter.load());
}

#[allow(dead_code)]
fn main() {
    run();
}
