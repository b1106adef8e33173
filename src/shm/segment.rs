//! One anonymous shared mapping, created by the parent before it forks.
//!
//! `memfd_create` instead of `shm_open`: the file has no name, so no crash of
//! any process can leave an entry behind in `/dev/shm`, and the memory is freed
//! by the kernel when the last process holding the mapping exits. The file is
//! sized once, sparse, to the whole reservation: pages cost memory only when
//! touched, and workers forked later inherit the complete mapping, so the
//! payload arena can grow without any process remapping.

// Unsafe code: makes and unmakes shared mappings.
#![allow(unsafe_code)]

use crate::shm::region::Region;
use rustix::fs::FallocateFlags;
use rustix::mm::{MapFlags, ProtFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A `MAP_SHARED`, read-write mapping of a file, unmapped on drop: the one
/// place a shared mapping is made and unmade (the pool's segment, a named
/// object, a manager lane).
#[derive(Debug)]
pub(crate) struct Mapping {
    region: Region,
}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared (`MAP_NORESERVE` too
    /// when `noreserve`: a sparse file whose pages cost memory only when
    /// touched).
    pub(crate) fn shared(
        fd: BorrowedFd<'_>,
        len: usize,
        noreserve: bool,
    ) -> rustix::io::Result<Mapping> {
        let flags = if noreserve {
            MapFlags::SHARED | MapFlags::NORESERVE
        } else {
            MapFlags::SHARED
        };
        // SAFETY: a new mapping at an address the kernel chooses; it aliases
        // no Rust object.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                fd,
                0,
            )
        }?;
        // SAFETY: the fresh mapping is `len` bytes, page-aligned, and lives
        // until this `Mapping` drops; its views borrow the `Mapping`.
        let region = unsafe { Region::new(ptr.cast(), len) };
        Ok(Mapping { region })
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.region.base()
    }

    /// The mapping's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.region.len()
    }

    /// The `T` at `offset` ([`Region::view`]), for as long as the mapping.
    #[cfg(feature = "manager")]
    pub(crate) fn view<T: crate::shm::region::Shared>(&self, offset: usize) -> &T {
        self.region.view(offset)
    }

    /// The `n` `T`s at `offset` ([`Region::slice`]), for as long as the
    /// mapping.
    #[cfg(any(test, feature = "manager"))]
    pub(crate) fn slice<T: crate::shm::region::Shared>(&self, offset: usize, n: usize) -> &[T] {
        self.region.slice(offset, n)
    }

    /// Keeps the mapping until the process exits (a worker's or a spawned
    /// process's inherited segment, the object heap), and returns it as a
    /// region: valid for the rest of the process, so views of it are safe.
    pub(crate) fn leak(self) -> Region {
        let region = self.region;
        std::mem::forget(self);
        region
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping of `len` bytes; no reference into it outlives
        // the `Mapping` (its owners' references all borrow it).
        let _ = unsafe { rustix::mm::munmap(self.base().cast(), self.len()) };
    }
}

/// A `MAP_SHARED` mapping of a sparse memfd, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Segment {
    map: Mapping,
    _fd: OwnedFd,
}

impl Segment {
    /// Creates a zero-filled shared mapping of `len` bytes named `name` (for
    /// `/proc/<pid>/maps` only; the file has no path).
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Segment> {
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        let map = Mapping::shared(fd.as_fd(), len, true)?;
        Ok(Segment { map, _fd: fd })
    }

    /// The memfd behind the mapping (handed to spawned workers).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self._fd.as_fd()
    }

    /// Maps `len` bytes of a segment descriptor (one inherited by a spawned
    /// or forkserver process, or the object heap's), for as long as the
    /// process lives.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Region> {
        Ok(Mapping::shared(fd, len, true)?.leak())
    }

    /// Keeps the mapping for the rest of the process (the object heap):
    /// returns it as a region, with the descriptor.
    pub(crate) fn leak(self) -> (Region, OwnedFd) {
        (self.map.leak(), self._fd)
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.base()
    }

    /// The `n` `T`s at `offset` ([`Mapping::slice`]).
    #[cfg(test)]
    pub(crate) fn slice<T: crate::shm::region::Shared>(&self, offset: usize, n: usize) -> &[T] {
        self.map.slice(offset, n)
    }

    /// Gives the memory behind the whole pages of `[offset, offset + len)`
    /// back to the kernel, in every process that maps the segment: they read
    /// as zeros again and cost nothing until touched. The caller owns the
    /// range (no process uses it). Returns the bytes punched.
    pub(crate) fn release(&self, offset: usize, len: usize) -> usize {
        let page = crate::shm::layout::PAGE;
        let start = offset.next_multiple_of(page);
        let end = (offset + len).min(self.map.len()) / page * page;
        if end <= start {
            return 0;
        }
        // The caller owns the range: nobody reads or writes it meanwhile.
        let done = rustix::fs::fallocate(
            &self._fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            start as u64,
            (end - start) as u64,
        );
        if done.is_ok() {
            end - start
        } else {
            0 // not supported here: the memory stays, as before
        }
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    #[test]
    fn released_pages_read_as_zeros_and_partial_pages_are_kept() {
        let seg = Segment::create("shmpool-test", 1 << 20).unwrap();
        // 64 KiB from the start of a 1 MiB mapping that only this test uses.
        let bytes = seg.slice::<AtomicU8>(0, 64 << 10);
        let all = |range: std::ops::Range<usize>, value: u8| {
            bytes[range]
                .iter()
                .all(|b| b.load(Ordering::Relaxed) == value)
        };
        bytes.iter().for_each(|b| b.store(7, Ordering::Relaxed));
        // From the middle of page 0 to the middle of page 10: pages 1-9 go.
        assert_eq!(seg.release(2048, 10 * 4096), 9 * 4096);
        assert!(all(0..4096, 7), "a partial page stays");
        assert!(all(4096..10 * 4096, 0));
        assert!(all(10 * 4096..64 << 10, 7));
        assert_eq!(seg.release(100, 200), 0, "no whole page");
    }

    #[test]
    fn a_large_sparse_segment_costs_nothing_until_touched() {
        let seg = Segment::create("shmpool-test", 16 << 30).unwrap();
        let first = seg.slice::<AtomicU8>(0, 1);
        let far = seg.slice::<AtomicU8>(15 << 30, 1);
        first[0].store(7, Ordering::Relaxed);
        far[0].store(9, Ordering::Relaxed);
        assert_eq!(first[0].load(Ordering::Relaxed), 7);
        assert_eq!(far[0].load(Ordering::Relaxed), 9);
    }
}
