//! Inter-process communication: pipes and queues, built on a shared-memory channel.

pub(crate) mod channel;
mod error;
pub(crate) mod pipe;
pub(crate) mod queue;

pub use error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
