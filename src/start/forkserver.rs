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

use super::fork::{self, Child, Parent};
use super::spawn;
use crate::error::Error;
use crate::sync::fork_mutex::{ForkMutex, ForkMutexGuard};
use crate::worker::WorkerStart;
use crate::StartMethod;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
pub(crate) fn start_worker(segment_fd: RawFd, start: WorkerStart) -> Result<Child, Error> {
    let heap_fd = crate::objects::Heap::get()?.fd();
    Ok(start_child(
        [START, start.index, 0, 0],
        &[segment_fd, start.ready_fd, heap_fd],
    )?)
}

/// Asks the server for a `Process` child that calls `run(spec_at)` (the spec
/// is in the object heap `heap_fd`). `run` travels as a code offset, like a
/// task function: the server runs the same executable.
pub(crate) fn start_process(
    heap_fd: RawFd,
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
fn start_child(words: [u32; 4], fds: &[RawFd]) -> io::Result<Child> {
    let mut guard = server();
    let mut reply = None;
    for _attempt in 0..2 {
        if guard.is_none() {
            *guard = Some(launch()?);
        }
        let s = guard.as_ref().expect("just launched");
        match request(&s.socket, words, fds) {
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
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(errno));
    }
    match fork::pidfd(pid) {
        Ok(pidfd) => Ok(Child {
            pid,
            pidfd,
            parent: Parent::Other { reap },
        }),
        Err(e) => {
            // SAFETY: the server has not reaped `pid` (it only does when asked).
            unsafe { libc::kill(pid, libc::SIGKILL) };
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
    match request(&s.socket, [REAP, pid as u32, block as u32, 0], &[]) {
        Ok([1, status]) => Some(status),
        Ok(_) => None,
        Err(_) => Some(libc::SIGKILL),
    }
}

/// Spawns the server with its end of a fresh socket pair.
fn launch() -> io::Result<Server> {
    super::bootstrap::ensure_linked();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors that nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let env = spawn::environment((ENV, theirs.as_raw_fd().to_string()))?;
    // The server must outlive the (supervisor) thread that happens to start
    // it; it notices the parent's death by the socket closing instead.
    let process = spawn::exec_self(&env, &[theirs.as_raw_fd()], spawn::Tie::None)?;
    drop(theirs);
    Ok(Server {
        socket: ours,
        process,
        owner: std::process::id(),
    })
}

/// Sends one request (with `fds` attached) and reads the two-word reply.
fn request(socket: &OwnedFd, words: [u32; 4], fds: &[RawFd]) -> io::Result<[i32; 2]> {
    send(socket.as_raw_fd(), &words, fds)?;
    let mut reply = [0i32; 2];
    let n = recv(socket.as_raw_fd(), bytes_of_mut(&mut reply), &mut [])?;
    if n != 8 {
        return Err(io::Error::other("the fork server closed its socket"));
    }
    Ok(reply)
}

fn bytes_of_mut<T: Copy>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: the integer arrays used here have no padding and any bytes are
    // valid for them.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

const MAX_FDS: usize = 3;

/// `sendmsg` of `data` with `fds` as `SCM_RIGHTS`.
fn send(socket: RawFd, data: &[u32; 4], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut data = *data;
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 16,
    };
    let mut control = [0u64; 8]; // aligned room for one cmsg of MAX_FDS fds
                                 // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        // SAFETY: CMSG_SPACE / CMSG_LEN are pure computations.
        let space = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` has a control buffer of `space` bytes, enough for one
        // header and `fds.len()` descriptors (checked against MAX_FDS above).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers set up above.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `recvmsg` into `buf`, storing received descriptors in `fds`; returns the
/// byte count (0 at end of stream).
fn recv(socket: RawFd, buf: &mut [u8], fds: &mut [RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: `msg` points at live buffers set up above.
        let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut got = 0;
    // SAFETY: walks the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let fd = data.add(i).read_unaligned();
                    if got < fds.len() {
                        fds[got] = fd;
                        got += 1;
                    } else {
                        libc::close(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n)
}

/// The server's loop (in the re-executed process); returns its exit status.
pub(crate) fn serve(fd: &OsStr) -> i32 {
    let Some(socket) = fd.to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
        return super::BAD_SEGMENT_EXIT;
    };
    super::fork::set_process_name(b"ForkServer");
    // SAFETY: plain syscall.
    let me = unsafe { libc::getpid() };
    loop {
        let mut words = [0u32; 4];
        let mut fds = [-1; MAX_FDS];
        match recv(socket, bytes_of_mut(&mut words), &mut fds) {
            Ok(16) => {}
            Ok(_) | Err(_) => return 0, // the parent is gone
        }
        let reply = match words[0] {
            START => start(socket, me, words[1], fds),
            START_PROCESS => start_process_child(
                socket,
                me,
                u64::from(words[1]) | u64::from(words[2]) << 32,
                words[3] as i32,
                fds[0],
            ),
            REAP => reap_child(words[1] as libc::pid_t, words[2] != 0),
            _ => [0, libc::EINVAL],
        };
        for fd in fds.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: descriptors we received and no longer need.
            unsafe { libc::close(fd) };
        }
        if send(socket, &[reply[0] as u32, reply[1] as u32, 0, 0], &[]).is_err() {
            return 0;
        }
    }
}

/// Forks worker `index` (server side); replies `[pid, 0]` or `[-1, errno]`.
fn start(socket: RawFd, server: libc::pid_t, index: u32, fds: [RawFd; MAX_FDS]) -> [i32; 2] {
    let [segment_fd, ready_fd, heap_fd] = fds;
    if segment_fd < 0 || ready_fd < 0 || heap_fd < 0 {
        return [-1, libc::EBADF];
    }
    fork_from_server(socket, server, heap_fd, move || {
        super::bootstrap::become_worker(segment_fd, ready_fd, index, StartMethod::ForkServer)
    })
}

/// Forks a `Process` child (server side) that calls the function at code
/// offset `run` with `spec_at`.
fn start_process_child(
    socket: RawFd,
    server: libc::pid_t,
    spec_at: u64,
    run: i32,
    heap_fd: RawFd,
) -> [i32; 2] {
    if heap_fd < 0 {
        return [-1, libc::EBADF];
    }
    let addr = crate::task::code_at(i64::from(run) as u64);
    // SAFETY: the program's own `start_process` sent the offset of a
    // `fn(u64) -> i32` of this executable (the server runs the same one, and
    // only the program's processes hold its socket).
    let run = unsafe { std::mem::transmute::<usize, fn(u64) -> i32>(addr) };
    fork_from_server(socket, server, heap_fd, move || {
        crate::panic::install_quiet_panic_hook();
        run(spec_at)
    })
}

/// Forks a child that maps the object heap `heap_fd` and runs `body`;
/// replies `[pid, 0]` or `[-1, errno]`.
fn fork_from_server(
    socket: RawFd,
    server: libc::pid_t,
    heap_fd: RawFd,
    body: impl FnOnce() -> i32,
) -> [i32; 2] {
    // SAFETY: the server is single-threaded, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the child does not speak for the server.
        unsafe { libc::close(socket) };
        fork::die_with_parent(server as u32);
        let code = if crate::objects::Heap::adopt(heap_fd) {
            body()
        } else {
            super::BAD_SEGMENT_EXIT
        };
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // SAFETY: ends the child without returning into the server loop.
        unsafe { libc::_exit(code) }
    }
    if pid < 0 {
        return [-1, io::Error::last_os_error().raw_os_error().unwrap_or(0)];
    }
    [pid, 0]
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
