//! Typed data in shared memory: the [`ShmSafe`] rule, checked pointers to an object's
//! elements, and copies in and out. What turns those pointers into references (the
//! guards of `Value` and `Array`) needs their lock and lives with it, in `sync/value.rs`.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use super::layout::MutexWords;
use super::object::{Elem, Kind, Object, Shape};

/// Plain old data that may live in shared memory: [`Value`](crate::Value) and
/// [`Array`](crate::Array) hold these.
///
/// Every type that implements [`bytemuck::Pod`] is `ShmSafe` (integers, floats, arrays
/// of them, and `#[repr(C)]` structs that derive `Pod`), so the usual way to share a
/// struct is:
///
/// ```
/// # use multiproc::bytemuck;
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Point {
///     x: f64,
///     y: f64,
///     z: f64,
/// }
/// # fn main() -> Result<(), multiproc::ShmError> {
/// let p = multiproc::Value::new(Point { x: 1.0, y: 2.0, z: 3.0 })?;
/// p.lock().unwrap().z += 1.0;
/// assert_eq!(p.load().z, 4.0);
/// # Ok(())
/// # }
/// ```
///
/// A type aligned to more than 4096 bytes (a page, where every mapping starts) cannot be
/// placed: creating a `Value` or `Array` of it fails with
/// [`ShmError::InvalidArgument`](crate::ShmError::InvalidArgument).
///
/// # Safety
///
/// Implement it only for types that are valid for every bit pattern (a process that
/// dies in the middle of a write leaves any bytes behind, and another process may write
/// any bytes), have no padding (their bytes are copied as they are), contain no
/// pointers or references (addresses mean nothing in another process) and need no
/// `Drop`. `bytemuck::Pod` states the same requirements.
pub unsafe trait ShmSafe: Copy + Send + Sync + 'static {}

// SAFETY: `Pod` types are `Copy`, valid for every bit pattern, and free of pointers and
// padding, which is what `ShmSafe` asks.
unsafe impl<T: bytemuck::Pod + Send + Sync> ShmSafe for T {}

/// The shape of a `Value` or `Array` object: a mutex's words, then `len` `T`s.
pub(crate) fn shape<T>(kind: Kind, len: usize) -> Shape {
    Shape {
        kind,
        words: std::mem::size_of::<MutexWords>(),
        elem: Elem::of::<T>(),
        len,
    }
}

/// A pointer to the object's data as `T`s: checked to be in the segment and aligned.
pub(crate) fn data_ptr<T>(obj: &Object) -> NonNull<T> {
    let (seg, offset) = obj.data();
    let bytes = std::mem::size_of::<T>().saturating_mul(obj.len());
    seg.check_range(offset, bytes);
    let ptr = seg.ptr(offset).cast::<T>();
    assert!(ptr.is_aligned(), "misaligned shared data");
    NonNull::new(ptr).unwrap_or(NonNull::dangling())
}

/// Copies `items` into the data at element `start` (the caller holds the lock, or the
/// object is not shared yet).
pub(crate) fn write_slice<T: ShmSafe>(obj: &Object, start: usize, items: &[T]) {
    let (seg, offset) = obj.data();
    let size = std::mem::size_of::<T>();
    seg.write(offset + start * size, as_bytes(items));
}

/// Copies from the data at element `start` into `out` (the caller holds the lock).
pub(crate) fn read_slice<T: ShmSafe>(obj: &Object, start: usize, out: &mut [T]) {
    let (seg, offset) = obj.data();
    let size = std::mem::size_of::<T>();
    let len = std::mem::size_of_val(out);
    // SAFETY: `out` is `len` bytes of initialised `T`s, writable through the `&mut`;
    // every bit pattern is a valid `T` (`ShmSafe`), so overwriting them with bytes read
    // from shared memory leaves valid values.
    let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), len) };
    seg.read(offset + start * size, bytes);
}

fn as_bytes<T: ShmSafe>(items: &[T]) -> &[u8] {
    // SAFETY: `ShmSafe` types have no padding (no uninitialised bytes) and the slice is
    // `size_of_val` bytes long; the result borrows `items`.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), std::mem::size_of_val(items)) }
}

/// An all-zero `T`, as a buffer to read into.
pub(crate) fn zeroed<T: ShmSafe>() -> T {
    // SAFETY: every bit pattern, all-zero included, is a valid `T` (`ShmSafe`).
    unsafe { std::mem::zeroed() }
}
