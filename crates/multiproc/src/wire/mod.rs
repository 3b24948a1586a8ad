//! The wire: how values and messages cross a process boundary. The codec (serde in
//! multiproc's format, descriptors carried alongside) and framing (length-prefixed frames over a
//! Unix stream socket) are the foundation that channels, shared objects, the bootstrap
//! protocol, pools and managers are built on; they import nothing but `sys`.

pub(crate) mod codec;
pub(crate) mod decoder;
pub(crate) mod encoder;
pub(crate) mod framing;
#[cfg(test)]
mod samples;
