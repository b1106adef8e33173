//! Forking a child safely from a multithreaded parent.
//!
//! Only the forking thread survives in the child, and any lock another thread
//! held at that instant stays held forever there. The one such lock user code
//! routinely takes is stdout's/stderr's, so we hold both across `fork` (which also
//! lets us flush, so buffered output is not printed twice) and release them on
//! both sides. glibc's malloc protects its own locks with `pthread_atfork`.
//!
//! The child never returns into the caller's stack: it runs its body and leaves
//! with `_exit`, so no destructor or `atexit` handler of the parent runs twice.

// Unsafe code: `fork`.
#![allow(unsafe_code)]

use crate::sys::{self, process::Forked};
use rustix::io::Errno;
use rustix::net::SendFlags;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};
use std::ffi::CStr;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;

/// A worker process: its pid and a pidfd that becomes readable when it exits.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: libc::pid_t,
    pub(crate) pidfd: OwnedFd,
    /// Who must `waitpid` it.
    pub(crate) parent: Parent,
}

/// The process a worker is the child of.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Parent {
    /// This process (fork, spawn).
    Us,
    /// Another process, which `waitpid`s the child when `reap` asks it to
    /// (the fork server): `reap(pid, block)` as [`reap`].
    Other {
        reap: fn(libc::pid_t, bool) -> Option<libc::c_int>,
    },
}

impl Child {
    /// `waitpid` through whoever is the parent; `None` while it runs (`block`
    /// false).
    pub(crate) fn reap(&self, block: bool) -> Option<libc::c_int> {
        match self.parent {
            Parent::Us => reap(self.pid, block),
            Parent::Other { reap } => reap(self.pid, block),
        }
    }

    /// Sends SIGKILL. The child is not reaped yet, so its pid names it alone.
    pub(crate) fn kill(&self) {
        let _ = sys::process::kill(self.pid, libc::SIGKILL);
    }

    /// Sends `signal`. The child is not reaped yet, so its pid names it alone.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        let _ = sys::process::kill(self.pid, signal);
    }

    /// Kills the child and waits for it, so it leaves no zombie.
    pub(crate) fn kill_and_reap(&self) -> libc::c_int {
        self.kill();
        self.reap(true).unwrap_or(0)
    }
}

/// A pidfd for `pid`, which must be unreaped.
pub(crate) fn pidfd(pid: libc::pid_t) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Forks a child that runs `body` and exits with its return value (101 if it
/// panics). The child is killed when the thread that forked it exits
/// (`PR_SET_PDEATHSIG`), so call this from a thread that lives as long as the
/// child should (the pool's supervisor).
pub(crate) fn fork_child(body: impl FnOnce() -> i32) -> io::Result<Child> {
    fork_with(true, body)
}

/// [`fork_child`], choosing whether the child dies with the forking thread.
pub(crate) fn fork_with(die_with_thread: bool, body: impl FnOnce() -> i32) -> io::Result<Child> {
    let parent = std::process::id();
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    let _ = out.flush();
    let _ = err.flush();
    // SAFETY: the child below touches only what this thread owns plus
    // async-signal-safe calls until `body`, and leaves with `exit_now`.
    let forked = unsafe { sys::process::fork() };
    drop(err);
    drop(out);
    let pid = match forked? {
        Forked::Parent(pid) => pid,
        Forked::Child => {
            prepare_child(parent, die_with_thread);
            let code = std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
            // Only this thread exists in the child: no one else can hold these locks.
            let _ = io::stdout().flush();
            let _ = io::stderr().flush();
            // Leaves the child without unwinding into the parent's frames.
            sys::process::exit_now(code)
        }
    };
    match pidfd(pid) {
        Ok(pidfd) => Ok(Child {
            pid,
            pidfd,
            parent: Parent::Us,
        }),
        Err(e) => {
            kill_and_reap(pid);
            Err(e)
        }
    }
}

/// In the child: die with the parent, and start from a clean signal state.
fn prepare_child(parent: u32, die_with_thread: bool) {
    if die_with_thread {
        die_with_parent(parent);
    }
    sys::process::unblock_all_signals();
}

/// Asks for SIGKILL when the parent (thread) dies; exits at once if the
/// parent, `parent`, is already gone.
pub(crate) fn die_with_parent(parent: u32) {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    // The parent may have died before the line above took effect.
    if Pid::as_raw(rustix::process::getppid()) as u32 != parent {
        sys::process::exit_now(1);
    }
}

/// Sets what `ps` and `/proc/<pid>/comm` show for this process (its main
/// thread, which this is in every process that calls it): the kernel keeps
/// 15 bytes, so longer names are cut. Allocates nothing (a forked child may
/// call it).
pub(crate) fn set_process_name(name: &[u8]) {
    let mut comm = [0u8; 16];
    let len = name.len().min(15);
    comm[..len].copy_from_slice(&name[..len]);
    // NUL-terminated: the 16th byte is never written (a NUL inside `name`
    // ends it earlier, as the kernel would).
    if let Ok(comm) = CStr::from_bytes_until_nul(&comm) {
        let _ = rustix::thread::set_name(comm);
    }
}

/// Kills `pid` with SIGKILL and waits for it, so it leaves no zombie.
pub(crate) fn kill_and_reap(pid: libc::pid_t) -> libc::c_int {
    // `pid` is our unreaped child, so it cannot name another process.
    let _ = sys::process::kill(pid, libc::SIGKILL);
    reap(pid, true).unwrap_or(0)
}

/// `waitpid` for our child `pid`; `None` if it is still running (`block` false).
pub(crate) fn reap(pid: libc::pid_t, block: bool) -> Option<libc::c_int> {
    let Some(child) = Pid::from_raw(pid) else {
        return Some(0); // no child of ours
    };
    let flags = if block {
        WaitOptions::empty()
    } else {
        WaitOptions::NOHANG
    };
    loop {
        match rustix::process::waitpid(Some(child), flags) {
            Ok(Some((_, status))) => return Some(status.as_raw()),
            Ok(None) => return None,
            Err(Errno::INTR) => continue,
            // ECHILD: already reaped (cannot happen for our own children).
            Err(_) => return Some(0),
        }
    }
}

/// Sends all of `bytes` on socket `fd` with `MSG_NOSIGNAL`: a peer that has
/// gone is an `EPIPE` error, never a SIGPIPE (a process in its start-up hook
/// has not yet ignored it).
pub(crate) fn send_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(fd, bytes, SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
