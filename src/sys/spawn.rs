//! Starting another program without copying this one: `clone(CLONE_VM |
//! CLONE_VFORK)` and `execve`, as `posix_spawn` does inside glibc.
//!
//! `fork` copies the parent's page tables, which takes time in proportion to
//! the memory the parent has touched (about 30 ms per GiB): a program that
//! re-executes itself (a spawned worker, the fork server, the tracker) after
//! loading its data would pay that for a child that throws the copy away at
//! `exec`. A `CLONE_VM` child shares the parent's memory instead, and
//! `CLONE_VFORK` suspends the calling thread until the child has called
//! `execve` or exited, so the child may use the caller's stack-allocated
//! [`Exec`] plan and report a failed `exec` through it.
//!
//! The child runs on a stack of its own and does only async-signal-safe
//! system calls on data the plan points at: the parent's other threads keep
//! running and share that memory. It shares the signal mask but not the
//! signal handlers (no `CLONE_SIGHAND`): the caller blocks every signal
//! around `clone`, and the child resets each caught signal to its default
//! before it unblocks, so no handler of the parent ever runs in it.

// Unsafe code: `clone` and `execve` of a fresh copy of the executable: no
// safe form.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// What the child does between `clone` and `execve`.
pub(crate) struct Exec<'a> {
    pub(crate) path: &'a CStr,
    /// Null-terminated array of NUL-terminated strings, alive for the call.
    pub(crate) argv: &'a [*const libc::c_char],
    /// Null-terminated array of NUL-terminated `KEY=value` strings.
    pub(crate) envp: &'a [*const libc::c_char],
    /// Descriptors that stay open across the `exec` (close-on-exec cleared).
    pub(crate) keep: &'a [BorrowedFd<'a>],
    /// Dies (`SIGKILL`) when the calling thread exits; `Some(pid of this
    /// process)`, to notice a parent that died before the request took.
    pub(crate) die_with_thread: Option<u32>,
    /// Leaves the session and ignores every catchable signal.
    pub(crate) detach: bool,
}

/// The plan as the child reads it, plus where it reports a failed `exec`.
struct Shared<'p, 'a> {
    exec: &'p Exec<'a>,
    /// 0, or the `errno` of the child's failed `execve`.
    failed: AtomicI32,
}

/// The exit status of a child whose `execve` failed.
const EXEC_FAILED: i32 = 127;
/// Enough for the few libc calls the child makes (glibc's `posix_spawn`
/// uses 32 KiB plus the arguments).
const CHILD_STACK: usize = 64 << 10;

/// Starts `exec.path` in a new process as `exec` says; returns its pid once it
/// has called `execve` (it is then running the new program), or the `execve`
/// error (the child is reaped).
pub(crate) fn spawn(exec: &Exec<'_>) -> io::Result<libc::pid_t> {
    if exec.argv.last() != Some(&std::ptr::null()) || exec.envp.last() != Some(&std::ptr::null()) {
        return Err(io::Error::other(
            "argv and envp must end with a null pointer",
        ));
    }
    let shared = Shared {
        exec,
        failed: AtomicI32::new(0),
    };
    let mut stack = vec![0u128; CHILD_STACK / 16];
    // The stack grows down: the child starts at the (16-aligned) top.
    let top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();
    let all = full_signal_set();
    // SAFETY: zeroed is a valid sigset_t, filled in by pthread_sigmask.
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid; blocks this thread's signals until the
    // child has exec'd (the child shares them, so no handler runs in it).
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before) };
    // SAFETY: `child` follows clone's callback contract; `top` is the top of a
    // live, 16-aligned stack of CHILD_STACK bytes; `shared` outlives the child's
    // use of it because CLONE_VFORK returns only after its `execve` or exit.
    let pid = unsafe {
        libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&shared as *const Shared<'_, '_>).cast_mut().cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    match shared.failed.load(Ordering::Acquire) {
        0 => Ok(pid),
        errno => {
            crate::start::fork::reap(pid, true);
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

fn full_signal_set() -> libc::sigset_t {
    // SAFETY: zeroed is a valid sigset_t; sigfillset initializes it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// The child: async-signal-safe calls only, on the plan's data.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Shared` of `spawn`, alive while the parent thread
    // is suspended (CLONE_VFORK), which lasts until this function execs or
    // exits.
    let shared = unsafe { &*arg.cast::<Shared<'_, '_>>() };
    let exec = shared.exec;
    if exec.detach {
        // Fails only for a group leader, which a fresh child is not.
        let _ = rustix::process::setsid();
        super::process::ignore_all_signals();
    } else {
        // The child shares the parent's memory: no handler of the
        // parent's may ever run in it.
        super::process::reset_caught_signals(&[]);
    }
    if let Some(parent) = exec.die_with_thread {
        // SAFETY: plain syscalls on this process's own attributes.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before the line above took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
        }
    }
    for fd in exec.keep {
        // SAFETY: F_SETFD on a descriptor the caller keeps open for the call.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
    }
    // SAFETY: zeroed is a valid, empty sigset_t; the new program starts with
    // no signal blocked, as a forked child does.
    unsafe {
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    let (argv, envp) = (exec.argv.as_ptr(), exec.envp.as_ptr());
    // SAFETY: `argv` and `envp` are null-terminated (checked by `spawn`) arrays
    // of strings the caller keeps alive; only async-signal-safe calls came
    // since the clone.
    let error = unsafe { super::process::execve(exec.path, argv, envp) };
    let errno = error.raw_os_error().unwrap_or(libc::ENOEXEC);
    shared.failed.store(errno, Ordering::Release);
    // SAFETY: leaves the child without returning into anything of the parent.
    unsafe { libc::_exit(EXEC_FAILED) }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    /// What the tests run: `path` with nothing kept, attached and not tied
    /// to a thread.
    fn exec<'a>(
        path: &'a CStr,
        argv: &'a [*const libc::c_char],
        envp: &'a [*const libc::c_char],
    ) -> Exec<'a> {
        Exec {
            path,
            argv,
            envp,
            keep: &[],
            die_with_thread: None,
            detach: false,
        }
    }

    /// Runs `/bin/sh -c script` with `keep` kept open; returns its exit status.
    fn sh(script: &str, keep: &[BorrowedFd<'_>]) -> io::Result<libc::c_int> {
        let script = CString::new(script).unwrap();
        let argv = [
            c"sh".as_ptr(),
            c"-c".as_ptr(),
            script.as_ptr(),
            std::ptr::null(),
        ];
        let envp = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
        let pid = spawn(&Exec {
            keep,
            ..exec(c"/bin/sh", &argv, &envp)
        })?;
        Ok(crate::start::fork::reap(pid, true).expect("blocking reap"))
    }

    /// A pipe whose ends close on `exec`.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: two fresh descriptors that nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_an_error_not_a_child() {
        let argv = [c"x".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        let err = spawn(&exec(c"/nonexistent/shmpool-test", &argv, &envp)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn lists_without_a_final_null_are_refused() {
        let argv = [c"x".as_ptr()];
        let envp = [std::ptr::null()];
        let err = spawn(&exec(c"/bin/sh", &argv, &envp)).unwrap_err();
        assert!(err.to_string().contains("null pointer"), "{err}");
    }

    #[test]
    fn kept_descriptors_stay_open_and_the_others_close() {
        let (mut read, write) = pipe();
        let (_other_read, other_write) = pipe();
        let script = format!(
            "[ -e /proc/self/fd/{o} ] && echo leaked >&{w}; echo kept >&{w}",
            o = other_write.as_raw_fd(),
            w = write.as_raw_fd()
        );
        let status = sh(&script, &[write.as_fd()]).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        drop(write);
        let mut out = String::new();
        std::fs::File::from(std::mem::replace(&mut read, pipe().0))
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "kept\n");
    }

    #[test]
    fn the_new_program_starts_with_no_signal_blocked_or_caught() {
        extern "C" fn on_usr2(_: libc::c_int) {}
        // SAFETY: installs a handler that does nothing; blocks SIGUSR1 in this
        // test's thread only, restored below.
        let before = unsafe {
            libc::signal(libc::SIGUSR2, on_usr2 as *const () as libc::sighandler_t);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut before);
            before
        };
        let (read, write) = pipe();
        let script = format!(
            "grep -E '^Sig(Blk|Cgt)' /proc/self/status >&{}",
            write.as_raw_fd()
        );
        let status = sh(&script, &[write.as_fd()]);
        // SAFETY: restores this thread's mask and SIGUSR2's default action.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            libc::signal(libc::SIGUSR2, libc::SIG_DFL);
        }
        assert_eq!(status.unwrap(), 0);
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        let caught = out
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:\t"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .expect("SigCgt line");
        assert_eq!(caught & (1 << (libc::SIGUSR2 - 1)), 0, "{out}");
    }
}
