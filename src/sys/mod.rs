//! The system calls that have no safe typed form in rustix or std, each in a
//! small function whose contract is written down (`# Safety`) or checked.
//!
//! Everything else goes through rustix (futex, memfd, mmap, `sendmsg` with
//! `SCM_RIGHTS`, `prctl`, `getrandom`) or std.

pub(crate) mod executable;
pub(crate) mod process;
#[cfg(feature = "manager")]
pub(crate) mod socket;
pub(crate) mod spawn;
pub(crate) mod vm;
