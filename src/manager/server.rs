//! The server process: binds the record's address, then serves each client
//! connection on a thread of its own (std threads; a blocked `queue.get()`
//! or `lock()` blocks only its client's thread).
//!
//! A connection is served only after it authenticated (`auth`), within the
//! record's handshake timeout; until then nothing it sends is decoded. Any
//! failure of one connection — a wrong key, garbage, a frame over the limit,
//! a peer silent mid-frame, a peer that vanished — closes that connection
//! alone, and releases the locks it held.

use super::auth::{self, NONCE_BYTES};
use super::endpoint::{self, Address, EndpointRecord, Stream, FAILED, READY};
use super::frame::{self, FrameReader};
use super::objects::{Caller, ConnId, Object, SLICE};
use super::protocol::{Answer, Fault, Reply, Request, Spec};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What every connection thread shares.
struct Server {
    objects: RwLock<HashMap<u64, Arc<Object>>>,
    names: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    authkey: Vec<u8>,
    frame_limit: usize,
    handshake_timeout: Duration,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn bind(address: &Address) -> io::Result<(Listener, u16)> {
        match address {
            Address::Unix(name) => {
                let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
                Ok((Listener::Unix(UnixListener::bind_addr(&addr)?), 0))
            }
            Address::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                let port = listener.local_addr()?.port();
                Ok((Listener::Tcp(listener), port))
            }
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }),
        }
    }
}

/// The server process's body (a [`Process`](crate::Process) function):
/// serves the manager of record `endpoint_at` until asked to stop, or until
/// its parent dies (`PR_SET_PDEATHSIG`, set when the process started).
pub(crate) fn serve(endpoint_at: u64) {
    // Ctrl-C in a terminal reaches the whole process group: leave ending the
    // server to the manager's owner, as Python's manager server does.
    // SAFETY: plain syscalls on this process's own signal dispositions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let Ok(record) = endpoint::record(endpoint_at) else {
        return;
    };
    let listener = match Listener::bind(&record.address()) {
        Ok((listener, port)) => {
            if port != 0 {
                record.port.store(u32::from(port), Ordering::Release);
            }
            record.state.store(READY, Ordering::Release);
            listener
        }
        Err(e) => {
            fail(record, &e);
            return;
        }
    };
    let server = Arc::new(Server {
        objects: RwLock::new(HashMap::new()),
        names: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        next_conn: AtomicU64::new(1),
        authkey: record.authkey().to_vec(),
        frame_limit: record.frame_limit as usize,
        handshake_timeout: record.handshake_timeout(),
    });
    loop {
        match listener.accept() {
            Ok(stream) => {
                let server = Arc::clone(&server);
                // If no thread can be made, the connection is dropped: that
                // client sees the server close, the others go on.
                let _ = std::thread::Builder::new()
                    .name("shmpool-manager-conn".into())
                    .spawn(move || serve_connection(stream, &server));
            }
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                std::thread::sleep(SLICE); // out of descriptors: wait for some to close
            }
            Err(_) => {}
        }
    }
}

fn fail(record: &EndpointRecord, e: &io::Error) {
    record
        .errno
        .store(e.raw_os_error().unwrap_or(0) as u32, Ordering::Relaxed);
    record.state.store(FAILED, Ordering::Release);
}

/// A connected, authenticated client, as objects see it.
struct Peer<'a> {
    id: ConnId,
    stream: &'a Stream,
}

impl Caller for Peer<'_> {
    fn id(&self) -> ConnId {
        self.id
    }

    fn gone(&self) -> bool {
        self.stream.peer_gone()
    }
}

fn serve_connection(mut stream: Stream, server: &Server) {
    let mut reader = FrameReader::new();
    if stream.set_read_timeout(Some(SLICE)).is_err()
        || !authenticate(&mut stream, &mut reader, server)
    {
        return;
    }
    // From now on an idle client may stay silent for ever: wake only every
    // `handshake_timeout` to check a frame begun and not finished.
    if stream
        .set_read_timeout(Some(server.handshake_timeout))
        .is_err()
    {
        return;
    }
    let id = server.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut held: HashSet<u64> = HashSet::new();
    let mut out = Vec::new();
    // Idle between requests is fine (a proxy may wait long between calls);
    // a frame begun and not finished in time (two timeouts at most) is a
    // broken peer.
    let patience = server.handshake_timeout;
    let stalled = |begun: Option<Instant>| match begun {
        Some(at) if at.elapsed() > patience => Err(io::ErrorKind::TimedOut.into()),
        _ => Ok(()),
    };
    while let Ok(body) = reader.next(&mut stream, server.frame_limit, stalled) {
        let request = postcard::from_bytes::<Request>(body)
            .map_err(|e| Fault::Decode(format!("the request does not decode: {e}")));
        let stop = matches!(request, Ok(Request::Shutdown));
        let reply = request.and_then(|request| {
            let peer = Peer {
                id,
                stream: &stream,
            };
            server.handle(request, &peer, &mut held)
        });
        encode_reply(&reply, server.frame_limit, &mut out);
        if stream.send(&out).is_err() {
            break;
        }
        if stop {
            // The reply is in the client's socket buffer; every other client
            // sees its connection close.
            // SAFETY: ends this process; it holds nothing that needs saving.
            unsafe { libc::_exit(0) };
        }
    }
    // Gone, however it went: free what it held.
    for object in held.iter().filter_map(|at| server.object(*at).ok()) {
        object.abandon(id);
    }
}

/// Frames `reply` into `out`; a reply over the limit becomes
/// [`Fault::TooLarge`].
fn encode_reply(reply: &Reply, limit: usize, out: &mut Vec<u8>) {
    frame::open(out);
    // Encoding into a Vec fails only on a type serde cannot represent, which
    // the protocol's types are not.
    *out = postcard::to_extend(reply, std::mem::take(out)).expect("a reply encodes");
    let len = frame::seal(out);
    if len > limit {
        frame::open(out);
        let too_large: Reply = Err(Fault::TooLarge(len as u64));
        *out = postcard::to_extend(&too_large, std::mem::take(out)).expect("a fault encodes");
        frame::seal(out);
    }
}

/// The server half of `auth`'s exchange, within the handshake timeout.
fn authenticate(stream: &mut Stream, reader: &mut FrameReader, server: &Server) -> bool {
    let deadline = Instant::now() + server.handshake_timeout;
    let Ok(nonce) = auth::random_bytes::<NONCE_BYTES>() else {
        return false;
    };
    if stream
        .send(&frame::frame_of(&auth::challenge(&nonce)))
        .is_err()
    {
        return false;
    }
    let answer = reader.next(stream, auth::HANDSHAKE_LIMIT, |_| {
        if Instant::now() >= deadline {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(())
        }
    });
    let Ok(answer) = answer else {
        return false;
    };
    let limit = server.frame_limit as u32; // at most u32::MAX (the builder's cap)
    let (verdict, passed) = auth::judge(&server.authkey, &nonce, answer, limit);
    stream.send(&frame::frame_of(&verdict)).is_ok() && passed
}

impl Server {
    fn object(&self, id: u64) -> Result<Arc<Object>, Fault> {
        crate::sync::unpoisoned(self.objects.read())
            .get(&id)
            .cloned()
            .ok_or_else(|| Fault::Invalid(format!("the manager holds no object {id}")))
    }

    fn create(&self, spec: Spec) -> Result<u64, Fault> {
        let object = Arc::new(Object::new(spec)?);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        crate::sync::unpoisoned(self.objects.write()).insert(id, object);
        Ok(id)
    }

    fn handle(
        &self,
        request: Request,
        peer: &Peer<'_>,
        held: &mut HashSet<u64>,
    ) -> Result<Answer, Fault> {
        match request {
            Request::Create(spec) => self.create(spec).map(Answer::Id),
            Request::Named(name, spec) => {
                let mut names = crate::sync::lock(&self.names);
                if let Some(&id) = names.get(&name) {
                    if !self.object(id)?.is(&spec) {
                        return Err(Fault::Invalid(format!(
                            "the manager's object {name:?} is not a {}",
                            spec.kind()
                        )));
                    }
                    return Ok(Answer::Id(id));
                }
                let id = self.create(spec)?;
                names.insert(name, id);
                Ok(Answer::Id(id))
            }
            Request::Call(id, op) => {
                let object = self.object(id)?;
                object.apply(op, peer, &mut |holds| {
                    if holds {
                        held.insert(id);
                    } else {
                        held.remove(&id);
                    }
                })
            }
            Request::Shutdown => Ok(Answer::Done),
        }
    }
}
