//! Typed views of shared memory: the one place a segment's bytes become
//! references.
//!
//! A [`Region`] is an address and a length that its (unsafe) constructor
//! vouches for; [`Region::view`] and [`Region::slice`] check bounds and
//! alignment, and hand out references only to [`Shared`] types, whose
//! `unsafe impl` states why a reference to them in several processes at once
//! is sound. So the views themselves are safe calls.

// Unsafe code: typed views of shared memory (`Shared`).
#![allow(unsafe_code)]

use std::mem::{align_of, size_of};
use std::ptr::NonNull;

/// A type that may live in memory shared by the processes of a pool and be
/// used there through `&Self`, from any thread of any of them (so it need
/// not be `Sync` itself: a `UnsafeCell` under a cross-process protocol is
/// not, though it is sound to share under that protocol).
///
/// # Safety
/// All-zero bytes are a valid value (a fresh segment reads as zeros), any
/// bytes another process of the pool may leave in it are a valid value, and
/// every shared access goes through atomics, or through `UnsafeCell`s under
/// a protocol of the type's own that says who may touch them when.
pub(crate) unsafe trait Shared {}

// SAFETY: an atomic integer: every bit pattern is valid, all access atomic.
unsafe impl Shared for std::sync::atomic::AtomicU64 {}
// SAFETY: as above.
unsafe impl Shared for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for std::sync::atomic::AtomicU8 {}

/// `len` bytes of a shared mapping, page-aligned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: an address and a length; what it points at is shared by design
// and reached only through `Shared` views.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// # Safety
    /// `base` points at a live mapping of at least `len` bytes, aligned to a
    /// page, for as long as the region or any view from it is used.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Region {
        Region {
            base: NonNull::new(base).expect("a mapping is never at address 0"),
            len,
        }
    }

    /// The first byte.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The region's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The `T` at `offset`. Panics if it does not lie wholly inside the
    /// region or is misaligned for `T` (an offset this crate computed wrong).
    #[inline(always)]
    pub(crate) fn view<T: Shared>(&self, offset: usize) -> &T {
        &self.slice::<T>(offset, 1)[0]
    }

    /// The `n` consecutive `T`s at `offset`; panics as [`view`](Self::view).
    #[inline(always)]
    pub(crate) fn slice<T: Shared>(&self, offset: usize, n: usize) -> &[T] {
        let end = n
            .checked_mul(size_of::<T>())
            .and_then(|bytes| bytes.checked_add(offset));
        assert!(
            end.is_some_and(|end| end <= self.len)
                && offset % align_of::<T>() == 0
                && align_of::<T>() <= 4096,
            "a view outside its region, or misaligned"
        );
        // (The base is page-aligned by the constructor's contract.)
        // SAFETY: in bounds of the live mapping and aligned (checked above);
        // `T: Shared` makes whatever bytes lie there a valid value, and
        // shared `&T`s sound.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset).cast::<T>(), n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[repr(C, align(4096))]
    struct Page([u8; 8192]);

    /// Runs `f` over a region of two zeroed, page-aligned pages.
    fn with_region(f: impl FnOnce(Region)) {
        let mut page = Box::new(Page([0; 8192]));
        // SAFETY: a page-aligned 8 KiB buffer that outlives `f`, and is not
        // otherwise touched meanwhile.
        f(unsafe { Region::new(page.0.as_mut_ptr(), 8192) });
    }

    #[test]
    fn views_inside_the_region_read_and_write_its_bytes() {
        with_region(|region| {
            region.view::<AtomicU64>(8).store(7, Ordering::Relaxed);
            let words = region.slice::<AtomicU64>(0, 1024);
            assert_eq!(words[1].load(Ordering::Relaxed), 7);
            assert_eq!(words[1023].load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    #[should_panic(expected = "outside its region")]
    fn a_view_past_the_end_panics() {
        with_region(|region| {
            let _ = region.slice::<AtomicU64>(8, 1024);
        });
    }

    #[test]
    #[should_panic(expected = "misaligned")]
    fn a_misaligned_view_panics() {
        with_region(|region| {
            let _ = region.view::<AtomicU64>(4);
        });
    }

    #[test]
    #[should_panic(expected = "outside its region")]
    fn an_overflowing_count_panics() {
        with_region(|region| {
            let _ = region.slice::<AtomicU64>(0, usize::MAX / 4);
        });
    }
}
