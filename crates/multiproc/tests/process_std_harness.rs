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

fn boom(x: u64) -> u64 {
    panic!("boom {x}")
}

/// Without a setup function, a child of the fork server records its panic through the
/// hook the server installed: the report has the panic's location.
#[test]
fn a_child_panic_comes_back_with_its_location() {
    let _guard = setup();
    let mut child = Builder::new()
        .stderr(multiproc::Stdio::null())
        .spawn(boom, 3)
        .unwrap();
    let Err(multiproc::ProcessError::Panicked(p)) = child.join_timeout(T) else {
        panic!("the child did not report a panic")
    };
    assert_eq!(p.message(), "boom 3");
    let location = p.location().expect("the panic's location");
    assert!(
        location.file().ends_with("process_std_harness.rs"),
        "{location}"
    );
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
