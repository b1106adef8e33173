//! The shared-memory lane of a local connection: after authenticating over
//! the Unix socket, a client thread asks for a lane, and the server's
//! connection thread hands it a fresh memfd over the socket
//! (`SCM_RIGHTS`). Both map it and close the descriptor at once, so no
//! process holds a descriptor of it: another process of the same user
//! cannot open it through `/proc/<pid>/fd` (only by reading the memory of a
//! process it may `ptrace`). Requests and replies then travel through the
//! mapping, one at a time, with a futex doorbell; the socket stays open for
//! messages too large for the lane, and to tell each side the other is gone.
//!
//! ```text
//! state   IDLE ──client posts──▶ REQUEST ──server replies──▶ REPLY ──client reads──▶ IDLE
//! len     bytes of the message in `data`, or ON_SOCKET: it is a frame on the socket
//! ```
//!
//! Each side sleeps on `state` (a futex) with a flag that tells the other
//! to wake it (SeqCst on both sides: no lost wake-up). A client waiting for
//! its reply first spins with the pool's bounded budget (`sync::spin`,
//! yielding every 64 spins); the server thread sleeps at once (a server
//! that spun too held the CPU its client needed when the CPUs were busy:
//! calls 1.3 to 5 times slower, `docs/PERFORMANCE.md`). Measured with
//! `compare --features manager -- --quick` on the 2-vCPU machine: on an idle
//! machine, where a futex wake-up of a halted vCPU costs tens of
//! microseconds, calls went from 23–97 µs to 1.6–5.6 µs; with two busy loops
//! on the two CPUs they took 3–5 µs. (A fixed spin without yielding had made
//! calls 2 to 10 times slower on a loaded machine.) The server
//! never trusts what the client wrote: it checks `len`, and copies the
//! request out before decoding it.

use crate::sync::futex;
use crate::sync::spin::SpinWait;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Bytes of a lane's mapping.
const LANE_BYTES: usize = 64 << 10;
/// Bytes before the data (the header, padded).
const HEADER_BYTES: usize = 64;
/// The largest message the lane carries; larger ones go on the socket.
pub(crate) const CAPACITY: usize = LANE_BYTES - HEADER_BYTES;

const IDLE: u32 = 0;
const REQUEST: u32 = 1;
const REPLY: u32 = 2;
/// `len` of a message sent as a frame on the socket instead.
const ON_SOCKET: u32 = u32::MAX;

/// How long a sleeper sleeps before checking that the other side lives.
const SLICE: Duration = Duration::from_millis(100);

#[repr(C)]
struct Header {
    state: AtomicU32,
    server_sleeps: AtomicU32,
    client_sleeps: AtomicU32,
    len: AtomicU32,
}

/// One side's mapping of a lane.
pub(crate) struct Lane {
    base: *mut u8,
}

// SAFETY: the mapping is shared memory accessed through atomics (the header)
// and by copies ordered by them (the data); it may be used from any thread.
unsafe impl Send for Lane {}
// SAFETY: as above: shared access goes through the header's atomics, and
// each side writes the data area only while `state` gives it the turn.
unsafe impl Sync for Lane {}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").finish_non_exhaustive()
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // SAFETY: `base` is our mapping of LANE_BYTES, unused after this.
        unsafe { libc::munmap(self.base.cast(), LANE_BYTES) };
    }
}

/// What a wait for the other side came to.
pub(crate) enum Waited {
    /// The message: in the lane (copied out), or a frame on the socket.
    Message(Option<Vec<u8>>),
    /// The deadline passed.
    Timeout,
    /// The other side is gone (its socket closed), or broke the protocol.
    Gone,
}

impl Lane {
    /// The server's side: a new lane and the descriptor to hand over.
    pub(crate) fn create() -> io::Result<(Lane, OwnedFd)> {
        // SAFETY: a NUL-terminated name; the flags ask for nothing unusual.
        let fd = unsafe { libc::memfd_create(c"shmpool-manager-lane".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a plain system call on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), LANE_BYTES as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((Lane::map_fd(fd.as_raw_fd())?, fd))
    }

    /// The client's side: maps the descriptor the server sent, and closes it.
    pub(crate) fn map(fd: OwnedFd) -> io::Result<Lane> {
        // SAFETY: `stat` is plain data filled by the kernel.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a writable stat.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (stat.st_size as u64) < LANE_BYTES as u64 {
            // Mapping past its end would fault (SIGBUS) on first touch.
            return Err(io::ErrorKind::InvalidData.into());
        }
        Lane::map_fd(fd.as_raw_fd())
    }

    fn map_fd(fd: RawFd) -> io::Result<Lane> {
        // SAFETY: a fresh shared mapping of LANE_BYTES of a file that large.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LANE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Lane { base: base.cast() })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (all zeros is IDLE), is
        // page-aligned and lives as long as `self`.
        unsafe { &*self.base.cast::<Header>() }
    }

    /// Copies `msg` into the data area and publishes it as `state`.
    fn put(&self, msg: Option<&[u8]>, state: u32, sleeper: &AtomicU32) {
        let h = self.header();
        match msg {
            Some(msg) => {
                debug_assert!(msg.len() <= CAPACITY);
                // SAFETY: `msg` fits in the data area (callers check), which
                // the other side does not touch until `state` says so.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        msg.as_ptr(),
                        self.base.add(HEADER_BYTES),
                        msg.len(),
                    )
                };
                h.len.store(msg.len() as u32, Ordering::Relaxed);
            }
            None => h.len.store(ON_SOCKET, Ordering::Relaxed),
        }
        h.state.store(state, Ordering::SeqCst);
        if sleeper.load(Ordering::SeqCst) != 0 {
            futex::wake(&h.state, 1);
        }
    }

    /// Waits until `state` is `want` (sleeping in slices, checking `gone`
    /// after each), at most until `deadline`; then copies the message out
    /// (its length checked: never trusted).
    fn take(
        &self,
        want: u32,
        sleeper: &AtomicU32,
        deadline: Option<Instant>,
        gone: &dyn Fn() -> bool,
        check_first: bool,
    ) -> Waited {
        let h = self.header();
        if h.state.load(Ordering::Acquire) != want {
            if check_first && gone() {
                // A call to a server that just died fails at once, not
                // after a slice. (A 1 ms first slice instead made every
                // call 2.5 times slower here.)
                return Waited::Gone;
            }
            // A client waiting for its reply spins briefly first, as the
            // pool's waiters do (`sync::spin`, yielding every 64 spins): on
            // an idle machine a futex wake-up of a halted vCPU costs tens of
            // microseconds, most of a call.
            if check_first {
                let mut spin = SpinWait::new();
                while h.state.load(Ordering::Acquire) != want && spin.spin() {}
            }
            while h.state.load(Ordering::Acquire) != want {
                let slice = match deadline {
                    None => SLICE,
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => left.min(SLICE),
                        _ => return Waited::Timeout,
                    },
                };
                sleeper.store(1, Ordering::SeqCst);
                let seen = h.state.load(Ordering::SeqCst);
                if seen != want {
                    futex::wait(&h.state, seen, Some(slice));
                }
                sleeper.store(0, Ordering::Relaxed);
                if h.state.load(Ordering::Acquire) == want {
                    break;
                }
                if gone() {
                    return Waited::Gone;
                }
            }
        }
        let len = h.len.load(Ordering::Relaxed);
        if len == ON_SOCKET {
            return Waited::Message(None);
        }
        let len = len as usize;
        if len > CAPACITY {
            return Waited::Gone; // a broken (or hostile) peer
        }
        let mut msg = vec![0; len];
        // SAFETY: `len` bytes of the data area, checked against its size.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(HEADER_BYTES), msg.as_mut_ptr(), len)
        };
        Waited::Message(Some(msg))
    }

    /// Client: posts a request (`None`: it was sent on the socket).
    pub(crate) fn post(&self, request: Option<&[u8]>) {
        let h = self.header();
        self.put(request, REQUEST, &h.server_sleeps);
    }

    /// Client: waits for the reply, at most until `deadline`; `gone` tells
    /// whether the server went.
    pub(crate) fn reply(&self, deadline: Option<Instant>, gone: &dyn Fn() -> bool) -> Waited {
        let h = self.header();
        let waited = self.take(REPLY, &h.client_sleeps, deadline, gone, true);
        if matches!(waited, Waited::Message(_)) {
            h.state.store(IDLE, Ordering::Release);
        }
        waited
    }

    /// Server: waits for the next request for as long as the client lives.
    pub(crate) fn request(&self, gone: &dyn Fn() -> bool) -> Waited {
        let h = self.header();
        self.take(REQUEST, &h.server_sleeps, None, gone, false)
    }

    /// Server: publishes the reply (`None`: it was sent on the socket).
    pub(crate) fn answer(&self, reply: Option<&[u8]>) {
        let h = self.header();
        self.put(reply, REPLY, &h.client_sleeps);
    }
}

/// Sends one byte and, if given, descriptor `fd` with it (`SCM_RIGHTS`).
pub(crate) fn send_fd(socket: RawFd, fd: Option<RawFd>) -> io::Result<()> {
    let mut byte = [if fd.is_some() { b'L' } else { b'N' }];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 4]; // CMSG_SPACE(4) is 24 bytes, aligned
                               // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = space.as_mut_ptr().cast();
        // SAFETY: a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: `msg_control` points at `space`, large enough for one
        // header and one descriptor (CMSG_SPACE(4) ≤ 32 bytes).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        }
    }
    // SAFETY: `msg` and what it points at live for the call.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receives the byte [`send_fd`] sends, and the descriptor if one came
/// (`Ok(None)`: the server has no lane for us). Blocks as the socket does.
pub(crate) fn recv_fd(socket: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 4];
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space);
    // SAFETY: `msg` and what it points at live for the call.
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut fd = None;
    // SAFETY: walks the control messages the kernel wrote into `space`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = libc::CMSG_DATA(cmsg).cast::<RawFd>().read_unaligned();
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    match (byte[0], fd) {
        (b'L', Some(fd)) => Ok(Some(fd)),
        (b'N', None) => Ok(None),
        _ => Err(io::ErrorKind::InvalidData.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_lane_carries_requests_and_replies_and_refuses_a_forged_length() {
        let (server, fd) = Lane::create().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_fd(a.as_raw_fd(), Some(fd.as_raw_fd())).unwrap();
        drop(fd);
        let client = Lane::map(recv_fd(b.as_raw_fd()).unwrap().unwrap()).unwrap();
        let never = || false;
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..100 {
                    let Waited::Message(Some(req)) = server.request(&never) else {
                        panic!("no request");
                    };
                    server.answer(Some(&[req[0] + 1]));
                }
            });
            for i in 0..100u8 {
                client.post(Some(&[i]));
                let Waited::Message(Some(reply)) = client.reply(None, &never) else {
                    panic!("no reply");
                };
                assert_eq!(reply, [i + 1]);
            }
        });
        // A deadline holds when no reply comes.
        client.post(Some(b"x"));
        let start = Instant::now();
        let timeout = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            client.reply(Some(timeout), &never),
            Waited::Timeout
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
        // The server refuses a length past the lane.
        client
            .header()
            .len
            .store(CAPACITY as u32 + 1, Ordering::Relaxed);
        assert!(matches!(server.request(&never), Waited::Gone));
        // No lane offered: `None`.
        send_fd(a.as_raw_fd(), None).unwrap();
        assert!(recv_fd(b.as_raw_fd()).unwrap().is_none());
    }
}
