//! A panic in a child, brought back as data: message, location and backtrace.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::RefCell;
use std::fmt;
use std::panic;

use serde::{Deserialize, Serialize};

use crate::sys;

/// Where a panic happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicLocation {
    file: String,
    line: u32,
    column: u32,
}

impl PanicLocation {
    pub(crate) fn new(loc: &std::panic::Location<'_>) -> Self {
        PanicLocation {
            file: loc.file().to_owned(),
            line: loc.line(),
            column: loc.column(),
        }
    }

    /// The source file.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line, from 1.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column, from 1.
    pub fn column(&self) -> u32 {
        self.column
    }
}

impl fmt::Display for PanicLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A panic in another process, brought back as data.
///
/// The backtrace is captured when the child runs with `RUST_BACKTRACE=1` (or `full`),
/// which children inherit from the parent's environment, as `std` does for threads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePanic {
    process: String,
    pid: u32,
    message: String,
    location: Option<PanicLocation>,
    backtrace: Option<String>,
}

impl RemotePanic {
    pub(crate) fn new(
        process: String,
        pid: u32,
        message: String,
        location: Option<PanicLocation>,
        backtrace: Option<String>,
    ) -> Self {
        RemotePanic {
            process,
            pid,
            message,
            location,
            backtrace,
        }
    }

    /// The panic message (the payload, when it is a string).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where it panicked: `None` for an unwind begun with
    /// [`resume_unwind`](std::panic::resume_unwind) (no panic hook runs for it, and a
    /// panic caught earlier does not stand in for it).
    pub fn location(&self) -> Option<&PanicLocation> {
        self.location.as_ref()
    }

    /// The backtrace, when the child captured one.
    pub fn backtrace(&self) -> Option<&str> {
        self.backtrace.as_deref()
    }

    /// The name of the process that panicked.
    pub fn process_name(&self) -> &str {
        &self.process
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl fmt::Display for RemotePanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process '{}' (pid {}) panicked", self.process, self.pid)?;
        if let Some(loc) = &self.location {
            write!(f, " at {loc}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RemotePanic {}

type PanicInfo = (String, Option<PanicLocation>, Option<String>);

thread_local! {
    static LAST_PANIC: RefCell<Option<PanicInfo>> = const { RefCell::new(None) };
}

/// Records the panic's message, location and backtrace for the report, then lets the
/// previous hook (the default one prints to stderr) run as usual.
pub(crate) fn install_panic_hook() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let backtrace = Backtrace::capture();
        let backtrace =
            (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string());
        let record = (
            payload_message(info.payload()),
            info.location().map(PanicLocation::new),
            backtrace,
        );
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(record));
        previous(info);
    }));
}

/// Runs `f` (the user's code, on a thread of multiproc's own or one that waits on its
/// behalf); a panic comes back as the report [`caught_panic`] makes of it.
pub(crate) fn catching<T>(f: impl FnOnce() -> T) -> Result<T, RemotePanic> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(caught_panic)
}

/// The report of a caught panic; its payload is then dropped (see [`drop_payload`]).
pub(crate) fn caught_panic(payload: Box<dyn Any + Send>) -> RemotePanic {
    let report = panic_report(&*payload);
    drop_payload(payload);
    // After the payload's drop, which may panic in turn (caught there).
    crate::sync::barrier::panic_caught();
    report
}

/// Drops a caught panic's payload. Its `Drop` is the program's code and may panic in
/// turn: that panic is caught here, its own payload forgotten, rather than unwind out of
/// the code that caught the first (a pool worker's loop, which ended, and the task was
/// counted a worker's death; a supervisor's thread; the manager's dispatcher).
pub(crate) fn drop_payload(payload: Box<dyn Any + Send>) {
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
    if let Err(again) = dropped {
        std::mem::forget(again);
        // Its record is not a later panic's (one begun by `resume_unwind` with the
        // same message runs no hook, and would be given this one's location).
        LAST_PANIC.with(|p| p.borrow_mut().take());
    }
}

/// Drops each of `items` under a catch of its own (a `Drop` that panics has its payload
/// dropped as by [`drop_payload`]; dropped together, a second such panic, met while the
/// first unwinds, would abort the process), keeping the hook's record of the panic the
/// caller is about to report (a `Drop`'s panic would replace it, and the report would
/// lose its location, or take the `Drop`'s).
pub(crate) fn drop_each_keeping_report<T>(items: impl IntoIterator<Item = T>) {
    let kept = LAST_PANIC.with(|p| p.borrow_mut().take());
    for item in items {
        if let Err(again) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(item)))
        {
            drop_payload(again);
        }
    }
    LAST_PANIC.with(|p| *p.borrow_mut() = kept);
}

/// The report of a caught panic, from its payload: what this process knows of it, the
/// message, and the location and backtrace the hook recorded (if this is a child, where
/// the hook is installed).
pub(crate) fn panic_report(payload: &(dyn Any + Send)) -> RemotePanic {
    // The hook's record is this panic's only if it says what the payload says: a panic
    // the user's code caught itself leaves a record behind, and an unwind begun with
    // `resume_unwind` runs no hook.
    let message = payload_message(payload);
    let (message, location, backtrace) = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .filter(|(recorded, _, _)| *recorded == message)
        .unwrap_or((message, None, None));
    RemotePanic::new(
        super::me().name.clone(),
        sys::getpid(),
        message,
        location,
        backtrace,
    )
}

pub(crate) fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(e) = payload.downcast_ref::<std::io::Error>() {
        // `std::panic::panic_any(error)`: its own words (and errno) are the message.
        e.to_string()
    } else {
        "Box<dyn Any>".to_owned()
    }
}
