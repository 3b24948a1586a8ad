//! Ten processes each add 1 to a shared counter 1,000 times under a lock: 10,000.
//!
//! The Python program:
//!
//! ```python
//! import multiprocessing
//!
//! def add(counter, lock):
//!     for _ in range(1000):
//!         with lock:
//!             counter.value += 1
//!
//! if __name__ == "__main__":
//!     counter = multiprocessing.Value("i", 0)
//!     lock = multiprocessing.Lock()
//!     procs = [multiprocessing.Process(target=add, args=(counter, lock)) for _ in range(10)]
//!     for p in procs:
//!         p.start()
//!     for p in procs:
//!         p.join()
//!     print(f"Final counter: {counter.value}")
//! ```
//!
//! Output:
//!
//! ```text
//! Final counter: 10000
//! A process was killed holding the lock; the next lock() says: the previous owner of the lock died holding it
//! Counter after the repair: 10001
//! ```
//!
//! The second part is what Python cannot do: when a process dies holding a
//! `multiprocessing.Lock`, every other process waiting for it hangs forever. Here the
//! next `lock()` returns `OwnerDied` with the lock held, and everything goes on.

use multiproc::{Event, Lock, Value};

fn add((counter, lock): (Value<i32>, Lock)) {
    for _ in 0..1000 {
        let _held = lock.lock().expect("the lock's owner died");
        // A `Value` has a lock of its own too: `*counter.lock()? += 1` alone would do.
        counter.store(counter.load() + 1);
    }
}

/// Takes the lock, says so, and waits to be killed.
fn die_holding((lock, holding): (Lock, Event)) {
    let _held = lock.lock().unwrap_or_else(|died| died.into_inner());
    holding.set();
    std::thread::sleep(std::time::Duration::from_secs(3600));
}

pub fn run() {
    let counter = Value::new(0).expect("value");
    let lock = Lock::new().expect("lock");
    let procs: Vec<_> = (0..10)
        .map(|_| multiproc::spawn(add, (counter.clone(), lock.clone())).expect("start"))
        .collect();
    for p in procs {
        p.join().expect("adder");
    }
    println!("Final counter: {}", counter.load());

    let holding = Event::new().expect("event");
    let victim = multiproc::spawn(die_holding, (lock.clone(), holding.clone())).expect("start");
    holding.wait();
    victim.kill().expect("kill");
    let _ = victim.join();
    match lock.lock() {
        Ok(_) => println!("The lock was free?"),
        Err(died) => {
            println!("A process was killed holding the lock; the next lock() says: {died}");
            let _held = died.into_inner();
            counter.store(counter.load() + 1);
        }
    }
    println!("Counter after the repair: {}", counter.load());
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
