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

// Unsafe code: a lane's header lives in shared memory (`Shared`).
#![allow(unsafe_code)]

use crate::shm::region::Shared;
use crate::shm::segment::Mapping;
use crate::sync::futex;
use crate::sync::spin::SpinWait;
use rustix::fs::{memfd_create, MemfdFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes of a lane's mapping.
const LANE_BYTES: usize = 64 << 10;
/// Bytes before the data (the header, padded).
const HEADER_BYTES: usize = 64;
/// The largest message the lane carries; larger ones go on the socket.
pub(crate) const CAPACITY: usize = LANE_BYTES - HEADER_BYTES;
const _: () = assert!(CAPACITY % 8 == 0 && HEADER_BYTES % 8 == 0);

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

// SAFETY: atomics only (any bytes a peer leaves are a valid value; the
// server checks `len` before use), all-zero is IDLE.
unsafe impl Shared for Header {}

/// One side's mapping of a lane (unmapped on drop).
///
/// Send and Sync through the mapping: shared access goes through the
/// header's atomics, and each side writes the data area only while `state`
/// gives it the turn.
pub(crate) struct Lane {
    map: Mapping,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").finish_non_exhaustive()
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
        let fd = memfd_create("shmpool-manager-lane", MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, LANE_BYTES as u64)?;
        Ok((Lane::map_fd(fd.as_fd())?, fd))
    }

    /// The client's side: maps the descriptor the server sent, and closes it.
    pub(crate) fn map(fd: OwnedFd) -> io::Result<Lane> {
        if (rustix::fs::fstat(&fd)?.st_size as u64) < LANE_BYTES as u64 {
            // Mapping past its end would fault (SIGBUS) on first touch.
            return Err(io::ErrorKind::InvalidData.into());
        }
        Lane::map_fd(fd.as_fd())
    }

    fn map_fd(fd: BorrowedFd<'_>) -> io::Result<Lane> {
        let map = Mapping::shared(fd, LANE_BYTES, false)?;
        Ok(Lane { map })
    }

    /// The data area, as words: copied through atomics (Relaxed; `state`
    /// orders them), so a peer that writes out of turn garbles a message at
    /// worst (which the decoder refuses), never races this process's reads.
    fn data(&self) -> &[AtomicU64] {
        self.map.slice(HEADER_BYTES, CAPACITY / 8)
    }

    /// Copies `msg` (at most [`CAPACITY`] bytes) to the data area.
    fn write_data(&self, msg: &[u8]) {
        let words = self.data();
        let mut chunks = msg.chunks_exact(8);
        for (word, chunk) in words.iter().zip(&mut chunks) {
            let bytes: [u8; 8] = chunk.try_into().expect("8 bytes");
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            words[msg.len() / 8].store(u64::from_ne_bytes(last), Ordering::Relaxed);
        }
    }

    /// The first `len` (at most [`CAPACITY`]) bytes of the data area.
    fn read_data(&self, len: usize) -> Vec<u8> {
        let mut msg = Vec::with_capacity(len.next_multiple_of(8));
        for word in &self.data()[..len.div_ceil(8)] {
            msg.extend_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        msg.truncate(len);
        msg
    }

    fn header(&self) -> &Header {
        self.map.view(0)
    }

    /// Copies `msg` into the data area and publishes it as `state`.
    fn put(&self, msg: Option<&[u8]>, state: u32, sleeper: &AtomicU32) {
        let h = self.header();
        match msg {
            Some(msg) => {
                debug_assert!(msg.len() <= CAPACITY);
                self.write_data(msg);
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
        Waited::Message(Some(self.read_data(len)))
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
pub(crate) fn send_fd(socket: BorrowedFd<'_>, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let byte = [if fd.is_some() { b'L' } else { b'N' }];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    if !fds.is_empty() {
        let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
        assert!(pushed, "room for one descriptor");
    }
    let n = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&byte)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n == 1 {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

/// Receives the byte [`send_fd`] sends, and the descriptor if one came
/// (`Ok(None)`: the server has no lane for us). Blocks as the socket does.
pub(crate) fn recv_fd(socket: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8];
    // Room for a few: any beyond the first is closed, and the message refused.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?
    .bytes;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            // The last one wins, as before; the others close as they drop.
            for received in received {
                fd = Some(received);
            }
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
        send_fd(a.as_fd(), Some(fd.as_fd())).unwrap();
        drop(fd);
        let client = Lane::map(recv_fd(b.as_fd()).unwrap().unwrap()).unwrap();
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
        send_fd(a.as_fd(), None).unwrap();
        assert!(recv_fd(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn messages_of_every_length_up_to_the_capacity_arrive_whole() {
        let (lane, _fd) = Lane::create().unwrap();
        for len in [0, 1, 7, 8, 9, 63, 1000, CAPACITY - 1, CAPACITY] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            lane.write_data(&msg);
            assert_eq!(lane.read_data(len), msg, "{len} bytes");
        }
    }
}
