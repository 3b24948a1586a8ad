//! Inter-process communication: pipes and queues, built on a shared-memory channel, and
//! the codec and framed connection underneath.

pub(crate) mod channel;
pub(crate) mod codec;
pub(crate) mod framing;
pub(crate) mod pipe;
pub(crate) mod queue;
pub(crate) mod wait;
