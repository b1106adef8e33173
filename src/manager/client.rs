//! The client side: one authenticated connection per thread and manager,
//! made on first use (so a proxy copied into a child process connects from
//! the child), then one request frame out and one reply frame back per call.
//!
//! Per thread, as in Python (its proxies keep a connection in thread-local
//! storage): a thread blocked in `queue.get()` or `lock.lock()` holds only
//! its own connection, and the server ties a lock's ownership to the
//! connection that acquired it, so a lock belongs to a thread, and is freed
//! when that thread's connection closes, however it closes.

use super::auth::{self, NONCE_BYTES};
use super::endpoint::{self, Stream};
use super::frame::{self, FrameReader};
use super::protocol::{Answer, Reply, Request};
use crate::error::Error;
use std::cell::RefCell;
use std::io;
use std::time::Instant;

/// One authenticated connection to one manager.
struct Connection {
    endpoint: u64,
    /// The process that made it: a forked child must not use its parent's.
    pid: u32,
    stream: Stream,
    reader: FrameReader,
    limit: usize,
    out: Vec<u8>,
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<Connection>> = const { RefCell::new(Vec::new()) };
}

/// Sends `request` to the manager of record `endpoint` from this thread's
/// connection (made if needed) and returns its answer.
pub(crate) fn call(endpoint: u64, request: &Request) -> Result<Answer, Error> {
    CONNECTIONS
        .try_with(|connections| {
            let mut connections = connections.borrow_mut();
            let me = std::process::id();
            // Forget connections inherited through `fork`: closing our copy
            // of the descriptor leaves the parent's connection intact.
            connections.retain(|c| c.pid == me);
            let index = match connections.iter().position(|c| c.endpoint == endpoint) {
                Some(i) => i,
                None => {
                    connections.push(connect(endpoint)?);
                    connections.len() - 1
                }
            };
            let result = connections[index].call(request);
            if matches!(result, Err(Error::PeersGone | Error::Io(_))) {
                connections.swap_remove(index); // broken: the next call reconnects
            }
            result
        })
        .unwrap_or_else(|_| Err(Error::invalid("a manager call during thread exit")))
}

/// Closes this thread's connection to `endpoint`, if any (the server then
/// releases the locks it held).
pub(crate) fn disconnect(endpoint: u64) {
    let _ = CONNECTIONS.try_with(|c| c.borrow_mut().retain(|c| c.endpoint != endpoint));
}

/// Connects and authenticates to the manager of record `endpoint`.
fn connect(endpoint: u64) -> Result<Connection, Error> {
    let record = endpoint::record(endpoint)?;
    let stream = Stream::connect(&record.address()).map_err(gone_or_io)?;
    let mut connection = Connection {
        endpoint,
        pid: std::process::id(),
        stream,
        reader: FrameReader::new(),
        limit: record.frame_limit as usize,
        out: Vec::new(),
    };
    connection.authenticate(record.authkey(), record.handshake_timeout())?;
    Ok(connection)
}

/// Connects to `endpoint` once, to check the address and key.
pub(crate) fn probe(endpoint: u64) -> Result<(), Error> {
    CONNECTIONS
        .try_with(|c| -> Result<(), Error> {
            let connection = connect(endpoint)?;
            c.borrow_mut().push(connection);
            Ok(())
        })
        .unwrap_or_else(|_| Err(Error::invalid("a manager call during thread exit")))
}

impl Connection {
    /// The client half of `auth`'s exchange, under `timeout` in all.
    fn authenticate(&mut self, key: &[u8], timeout: std::time::Duration) -> Result<(), Error> {
        let deadline = crate::deadline::deadline(timeout);
        self.stream.set_read_timeout(Some(timeout))?;
        // Called after a partial read too: ends the wait only at the deadline.
        let mut give_up = |_| -> io::Result<()> {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the manager did not authenticate in time",
                ))
            } else {
                Ok(())
            }
        };
        let challenge = self
            .reader
            .next(&mut self.stream, auth::HANDSHAKE_LIMIT, &mut give_up)
            .map_err(handshake_error)?
            .to_vec();
        let nonce_c = auth::random_bytes::<NONCE_BYTES>()?;
        let answer = auth::answer(key, &challenge, &nonce_c).ok_or(Error::AuthenticationFailed)?;
        self.stream
            .send(&frame::frame_of(&answer))
            .map_err(handshake_error)?;
        let verdict = self
            .reader
            .next(&mut self.stream, auth::HANDSHAKE_LIMIT, &mut give_up)
            .map_err(handshake_error)?;
        let limit = auth::accept(key, auth::nonce_of(&challenge), &nonce_c, verdict)
            .ok_or(Error::AuthenticationFailed)?;
        self.limit = limit as usize;
        self.stream.set_read_timeout(None)?;
        Ok(())
    }

    fn call(&mut self, request: &Request) -> Result<Answer, Error> {
        frame::open(&mut self.out);
        let out = std::mem::take(&mut self.out);
        let mut out = postcard::to_extend(request, out)
            .map_err(|e| Error::invalid(format!("cannot encode the request: {e}")))?;
        let len = frame::seal(&mut out);
        if len > self.limit {
            return Err(Error::invalid(format!(
                "the request ({len} bytes) exceeds the manager's frame limit of {} bytes",
                self.limit
            )));
        }
        let sent = self.stream.send(&out);
        self.out = out;
        sent.map_err(gone_or_io)?;
        let body = self
            .reader
            .next(&mut self.stream, self.limit, |_| Ok(()))
            .map_err(gone_or_io)?;
        let reply: Reply = postcard::from_bytes(body)
            .map_err(|e| Error::Decode(format!("the manager's reply does not decode: {e}")))?;
        reply.map_err(Error::from)
    }
}

/// A connection that ended, or a server that is not there, is
/// [`Error::PeersGone`]; anything else is the operating system's error.
fn gone_or_io(e: io::Error) -> Error {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | ConnectionRefused | BrokenPipe
        | NotFound => Error::PeersGone,
        _ => Error::Io(e),
    }
}

/// During the handshake, a server that closes on us refused our key.
fn handshake_error(e: io::Error) -> Error {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | BrokenPipe | InvalidData => Error::AuthenticationFailed,
        _ => gone_or_io(e),
    }
}
