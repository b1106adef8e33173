//! [`SharedVec`]: a vector that lives in a pool's shared memory, so maps over
//! it move no bytes between processes.

// Unsafe code: a vector in the segment, seen as a slice.
#![allow(unsafe_code)]

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::Pool;
use crate::shm::arena::Block;
use crate::Pod;
use std::fmt;
use std::mem::{align_of, size_of};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A fixed-length vector of [`Pod`] values inside a pool's shared segment.
///
/// The parent reads and writes it like a slice (`Deref<Target = [T]>`,
/// `DerefMut`); [`Pool::map_inplace`] and [`Pool::map_into`] hand the workers
/// only offsets into it, so a map copies nothing: each worker reads and writes
/// its chunk where it lies. Use it for numerical data you map over more than
/// once, or when the copies of [`Pool::map`] cost more than the function.
///
/// A `SharedVec` lives in the segment of the pool it was made with (another
/// pool's maps treat it as any slice of the caller's memory); it may outlive
/// the pool's handle, and frees its memory when dropped.
///
/// ```
/// use shmpool::{Pool, SharedVec};
/// fn sq(x: f64) -> f64 { x * x }
///
/// let pool = Pool::new(2)?;
/// let v: Vec<f64> = (0..1000).map(f64::from).collect();
/// let mut data = SharedVec::from_slice(&pool, &v)?;
/// pool.map_inplace(sq, &mut data)?;                  // data[i] = sq(data[i])
/// assert_eq!(data[3], 9.0);
/// let mut out = SharedVec::<f64>::zeroed(&pool, data.len())?;
/// pool.map_into(sq, &data, &mut out)?;              // out[i] = sq(data[i])
/// assert_eq!(out[3], 81.0);
/// data[0] = -1.0;                                    // a slice in the parent
/// assert_eq!(&data[..2], &[-1.0, 1.0]);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct SharedVec<T: Pod> {
    core: Arc<Core>,
    block: Option<Block>,
    len: usize,
    _marker: std::marker::PhantomData<T>,
}

impl<T: Pod> SharedVec<T> {
    /// A vector of `len` all-zero values (`0`, `0.0`, `false`, …).
    pub fn zeroed(pool: &Pool, len: usize) -> Result<SharedVec<T>, Error> {
        let mut v = Self::alloc(pool, len)?;
        // All-zero bytes are a valid `Pod` value (the trait's contract).
        v.raw_bytes().fill(std::mem::MaybeUninit::new(0));
        Ok(v)
    }

    /// A copy of `items` in the pool's shared memory.
    pub fn from_slice(pool: &Pool, items: &[T]) -> Result<SharedVec<T>, Error> {
        let mut v = Self::alloc(pool, items.len())?;
        v.raw_bytes().copy_from_slice(crate::pod::bytes_of(items));
        Ok(v)
    }

    /// Room for `len` T's, uninitialized (callers initialize before use).
    fn alloc(pool: &Pool, len: usize) -> Result<SharedVec<T>, Error> {
        let core = Arc::clone(&pool.core);
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| Error::invalid("SharedVec too large"))?;
        let align = align_of::<T>().max(if bytes >= 1 << 20 { 4096 } else { 64 });
        let block = (bytes > 0)
            .then(|| core.alloc_block(bytes, align))
            .transpose()?;
        Ok(SharedVec {
            core,
            block,
            len,
            _marker: std::marker::PhantomData,
        })
    }

    /// The vector's bytes, initialized or not: how it is filled at creation.
    fn raw_bytes(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        let bytes = self.len * size_of::<T>(); // checked in `alloc`
                                               // SAFETY: the block holds `len` T's, its own (`&mut self` excludes any
                                               // map in flight); any bytes are a valid `MaybeUninit<u8>`.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr().cast_mut().cast(), bytes) }
    }

    fn as_ptr(&self) -> *const T {
        match self.block {
            Some(b) => self.core.layout().at(Core::block_offset(b)).cast::<T>(),
            None => std::ptr::NonNull::dangling().as_ptr(),
        }
    }
}

impl<T: Pod> Deref for SharedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // Workers write the block only during a map holding `&mut self`, and
        // every map has finished all its chunks (or reaped their workers) by
        // the time it returns.
        // SAFETY: `len` T's, initialized at creation, not written meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
}

impl<T: Pod> DerefMut for SharedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` excludes any map in flight.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr().cast_mut(), self.len) }
    }
}

impl<T: Pod> Drop for SharedVec<T> {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            self.core.free_block(b);
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
