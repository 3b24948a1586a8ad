//! Ping-pong over a two-way pipe between the main process and a child.
//!
//! The Python program:
//!
//! ```python
//! import multiprocessing
//!
//! def pong(conn):
//!     while (msg := conn.recv()) != "bye":
//!         conn.send(msg.replace("ping", "pong"))
//!
//! if __name__ == "__main__":
//!     ours, theirs = multiprocessing.Pipe()
//!     p = multiprocessing.Process(target=pong, args=(theirs,))
//!     p.start()
//!     for i in range(3):
//!         ours.send(f"ping {i}")
//!         print(ours.recv())
//!     ours.send("bye")
//!     p.join()
//! ```
//!
//! Output:
//!
//! ```text
//! pong 0
//! pong 1
//! pong 2
//! ```

use multiproc::Connection;

fn pong(conn: Connection<String, String>) {
    loop {
        let msg = conn.recv().expect("recv");
        if msg == "bye" {
            break;
        }
        conn.send(msg.replace("ping", "pong")).expect("send");
    }
}

pub fn run() {
    let (ours, theirs) = multiproc::duplex::<String, String>().expect("pipe");
    let p = multiproc::spawn(pong, theirs).expect("start");
    for i in 0..3 {
        ours.send(format!("ping {i}")).expect("send");
        println!("{}", ours.recv().expect("recv"));
    }
    ours.send("bye".into()).expect("send");
    p.join().expect("pong");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
