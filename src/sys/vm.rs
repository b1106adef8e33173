//! `process_vm_readv` / `process_vm_writev`: copies between this process and
//! another one's memory (rustix has no form of them); and `madvise` with the
//! advice that leaves memory as it is (rustix's form is unsafe for all).

// Unsafe code: `process_vm_readv`/`writev` and `madvise`: no safe form.
#![allow(unsafe_code)]

use std::io;

/// The result of one transfer: a whole one is `Ok`; a short one means part of
/// the remote range was not mapped (the kernel stops at the first fault).
fn transferred(n: isize, wanted: usize) -> Result<(), i32> {
    match n {
        -1 => Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)),
        n if n as usize == wanted => Ok(()),
        _ => Err(libc::EFAULT),
    }
}

/// Copies `local.len()` bytes from address `remote` of process `pid` into
/// `local`; `Err(errno)` if the kernel refuses or the range is not mapped.
///
/// Safe: the kernel writes only into `local`, which we borrow mutably, and
/// checks the remote range itself.
pub(crate) fn read(pid: i32, remote: u64, local: &mut [u8]) -> Result<(), i32> {
    let local_iov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    let remote_iov = libc::iovec {
        iov_base: remote as *mut libc::c_void,
        iov_len: local.len(),
    };
    // SAFETY: the local iovec is `local`, writable and borrowed for the call;
    // the kernel checks the remote range (EFAULT if unmapped).
    let n = unsafe { libc::process_vm_readv(pid, &local_iov, 1, &remote_iov, 1, 0) };
    transferred(n, local.len())
}

/// Copies `local` to address `remote` of process `pid`; `Err(errno)` if the
/// kernel refuses or the range is not mapped.
///
/// # Safety
/// If `pid` is this process, `remote..remote + local.len()` must be memory
/// nothing else reads or writes meanwhile (the kernel writes it behind the
/// compiler's back).
pub(crate) unsafe fn write(pid: i32, local: &[u8], remote: u64) -> Result<(), i32> {
    let local_iov = libc::iovec {
        iov_base: local.as_ptr().cast_mut().cast(),
        iov_len: local.len(),
    };
    let remote_iov = libc::iovec {
        iov_base: remote as *mut libc::c_void,
        iov_len: local.len(),
    };
    // SAFETY: the kernel only reads the local iovec (`local`, borrowed for the
    // call); the remote range is the caller's contract.
    let n = unsafe { libc::process_vm_writev(pid, &local_iov, 1, &remote_iov, 1, 0) };
    transferred(n, local.len())
}

/// Advice that changes no byte of memory: [`advise`] takes only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Advice {
    /// `MADV_HUGEPAGE`: back the range with huge pages where the kernel can.
    HugePages,
    /// `MADV_POPULATE_WRITE`: fault the range in, writable, at once (as a
    /// write to each page would, without writing).
    PopulateWrite,
}

/// `madvise` of the whole pages `[start, start + len)` with advice that
/// leaves memory as it is; only advice, so a refusal (a range not mapped,
/// or not writable, an old kernel) is ignored. Safe: neither advice changes
/// the contents of any page, and the kernel checks the range itself.
pub(crate) fn advise(start: usize, len: usize, advice: Advice) {
    let advice = match advice {
        Advice::HugePages => rustix::mm::Advice::LinuxHugepage,
        Advice::PopulateWrite => rustix::mm::Advice::LinuxPopulateWrite,
    };
    // SAFETY: the advice changes no byte of memory (above); an unmapped or
    // read-only range fails with an errno.
    let _ = unsafe { rustix::mm::madvise(start as *mut std::ffi::c_void, len, advice) };
}
