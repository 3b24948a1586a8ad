//! All platform code, behind one door. One backend is chosen here; every backend exports
//! the same names, and nothing outside this module names a platform.

#[cfg(target_os = "linux")]
#[path = "linux/mod.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
#[path = "unsupported.rs"]
mod imp;

pub(crate) use imp::*;

mod types;
pub(crate) use types::*;
