//! All platform code, behind one door: the ground floor, importing nothing above it.
//! One backend is chosen here and every backend exports the same names: thin safe
//! wrappers, one per system operation, and the types they share (`types.rs`). What is
//! built from them (the fork server, a child's set-up, `daemonize`) lives in the layer it
//! belongs to; the trampolines that run a named function reach that layer through the
//! [`Caller`] trait it implements.
//!
//! Every call specific to a platform is made here. Outside, `cfg(unix)` marks only what std
//! itself offers on Unix alone: `Stdio::from(OwnedFd)`, and the manager's Unix-socket
//! addresses and streams (std's `UnixStream` and `UnixListener`).

#[cfg(target_os = "linux")]
#[path = "linux/mod.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
#[path = "unsupported.rs"]
mod imp;

pub(crate) use imp::*;

mod types;
pub(crate) use types::*;
