//! Logging that names the process, like Python's `%(processName)s: %(message)s`.
//!
//! Children run [`init_with`](crate::init_with)'s setup function before their own
//! function, so passing [`init`] there configures every process the same way:
//!
//! ```no_run
//! fn work(_: ()) {
//!     tracing::info!("working");
//! }
//!
//! fn main() {
//!     let _guard = multiproc::init_with(multiproc::log::init);
//!     tracing::info!("starting");                 // MainProcess: starting
//!     multiproc::spawn(work, ()).unwrap().join().unwrap(); // Process-1: working
//! }
//! ```

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A [`FormatEvent`] that writes `{process name}: {message and fields}`, nothing else.
///
/// ```no_run
/// tracing_subscriber::fmt()
///     .event_format(multiproc::log::ProcessName)
///     .init();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessName;

impl<S, N> FormatEvent<S, N> for ProcessName
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}: ", crate::current_process().name())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs a subscriber that writes every event at `DEBUG` and above to stderr as
/// `{process name}: {message}` (Python's `logging.basicConfig(level=logging.DEBUG,
/// format='%(processName)s: %(message)s')`). Does nothing if a subscriber is already set.
///
/// multiproc's events about its children (started, joined, terminated, a supervised
/// child that returned) are at `TRACE`, below this, as Python keeps `multiprocessing`'s
/// own logging below `DEBUG`. Its other routine events are at `DEBUG`, and show (a job
/// added to a scheduler, a pool's task tried again, a manager's client that stays on
/// TCP, a handshake that failed); a supervised child that crashed, its restart, and a
/// pool or supervisor that gives up are at `WARN`, `INFO` or `ERROR`. A program that
/// wants its own `DEBUG` events without multiproc's installs a subscriber of its own
/// with a filter (`tracing_subscriber`'s `EnvFilter`, `multiproc=info`).
pub fn init() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .event_format(ProcessName)
        .try_init();
}
