//! Naming functions across processes that run the same executable.
//!
//! A function is named by its address relative to [`anchor`], a function of this crate
//! that is linked into the same executable. Address-space layout randomisation moves the
//! whole image, so the offset is the same in every process started from the same file;
//! the child checks that it runs the same file before it turns an offset back into a
//! function pointer (see [`verify_image`]).

use std::ffi::c_void;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::{CallIo, Invoked};
use crate::sys::{Entry, OwnedFd};

/// The function passed to `spawn` does not live in the main executable (for example, it
/// is in a shared library loaded at a different address in each process).
#[derive(Debug)]
pub(crate) struct NotInImage;

impl fmt::Display for NotInImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the function is not part of the main executable")
    }
}

/// Proof that this process runs the same executable as the process that made an
/// [`Entry`]: only [`verify_image`] makes one.
#[derive(Debug)]
pub(crate) struct SameImage(());

type Trampoline = fn(usize, &mut dyn CallIo) -> Invoked;

#[inline(never)]
fn anchor() {}

fn anchor_addr() -> usize {
    anchor as fn() as usize
}

/// Where the object holding `addr` is loaded, if the dynamic linker knows it.
fn object_base(addr: usize) -> Option<usize> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: `dladdr` only reads the loader's tables and writes `info`, which lives on
    // this stack frame; `addr` is a code address and is never dereferenced.
    let found = unsafe { libc::dladdr(addr as *const c_void, &mut info) };
    (found != 0 && !info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
}

fn offset(addr: usize) -> Result<u64, NotInImage> {
    let anchor = anchor_addr();
    // A statically linked executable has no loader tables; everything is one image then.
    if let (Some(a), Some(b)) = (object_base(anchor), object_base(addr))
        && a != b
    {
        return Err(NotInImage);
    }
    Ok(addr.wrapping_sub(anchor) as u64)
}

/// The offset of [`anchor`] from the start of the executable's image: two builds of a
/// program almost never agree on it, so it joins the file identity as a cheap check.
pub(crate) fn anchor_offset() -> u64 {
    let anchor = anchor_addr();
    object_base(anchor).map_or(0, |base| anchor.wrapping_sub(base) as u64)
}

fn trampoline<A, R>(function: usize, io: &mut dyn CallIo) -> Invoked
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: `function` is `anchor + offset`, where the offset was computed by `entry`
    // from a `fn(A) -> R` in an executable that `verify_image` found to be this one, and
    // this trampoline was instantiated for the same `A` and `R` by that same `entry`.
    // So `function` is the address of a `fn(A) -> R` in this process.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function) };
    crate::bootstrap::child::invoke(f, io)
}

/// Names `f` (and the trampoline that decodes its argument and encodes its result).
pub(crate) fn entry<A, R>(f: fn(A) -> R) -> Result<Entry, NotInImage>
where
    A: DeserializeOwned,
    R: Serialize,
{
    let trampoline: Trampoline = trampoline::<A, R>;
    Ok(Entry {
        trampoline: offset(trampoline as usize)?,
        function: offset(f as usize)?,
    })
}

/// Names a plain function (the setup function given to `init_with`).
pub(crate) fn fn_offset(f: fn()) -> Result<u64, NotInImage> {
    offset(f as usize)
}

/// The plain function that `offset`, made by [`fn_offset`], names in this executable.
pub(crate) fn fn_at(offset: u64, _proof: &SameImage) -> fn() {
    let addr = anchor_addr().wrapping_add(offset as usize);
    // SAFETY: `_proof` shows this is the executable in which `fn_offset` computed the
    // offset of a `fn()`, so `anchor + offset` is that function's address here.
    unsafe { std::mem::transmute::<usize, fn()>(addr) }
}

/// A pool task's trampoline: decodes the argument (or a chunk of them), runs the
/// function, encodes what it returned.
type TaskTrampoline = fn(usize, &[u8], Vec<OwnedFd>) -> Invoked;

fn task_trampoline<A, R>(function: usize, bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: as in `trampoline`: `task_entry` paired this trampoline, instantiated for
    // `A` and `R`, with the offset of a `fn(A) -> R`, in an executable `verify_image`
    // found to be this one.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function) };
    crate::pool::worker::run_one(f, bytes, fds)
}

fn chunk_trampoline<A, R>(function: usize, bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: as in `task_trampoline`.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function) };
    crate::pool::worker::run_chunk(f, bytes, fds)
}

/// Names `f` for a pool worker: with `chunked`, for a call on a whole chunk of
/// arguments (each run on its own, the results collected).
pub(crate) fn task_entry<A, R>(f: fn(A) -> R, chunked: bool) -> Result<Entry, NotInImage>
where
    A: DeserializeOwned,
    R: Serialize,
{
    let trampoline: TaskTrampoline = if chunked {
        chunk_trampoline::<A, R>
    } else {
        task_trampoline::<A, R>
    };
    Ok(Entry {
        trampoline: offset(trampoline as usize)?,
        function: offset(f as usize)?,
    })
}

/// Runs the pool task an [`Entry`] made by [`task_entry`] names.
pub(crate) fn run_task(
    entry: Entry,
    _proof: &SameImage,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Invoked {
    let anchor = anchor_addr();
    let trampoline_addr = anchor.wrapping_add(entry.trampoline as usize);
    // SAFETY: `_proof` shows this is the executable in which `task_entry` computed the
    // offset of a `TaskTrampoline`, so `anchor + offset` is that trampoline here.
    let trampoline = unsafe { std::mem::transmute::<usize, TaskTrampoline>(trampoline_addr) };
    trampoline(anchor.wrapping_add(entry.function as usize), bytes, fds)
}

/// Checks that this process runs the executable that `expected` describes.
pub(crate) fn verify_image(expected: &[u64; 6]) -> Result<SameImage, String> {
    let actual = crate::bootstrap::exe_identity()
        .map_err(|e| format!("cannot identify this executable: {e}"))?;
    if &actual != expected {
        return Err(format!(
            "the parent runs a different executable (identity {expected:x?}, this one {actual:x?}); \
             refusing to run its call"
        ));
    }
    Ok(SameImage(()))
}

/// Calls the function an [`Entry`] names.
pub(crate) fn run(entry: Entry, _proof: &SameImage, io: &mut dyn CallIo) -> Invoked {
    let anchor = anchor_addr();
    let trampoline_addr = anchor.wrapping_add(entry.trampoline as usize);
    // SAFETY: `_proof` shows this is the executable in which `entry` computed the offset of
    // a `Trampoline`, so `anchor + offset` is that trampoline's address here.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline_addr) };
    trampoline(anchor.wrapping_add(entry.function as usize), io)
}
