//! Inter-process communication: the codec and the framed, descriptor-passing connection
//! that everything else is built on.

pub(crate) mod codec;
pub(crate) mod framing;
