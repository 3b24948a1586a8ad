//! `Value` and `Array`: typed data in shared memory behind a robust lock of its own.
//!
//! Their guards are the only place that turns shared memory into `&T`/`&mut T`/`&mut
//! [T]`, which is sound only under the lock: so this file, alone outside `sys/` and
//! `shm/`, holds unsafe code (the guards' `Deref`s and the handles' `Send`/`Sync`).
//! Everything that does not need the lock (the `ShmSafe` rule, checked pointers,
//! copies in and out) is in `shm/typed.rs`.
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::mutex::{self, DataHeld, Held};
use super::{LockResult, TryLockResult};
use crate::deadline::Deadline;
use crate::shm::layout::MutexWords;
use crate::shm::object::{Elem, Kind, Object};
use crate::shm::typed::{ShmSafe, data_ptr, read_slice, shape, write_slice, zeroed};
use crate::shm::{OutOfBounds, ShmError};
use crate::wire::codec;

/// A `T` in shared memory with a robust lock of its own: Python's `multiprocessing.Value`.
///
/// [`lock`](Value::lock) gives a guard that derefs to the `T`; [`load`](Value::load) and
/// [`store`](Value::store) copy it in and out under the lock. If a process dies holding
/// the lock, the next `lock` returns [`OwnerDied`](crate::OwnerDied) with the guard: the
/// value may be half-written (`T` is plain data, so any bytes are still a valid `T`). A
/// guard leaked (`mem::forget`) by a thread that then ended keeps the lock held in its
/// process, as one leaked by a live thread does: a reference made from it may still be
/// in use.
///
/// A handle is cheap to clone and can be passed to [`spawn`](crate::spawn) or sent
/// through a pipe or queue. The receiving process checks that the value really holds a
/// `T` (size, alignment and type name).
///
/// # Examples
///
/// ```no_run
/// use multiproc::Value;
///
/// fn add(counter: Value<i64>) {
///     for _ in 0..1000 {
///         *counter.lock().unwrap() += 1;
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let counter = Value::new(0i64)?;
/// let children: Vec<_> = (0..4)
///     .map(|_| multiproc::spawn(add, counter.clone()))
///     .collect::<Result<_, _>>()?;
/// for child in children {
///     child.join()?;
/// }
/// assert_eq!(counter.load(), 4000);
/// # Ok(())
/// # }
/// ```
pub struct Value<T: ShmSafe> {
    obj: Arc<Object>,
    /// The value in the mapping, found (and checked) once.
    data: NonNull<T>,
}

// SAFETY: `data` points into the mapping that `obj` keeps alive wherever the handle goes,
// and is only dereferenced under the value's lock; `T: ShmSafe` is `Send + Sync`.
unsafe impl<T: ShmSafe> Send for Value<T> {}
// SAFETY: as above: shared access goes through the lock.
unsafe impl<T: ShmSafe> Sync for Value<T> {}

impl<T: ShmSafe> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            obj: self.obj.clone(),
            data: self.data,
        }
    }
}

impl<T: ShmSafe> Value<T> {
    /// A new value in anonymous shared memory.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn new(value: T) -> Result<Value<T>, ShmError> {
        Value::adopt(Object::new(shape::<T>(Kind::Value, 1), |o| {
            write_slice(o, 0, std::slice::from_ref(&value));
        })?)
    }

    /// A new value in the named segment `name` (`/dev/shm/<name>`), which must not
    /// exist. This process is its creator: the name is removed when the last handle
    /// here is dropped, or, in a program that called [`init`](crate::init), when this
    /// process dies (as for [`SharedMemory::create`](crate::SharedMemory::create)).
    ///
    /// # Errors
    ///
    /// [`ShmError::AlreadyExists`], [`ShmError::InvalidName`], or if the segment cannot
    /// be created: one that does not fit in `/dev/shm` is [`ShmError::Io`] of kind
    /// `StorageFull` (see [`SharedMemory::create`](crate::SharedMemory::create)).
    pub fn create_named(name: &str, value: T) -> Result<Value<T>, ShmError> {
        Value::adopt(Object::create_named(
            name,
            shape::<T>(Kind::Value, 1),
            |o| {
                write_slice(o, 0, std::slice::from_ref(&value));
            },
        )?)
    }

    /// Opens the value in the named segment `name`, created by
    /// [`create_named`](Self::create_named) in any process of the same PID namespace:
    /// the lock knows its holder by thread id, so a process of another namespace (a
    /// container that shares `/dev/shm` but not process ids) would take a live
    /// holder's lock as a dead one's. The same goes for a process of another time
    /// namespace with a boot-time offset (the holder's start time reads differently
    /// there).
    ///
    /// # Errors
    ///
    /// [`ShmError::NotFound`]; [`ShmError::Mismatch`] if the segment is not a `Value`
    /// of a `T`, or not of the size its header describes.
    pub fn open_named(name: &str) -> Result<Value<T>, ShmError> {
        let obj = Object::open_named(name, Kind::Value, Elem::of::<T>())?;
        if obj.len() != 1 {
            return Err(ShmError::Mismatch {
                what: name.to_string(),
                why: format!("a Value segment holding {} elements", obj.len()),
            });
        }
        Value::adopt(obj)
    }

    fn adopt(obj: Object) -> Result<Value<T>, ShmError> {
        Ok(Value {
            data: data_ptr(&obj),
            obj: Arc::new(obj),
        })
    }

    #[inline]
    fn words(&self) -> &MutexWords {
        self.obj.words()
    }

    /// Takes the value's lock, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`](crate::OwnerDied) (holding the guard) if the previous owner died
    /// holding the lock.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock already.
    #[inline]
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        mutex::lock(self.words(), false, |held| ValueGuard::new(self.data, held))
    }

    /// Takes the value's lock if it is free.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if another thread holds it; `OwnerDied` as for
    /// [`lock`](Self::lock).
    pub fn try_lock(&self) -> TryLockResult<ValueGuard<'_, T>> {
        mutex::try_lock(self.words(), false, Deadline::Now, |held| {
            ValueGuard::new(self.data, held)
        })
    }

    /// Takes the value's lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if it was still held when the timeout passed; `OwnerDied` as for
    /// [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ValueGuard<'_, T>> {
        mutex::try_lock(self.words(), false, Deadline::after(timeout), |held| {
            ValueGuard::new(self.data, held)
        })
    }

    /// A copy of the value, read under the lock. If the previous owner died holding the
    /// lock, the copy is of whatever it left, and the next [`lock`](Self::lock) still
    /// reports `OwnerDied`.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock (through a guard).
    pub fn load(&self) -> T {
        let _held = mutex::take_quietly(self.words());
        let mut out = [zeroed::<T>()];
        read_slice(&self.obj, 0, &mut out);
        out[0]
    }

    /// Replaces the value under the lock.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock (through a guard).
    pub fn store(&self, value: T) {
        let _held = mutex::take_quietly(self.words());
        write_slice(&self.obj, 0, std::slice::from_ref(&value));
    }

    /// The segment's name, for a named value.
    pub fn name(&self) -> Option<&str> {
        self.obj.name()
    }
}

impl<T: ShmSafe + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Value");
        // Read without taking an owner's death from the next `lock`, which reports it.
        match mutex::try_take_quietly(self.words()) {
            Some(held) => d.field("value", &*ValueGuard::new(self.data, held)),
            None => d.field("value", &format_args!("<locked>")),
        };
        d.finish()
    }
}

impl<T: ShmSafe> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.obj.serialize(s)
    }
}

impl<'de, T: ShmSafe> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let obj = Object::deserialize(d, Kind::Value, Elem::of::<T>())?;
        if obj.len() != 1 {
            return Err(codec::refuse::<D::Error>(
                "a Value segment holding an array",
            ));
        }
        Value::adopt(obj).map_err(codec::refuse)
    }
}

/// The lock of a [`Value`], held: derefs to the value. Dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: ShmSafe> {
    ptr: NonNull<T>,
    _held: DataHeld<'a>,
    _data: PhantomData<&'a mut T>,
}

impl<'a, T: ShmSafe> ValueGuard<'a, T> {
    #[inline]
    fn new(ptr: NonNull<T>, held: Held<'a>) -> Self {
        ValueGuard {
            ptr,
            _held: DataHeld::new(held),
            _data: PhantomData,
        }
    }
}

impl<T: ShmSafe> Deref for ValueGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `ptr` points at the value, in bounds and aligned (`data_ptr`, when the
        // handle was made), in a mapping that lives as long as the `Value` this guard
        // borrows. The guard holds
        // the value's lock, and every access to the value in every process goes through
        // that lock, so nothing writes it while this reference lives. Any bytes are a
        // valid `T` (`ShmSafe`).
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ShmSafe> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the lock gives this guard exclusive access, and the
        // `&mut self` borrow makes this the only reference made through it.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: ShmSafe + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A fixed-length array of `T` in shared memory with a robust lock: Python's
/// `multiprocessing.Array`.
///
/// [`lock`](Array::lock) gives a guard that derefs to `[T]`; [`get`](Array::get),
/// [`set`](Array::set), [`read`](Array::read) and [`write`](Array::write) copy elements
/// under the lock, with bounds checks. Otherwise as [`Value`].
///
/// # Examples
///
/// ```no_run
/// use multiproc::Array;
///
/// fn square_all(a: Array<f64>) {
///     for x in a.lock().unwrap().iter_mut() {
///         *x *= *x;
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let a = Array::from_slice(&[1.0, 2.0, 3.0])?;
/// multiproc::spawn(square_all, a.clone())?.join()?;
/// assert_eq!(a.to_vec(), [1.0, 4.0, 9.0]);
/// # Ok(())
/// # }
/// ```
pub struct Array<T: ShmSafe> {
    obj: Arc<Object>,
    /// The elements in the mapping, found (and checked) once.
    data: NonNull<T>,
}

// SAFETY: as for `Value`.
unsafe impl<T: ShmSafe> Send for Array<T> {}
// SAFETY: as for `Value`.
unsafe impl<T: ShmSafe> Sync for Array<T> {}

impl<T: ShmSafe> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            obj: self.obj.clone(),
            data: self.data,
        }
    }
}

impl<T: ShmSafe> Array<T> {
    /// An array of `len` zeroed elements (all-zero bytes: `0`, `0.0`, ...).
    ///
    /// # Errors
    ///
    /// [`ShmError::InvalidArgument`] if it would not fit in memory; or if the shared
    /// memory cannot be created.
    pub fn new(len: usize) -> Result<Array<T>, ShmError> {
        Array::adopt(Object::new(shape::<T>(Kind::Array, len), |_| {})?)
    }

    /// An array holding a copy of `items`.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_slice(items: &[T]) -> Result<Array<T>, ShmError> {
        Array::adopt(Object::new(shape::<T>(Kind::Array, items.len()), |o| {
            write_slice(o, 0, items);
        })?)
    }

    /// A new zeroed array in the named segment `name`; see [`Value::create_named`].
    ///
    /// # Errors
    ///
    /// As [`Value::create_named`].
    pub fn create_named(name: &str, len: usize) -> Result<Array<T>, ShmError> {
        Array::adopt(Object::create_named(
            name,
            shape::<T>(Kind::Array, len),
            |_| {},
        )?)
    }

    /// Opens the array in the named segment `name` (within one PID namespace, as
    /// [`Value::open_named`]).
    ///
    /// # Errors
    ///
    /// As [`Value::open_named`].
    pub fn open_named(name: &str) -> Result<Array<T>, ShmError> {
        Array::adopt(Object::open_named(name, Kind::Array, Elem::of::<T>())?)
    }

    fn adopt(obj: Object) -> Result<Array<T>, ShmError> {
        Ok(Array {
            data: data_ptr(&obj),
            obj: Arc::new(obj),
        })
    }

    #[inline]
    fn words(&self) -> &MutexWords {
        self.obj.words()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.obj.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the array's lock, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`](crate::OwnerDied) (holding the guard) if the previous owner died
    /// holding the lock.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock already.
    #[inline]
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        mutex::lock(self.words(), false, |held| {
            ArrayGuard::new(self.data, self.len(), held)
        })
    }

    /// Takes the array's lock if it is free.
    ///
    /// # Errors
    ///
    /// As [`Value::try_lock`].
    pub fn try_lock(&self) -> TryLockResult<ArrayGuard<'_, T>> {
        mutex::try_lock(self.words(), false, Deadline::Now, |held| {
            ArrayGuard::new(self.data, self.len(), held)
        })
    }

    /// Takes the array's lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Value::lock_timeout`].
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ArrayGuard<'_, T>> {
        mutex::try_lock(self.words(), false, Deadline::after(timeout), |held| {
            ArrayGuard::new(self.data, self.len(), held)
        })
    }

    /// A copy of element `index`, read under the lock; `None` out of range.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock (through a guard).
    pub fn get(&self, index: usize) -> Option<T> {
        let mut out = [zeroed::<T>()];
        self.read(index, &mut out).ok()?;
        Some(out[0])
    }

    /// Replaces element `index` under the lock.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if `index` is not below [`len`](Self::len).
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock (through a guard).
    pub fn set(&self, index: usize, value: T) -> Result<(), OutOfBounds> {
        self.write(index, std::slice::from_ref(&value))
    }

    /// Copies `out.len()` elements starting at `start` into `out`, under the lock.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if the range does not fit; `out` is untouched then.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock (through a guard).
    pub fn read(&self, start: usize, out: &mut [T]) -> Result<(), OutOfBounds> {
        self.check(start, out.len())?;
        let _held = mutex::take_quietly(self.words());
        read_slice(&self.obj, start, out);
        Ok(())
    }

    /// Copies `items` into the array starting at `start`, under the lock.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if the range does not fit; nothing is written then.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock (through a guard).
    pub fn write(&self, start: usize, items: &[T]) -> Result<(), OutOfBounds> {
        self.check(start, items.len())?;
        let _held = mutex::take_quietly(self.words());
        write_slice(&self.obj, start, items);
        Ok(())
    }

    /// A copy of the whole array, read under the lock.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock (through a guard).
    pub fn to_vec(&self) -> Vec<T> {
        let _held = mutex::take_quietly(self.words());
        let mut out = vec![zeroed::<T>(); self.len()];
        read_slice(&self.obj, 0, &mut out);
        out
    }

    /// The segment's name, for a named array.
    pub fn name(&self) -> Option<&str> {
        self.obj.name()
    }

    fn check(&self, start: usize, count: usize) -> Result<(), OutOfBounds> {
        OutOfBounds::check(start, count, self.len())
    }
}

impl<T: ShmSafe> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("len", &self.len())
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: ShmSafe> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.obj.serialize(s)
    }
}

impl<'de, T: ShmSafe> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let obj = Object::deserialize(d, Kind::Array, Elem::of::<T>())?;
        Array::adopt(obj).map_err(codec::refuse)
    }
}

/// The lock of an [`Array`], held: derefs to `[T]`. Dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: ShmSafe> {
    ptr: NonNull<T>,
    len: usize,
    _held: DataHeld<'a>,
    _data: PhantomData<&'a mut [T]>,
}

impl<'a, T: ShmSafe> ArrayGuard<'a, T> {
    #[inline]
    fn new(ptr: NonNull<T>, len: usize, held: Held<'a>) -> Self {
        ArrayGuard {
            ptr,
            len,
            _held: DataHeld::new(held),
            _data: PhantomData,
        }
    }
}

impl<T: ShmSafe> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` and `len` describe the array's data, in bounds and aligned
        // (`data_ptr`), in a mapping that outlives this guard's borrow of the `Array`.
        // The guard holds the array's lock, which every access takes, so nothing writes
        // it meanwhile; any bytes are valid `T`s (`ShmSafe`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ShmSafe> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, with exclusive access from the lock and `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ShmSafe> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayGuard")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::codec::resend;

    #[test]
    fn a_handle_decodes_as_the_same_object() {
        let v = Value::new(7u64).unwrap();
        let w: Value<u64> = resend(&v).unwrap();
        w.store(8);
        assert_eq!(v.load(), 8);
        let a = Array::from_slice(&[1u16, 2, 3]).unwrap();
        let b: Array<u16> = resend(&a).unwrap();
        assert_eq!(b.to_vec(), [1, 2, 3]);
    }

    #[test]
    fn a_handle_decoded_as_another_type_is_an_error() {
        let v = Value::new(7u64).unwrap();
        let e = resend::<_, Value<u32>>(&v).unwrap_err();
        assert!(e.contains("not `u32`"), "{e}");
        // Same size and alignment, another type.
        let e = resend::<_, Value<i64>>(&v).unwrap_err();
        assert!(e.contains("not `i64`"), "{e}");
        let e = resend::<_, Array<u64>>(&v).unwrap_err();
        assert!(e.contains("expected Array"), "{e}");
        let e = resend::<_, crate::Lock>(&v).unwrap_err();
        assert!(e.contains("expected Lock"), "{e}");
        let lock = crate::Lock::new().unwrap();
        let e = resend::<_, crate::Event>(&lock).unwrap_err();
        assert!(e.contains("expected Event"), "{e}");
    }

    #[test]
    fn handles_cannot_be_encoded_by_other_formats() {
        let v = Value::new(1u8).unwrap();
        assert!(postcard::to_stdvec(&v).is_err());
    }
}
