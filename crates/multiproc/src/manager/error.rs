//! Why a manager call failed.

use std::io;

use crate::process::SpawnError;
use crate::wire::codec::CodecError;

/// Why a [`Manager`](crate::Manager) call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The server is gone (it stopped, was killed, or the connection dropped). Every
    /// call on a proxy of a dead manager returns this promptly.
    #[error("the manager is gone (its server stopped or the connection dropped)")]
    Disconnected,
    /// The server did not answer within the call timeout (plus the operation's own
    /// wait): it may be stopped, overloaded, or cut off from this machine. The call may
    /// or may not have been carried out; the connection it used is closed. Set the
    /// timeout with [`ManagerBuilder::call_timeout`](crate::manager::ManagerBuilder::call_timeout).
    #[error("the manager did not answer within {0:?}")]
    Unresponsive(std::time::Duration),
    /// The server refused this side's key, or could not prove it holds the key.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer is not a multiproc manager of this version, or broke the protocol.
    #[error("manager protocol error: {0}")]
    Protocol(String),
    /// The server process could not be started.
    #[error("cannot start the manager's server: {0}")]
    Start(#[from] SpawnError),
    /// A value could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The server has no object with this id: the proxy is of another manager, or of
    /// an earlier server at the same address (it restarted since).
    #[error(
        "the manager has no object {0} (a proxy of another server, or of one since restarted at its address?)"
    )]
    NoSuchObject(u64),
    /// A named object exists with other types than the proxy asked for.
    #[error("the object named {name:?} is a {found}, not a {expected}")]
    WrongType {
        /// The object's name.
        name: String,
        /// What was asked for.
        expected: String,
        /// What it is.
        found: String,
    },
    /// A list index past the end.
    #[error("index {index} out of range for a list of {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The list's length.
        len: u64,
    },
    /// A lock released (or a condition waited on or notified) by a thread that does
    /// not hold it.
    #[error("the lock is not held by this thread")]
    NotOwner,
    /// A thread tried to take a non-re-entrant lock it already holds.
    #[error("this thread already holds the lock (it is not re-entrant)")]
    WouldDeadlock,
    /// The barrier is broken: aborted, or a party timed out or died.
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// A wait with a timeout timed out (barriers; other waits return `false` or `None`).
    #[error("timed out")]
    Timeout,
    /// The condition's lock was taken back from an owner that died holding it: the lock
    /// is held again, and what it protects may be half-updated.
    #[error("the previous owner of the condition's lock died holding it")]
    OwnerDied,
    /// A custom object type the server was not built with.
    #[error("the manager does not serve the type {0} (register it on the builder)")]
    Unregistered(String),
    /// A custom object's handler panicked (the object lives on), or its constructor did
    /// (no object was made).
    #[error("the shared object panicked: {0}")]
    Panicked(String),
    /// A setting or an initial value is not valid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operating system refused.
    #[error(transparent)]
    Io(io::Error),
}

impl ManagerError {
    /// An I/O error: a lost connection is [`Disconnected`](ManagerError::Disconnected).
    pub(crate) fn from_io(e: io::Error) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            // `TimedOut` is `ETIMEDOUT`: TCP keepalive gave the server up.
            ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe
            | UnexpectedEof | NotConnected | NotFound | TimedOut => ManagerError::Disconnected,
            _ => ManagerError::Io(e),
        }
    }

    /// Whether the manager is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, ManagerError::Disconnected)
    }
}
