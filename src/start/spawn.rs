//! The `spawn` start method: `fork` + `execve("/proc/self/exe")`.
//!
//! The new process gets its role from the environment variable [`ENV`]
//! (`<segment fd>,<ready fd>,<index>,<probe>`), and the two descriptors it
//! names survive the `exec` (their close-on-exec flag is cleared in the child
//! only, and set again by `bootstrap` as soon as the new program starts).
//! `bootstrap` reads the variable before `main` runs and turns the
//! process into a worker. `/proc/self/exe` names the running binary even if
//! the file was replaced or deleted since.

use super::fork::{self, Child};
use crate::error::Error;
use crate::worker::WorkerStart;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The variable that makes a re-executed process a pool worker.
pub(crate) const ENV: &str = "SHMPOOL_ROLE_SPAWN_WORKER";
/// The variable that makes a re-executed process run a `Process`'s function:
/// `<heap fd>,<spec offset>,<probe>`.
pub(crate) const PROCESS_ENV: &str = "SHMPOOL_ROLE_SPAWN_PROCESS";

/// What a spawned worker needs, as carried in [`ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) segment_fd: RawFd,
    pub(crate) ready_fd: RawFd,
    /// The program's object heap (`objects`), so tasks can use shared objects.
    pub(crate) heap_fd: RawFd,
    pub(crate) index: u32,
    pub(crate) probe: u64,
}

impl Spec {
    pub(crate) fn encode(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.segment_fd, self.ready_fd, self.heap_fd, self.index, self.probe
        )
    }

    pub(crate) fn decode(s: &OsStr) -> Option<Spec> {
        let s = s.to_str()?;
        let mut parts = s.split(',');
        let spec = Spec {
            segment_fd: parts.next()?.parse().ok()?,
            ready_fd: parts.next()?.parse().ok()?,
            heap_fd: parts.next()?.parse().ok()?,
            index: parts.next()?.parse().ok()?,
            probe: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(spec)
    }
}

/// This process's environment plus `extra`, as `execve` wants it; built before
/// `fork`, because the child of a multithreaded process must not allocate.
pub(crate) fn environment(extra: (&str, String)) -> io::Result<Vec<CString>> {
    std::env::vars_os()
        .filter(|(k, _)| !k.as_bytes().starts_with(super::ROLE_PREFIX.as_bytes()))
        .chain(std::iter::once((extra.0.into(), extra.1.into())))
        .map(|(k, v): (OsString, OsString)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(io::Error::other)
        })
        .collect()
}

/// How a re-executed process relates to the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tie {
    /// Dies with the calling thread (workers, spawned processes).
    Thread,
    /// Outlives the calling thread and process (the fork server).
    None,
    /// Outlives the program and what kills it: a session of its own, so no
    /// signal to the program's process group or terminal reaches it, and every
    /// catchable signal ignored (the tracker).
    Detached,
}

/// Executes this program with `env` in a new process, keeping `keep` open
/// across the `exec`, tied to the program as `tie` says.
///
/// The child is made with `clone(CLONE_VM | CLONE_VFORK)` (`sys::spawn`), not
/// `fork`: it costs the same whatever memory this process holds, where a fork
/// copies the page tables of all of it (about 30 ms per GiB touched).
pub(crate) fn exec_self(env: &[CString], keep: &[BorrowedFd<'_>], tie: Tie) -> io::Result<Child> {
    let arg0 = std::env::args_os()
        .next()
        .and_then(|a| CString::new(a.into_vec()).ok())
        .unwrap_or_else(|| c"shmpool-worker".to_owned());
    let argv = [arg0.as_ptr(), std::ptr::null()];
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let pid = crate::sys::spawn::spawn(&crate::sys::spawn::Exec {
        path: c"/proc/self/exe",
        argv: &argv,
        envp: &envp,
        keep,
        die_with_thread: (tie == Tie::Thread).then(std::process::id),
        detach: tie == Tie::Detached,
    })?;
    match fork::pidfd(pid) {
        Ok(pidfd) => Ok(Child {
            pid,
            pidfd,
            parent: fork::Parent::Us,
        }),
        Err(e) => {
            fork::kill_and_reap(pid);
            Err(e)
        }
    }
}

/// Leaves the program's session and process group, and ignores every signal
/// that can be ignored. Async-signal-safe (called between fork and exec).
pub(crate) fn detach() {
    // Fails only if already a group leader, which a fresh child is not.
    let _ = rustix::process::setsid();
    crate::sys::process::ignore_all_signals();
}

/// Starts a spawned worker (from the pool's supervisor thread).
pub(crate) fn spawn_worker(
    segment_fd: BorrowedFd<'_>,
    start: WorkerStart<'_>,
) -> Result<Child, Error> {
    super::bootstrap::ensure_linked();
    let heap_fd = crate::objects::Heap::get()?.fd();
    let spec = Spec {
        segment_fd: segment_fd.as_raw_fd(),
        ready_fd: start.ready_fd.as_raw_fd(),
        heap_fd: heap_fd.as_raw_fd(),
        index: start.index,
        probe: super::probe_offset(),
    };
    let env = environment((ENV, spec.encode()))?;
    let keep = [segment_fd, start.ready_fd, heap_fd];
    Ok(exec_self(&env, &keep, Tie::Thread)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_junk_is_refused() {
        let spec = Spec {
            segment_fd: 5,
            ready_fd: 7,
            heap_fd: 8,
            index: 3,
            probe: 123_456,
        };
        assert_eq!(Spec::decode(OsStr::new(&spec.encode())), Some(spec));
        assert_eq!(Spec::decode(OsStr::new("5,7,8,3")), None);
        assert_eq!(Spec::decode(OsStr::new("5,7,8,3,1,9")), None);
        assert_eq!(Spec::decode(OsStr::new("a,b,c,d,e")), None);
    }
}
