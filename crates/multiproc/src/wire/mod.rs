//! The wire: how values and messages cross a process boundary. The codec (serde in
//! multiproc's format, descriptors carried alongside) and framing (length-prefixed
//! frames over a Unix stream socket) are the foundation that channels, shared objects,
//! the bootstrap protocol, pools and managers are built on; they import nothing but
//! `sys`.

use std::borrow::Cow;
use std::fmt;

pub(crate) mod codec;
pub(crate) mod decoder;
pub(crate) mod encoder;
pub(crate) mod framing;
#[cfg(test)]
mod samples;

/// An encode or a decode failed, and why: a `Serialize` or `Deserialize` implementation
/// refused (its own message), or the value or the bytes do not fit the format (one of
/// the fixed messages of `encoder.rs` and `decoder.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(Cow<'static, str>);

impl WireError {
    pub(crate) const fn fixed(why: &'static str) -> Self {
        WireError(Cow::Borrowed(why))
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

impl serde::ser::Error for WireError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WireError(Cow::Owned(msg.to_string()))
    }
}

impl serde::de::Error for WireError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WireError(Cow::Owned(msg.to_string()))
    }
}
