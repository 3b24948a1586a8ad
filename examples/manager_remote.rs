//! A manager served over TCP, and two client processes that share its objects: one puts
//! jobs in a queue, the other takes them and writes results in a dict.
//!
//! The clients here run on the server's machine: once they have authenticated over TCP,
//! the server names a listener of its own in Linux's abstract socket namespace, and they
//! move there and onto shared memory. A client on another machine cannot reach that name
//! and stays on TCP; the code is the same either way.
//!
//! The Python program (three programs in Python's documentation; one here):
//!
//! ```python
//! from multiprocessing.managers import BaseManager
//! import multiprocessing, queue
//!
//! jobs, results = queue.Queue(), {}
//! class JobManager(BaseManager): pass
//! JobManager.register("jobs", callable=lambda: jobs)
//! JobManager.register("results", callable=lambda: results, proxytype=DictProxy)
//!
//! def producer(address):
//!     m = JobManager(address=address, authkey=b"abracadabra"); m.connect()
//!     for n in range(1, 6):
//!         m.jobs().put(n)
//!     m.jobs().put(None)
//!
//! def consumer(address):
//!     m = JobManager(address=address, authkey=b"abracadabra"); m.connect()
//!     while (n := m.jobs().get()) is not None:
//!         m.results().update({n: n * n})
//!
//! if __name__ == "__main__":
//!     m = JobManager(address=("127.0.0.1", 0), authkey=b"abracadabra")
//!     server = m.get_server()
//!     threading.Thread(target=server.serve_forever, daemon=True).start()
//!     ...start producer and consumer with server.address, join them, print results...
//! ```
//!
//! Output (the port varies):
//!
//! ```text
//! serving on tcp://127.0.0.1:41234
//! producer: put 5 jobs
//! consumer: did 5 jobs
//! results: [(1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]
//! a client with the wrong key: authentication failed: the server refused the key
//! ```

use multiproc::Manager;
use multiproc::manager::Address;

const KEY: &[u8] = b"abracadabra";

fn producer(address: Address) -> usize {
    let m = Manager::connect(address, KEY).expect("connect");
    let jobs = m.named("jobs").queue::<Option<u64>>().expect("jobs");
    for n in 1..=5 {
        jobs.put(Some(n)).expect("put");
    }
    jobs.put(None).expect("put the end marker");
    5
}

fn consumer(address: Address) -> usize {
    let m = Manager::connect(address, KEY).expect("connect");
    let jobs = m.named("jobs").queue::<Option<u64>>().expect("jobs");
    let results = m.named("results").dict::<u64, u64>().expect("results");
    let mut done = 0;
    while let Some(n) = jobs.get().expect("get") {
        results.insert(n, n * n).expect("insert");
        done += 1;
    }
    done
}

pub fn run() {
    let loopback = "127.0.0.1:0"
        .parse::<std::net::SocketAddr>()
        .expect("address");
    let server = Manager::serve(loopback, KEY).expect("serve");
    let address = server.address().clone();
    println!("serving on {address}");
    let consumer = multiproc::spawn(consumer, address.clone()).expect("start the consumer");
    let producer = multiproc::spawn(producer, address.clone()).expect("start the producer");
    println!("producer: put {} jobs", producer.join().expect("producer"));
    println!("consumer: did {} jobs", consumer.join().expect("consumer"));
    let m = server.manager().expect("connect");
    let mut results = m
        .named("results")
        .dict::<u64, u64>()
        .expect("results")
        .items()
        .expect("items");
    results.sort();
    println!("results: {results:?}");
    match Manager::connect(address, b"open sesame") {
        Ok(_) => println!("a client with the wrong key got in?"),
        Err(e) => println!("a client with the wrong key: {e}"),
    }
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
