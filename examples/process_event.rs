//! One process waits for an event that another sets two seconds later.
//!
//! The Python program:
//!
//! ```python
//! import multiprocessing, time
//!
//! def waiter(event):
//!     print("Waiting for the event")
//!     event.wait()
//!     print("Event received")
//!
//! def setter(event):
//!     time.sleep(2)
//!     print("Setting the event")
//!     event.set()
//!
//! if __name__ == "__main__":
//!     event = multiprocessing.Event()
//!     w = multiprocessing.Process(target=waiter, args=(event,))
//!     s = multiprocessing.Process(target=setter, args=(event,))
//!     w.start(); s.start()
//!     w.join(); s.join()
//! ```
//!
//! Output:
//!
//! ```text
//! Waiting for the event
//! Setting the event
//! Event received
//! ```

use multiproc::Event;
use multiproc_examples::sleep;

fn waiter(event: Event) {
    println!("Waiting for the event");
    event.wait();
    println!("Event received");
}

fn setter(event: Event) {
    sleep(2.0);
    println!("Setting the event");
    event.set();
}

pub fn run() {
    let event = Event::new().expect("event");
    let w = multiproc::spawn(waiter, event.clone()).expect("start waiter");
    let s = multiproc::spawn(setter, event).expect("start setter");
    w.join().expect("waiter");
    s.join().expect("setter");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
