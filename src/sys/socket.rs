//! `SO_PEERCRED`: who is at the other end of a local socket. rustix has a
//! form of it, but its `UCred` holds the pid as a non-zero `Pid`, and the
//! kernel reports 0 for a peer outside this pid namespace.

// Unsafe code: `SO_PEERCRED`: no safe form that fits.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The process and user at the other end of local socket `fd`, as they were
/// when it connected (pid 0: a process this pid namespace cannot see).
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` its size; `fd` is open
    // for the call (borrowed).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}
