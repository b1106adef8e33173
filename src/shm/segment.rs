//! One anonymous shared mapping, created by the parent before it forks.
//!
//! `memfd_create` instead of `shm_open`: the file has no name, so no crash of
//! any process can leave an entry behind in `/dev/shm`, and the memory is freed
//! by the kernel when the last process holding the mapping exits. The file is
//! sized once, sparse, to the whole reservation: pages cost memory only when
//! touched, and workers forked later inherit the complete mapping, so the
//! payload arena can grow without any process remapping.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A `MAP_SHARED` mapping of a sparse memfd, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Segment {
    base: NonNull<u8>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain memory valid for `len` bytes until drop; every
// access goes through atomics or follows the ownership protocol in
// `docs/ARCHITECTURE.md`, which is what makes sharing it between threads sound.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only hands out pointers, never `&mut`.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a zero-filled shared mapping of `len` bytes named `name` (for
    /// `/proc/<pid>/maps` only; the file has no path).
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Segment> {
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: `cname` is a valid NUL-terminated string.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let ptr = Self::map_inherited(fd.as_raw_fd(), len)?;
        Ok(Segment {
            base: NonNull::new(ptr).expect("mmap returned null"),
            len,
            _fd: fd,
        })
    }

    /// The memfd behind the mapping (handed to spawned workers).
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self._fd.as_raw_fd()
    }

    /// Maps `len` bytes of a segment descriptor (ours, or one inherited by a
    /// spawned or forkserver process, whose mapping lives until it exits).
    pub(crate) fn map_inherited(fd: std::os::fd::RawFd, len: usize) -> io::Result<*mut u8> {
        // SAFETY: a new mapping chosen by the kernel; it aliases no Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ptr.cast())
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Gives the memory behind the whole pages of `[offset, offset + len)`
    /// back to the kernel, in every process that maps the segment: they read
    /// as zeros again and cost nothing until touched. The caller owns the
    /// range (no process uses it). Returns the bytes punched.
    pub(crate) fn release(&self, offset: usize, len: usize) -> usize {
        let page = crate::shm::layout::PAGE;
        let start = offset.next_multiple_of(page);
        let end = (offset + len).min(self.len) / page * page;
        if end <= start {
            return 0;
        }
        // SAFETY: plain syscall on our descriptor; the range lies inside the
        // file, and nobody reads or writes it (the caller's contract).
        let done = unsafe {
            libc::fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            )
        };
        if done == 0 {
            end - start
        } else {
            0 // not supported here: the memory stays, as before
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: we created this mapping with this length; no reference into it
        // outlives the `Segment` (they all borrow it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_as_zeros_and_partial_pages_are_kept() {
        let seg = Segment::create("shmpool-test", 1 << 20).unwrap();
        // SAFETY: 64 KiB from the start of a 1 MiB mapping that only this
        // test uses.
        let bytes = unsafe { std::slice::from_raw_parts_mut(seg.base(), 64 << 10) };
        bytes.fill(7);
        // From the middle of page 0 to the middle of page 10: pages 1-9 go.
        assert_eq!(seg.release(2048, 10 * 4096), 9 * 4096);
        assert!(
            bytes[..4096].iter().all(|&b| b == 7),
            "a partial page stays"
        );
        assert!(bytes[4096..10 * 4096].iter().all(|&b| b == 0));
        assert!(bytes[10 * 4096..].iter().all(|&b| b == 7));
        assert_eq!(seg.release(100, 200), 0, "no whole page");
    }

    #[test]
    fn a_large_sparse_segment_costs_nothing_until_touched() {
        let seg = Segment::create("shmpool-test", 16 << 30).unwrap();
        // SAFETY: both offsets are inside the 16 GiB mapping.
        unsafe {
            *seg.base() = 7;
            *seg.base().add(15 << 30) = 9;
            assert_eq!(*seg.base(), 7);
            assert_eq!(*seg.base().add(15 << 30), 9);
        }
    }
}
