//! The net under a test binary of the default harness (its tests and proptests): if the
//! binary runs for longer than [`LIMIT`], it aborts, saying so. Every wait in the tests
//! has its own timeout; this catches the one that was forgotten.
//!
//! The watchdog starts before `main`, from a constructor of the test binary, in the test
//! process only: a process multiproc starts from this binary (a fork server, a child)
//! carries a token and must stay single-threaded until it knows itself.

use std::time::Duration;

/// How long the binary may run.
pub const LIMIT: Duration = Duration::from_secs(600);

#[ctor::ctor(unsafe)]
fn start_watchdog() {
    if ["MULTIPROC_CHILD", "MULTIPROC_FORKSERVER"]
        .iter()
        .any(|token| std::env::var_os(token).is_some())
    {
        return;
    }
    std::thread::spawn(|| {
        std::thread::sleep(LIMIT);
        eprintln!("test binary ran for more than {LIMIT:?}: a wait without a timeout; aborting");
        std::process::abort();
    });
}
