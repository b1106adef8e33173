//! Where a manager's server listens and which key it takes, as a record in
//! the program's object heap, so that every process of the program (forked
//! or spawned) can reach it from a proxy, which carries only the record's
//! offset. Also the two transports: a Unix socket in the abstract namespace
//! (nothing on disk; the name vanishes with the server's last descriptor) and
//! TCP.

// Unsafe code: an endpoint record lives in shared memory (`Shared`).
#![allow(unsafe_code)]

use super::frame;
use crate::error::Error;
use crate::objects::Heap;
use rustix::event::{PollFd, PollFlags, Timespec};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Kind tag of a record: a forged proxy offset is refused.
const ENDPOINT_TAG: u32 = 0x4d47_5250; // "MGRP"

/// The longest authkey a record holds.
pub(crate) const MAX_KEY_BYTES: usize = 256;
const NAME_BYTES: usize = 64;

/// The server's progress, in [`EndpointRecord::state`].
pub(crate) const STARTING: u32 = 0;
pub(crate) const READY: u32 = 1;
pub(crate) const FAILED: u32 = 2;

const UNIX: u32 = 1;
const TCP: u32 = 2;

/// How a manager is reached, as laid out in the heap. The plain fields are
/// written once, before `tag` is published (Release), and never again; the
/// atomics are written by the server as it starts.
#[repr(C)]
pub(crate) struct EndpointRecord {
    tag: AtomicU32,
    /// `STARTING`, `READY` or `FAILED`.
    pub(crate) state: AtomicU32,
    /// The `errno` of a failed start.
    pub(crate) errno: AtomicU32,
    /// TCP: the port bound (known once `READY`, for an address with port 0).
    pub(crate) port: AtomicU32,
    transport: u32,
    key_len: u32,
    name_len: u32,
    ipv6: u32,
    pub(crate) frame_limit: u64,
    pub(crate) handshake_timeout_ms: u64,
    /// Random, made with the record: a proxy's serde form carries it, so one
    /// decoded in another program (whose heap may hold a record at the same
    /// offset) is refused.
    pub(crate) nonce: u64,
    ip: [u8; 16],
    name: [u8; NAME_BYTES],
    key: [u8; MAX_KEY_BYTES],
}

// SAFETY: `repr(C)`, atomics and plain integers and bytes (any bytes are a
// valid value; lengths are checked before use); the plain fields are written
// once, through a fresh allocation, before `tag` is published, and never
// again.
unsafe impl crate::shm::region::Shared for EndpointRecord {}

/// Where a server listens (before its record exists).
#[derive(Debug, Clone)]
pub(crate) enum Address {
    /// An abstract Unix socket name (without the leading NUL).
    Unix(String),
    Tcp(SocketAddr),
}

/// What a record is made of.
pub(crate) struct Settings<'a> {
    pub(crate) address: Address,
    pub(crate) authkey: &'a [u8],
    pub(crate) frame_limit: usize,
    pub(crate) handshake_timeout: Duration,
}

/// Writes a new record into the heap; returns its offset.
pub(crate) fn create(settings: &Settings<'_>) -> Result<u64, Error> {
    if settings.authkey.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "an authkey has at most {MAX_KEY_BYTES} bytes"
        )));
    }
    let nonce = u64::from_le_bytes(super::auth::random_bytes::<8>()?);
    let heap = Heap::get()?;
    let size = std::mem::size_of::<EndpointRecord>();
    let mut fresh = heap.alloc_fresh(size, 64)?;
    let mut key = [0u8; MAX_KEY_BYTES];
    key[..settings.authkey.len()].copy_from_slice(settings.authkey);
    let mut record = EndpointRecord {
        tag: AtomicU32::new(0),
        state: AtomicU32::new(STARTING),
        errno: AtomicU32::new(0),
        port: AtomicU32::new(0),
        transport: UNIX,
        key_len: settings.authkey.len() as u32,
        name_len: 0,
        ipv6: 0,
        frame_limit: settings.frame_limit as u64,
        handshake_timeout_ms: millis(settings.handshake_timeout),
        nonce,
        ip: [0; 16],
        name: [0; NAME_BYTES],
        key,
    };
    match &settings.address {
        Address::Unix(name) => {
            let n = name.len().min(NAME_BYTES);
            record.name[..n].copy_from_slice(&name.as_bytes()[..n]);
            record.name_len = n as u32;
        }
        Address::Tcp(addr) => {
            record.transport = TCP;
            record.port = AtomicU32::new(u32::from(addr.port()));
            match addr.ip() {
                IpAddr::V4(ip) => record.ip[..4].copy_from_slice(&ip.octets()),
                IpAddr::V6(ip) => {
                    record.ipv6 = 1;
                    record.ip = ip.octets();
                }
            }
        }
    }
    fresh.write(0, record);
    let at = fresh.into_offset();
    heap.at::<EndpointRecord>(at)
        .expect("fresh allocation")
        .tag
        .store(ENDPOINT_TAG, Ordering::Release);
    Ok(at)
}

/// `t` in whole milliseconds, at least 1, saturating at `u64::MAX` (no
/// deadline in practice) instead of wrapping.
pub(crate) fn millis(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The record at `at`, checked.
pub(crate) fn record(at: u64) -> Result<&'static EndpointRecord, Error> {
    let forged =
        || Error::invalid("not a manager proxy of this program (a forged or zeroed handle?)");
    let heap = Heap::existing().ok_or_else(forged)?;
    let record: &EndpointRecord = heap.at(at).ok_or_else(forged)?;
    if record.tag.load(Ordering::Acquire) != ENDPOINT_TAG {
        return Err(forged());
    }
    Ok(record)
}

impl EndpointRecord {
    pub(crate) fn authkey(&self) -> &[u8] {
        &self.key[..(self.key_len as usize).min(MAX_KEY_BYTES)]
    }

    pub(crate) fn address(&self) -> Address {
        if self.transport == TCP {
            let ip = if self.ipv6 == 1 {
                IpAddr::V6(Ipv6Addr::from(self.ip))
            } else {
                IpAddr::V4(Ipv4Addr::new(
                    self.ip[0], self.ip[1], self.ip[2], self.ip[3],
                ))
            };
            Address::Tcp(SocketAddr::new(
                ip,
                self.port.load(Ordering::Acquire) as u16,
            ))
        } else {
            let n = (self.name_len as usize).min(NAME_BYTES);
            Address::Unix(String::from_utf8_lossy(&self.name[..n]).into_owned())
        }
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// A connected socket of either transport.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Connects to `address`.
    pub(crate) fn connect(address: &Address) -> io::Result<Stream> {
        match address {
            Address::Unix(name) => {
                let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
                Ok(Stream::Unix(UnixStream::connect_addr(&addr)?))
            }
            Address::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, Duration::from_secs(10))?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
        }
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(on),
            Stream::Tcp(s) => s.set_nonblocking(on),
        }
    }

    /// Sends a whole frame (or other bytes).
    pub(crate) fn send(&self, bytes: &[u8]) -> io::Result<()> {
        frame::send_all(self, bytes)
    }

    /// Whether the peer has closed its end or the connection broke.
    pub(crate) fn peer_gone(&self) -> bool {
        fd_gone(self.as_fd())
    }
}

/// Whether the peer of socket `fd` has closed its end or the connection
/// broke.
pub(crate) fn fd_gone(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = [PollFd::new(&fd, PollFlags::RDHUP)];
    let n = rustix::event::poll(&mut pfd, Some(&Timespec::default())).unwrap_or(0);
    n > 0
        && pfd[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_saturate_in_milliseconds() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        // 2^64 ms and a bit: wrapped, this would be 384 ms.
        assert_eq!(
            millis(Duration::from_secs(18_446_744_073_709_552)),
            u64::MAX
        );
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
