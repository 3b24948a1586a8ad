//! What the example programs share: a `sleep` that the tour can speed up.
//!
//! The examples are Rust twins of Python tutorial programs, which sleep for seconds to
//! make their timing visible. The tour runs them all in a row, so it sets a faster pace
//! in every process through `multiproc::init_with`'s setup function.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static PACE: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000); // 1.0

/// Scales every [`sleep`] in this process (1.0: real time).
pub fn set_pace(pace: f64) {
    PACE.store(pace.to_bits(), Ordering::Relaxed);
}

/// Sleeps `secs` seconds, scaled by the pace.
pub fn sleep(secs: f64) {
    let pace = f64::from_bits(PACE.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs_f64(secs * pace));
}

/// `secs` seconds, scaled by the pace: for intervals that should follow it.
pub fn paced(secs: f64) -> Duration {
    let pace = f64::from_bits(PACE.load(Ordering::Relaxed));
    Duration::from_secs_f64(secs * pace)
}

/// The tasks of the cluster examples (`cluster_worker` runs them, `cluster_client`
/// submits them): declared once, in code both build.
#[cfg(feature = "redis")]
pub mod cluster_tasks {
    use multiproc::cluster::TaskDef;

    /// `x * x`.
    pub const SQUARE: TaskDef<u64, u64> = TaskDef::new("tutorial.square");
    /// `x * x`, except that 3 crashes the process it runs in.
    pub const SQUARE_OR_CRASH: TaskDef<u64, u64> = TaskDef::new("tutorial.square_or_crash");

    pub fn square(x: u64) -> u64 {
        x * x
    }

    /// Squares, except that 3 crashes the process it runs in, as a failed assertion in
    /// native code would.
    pub fn square_or_crash(x: u64) -> u64 {
        if x == 3 {
            std::process::abort();
        }
        x * x
    }
}
