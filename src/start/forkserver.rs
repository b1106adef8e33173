//! The `forkserver` start method: one small server process per program forks
//! the workers.
//!
//! The server is this program re-executed (see `spawn`) with [`ENV`] naming its
//! end of a `SOCK_SEQPACKET` socket pair. It is single-threaded and has a tiny
//! heap, so its `fork` is fast and inherits no lock held by another thread.
//! Requests, one datagram each, served one at a time:
//!
//! * `START index` with the pool's segment and ready descriptors attached
//!   (`SCM_RIGHTS`): the server forks a worker, which maps the segment and
//!   serves; the reply is its pid.
//! * `REAP pid block`: the server `waitpid`s its child (workers are the
//!   server's children, so only it can reap them); the reply is the status.
//!
//! The parent watches workers through pidfds (which work for any process) and
//! kills them by pid (not reaped until it asks, so the pid cannot be reused).
//! The server exits when the parent's end of the socket closes (the parent
//! died); its workers die with it (`PR_SET_PDEATHSIG`). Nothing has a name, so
//! nothing can leak.

// Unsafe code: the fork server: `fork`, and functions run from code offsets.
#![allow(unsafe_code)]

use super::fork::{self, Child, Parent};
use super::spawn;
use crate::error::Error;
use crate::sync::fork_mutex::{ForkMutex, ForkMutexGuard};
use crate::sys::process::{self as sys, Forked};
use crate::worker::WorkerStart;
use crate::StartMethod;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The variable that makes a re-executed process the fork server.
pub(crate) const ENV: &str = "SHMPOOL_ROLE_FORKSERVER";

const START: u32 = 1;
const REAP: u32 = 2;
const START_PROCESS: u32 = 3;

/// The parent's side of the running server.
struct Server {
    socket: OwnedFd,
    process: Child,
    /// The process that started it: a child made by `fork` inherits this
    /// static, but must not share the parent's socket (replies would go to
    /// whichever process reads first) nor have its children forked by the
    /// parent's server.
    owner: u32,
}

/// One server per program, started on first use; the lock also serializes
/// requests, which keeps each reply paired with its request.
static SERVER: ForkMutex<Option<Server>> = ForkMutex::new(None);

fn server() -> ForkMutexGuard<'static, Option<Server>> {
    let mut guard = SERVER.lock();
    let me = std::process::id();
    // Dropping closes only this process's copies of the descriptors.
    drop(guard.take_if(|s| s.owner != me));
    guard
}

/// Asks the server (started if needed) for worker `start.index`.
pub(crate) fn start_worker(
    segment_fd: BorrowedFd<'_>,
    start: WorkerStart<'_>,
) -> Result<Child, Error> {
    let heap_fd = crate::objects::Heap::get()?.fd();
    let fds = [segment_fd, start.ready_fd, heap_fd];
    Ok(start_child([START, start.index, 0, 0], &fds)?)
}

/// Asks the server for a `Process` child that calls `run(spec_at)` (the spec
/// is in the object heap `heap_fd`). `run` travels as a code offset, like a
/// task function: the server runs the same executable.
pub(crate) fn start_process(
    heap_fd: BorrowedFd<'_>,
    spec_at: u64,
    run: fn(u64) -> i32,
) -> io::Result<Child> {
    let offset = crate::task::code_offset(run as usize) as i64;
    let offset = i32::try_from(offset).map_err(|_| io::Error::other("code offset out of range"))?;
    start_child(
        [
            START_PROCESS,
            spec_at as u32,
            (spec_at >> 32) as u32,
            offset as u32,
        ],
        &[heap_fd],
    )
}

/// Sends a start request; returns the new child.
fn start_child(words: [u32; 4], fds: &[BorrowedFd<'_>]) -> io::Result<Child> {
    let mut guard = server();
    let mut reply = None;
    for _attempt in 0..2 {
        if guard.is_none() {
            *guard = Some(launch()?);
        }
        let s = guard.as_ref().expect("just launched");
        match request(s.socket.as_fd(), words, fds) {
            Ok(r) => {
                reply = Some(r);
                break;
            }
            // The server died (killed from outside?): start another one.
            Err(_) => {
                if let Some(dead) = guard.take() {
                    dead.process.kill_and_reap();
                }
            }
        }
    }
    drop(guard); // `reap` below takes the lock again
    let [pid, errno] = reply.ok_or_else(|| io::Error::other("the fork server does not answer"))?;
    // `Pid::from_raw` wants no negative number: check the sign first.
    let child = if pid > 0 {
        rustix::process::Pid::from_raw(pid)
    } else {
        None
    };
    let Some(child) = child else {
        return Err(io::Error::from_raw_os_error(errno));
    };
    match fork::pidfd(pid) {
        Ok(pidfd) => Ok(Child {
            pid,
            pidfd,
            parent: Parent::Other { reap },
        }),
        Err(e) => {
            // The server has not reaped `pid` (it only does when asked), so the
            // pid cannot name another process yet.
            let _ = rustix::process::kill_process(child, rustix::process::Signal::KILL);
            reap(pid, true);
            Err(e)
        }
    }
}

/// `waitpid` for a worker of the server. If the server is gone, so are its
/// workers (they die with it): reported as killed by SIGKILL.
pub(crate) fn reap(pid: libc::pid_t, block: bool) -> Option<libc::c_int> {
    let guard = server();
    let Some(s) = guard.as_ref() else {
        return Some(libc::SIGKILL);
    };
    match request(s.socket.as_fd(), [REAP, pid as u32, block as u32, 0], &[]) {
        Ok([1, status]) => Some(status),
        Ok(_) => None,
        Err(_) => Some(libc::SIGKILL),
    }
}

/// Spawns the server with its end of a fresh socket pair.
fn launch() -> io::Result<Server> {
    super::bootstrap::ensure_linked();
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let env = spawn::environment((ENV, theirs.as_raw_fd().to_string()))?;
    // The server must outlive the (supervisor) thread that happens to start
    // it; it notices the parent's death by the socket closing instead.
    let process = spawn::exec_self(&env, &[theirs.as_fd()], spawn::Tie::None)?;
    drop(theirs);
    Ok(Server {
        socket: ours,
        process,
        owner: std::process::id(),
    })
}

/// Sends one request (with `fds` attached) and reads the two-word reply.
fn request(
    socket: BorrowedFd<'_>,
    words: [u32; 4],
    fds: &[BorrowedFd<'_>],
) -> io::Result<[i32; 2]> {
    send(socket, &words, fds)?;
    let mut reply = [0u8; 8];
    let n = recv(socket, &mut reply, &mut [])?;
    if n != 8 {
        return Err(io::Error::other("the fork server closed its socket"));
    }
    let [a, b] =
        [&reply[..4], &reply[4..]].map(|w| i32::from_ne_bytes(w.try_into().expect("four bytes")));
    Ok([a, b])
}

/// The most descriptors one request carries.
const MAX_FDS: usize = 3;

/// `sendmsg` of `words` with `fds` as `SCM_RIGHTS`.
fn send(socket: BorrowedFd<'_>, words: &[u32; 4], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut data = [0u8; 16];
    for (out, w) in data.chunks_exact_mut(4).zip(words) {
        out.copy_from_slice(&w.to_ne_bytes());
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
        assert!(pushed, "room for MAX_FDS descriptors");
    }
    loop {
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&data)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `recvmsg` into `buf`, storing received descriptors in `fds` (any beyond
/// its length are closed); returns the byte count (0 at end of stream).
fn recv(socket: BorrowedFd<'_>, buf: &mut [u8], fds: &mut [Option<OwnedFd>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg.bytes,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut slots = fds.iter_mut();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            for fd in received {
                // Past the slots, `fd` drops here: closed.
                if let Some(slot) = slots.next() {
                    *slot = Some(fd);
                }
            }
        }
    }
    Ok(n)
}

/// The server's loop (in the re-executed process); returns its exit status.
pub(crate) fn serve(socket: OwnedFd) -> i32 {
    let mut socket = Some(socket);
    super::fork::set_process_name(b"ForkServer");
    let me = std::process::id();
    while let Some(s) = socket.as_ref().map(|s| s.as_fd()) {
        let mut words = [0u8; 16];
        let mut fds: [Option<OwnedFd>; MAX_FDS] = Default::default();
        match recv(s, &mut words, &mut fds) {
            Ok(16) => {}
            Ok(_) | Err(_) => return 0, // the parent is gone
        }
        let [kind, a, b, c] = [0, 1, 2, 3]
            .map(|i| u32::from_ne_bytes(words[i * 4..i * 4 + 4].try_into().expect("four bytes")));
        let reply = match kind {
            START => start(&mut socket, me, a, &fds),
            START_PROCESS => start_process_child(
                &mut socket,
                me,
                u64::from(a) | u64::from(b) << 32,
                c as i32,
                fds[0].as_ref(),
            ),
            REAP => reap_child(a as libc::pid_t, b != 0),
            _ => [0, libc::EINVAL],
        };
        // The received descriptors drop (close) here: the children have theirs.
        drop(fds);
        let Some(s) = socket.as_ref() else { return 0 };
        if send(s.as_fd(), &[reply[0] as u32, reply[1] as u32, 0, 0], &[]).is_err() {
            return 0;
        }
    }
    0
}

/// Forks worker `index` (server side); replies `[pid, 0]` or `[-1, errno]`.
fn start(
    socket: &mut Option<OwnedFd>,
    server: u32,
    index: u32,
    fds: &[Option<OwnedFd>; MAX_FDS],
) -> [i32; 2] {
    let [Some(segment_fd), Some(ready_fd), Some(heap_fd)] = fds else {
        return [-1, libc::EBADF];
    };
    let (segment_fd, ready_fd) = (segment_fd.as_fd(), ready_fd.as_fd());
    fork_from_server(socket, server, heap_fd.as_fd(), move || {
        super::bootstrap::become_worker(segment_fd, ready_fd, index, StartMethod::ForkServer)
    })
}

/// Forks a `Process` child (server side) that calls the function at code
/// offset `run` with `spec_at`.
fn start_process_child(
    socket: &mut Option<OwnedFd>,
    server: u32,
    spec_at: u64,
    run: i32,
    heap_fd: Option<&OwnedFd>,
) -> [i32; 2] {
    let Some(heap_fd) = heap_fd else {
        return [-1, libc::EBADF];
    };
    let addr = crate::task::code_at(i64::from(run) as u64);
    // SAFETY: the program's own `start_process` sent the offset of a
    // `fn(u64) -> i32` of this executable (the server runs the same one, and
    // only the program's processes hold its socket).
    let run = unsafe { std::mem::transmute::<usize, fn(u64) -> i32>(addr) };
    fork_from_server(socket, server, heap_fd.as_fd(), move || {
        crate::panic::install_quiet_panic_hook();
        run(spec_at)
    })
}

/// Forks a child that maps the object heap `heap_fd` and runs `body`;
/// replies `[pid, 0]` or `[-1, errno]`. The received descriptors stay open in
/// the child (it never returns into the loop that would close them).
fn fork_from_server(
    socket: &mut Option<OwnedFd>,
    server: u32,
    heap_fd: BorrowedFd<'_>,
    body: impl FnOnce() -> i32,
) -> [i32; 2] {
    // SAFETY: the server is single-threaded, so the child may run any code;
    // it leaves through `exit_now`.
    match unsafe { sys::fork() } {
        Ok(Forked::Child) => {
            // The child does not speak for the server: if it kept the socket,
            // the parent would not see the server's end close when it dies.
            drop(socket.take());
            fork::die_with_parent(server);
            // The heap keeps its own copy of the descriptor.
            let heap_fd = heap_fd.try_clone_to_owned();
            let code = if heap_fd.is_ok_and(crate::objects::Heap::adopt) {
                body()
            } else {
                super::BAD_SEGMENT_EXIT
            };
            let _ = std::io::Write::flush(&mut std::io::stdout());
            sys::exit_now(code)
        }
        Ok(Forked::Parent(pid)) => [pid, 0],
        Err(e) => [-1, e.raw_os_error().unwrap_or(0)],
    }
}

/// `waitpid` on the server's child; replies `[1, status]`, or `[0, 0]` if it
/// still runs.
fn reap_child(pid: libc::pid_t, block: bool) -> [i32; 2] {
    // The server's children are only workers; reuse the common loop.
    match fork::reap(pid, block) {
        Some(status) => [1, status],
        None => [0, 0],
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn a_start_request_without_descriptors_is_refused_with_ebadf() {
        let e = start_child([START, 0, 0, 0], &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        // The server still serves: an unknown request is refused, not fatal.
        let e = start_child([99, 0, 0, 0], &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }
}
