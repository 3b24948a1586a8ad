//! The environment, which may only change while no other thread can read it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::proc::thread_count;
use crate::sys::NotSingleThreaded;

/// Reads an environment variable and removes it, so that processes this one starts do
/// not inherit it. The removal happens only while the process has a single thread (as
/// it does at the top of `main`); otherwise the variable stays, which is harmless since
/// tokens name the process they are meant for.
pub(crate) fn take_env(name: &str) -> Option<OsString> {
    let value = std::env::var_os(name)?;
    if thread_count() == Some(1) {
        // SAFETY: the process has one thread, the caller, so nothing reads the
        // environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    Some(value)
}

/// Sets (`Some(value)`) or removes (`None`) each variable of `changes`, keys and values
/// as bytes; nothing at all if the process has another thread than the caller. Entries
/// that cannot exist in an environment (an empty key, `=` or NUL in the key, NUL in the
/// value) are left out.
pub(crate) fn change_env<'a>(
    changes: &[(&'a [u8], Option<&'a [u8]>)],
) -> Result<(), NotSingleThreaded> {
    if changes.is_empty() {
        return Ok(());
    }
    if thread_count() != Some(1) {
        return Err(NotSingleThreaded);
    }
    let valid = |key: &[u8], value: Option<&[u8]>| {
        !key.is_empty()
            && !key.contains(&b'=')
            && !key.contains(&0)
            && !value.is_some_and(|v| v.contains(&0))
    };
    for &(key, value) in changes.iter().filter(|(k, v)| valid(k, *v)) {
        let key = OsStr::from_bytes(key);
        match value {
            // SAFETY: the process has one thread, the caller (checked above), and the
            // caller creates none meanwhile, so nothing reads the environment now.
            Some(value) => unsafe { std::env::set_var(key, OsStr::from_bytes(value)) },
            // SAFETY: as above.
            None => unsafe { std::env::remove_var(key) },
        }
    }
    Ok(())
}
