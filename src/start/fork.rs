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

use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
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
        // SAFETY: plain syscall on a pid that is ours until reaped.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Sends `signal`. The child is not reaped yet, so its pid names it alone.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain syscall on a pid that is ours until reaped.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Kills the child and waits for it, so it leaves no zombie.
    pub(crate) fn kill_and_reap(&self) -> libc::c_int {
        self.kill();
        self.reap(true).unwrap_or(0)
    }
}

/// A pidfd for `pid`, which must be unreaped.
pub(crate) fn pidfd(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
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
    // SAFETY: fork has no memory-safety preconditions; the child below touches
    // only what this thread owns plus async-signal-safe calls until `body`.
    let pid = unsafe { libc::fork() };
    drop(err);
    drop(out);
    if pid == 0 {
        prepare_child(parent, die_with_thread);
        let code = std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
        // Only this thread exists in the child: no one else can hold these locks.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        // SAFETY: leaves the child without unwinding into the parent's frames.
        unsafe { libc::_exit(code) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
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
    // SAFETY: plain syscalls on this process's own attributes.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Asks for SIGKILL when the parent (thread) dies; exits at once if the
/// parent, `parent`, is already gone.
pub(crate) fn die_with_parent(parent: u32) {
    // SAFETY: plain syscalls on this process's own attributes.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent may have died before the line above took effect.
        if libc::getppid() as u32 != parent {
            libc::_exit(1);
        }
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
    // SAFETY: `comm` is NUL-terminated and 16 bytes long, as PR_SET_NAME reads.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
}

/// Kills `pid` with SIGKILL and waits for it, so it leaves no zombie.
pub(crate) fn kill_and_reap(pid: libc::pid_t) -> libc::c_int {
    // SAFETY: `pid` is our unreaped child, so it cannot name another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid, true).unwrap_or(0)
}

/// `waitpid` for our child `pid`; `None` if it is still running (`block` false).
pub(crate) fn reap(pid: libc::pid_t, block: bool) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Some(status);
        }
        if r == 0 {
            return None;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // ECHILD: already reaped (cannot happen for our own children).
            return Some(0);
        }
    }
}

/// Sends all of `bytes` on socket `fd` with `MSG_NOSIGNAL`: a peer that has
/// gone is an `EPIPE` error, never a SIGPIPE (a process in its start-up hook
/// has not yet ignored it).
pub(crate) fn send_all(fd: std::os::fd::RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: sends from a live buffer on a socket the caller owns.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}
