//! The resource tracker: a small process that removes named resources left
//! behind by a crashed program, like the "semaphore tracker" / resource tracker
//! of Python's `multiprocessing`.
//!
//! The pool itself creates nothing with a name (its segment is a `memfd`, its
//! fork-server socket an anonymous pair), so a pool alone never starts a
//! tracker. Named resources — [`SharedMemory`](crate::SharedMemory) objects in
//! `/dev/shm` — are registered here when created and unregistered when
//! unlinked.
//!
//! One tracker serves the whole program. It is this program's executable run
//! again with [`ENV`] naming one end of a socket pair (see `start::bootstrap`);
//! every process of the program holds the other end (forked workers inherit
//! it), so the tracker reads end-of-file exactly when all of them are gone — however
//! they ended, `kill -9` included. It then unlinks whatever is still
//! registered, writes one warning line per resource to stderr, and exits. It
//! runs in a session of its own and ignores every catchable signal, so what
//! kills the program (Ctrl-C, Ctrl-\, a closed terminal's SIGHUP, a signal to
//! the whole process group) does not kill the cleanup with it: only SIGKILL
//! sent to the tracker itself, or a reboot, can leak a name. Messages are single lines sent under a lock. A socket
//! rather than a pipe: `send(MSG_NOSIGNAL)` cannot raise SIGPIPE in a host
//! program that did not ignore it, should the tracker have been killed; the
//! next message then starts a new tracker.

// Unsafe code: the start-up hook (`.init_array`).
#![allow(unsafe_code)]

use crate::start::spawn;
use crate::sync::fork_mutex::{ForkMutex, ForkMutexGuard};
use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The variable that makes a re-executed process the tracker.
pub(crate) const ENV: &str = "SHMPOOL_ROLE_TRACKER";

/// Kinds of named resources the tracker knows how to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A POSIX shared-memory object (`shm_open` name).
    SharedMemory,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::SharedMemory => "shm",
        }
    }
}

/// Our end of the socket to the running tracker, once started. Fork children
/// share it (and the tracker) with their parent.
static TRACKER: ForkMutex<Option<Tracker>> = ForkMutex::new(None);

struct Tracker {
    socket: OwnedFd,
    pid: libc::pid_t,
}

/// Records that `name` exists and must be removed if the program dies first.
pub(crate) fn register(kind: Kind, name: &str) -> io::Result<()> {
    send("REGISTER", kind, name)
}

/// Records that `name` was removed normally.
pub(crate) fn unregister(kind: Kind, name: &str) -> io::Result<()> {
    send("UNREGISTER", kind, name)
}

fn lock() -> ForkMutexGuard<'static, Option<Tracker>> {
    TRACKER.lock()
}

fn send(verb: &str, kind: Kind, name: &str) -> io::Result<()> {
    if name.contains(['\n', ' ']) || name.len() > 255 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a tracked name must be one word of at most 255 bytes",
        ));
    }
    let line = format!("{verb} {} {name}\n", kind.tag());
    let mut guard = lock();
    for attempt in 0..2 {
        if guard.is_none() {
            *guard = Some(launch()?);
        }
        let tracker = guard.as_ref().expect("just launched");
        match crate::start::fork::send_all(tracker.socket.as_fd(), line.as_bytes()) {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 1 => return Err(e),
            Err(_) => {
                // The tracker died (killed from outside): reap it, start anew.
                let dead = guard.take().expect("present");
                crate::start::fork::reap(dead.pid, false);
            }
        }
    }
    unreachable!("the loop returns")
}

/// The tracker's start-up hook: like `start::bootstrap`'s for workers, it
/// runs before `main` in every process of this program and takes the
/// tracker's role if the environment names it. The tracker registers its own
/// hook, so that the start machinery needs to know nothing of it.
#[used]
#[link_section = ".init_array"]
static TRACKER_HOOK: extern "C" fn() = tracker_hook;

extern "C" fn tracker_hook() {
    // Unwinding out of an `extern "C"` function aborts; keep panics inside.
    let _ = std::panic::catch_unwind(|| {
        if let Some(claimed) = crate::start::bootstrap::claim_role_fds::<1>(ENV) {
            crate::start::bootstrap::exit(claimed.fds.map_or(2, |[socket]| serve(socket)));
        }
    });
}

fn launch() -> io::Result<Tracker> {
    // Keeps the hook in the executable (see `start::bootstrap::ensure_linked`).
    std::hint::black_box(&TRACKER_HOOK);
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let env = spawn::environment((ENV, theirs.as_raw_fd().to_string()))?;
    // The tracker must outlive this thread, this process and whatever signal
    // ends the program (SIGHUP of a closed terminal, Ctrl-\).
    let child = spawn::exec_self(&env, &[theirs.as_fd()], spawn::Tie::Detached)?;
    drop(theirs);
    await_hello(&ours);
    Ok(Tracker {
        socket: ours,
        pid: child.pid,
    })
}

/// Waits (at most 5 s) for the tracker's first byte: from then on it is in
/// its own session, out of reach of a signal to this program's group. Should
/// it not come, messages go out anyway, and a failed send starts a new tracker.
fn await_hello(socket: &OwnedFd) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut pfd = [PollFd::new(socket, PollFlags::IN)];
    let five_seconds = Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut pfd, Some(&five_seconds)) == Ok(1) {
        let mut byte = [0u8; 1];
        let _ = rustix::net::recv(socket, &mut byte, rustix::net::RecvFlags::empty());
    }
}

/// The tracker's loop (in the re-executed process); returns its exit status.
pub(crate) fn serve(socket: OwnedFd) -> i32 {
    // Done before the exec already; again in case this process was started
    // otherwise (by hand, with the variable set).
    spawn::detach();
    crate::start::fork::set_process_name(b"ResourceTracker");
    // Hello: this process is detached now (`await_hello`).
    let _ = crate::start::fork::send_all(socket.as_fd(), b"+");
    let socket = std::fs::File::from(socket);
    let mut live: BTreeSet<(String, String)> = BTreeSet::new();
    for line in io::BufReader::new(socket).lines() {
        let Ok(line) = line else { break };
        let mut words = line.split(' ');
        let (Some(verb), Some(kind), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let key = (kind.to_owned(), name.to_owned());
        match verb {
            "REGISTER" => {
                live.insert(key);
            }
            "UNREGISTER" => {
                live.remove(&key);
            }
            _ => {}
        }
    }
    // Every process of the program is gone: remove what they left.
    let mut stderr = io::stderr().lock();
    for (kind, name) in live {
        let removed = match kind.as_str() {
            "shm" => rustix::shm::unlink(name.as_str()).is_ok(),
            _ => false,
        };
        let what = if removed {
            "removed"
        } else {
            "could not remove"
        };
        let _ = writeln!(
            stderr,
            "shmpool tracker: the program ended without releasing {kind} {name}; {what} it"
        );
    }
    0
}
