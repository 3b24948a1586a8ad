//! [`Supervisor`]: keeps long-running child processes alive, restarting them per policy
//! (what supervisord and Erlang/OTP supervisors do); and [`daemonize`], which detaches a
//! service from its terminal.

mod daemon;
mod engine;
mod error;

use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::daemon::{Daemon, DaemonOptions, daemonize};
use self::engine::{Child, Settings, Shared, Supervising};
pub use self::error::{DaemonError, SupervisorError};
use crate::pool::{Jitter, RetryPolicy};
use crate::process::{Builder, ExitStatus, JoinHandle, SpawnError};

/// When a child that ended is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Restart {
    /// Always (the default): a service that should never stop.
    #[default]
    Permanent,
    /// Only if it ended abnormally: a panic, a signal, a non-zero exit, or (made with
    /// [`ChildSpec::new_fallible`]) its function returning `Err`. A child whose function
    /// returned otherwise (or that called `exit(0)`) is done.
    Transient,
    /// Never: a one-off job run under supervision for its clean stop.
    Temporary,
}

/// Which children restart when one must.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Only the child that ended (the default).
    #[default]
    OneForOne,
    /// Every child: the others are stopped (in reverse start order) and all start again
    /// in order, those that had ended (done) too, but for temporary ones (as OTP's). For
    /// children that cannot work without each other.
    OneForAll,
    /// The child that ended and every child started after it (as with `OneForAll`, those
    /// that had ended too, but for temporary ones): for a pipeline whose later stages
    /// depend on the earlier ones.
    RestForOne,
}

type Start = Arc<dyn Fn(&str) -> Result<Box<dyn Child>, SpawnError> + Send + Sync>;

/// A child of a [`Supervisor`]: its name, the function it runs, when it restarts and how
/// long it gets to stop.
///
/// Each child runs `f(args)` in a daemon process (it never outlives the supervisor's
/// process, even one killed with `SIGKILL`) that leads its own process group, so that
/// stopping it also stops whatever it started.
#[derive(Clone)]
#[must_use = "a child spec does nothing until it is given to a supervisor"]
pub struct ChildSpec {
    name: String,
    start: Start,
    restart: Restart,
    grace: Duration,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// Starts `f(args)` in a daemon child that leads its own process group, as `wrap` makes
/// it a [`Child`].
fn starter<A, R>(f: fn(A) -> R, args: A, wrap: fn(JoinHandle<R>) -> Box<dyn Child>) -> Start
where
    A: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    Arc::new(move |name: &str| -> Result<Box<dyn Child>, SpawnError> {
        let handle = Builder::new()
            .name(name)
            .daemon(true)
            .process_group(true)
            .spawn(f, args.clone())?;
        Ok(wrap(handle))
    })
}

impl ChildSpec {
    /// A child named `name` (also its process name) running `f(args)`; permanent, with
    /// 5 seconds to stop after `SIGTERM`.
    pub fn new<A, R>(name: impl Into<String>, f: fn(A) -> R, args: A) -> ChildSpec
    where
        A: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ChildSpec::with_start(name.into(), starter(f, args, |handle| Box::new(handle)))
    }

    /// Permanent, with 5 seconds to stop after `SIGTERM`.
    fn with_start(name: String, start: Start) -> ChildSpec {
        ChildSpec {
            name,
            start,
            restart: Restart::Permanent,
            grace: Duration::from_secs(5),
        }
    }

    /// As [`new`](Self::new), for a function that returns a `Result`: one that returns
    /// `Err` ended abnormally (a [`Restart::Transient`] child is restarted, and the
    /// restart counts towards the intensity), as a crash does; `Ok` is a normal end.
    /// A child made with [`new`](Self::new) ends normally whatever its function
    /// returns.
    pub fn new_fallible<A, T, E>(
        name: impl Into<String>,
        f: fn(A) -> Result<T, E>,
        args: A,
    ) -> ChildSpec
    where
        A: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + fmt::Display + Send + 'static,
    {
        ChildSpec::with_start(
            name.into(),
            starter(f, args, |handle| Box::new(engine::Fallible(handle))),
        )
    }

    /// When the child restarts.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// How long the child has to stop after `SIGTERM` before its process group, and the
    /// child itself (also one that moved to another group), are killed with `SIGKILL`.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildExit {
    /// Its function returned (or it exited with code 0).
    pub normal: bool,
    /// The exit code or signal, when known.
    pub status: Option<ExitStatus>,
    /// In words: `returned`, the panic message, `killed by SIGSEGV`, ...
    pub reason: String,
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Where a child stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChildState {
    /// Running as process `pid`.
    Running {
        /// Its process id.
        pid: u32,
    },
    /// Waiting out its backoff before it starts again.
    Restarting {
        /// Time left.
        after: Duration,
    },
    /// Ended and not to be restarted on its own (a transient child that returned, a
    /// temporary one); a transient one starts again with its siblings when a
    /// [`OneForAll`](Strategy::OneForAll) or [`RestForOne`](Strategy::RestForOne)
    /// restart takes it in.
    Done,
    /// Stopped by the supervisor.
    Stopped,
}

/// A child's status, from [`Supervisor::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildStatus {
    /// The child's name.
    pub name: String,
    /// Where it stands.
    pub state: ChildState,
    /// How many times it has been started again (a restart whose start failed is not
    /// counted; the next try that starts is).
    pub restarts: u32,
    /// How it ended last, if it has.
    pub last_exit: Option<ChildExit>,
}

/// What a supervisor did, from [`Supervisor::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A child started.
    Started {
        /// The child.
        child: String,
        /// Its process id.
        pid: u32,
    },
    /// A child ended (not stopped by the supervisor).
    Exited {
        /// The child.
        child: String,
        /// Its process id.
        pid: u32,
        /// How.
        exit: ChildExit,
    },
    /// A child will start again after `after` (with the siblings its strategy restarts
    /// with it).
    Restarting {
        /// The child.
        child: String,
        /// Its backoff, counted from the end of the siblings' stop; longer where a
        /// sibling restarting with it was already waiting for a later restart of its own.
        after: Duration,
    },
    /// Restart intensity was exceeded: every child was stopped.
    GaveUp {
        /// Why, in words.
        reason: String,
    },
    /// The supervisor stopped (asked to, or every child is done).
    Stopped,
}

/// Builds a [`Supervisor`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SupervisorBuilder {
    children: Vec<ChildSpec>,
    strategy: Strategy,
    max_restarts: u32,
    period: Duration,
    backoff: RetryPolicy,
    reset_after: Duration,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        SupervisorBuilder {
            children: Vec::new(),
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            period: Duration::from_secs(30),
            backoff: RetryPolicy::attempts(u32::MAX)
                .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(30))
                .jitter(Jitter::Equal),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl SupervisorBuilder {
    /// Adds a child; children start in the order they are added and stop in reverse.
    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.children.push(spec);
        self
    }

    /// Which children restart together (default [`Strategy::OneForOne`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// At most `max_restarts` restarts within any `period` (default 5 in 30 s); one more
    /// and the supervisor stops every child and fails with
    /// [`SupervisorError::Intensity`], rather than restart a broken service forever.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Delay before a restart: `base` the first time, doubling for each restart in a
    /// row, at most `max` (default 100 ms to 30 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = self.backoff.backoff(base, 2.0, max);
        self
    }

    /// How backoff delays are randomised (default [`Jitter::Equal`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// A child that ran this long before it ended restarts after the base delay again
    /// (default 10 s): backoff grows only while a child keeps failing fast.
    pub fn reset_after(mut self, stable: Duration) -> Self {
        self.reset_after = stable;
        self
    }

    /// Starts the supervising thread, then every child, in order.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::InvalidArgument`] for no children or two of one name, or a
    /// supervising thread that cannot be started (then no child is);
    /// [`SupervisorError::Spawn`] if a child cannot be started (those already started
    /// are stopped again).
    pub fn build(self) -> Result<Supervisor, SupervisorError> {
        if self.children.is_empty() {
            return Err(SupervisorError::InvalidArgument(
                "a supervisor needs at least one child".into(),
            ));
        }
        for (i, c) in self.children.iter().enumerate() {
            if self.children[..i].iter().any(|o| o.name == c.name) {
                return Err(SupervisorError::InvalidArgument(format!(
                    "two children named {:?}",
                    c.name
                )));
            }
        }
        let (shared, thread) = Supervising::start(
            self.children,
            Settings {
                strategy: self.strategy,
                max_restarts: self.max_restarts,
                period: self.period,
                backoff: self.backoff,
                reset_after: self.reset_after,
            },
        )?;
        Ok(Supervisor {
            shared,
            thread: Some(thread),
        })
    }
}

/// Keeps child processes alive: restarts them per their [`Restart`] policy and the
/// [`Strategy`], with exponential backoff and jitter, within a restart intensity; stops
/// them gracefully (`SIGTERM`, a grace period, then `SIGKILL` of the process group).
///
/// Dropping the supervisor stops every child.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::{ChildSpec, Restart, Supervisor};
///
/// fn serve(port: u16) {
///     // ... a service that might crash
/// #   let _ = port;
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let supervisor = Supervisor::builder()
///     .child(ChildSpec::new("web", serve, 8080))
///     .child(ChildSpec::new("metrics", serve, 9090).restart(Restart::Transient))
///     .intensity(10, Duration::from_secs(60))
///     .build()?;
/// for child in supervisor.status() {
///     println!("{}: {:?}", child.name, child.state);
/// }
/// supervisor.wait()?; // until every child is done, or intensity is exceeded
/// # Ok(())
/// # }
/// ```
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("children", &self.status())
            .finish()
    }
}

impl Supervisor {
    /// A builder: children, strategy, intensity, backoff.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    /// Every child's status, in start order.
    pub fn status(&self) -> Vec<ChildStatus> {
        self.shared.status()
    }

    /// A stream of what the supervisor does from now on. One that is not read keeps at
    /// most 100,000 events: later ones are dropped for it (with a warning) until it
    /// reads again; not the last ones, [`GaveUp`](SupervisorEvent::GaveUp) and
    /// [`Stopped`](SupervisorEvent::Stopped). After `Stopped` the stream ends (the
    /// receiver is disconnected), and a stream asked for once the supervisor has stopped
    /// is disconnected at once.
    pub fn events(&self) -> Receiver<SupervisorEvent> {
        self.shared.subscribe()
    }

    /// Whether the supervisor still runs (it stops when asked, when every child is done,
    /// or when intensity is exceeded).
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
    }

    /// Waits until the supervisor stops.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Intensity`] if it gave up: children ended (or failed to start
    /// again) more often than the intensity allows.
    pub fn wait(&self) -> Result<(), SupervisorError> {
        self.shared.wait(None)
    }

    /// Like [`wait`](Self::wait), at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait), and [`SupervisorError::Timeout`] if it still runs.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), SupervisorError> {
        // A timeout too long to add to the clock is no timeout.
        self.shared.wait(Instant::now().checked_add(timeout))
    }

    /// Stops every child (in reverse start order, each gracefully) and the supervisor.
    /// Returns how the supervisor ended: `Ok` unless it had already given up.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    pub fn shutdown(mut self) -> Result<(), SupervisorError> {
        self.stop_now();
        self.wait()
    }

    fn stop_now(&mut self) {
        self.shared.stop();
        if let Some(thread) = self.thread.take() {
            crate::sync::unpoisoned::join(thread);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_now();
    }
}
