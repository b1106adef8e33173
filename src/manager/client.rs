//! The client side: one authenticated connection per thread and manager,
//! made on first use (so a proxy copied into a child process connects from
//! the child), then one request frame out and one reply frame back per call.
//!
//! A call with a timeout (`get_timeout`, `lock_timeout`, …) returns by its
//! deadline plus [`MARGIN`] whatever the server does (stopped, say): the
//! socket's read and write timeouts are set from it. The reply that did not
//! come in time is owed: the connection reads and drops it before its next
//! call (and releases a lock that an owed `acquire` got late), so the
//! connection, and the locks this thread holds through it, survive. An item
//! an owed `get` took late is lost, as a message to a client that left.
//!
//! Per thread, as in Python (its proxies keep a connection in thread-local
//! storage): a thread blocked in `queue.get()` or `lock.lock()` holds only
//! its own connection, and the server ties a lock's ownership to the
//! connection that acquired it, so a lock belongs to a thread, and is freed
//! when that thread's connection closes, however it closes.

use super::auth::{self, NONCE_BYTES};
use super::endpoint::{self, Stream};
use super::frame::{self, FrameReader};
use super::lane::{self, Lane, Waited};
use super::protocol::{Answer, Op, Reply, Request};
use crate::error::Error;
use std::cell::RefCell;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// How long past its own timeout a call waits for the server's answer (the
/// server answers at the timeout; this is for its scheduling).
pub(crate) const MARGIN: Duration = Duration::from_millis(200);

/// A reply that did not come in time, to be read and dropped before the next
/// call: for an `acquire` of object `id` (by a proxy of fingerprint
/// `types`), the lock to give back if it came late.
#[derive(Debug, Clone, Copy)]
struct Owed {
    acquire: Option<(u64, u64)>,
}

/// One authenticated connection to one manager.
struct Connection {
    endpoint: u64,
    /// The process that made it: a forked child must not use its parent's.
    pid: u32,
    stream: Stream,
    reader: FrameReader,
    limit: usize,
    out: Vec<u8>,
    owed: Vec<Owed>,
    /// The socket's current read and write timeout.
    timeout: Option<Duration>,
    /// The shared-memory lane of a local connection (see `lane`).
    lane: Option<Lane>,
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<Connection>> = const { RefCell::new(Vec::new()) };
}

/// Sends `request` to the manager of record `endpoint` from this thread's
/// connection (made if needed) and returns its answer; a request that
/// carries a timeout gives up at it plus [`MARGIN`] ([`Error::Timeout`]).
pub(crate) fn call(endpoint: u64, request: &Request) -> Result<Answer, Error> {
    let deadline = patience(request).and_then(|t| Instant::now().checked_add(t));
    call_until(endpoint, request, deadline)
}

/// How long the client waits for the answer to `request`: its own timeout
/// and the margin (`None`: as long as it takes). A condition's `wait` takes
/// its lock back after its timeout, however long that takes, as in Python:
/// it is not bounded here.
fn patience(request: &Request) -> Option<Duration> {
    let micros = match request {
        Request::Call(_, _, Op::Dequeue(t) | Op::Acquire(t) | Op::Wait(t) | Op::BarrierWait(t)) => {
            (*t)?
        }
        _ => return None,
    };
    Duration::from_micros(micros).checked_add(MARGIN)
}

/// [`call`] with the answer awaited until `deadline` at most.
pub(crate) fn call_until(
    endpoint: u64,
    request: &Request,
    deadline: Option<Instant>,
) -> Result<Answer, Error> {
    with_connection(endpoint, deadline, |c| c.call(request, deadline))
}

/// Runs `f` on this thread's connection to `endpoint`, made (by `deadline`)
/// if there is none; a connection `f` finds broken is dropped, and the next
/// call reconnects.
fn with_connection<T>(
    endpoint: u64,
    deadline: Option<Instant>,
    f: impl FnOnce(&mut Connection) -> Result<T, Error>,
) -> Result<T, Error> {
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
                    connections.push(connect(endpoint, deadline)?);
                    connections.len() - 1
                }
            };
            let result = f(&mut connections[index]);
            if matches!(result, Err(Error::PeersGone | Error::Io(_))) {
                connections.swap_remove(index);
            }
            result
        })
        .unwrap_or_else(|_| Err(Error::invalid("a manager call during thread exit")))
}

/// Sends `request` from this thread's connection without waiting for its
/// answer, which the connection's next call reads and drops (for a
/// `Decref`, which must not block a proxy's `drop`). Connecting, and a
/// reply still owed from an earlier call, are awaited [`MARGIN`] at most.
pub(crate) fn notify(endpoint: u64, request: &Request) -> Result<(), Error> {
    let deadline = Instant::now().checked_add(MARGIN);
    with_connection(endpoint, deadline, |c| {
        c.settle(deadline)?;
        c.send(request, None)?;
        c.owed.push(Owed { acquire: None });
        Ok(())
    })
}

/// This process's session token: random, made once per process (a forked
/// child makes its own), sent by each of its connections so that the
/// server counts the references of all its threads together.
fn session_token() -> Result<u64, Error> {
    static TOKEN: std::sync::Mutex<(u32, u64)> = std::sync::Mutex::new((0, 0));
    let me = std::process::id();
    let mut token = crate::sync::lock(&TOKEN);
    if token.0 != me {
        *token = (me, u64::from_le_bytes(auth::random_bytes::<8>()?));
    }
    Ok(token.1)
}

/// Closes this thread's connection to `endpoint`, if any (the server then
/// releases the locks it held).
pub(crate) fn disconnect(endpoint: u64) {
    let _ = CONNECTIONS.try_with(|c| c.borrow_mut().retain(|c| c.endpoint != endpoint));
}

/// Connects and authenticates to the manager of record `endpoint`, by the
/// handshake timeout or `deadline`, whichever comes first.
fn connect(endpoint: u64, deadline: Option<Instant>) -> Result<Connection, Error> {
    let record = endpoint::record(endpoint)?;
    let mut timeout = record.handshake_timeout();
    if let Some(d) = deadline {
        match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => timeout = timeout.min(left),
            _ => return Err(Error::Timeout),
        }
    }
    let stream = Stream::connect(&record.address()).map_err(gone_or_io)?;
    let mut connection = Connection {
        endpoint,
        pid: std::process::id(),
        stream,
        reader: FrameReader::new(),
        limit: record.frame_limit as usize,
        out: Vec::new(),
        owed: Vec::new(),
        timeout: None,
        lane: None,
    };
    let result = connection
        .authenticate(record.authkey(), timeout)
        .and_then(|()| connection.join_session(timeout))
        .and_then(|()| connection.open_lane(timeout));
    match result {
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) && deadline.is_some_and(|d| Instant::now() >= d) =>
        {
            Err(Error::Timeout)
        }
        other => other.map(|()| connection),
    }
}

/// Connects to `endpoint` once, to check the address and key.
pub(crate) fn probe(endpoint: u64) -> Result<(), Error> {
    CONNECTIONS
        .try_with(|c| -> Result<(), Error> {
            let connection = connect(endpoint, None)?;
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

    /// Sets the socket's read and write timeouts for a wait until
    /// `deadline`; `Err(Timeout)` if it is past.
    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        let timeout = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(Error::Timeout),
            },
        };
        if timeout != self.timeout {
            self.stream.set_read_timeout(timeout)?;
            self.stream.set_write_timeout(timeout)?;
            self.timeout = timeout;
        }
        Ok(())
    }

    /// Tells the server which process this connection is of (its session),
    /// within `timeout`.
    fn join_session(&mut self, timeout: Duration) -> Result<(), Error> {
        let request = Request::Session(session_token()?);
        match self.call(&request, Instant::now().checked_add(timeout))? {
            Answer::Done => Ok(()),
            _ => Err(Error::Decode("unexpected reply to a session".into())),
        }
    }

    /// On a local connection, asks the server for a shared-memory lane and
    /// maps it; without one (the server could not make it), calls go on the
    /// socket.
    fn open_lane(&mut self, timeout: Duration) -> Result<(), Error> {
        if !matches!(self.stream, Stream::Unix(_)) {
            return Ok(());
        }
        self.send(&Request::Lane, None)?;
        self.stream.set_read_timeout(Some(timeout))?;
        let fd = lane::recv_fd(self.stream.as_fd()).map_err(gone_or_io)?;
        self.stream.set_read_timeout(None)?;
        if let Some(fd) = fd {
            self.lane = Some(Lane::map(fd)?);
        }
        Ok(())
    }

    /// The next reply, read until `deadline` at most (`TimedOut`).
    fn reply(&mut self, deadline: Option<Instant>) -> Result<Reply, Error> {
        if let Some(lane) = &self.lane {
            let fd = self.stream.as_fd();
            match lane.reply(deadline, &|| endpoint::fd_gone(fd)) {
                Waited::Message(Some(body)) => return decode_reply(&body),
                Waited::Message(None) => {} // on the socket
                Waited::Timeout => return Err(Error::Timeout),
                Waited::Gone => return Err(Error::PeersGone),
            }
        }
        self.wait_until(deadline)?;
        let past = |_| match deadline {
            Some(d) if Instant::now() >= d => Err(io::ErrorKind::TimedOut.into()),
            _ => Ok(()),
        };
        let body = self
            .reader
            .next(&mut self.stream, self.limit, past)
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout,
                _ => gone_or_io(e),
            })?;
        decode_reply(body)
    }

    /// Reads and drops the replies that came too late for their calls,
    /// giving back a lock an owed `acquire` got.
    fn settle(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        while let Some(&owed) = self.owed.first() {
            let reply = self.reply(deadline)?;
            self.owed.remove(0);
            if let (Some((id, types)), Ok(Answer::Flag(true))) = (owed.acquire, reply) {
                self.send(&Request::Call(id, types, Op::Release), deadline)?;
                self.owed.push(Owed { acquire: None });
            }
        }
        Ok(())
    }

    fn call(&mut self, request: &Request, deadline: Option<Instant>) -> Result<Answer, Error> {
        self.settle(deadline)?;
        self.send(request, deadline)?;
        match self.reply(deadline) {
            Ok(reply) => reply.map_err(Error::from),
            Err(Error::Timeout) => {
                let acquire = match request {
                    Request::Call(id, types, Op::Acquire(_)) => Some((*id, *types)),
                    _ => None,
                };
                self.owed.push(Owed { acquire });
                Err(Error::Timeout)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `request`; one that could not go whole by `deadline` broke the
    /// framing: the connection is dropped ([`Error::PeersGone`]).
    fn send(&mut self, request: &Request, deadline: Option<Instant>) -> Result<(), Error> {
        self.wait_until(deadline)?;
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
        if let Some(lane) = &self.lane {
            if len <= lane::CAPACITY {
                lane.post(Some(&out[frame::HEADER_BYTES..]));
                self.out = out;
                return Ok(());
            }
        }
        if let Some(lane) = &self.lane {
            // Announced first: the server reads the socket only then, and a
            // large frame does not fit in the socket's buffer.
            lane.post(None);
        }
        let sent = self.stream.send(&out);
        self.out = out;
        sent.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::PeersGone,
            _ => gone_or_io(e),
        })
    }
}

fn decode_reply(body: &[u8]) -> Result<Reply, Error> {
    postcard::from_bytes(body)
        .map_err(|e| Error::Decode(format!("the manager's reply does not decode: {e}")))
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
