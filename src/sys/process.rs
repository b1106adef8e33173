//! `fork`, `_exit`, `execve` and signal dispositions: the process calls with no
//! safe form (rustix offers none, or only an unsafe one).

// Unsafe code: `fork`, `execve`, signal dispositions: no safe form.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

/// What [`fork`] returns in each process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// In the new process.
    Child,
    /// In the calling process: the child's pid.
    Parent(i32),
}

/// `fork(2)`.
///
/// # Safety
/// In the child only the forking thread exists: any lock another thread held
/// stays held. The caller must be single-threaded, or the child must touch
/// only what the forking thread owns and async-signal-safe calls until it
/// execs or exits (with [`exit_now`], never by returning into frames the
/// parent also runs).
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory preconditions; what the child may do is the
    // caller's contract.
    match unsafe { libc::fork() } {
        0 => Ok(Forked::Child),
        pid if pid > 0 => Ok(Forked::Parent(pid)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `_exit(2)`: ends this process at once, running no destructor, `atexit`
/// handler or stdio flush. Safe: skipping destructors only leaks.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// `execve(2)` of `path` with `argv` and `envp`; returns only on failure.
///
/// # Safety
/// `argv` and `envp` are null-terminated arrays of pointers to NUL-terminated
/// strings, all alive for the call. Between `fork` and here the caller's
/// [`fork`] contract holds (this call is async-signal-safe).
pub(crate) unsafe fn execve(
    path: &CStr,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> io::Error {
    // SAFETY: the arrays are valid (contract); execve only returns on failure.
    unsafe { libc::execve(path.as_ptr(), argv, envp) };
    io::Error::last_os_error()
}

/// Ignores every signal that can be ignored (`SIG_IGN`; the kernel refuses
/// SIGKILL and SIGSTOP harmlessly). Async-signal-safe; ignored dispositions
/// survive `exec`. Safe: no handler is installed, so no code runs in one.
pub(crate) fn ignore_all_signals() {
    // 64: the highest signal number on Linux (_NSIG - 1).
    for sig in 1..=64 {
        ignore_signal(sig);
    }
}

/// Ignores signal `sig` (`SIG_IGN`). Safe for the same reason as
/// [`ignore_all_signals`]: no handler is installed.
pub(crate) fn ignore_signal(sig: i32) {
    // SAFETY: SIG_IGN installs no handler; invalid numbers fail with EINVAL.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// Sets every signal with a handler back to its default action, except
/// those in `keep`; ignored signals stay ignored (as across `exec`).
/// Async-signal-safe. Safe: it installs no handler, and the handlers it
/// removes stay in memory, merely no longer called.
pub(crate) fn reset_caught_signals(keep: &[i32]) {
    // 64: the highest signal number on Linux (_NSIG - 1).
    for sig in (1..=64).filter(|sig| !keep.contains(sig)) {
        // SAFETY: zeroed is a valid sigaction; the first call only reads the
        // current disposition, the second installs SIG_DFL (no handler).
        unsafe {
            let mut now: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut now) != 0 {
                continue;
            }
            if now.sa_sigaction != libc::SIG_IGN && now.sa_sigaction != libc::SIG_DFL {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
    }
}

/// Sends `signal` to process `pid` (`kill(2)`, any signal number, real-time
/// ones included, which rustix's `Signal` does not name). Safe: it touches
/// no memory; which process `pid` names is the caller's concern.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: no memory preconditions; a bad pid or signal fails with an errno.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unblocks every signal of the calling thread (`pthread_sigmask` of an
/// empty set): a forked child starts from a clean mask. Async-signal-safe.
pub(crate) fn unblock_all_signals() {
    let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the set it is given; pthread_sigmask
    // reads it and may pass null for the old mask.
    unsafe {
        libc::sigemptyset(none.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
    }
}

/// Installs `handler` for signal `sig`, once: the disposition resets to the
/// default as the signal is delivered (`SA_RESETHAND`), so the handler runs
/// and returns, and the signal's default action follows.
///
/// # Safety
/// `handler` does only what is async-signal-safe: it may interrupt this
/// process anywhere.
pub(crate) unsafe fn handle_once(sig: i32, handler: extern "C" fn(i32)) -> io::Result<()> {
    let mut action = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: an all-zero sigaction is valid (no flags, an empty mask); the
    // kernel only reads it; the handler's behaviour is the caller's contract.
    let rc = unsafe {
        let action = action.as_mut_ptr();
        (*action).sa_sigaction = handler as usize;
        (*action).sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut (*action).sa_mask);
        libc::sigaction(sig, action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets close-on-exec on every descriptor numbered `first` or more
/// (`close_range` with `CLOSE_RANGE_CLOEXEC`; one by one from `/proc/self/fd`
/// before Linux 5.11). Only a flag changes: the descriptors stay open.
pub(crate) fn close_on_exec_from(first: u32) {
    // SAFETY: plain syscall; it only sets a flag on this process's descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Before Linux 5.11: one by one. Collected first, so that the directory's
    // own descriptor is closed before the flags change.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd: &RawFd| u32::try_from(fd).is_ok_and(|fd| fd >= first))
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: fcntl on a number that names no descriptor fails with
        // EBADF and changes nothing.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}
