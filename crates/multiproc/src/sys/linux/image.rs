//! Naming functions across processes that run the same executable.
//!
//! A function is named by its address relative to [`anchor`], a function of this crate
//! that is linked into the same executable. Address-space layout randomisation moves the
//! whole image, so the offset is the same in every process started from the same file;
//! the child checks that it runs the same file before it turns an offset back into a
//! function pointer (see [`verify_image`]). The one unsafe step is that turn: an
//! [`Entry`] pairs the function with a trampoline instantiated for its argument and
//! result types, and the trampoline hands the typed function to the [`Caller`] that made
//! the entry.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::proc::exe_file_identity;
use crate::sys::{Caller, ContextCaller, Entry, Signature};

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
fn anchor_offset() -> u64 {
    let anchor = anchor_addr();
    object_base(anchor).map_or(0, |base| anchor.wrapping_sub(base) as u64)
}

/// This executable's identity: the file's (device, inode, size, modification time),
/// plus where the anchor sits in its image. Computed once per process image.
pub(crate) fn exe_identity() -> io::Result<[u64; 6]> {
    static IDENTITY: OnceLock<[u64; 6]> = OnceLock::new();
    if let Some(id) = IDENTITY.get() {
        return Ok(*id);
    }
    let [dev, ino, size, secs, nanos] = exe_file_identity()?;
    Ok(*IDENTITY.get_or_init(|| [dev, ino, size, secs, nanos, anchor_offset()]))
}

/// A trampoline of the signature `S`.
type Trampoline<S> = for<'a> fn(usize, <S as Signature>::Input<'a>) -> <S as Signature>::Output;

fn trampoline<C, A, R>(
    function: usize,
    input: <C::Sig as Signature>::Input<'_>,
) -> <C::Sig as Signature>::Output
where
    C: Caller,
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: `function` is `anchor + offset`, where the offset was computed by `entry`
    // from a `fn(A) -> R` in an executable that `verify_image` found to be this one, and
    // this trampoline was instantiated for the same `C`, `A` and `R` by that same
    // `entry`. So `function` is the address of a `fn(A) -> R` in this process.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function) };
    C::call(f, input)
}

/// Names `f`, and the trampoline that runs it through the caller `C`.
pub(crate) fn entry<C, A, R>(f: fn(A) -> R) -> Result<Entry<C::Sig>, NotInImage>
where
    C: Caller,
    A: DeserializeOwned,
    R: Serialize,
{
    let trampoline: Trampoline<C::Sig> = trampoline::<C, A, R>;
    Ok(Entry {
        trampoline: offset(trampoline as usize)?,
        function: offset(f as usize)?,
        signature: PhantomData,
    })
}

fn trampoline_with_context<C, X, A, R>(
    function: usize,
    input: <C::Sig as Signature>::Input<'_>,
) -> <C::Sig as Signature>::Output
where
    C: ContextCaller,
    X: DeserializeOwned + Send + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: as in `trampoline`: `function` is the address of a `fn(&X, A) -> R` in
    // this process (same executable, checked), and this trampoline was instantiated
    // for the same `C`, `X`, `A` and `R` by `entry_with_context`.
    let f = unsafe { std::mem::transmute::<usize, fn(&X, A) -> R>(function) };
    C::call(f, input)
}

/// Names `f`, a function that takes a context by reference, and the trampoline that
/// runs it through the caller `C`.
pub(crate) fn entry_with_context<C, X, A, R>(f: fn(&X, A) -> R) -> Result<Entry<C::Sig>, NotInImage>
where
    C: ContextCaller,
    X: DeserializeOwned + Send + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    let trampoline: Trampoline<C::Sig> = trampoline_with_context::<C, X, A, R>;
    Ok(Entry {
        trampoline: offset(trampoline as usize)?,
        function: offset(f as usize)?,
        signature: PhantomData,
    })
}

/// Calls the function an [`Entry`] names, with `input`.
pub(crate) fn call<S: Signature>(
    entry: Entry<S>,
    _proof: &SameImage,
    input: S::Input<'_>,
) -> S::Output {
    let anchor = anchor_addr();
    let trampoline_addr = anchor.wrapping_add(entry.trampoline as usize);
    // SAFETY: `_proof` shows this is the executable in which `entry` computed the offset
    // of a trampoline of the signature `S` (the entry's type says which), so
    // `anchor + offset` is that trampoline's address here.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline<S>>(trampoline_addr) };
    trampoline(anchor.wrapping_add(entry.function as usize), input)
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

/// Checks that this process runs the executable that `expected` describes.
pub(crate) fn verify_image(expected: &[u64; 6]) -> Result<SameImage, String> {
    let actual = exe_identity().map_err(|e| format!("cannot identify this executable: {e}"))?;
    if &actual != expected {
        return Err(format!(
            "the parent runs a different executable (identity {expected:x?}, this one {actual:x?}); \
             refusing to run its call"
        ));
    }
    Ok(SameImage(()))
}
