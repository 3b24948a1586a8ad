//! multiproc from tests of the standard test harness: each test calls `init()` on its own
//! thread. Children started by executing the test binary recognise themselves before
//! libtest's `main` (which would otherwise run every test again in them), and a guard
//! dropped at the end of one test does not stop the others from spawning.

mod watchdog;

use std::time::Duration;

use multiproc::{Builder, Pool, StartMethod};

const T: Duration = Duration::from_secs(30);

fn square(x: u64) -> u64 {
    x * x
}

/// Initialises multiproc for a test (the binary's watchdog, `mod watchdog`, is the net
/// under the waits).
fn setup() -> multiproc::Init {
    multiproc::init()
}

#[test]
fn fork_server_child_from_a_test() {
    let _guard = setup();
    let mut child = multiproc::spawn(square, 7).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 49);
}

#[test]
fn spawn_method_child_from_a_test() {
    let _guard = setup();
    let mut child = Builder::new()
        .start_method(StartMethod::Spawn)
        .spawn(square, 8)
        .unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 64);
}

#[test]
fn pool_from_a_test() {
    let _guard = setup();
    let pool = Pool::new(2).unwrap();
    let mut task = pool.submit(square, 5).unwrap();
    assert_eq!(task.wait_timeout(T).unwrap(), 25);
}

#[test]
fn a_dropped_guard_does_not_stop_spawning() {
    drop(setup());
    let mut child = multiproc::spawn(square, 3).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 9);
    assert!(!child.is_alive());
}
