//! [`Value`] and [`Array`]: [`Pod`] data in the object heap, each with a lock,
//! like Python's `multiprocessing.Value` and `multiprocessing.Array`.

// Unsafe code: values and arrays in shared memory, read and written in place.
#![allow(unsafe_code)]

use super::heap::{bad_handle, resolve, shared_object, Heap};
use super::lock::{kind, RawMutex};
use crate::error::Error;
use crate::Pod;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The header of a value or array; the elements follow it.
#[repr(C)]
struct DataObject {
    kind: AtomicU32,
    elem_size: AtomicU32,
    len: AtomicU64,
    /// 0: `get`/`set` skip the lock (Python's `lock=False`).
    locked: AtomicU32,
    mutex: RawMutex,
}

shared_object!(DataObject);

const HEADER: usize = std::mem::size_of::<DataObject>().next_multiple_of(64);

fn create<T: Pod>(tag: u32, items: &[T], locked: bool) -> Result<u64, Error> {
    let bytes = std::mem::size_of_val(items)
        .checked_add(HEADER)
        .ok_or_else(|| Error::invalid("too large"))?;
    let heap = Heap::get()?;
    let mut fresh = heap.alloc_fresh(bytes.max(HEADER + 1), std::mem::align_of::<T>().max(64))?;
    fresh.write_bytes(HEADER, crate::pod::bytes_of(items));
    let at = fresh.into_offset();
    let obj: &DataObject = heap.at(at).expect("fresh allocation");
    obj.mutex.init(false)?;
    obj.elem_size
        .store(std::mem::size_of::<T>() as u32, Ordering::Relaxed);
    obj.len.store(items.len() as u64, Ordering::Relaxed);
    obj.locked.store(locked as u32, Ordering::Relaxed);
    obj.kind.store(tag, Ordering::Release);
    Ok(at)
}

/// The object at `at` (checked) and a pointer to its elements.
fn open<T: Pod>(at: u64, tag: u32) -> Result<(&'static DataObject, *mut T, usize), Error> {
    let obj: &DataObject = resolve(at, tag)?;
    if obj.elem_size.load(Ordering::Relaxed) as usize != std::mem::size_of::<T>() {
        return Err(bad_handle());
    }
    let heap = Heap::existing().ok_or_else(bad_handle)?;
    let len = obj.len.load(Ordering::Relaxed) as usize;
    let data = heap
        .ptr(at + HEADER as u64, len * std::mem::size_of::<T>())
        .ok_or_else(bad_handle)?;
    Ok((obj, data.cast(), len))
}

/// One [`Pod`] value shared by the processes of the program, guarded by a
/// lock, like Python's `multiprocessing.Value('d', 0.0)`.
///
/// [`get`](Value::get) and [`set`](Value::set) take the lock for one access;
/// [`lock`](Value::lock) holds it across a read-modify-write;
/// [`Value::unlocked`] makes one whose `get`/`set` skip the lock.
///
/// ```
/// let n = shmpool::Value::new(0.0f64)?;
/// n.set(3.5)?;
/// *n.lock()? += 1.0;          // atomic with respect to other processes
/// assert_eq!(n.get()?, 4.5);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[repr(C)]
pub struct Value<T: Pod> {
    at: u64,
    _marker: PhantomData<fn(T) -> T>,
}

/// A fixed-length array of [`Pod`] values shared by the processes of the
/// program, guarded by one lock, like Python's `multiprocessing.Array('i',
/// range(10))`.
///
/// ```
/// let a = shmpool::Array::new(&[1i32, 2, 3])?;
/// a.set(0, -1)?;
/// a.lock()?.iter_mut().for_each(|x| *x *= 10);
/// assert_eq!(a.to_vec()?, vec![-10, 20, 30]);
/// assert_eq!(a.len()?, 3);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[repr(C)]
pub struct Array<T: Pod> {
    at: u64,
    _marker: PhantomData<fn(T) -> T>,
}

macro_rules! handle_traits {
    ($name:ident) => {
        impl<T: Pod> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T: Pod> Copy for $name<T> {}
        impl<T: Pod> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("at", &self.at)
                    .finish()
            }
        }
        // SAFETY: an offset into the program's object heap, checked on every
        // use (kind tag, element size, bounds).
        #[diagnostic::do_not_recommend]
        unsafe impl<T: Pod> Pod for $name<T> {}
    };
}
handle_traits!(Value);
handle_traits!(Array);

impl<T: Pod> Value<T> {
    /// A shared value holding `value`.
    pub fn new(value: T) -> Result<Value<T>, Error> {
        Ok(Value {
            at: create(kind::VALUE, &[value], true)?,
            _marker: PhantomData,
        })
    }

    /// A shared value whose [`get`](Value::get) and [`set`](Value::set) do
    /// not take the lock (Python's `Value('d', 0.0, lock=False)`): faster, but
    /// a value wider than 8 bytes may be read half-written. [`lock`](Value::lock)
    /// still works for read-modify-write.
    pub fn unlocked(value: T) -> Result<Value<T>, Error> {
        Ok(Value {
            at: create(kind::VALUE, &[value], false)?,
            _marker: PhantomData,
        })
    }

    /// A copy of the value (under the lock, unless made `unlocked`).
    pub fn get(&self) -> Result<T, Error> {
        let (obj, data, _) = open::<T>(self.at, kind::VALUE)?;
        if obj.locked.load(Ordering::Relaxed) == 0 {
            // SAFETY: one initialized T; the user opted out of the lock, and a
            // volatile read of plain data is at worst torn, never invalid
            // (every bit pattern of a Pod value is valid).
            return Ok(unsafe { data.read_volatile() });
        }
        Ok(*self.lock()?)
    }

    /// Replaces the value (under the lock, unless made `unlocked`).
    pub fn set(&self, value: T) -> Result<(), Error> {
        let (obj, data, _) = open::<T>(self.at, kind::VALUE)?;
        if obj.locked.load(Ordering::Relaxed) == 0 {
            // SAFETY: as in `get`.
            unsafe { data.write_volatile(value) };
            return Ok(());
        }
        *self.lock()? = value;
        Ok(())
    }

    /// Takes the value's lock: the guard derefs to the value.
    pub fn lock(&self) -> Result<ValueGuard<T>, Error> {
        let (obj, data, len) = open::<T>(self.at, kind::VALUE)?;
        if len == 0 {
            return Err(bad_handle()); // a value holds one element
        }
        obj.mutex.lock(None)?;
        Ok(ValueGuard {
            inner: ArrayGuard { obj, data, len: 1 },
        })
    }
}

impl<T: Pod> Array<T> {
    /// A shared array holding a copy of `items`.
    pub fn new(items: &[T]) -> Result<Array<T>, Error> {
        Ok(Array {
            at: create(kind::ARRAY, items, true)?,
            _marker: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> Result<usize, Error> {
        Ok(open::<T>(self.at, kind::ARRAY)?.2)
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Element `i` (under the lock); [`Error::InvalidArgument`] out of bounds.
    pub fn get(&self, i: usize) -> Result<T, Error> {
        self.lock()?
            .get(i)
            .copied()
            .ok_or_else(|| Error::invalid(format!("index {i} out of bounds")))
    }

    /// Sets element `i` (under the lock).
    pub fn set(&self, i: usize, value: T) -> Result<(), Error> {
        let mut guard = self.lock()?;
        let slot = guard
            .get_mut(i)
            .ok_or_else(|| Error::invalid(format!("index {i} out of bounds")))?;
        *slot = value;
        Ok(())
    }

    /// A copy of every element (Python's `arr[:]`).
    pub fn to_vec(&self) -> Result<Vec<T>, Error> {
        Ok(self.lock()?.to_vec())
    }

    /// Takes the array's lock: the guard derefs to the elements.
    pub fn lock(&self) -> Result<ArrayGuard<T>, Error> {
        let (obj, data, len) = open::<T>(self.at, kind::ARRAY)?;
        obj.mutex.lock(None)?;
        Ok(ArrayGuard { obj, data, len })
    }
}

/// Holds a [`Value`]'s lock; derefs to the value.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ValueGuard<T: Pod> {
    /// The value as a one-element array (its lock released on drop).
    inner: ArrayGuard<T>,
}

/// Holds an [`Array`]'s lock; derefs to the elements.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ArrayGuard<T: Pod> {
    obj: &'static DataObject,
    data: *mut T,
    len: usize,
}

impl<T: Pod> Deref for ValueGuard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner[0]
    }
}
impl<T: Pod> DerefMut for ValueGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner[0]
    }
}
impl<T: Pod> Deref for ArrayGuard<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the guard holds the array's lock; `len` initialized T's.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}
impl<T: Pod> DerefMut for ArrayGuard<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` is exclusive in this thread.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }
}
impl<T: Pod> Drop for ArrayGuard<T> {
    fn drop(&mut self) {
        self.obj.mutex.unlock();
    }
}
impl<T: Pod + std::fmt::Debug> std::fmt::Debug for ValueGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}
impl<T: Pod + std::fmt::Debug> std::fmt::Debug for ArrayGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}
