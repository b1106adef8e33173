//! The server process: binds the record's address; one acceptor thread runs
//! every handshake (non-blocking sockets under `poll`, a cap, a per-peer cap,
//! a deadline each); each authenticated connection is then served on a
//! thread of its own (std threads; a blocked `queue.get()` or `lock()`
//! blocks only its client's thread).
//!
//! On the local socket, a peer of another user (`SO_PEERCRED`; root
//! excepted), or a process outside the program (not a descendant of the
//! program's first process), is closed before anything is sent or read:
//! knowing the key is not enough locally. Until a connection
//! authenticated (`auth`) nothing it sends is decoded. Any failure of one
//! connection — a wrong key, garbage, a frame over the limit, a frame not
//! finished in time, a peer that vanished, a bug that panicked its thread —
//! closes that connection alone, and releases the locks it held.

use super::auth::{self, NONCE_BYTES};
use super::endpoint::{self, Address, EndpointRecord, Stream, FAILED, READY};
use super::frame::{self, FrameReader};
use super::lane::{self, Lane, Waited};
use super::objects::{Caller, ConnId, Object};
use super::protocol::{Answer, Fault, Reply, Request, Spec, Types};
use crate::sys;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::SendFlags;
use rustix::process::Pid;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What every connection thread shares.
struct Server {
    objects: RwLock<HashMap<u64, Slot>>,
    names: Mutex<HashMap<String, u64>>,
    /// The client processes' sessions, by token, with how many connections
    /// each has open.
    sessions: Mutex<HashMap<u64, (Arc<Session>, usize)>>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    authkey: Vec<u8>,
    frame_limit: usize,
    handshake_timeout: Duration,
}

/// An object and how many references proxies hold to it (Python's
/// `Server.id_to_refcount`). At zero it is freed, unless it was created by
/// name: a named object lives as long as the server.
struct Slot {
    object: Arc<Object>,
    refs: u64,
    named: bool,
}

/// The references one client process holds, per object, released all at
/// once: for a local client, when the process is gone (exited or killed:
/// checked when one of its connections closes, and every acceptor tick); for
/// a TCP client, whose process the server cannot see, when its last
/// connection closes. A count may be negative: a reference taken in
/// another process and dropped in this one.
#[derive(Default)]
struct Session {
    refs: Mutex<HashMap<u64, i64>>,
    /// A local client's process: its pid and start time (so that a reused
    /// pid is not taken for it).
    process: Option<(i32, u64)>,
}

impl Session {
    /// Whether its references are to be kept with `connections` open: a
    /// local client's as long as its process runs, a TCP client's while it
    /// has a connection.
    fn lives(&self, connections: usize) -> bool {
        match self.process {
            Some((pid, start)) => start_time(pid) == Some(start),
            None => connections > 0,
        }
    }
}

/// When process `pid` started (`/proc/<pid>/stat`, field 22, in clock
/// ticks since boot); `None` if there is no such process, or it is a
/// zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Field 3 is the state: field 22 is 19 further on.
    fields.nth(18)?.parse().ok()
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Who a pending handshake comes from: a TCP peer's address (for the
/// per-peer limit), or a local peer's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKey {
    Ip(IpAddr),
    Pid(i32),
}

impl Listener {
    fn bind(address: &Address) -> io::Result<(Listener, u16)> {
        let (listener, port) = match address {
            Address::Unix(name) => {
                let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
                (Listener::Unix(UnixListener::bind_addr(&addr)?), 0)
            }
            Address::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                let port = listener.local_addr()?.port();
                (Listener::Tcp(listener), port)
            }
        };
        match &listener {
            Listener::Unix(l) => l.set_nonblocking(true)?,
            Listener::Tcp(l) => l.set_nonblocking(true)?,
        }
        Ok((listener, port))
    }

    /// The next connection waiting, if any, and who it comes from; a local
    /// peer of another user (neither this server's user nor root) is closed
    /// here, before a byte is sent or read.
    fn accept(&self, root: i32) -> io::Result<Option<(Stream, PeerKey)>> {
        let accepted = match self {
            Listener::Unix(l) => l.accept().and_then(|(s, _)| {
                let (pid, uid) = sys::socket::peer_credentials(s.as_fd())?;
                let me = rustix::process::geteuid().as_raw();
                if !may_connect(uid, me) || !in_program(pid, root) {
                    return Ok(None); // dropped: closed at once
                }
                Ok(Some((Stream::Unix(s), PeerKey::Pid(pid))))
            }),
            Listener::Tcp(l) => l.accept().and_then(|(s, addr)| {
                s.set_nodelay(true)?;
                Ok(Some((Stream::Tcp(s), PeerKey::Ip(addr.ip()))))
            }),
        };
        match accepted {
            Ok(Some(pair)) => Ok(Some(pair)),
            // Refused peer: there may be more connections waiting.
            Ok(None) => Err(io::ErrorKind::PermissionDenied.into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses (which may hold anything): the
    // state, then the parent's pid.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The program's first process, as this server sees it when it starts: the
/// highest of its ancestors that runs the same executable (the manager's
/// owner at least).
fn program_root() -> i32 {
    let mut root = Pid::as_raw(rustix::process::getppid());
    while let Some(up) = parent_of(root).filter(|&p| p > 1 && runs_our_executable(p)) {
        root = up;
    }
    root
}

/// Whether process `pid` belongs to the program: it is `root` or descends
/// from it (the kernel's parent links, which no process of the program can
/// forge). A process of the program orphaned by an ancestor's exit is no
/// longer one.
fn in_program(pid: i32, root: i32) -> bool {
    let mut at = pid;
    for _ in 0..4096 {
        if at == root {
            return true;
        }
        match parent_of(at) {
            Some(up) if up > 0 && up != at => at = up,
            _ => return false,
        }
    }
    false
}

/// Whether process `pid` runs the same executable file as this one (same
/// device and inode behind `/proc/<pid>/exe`).
fn runs_our_executable(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |path: String| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    match (id("/proc/self/exe".into()), id(format!("/proc/{pid}/exe"))) {
        (Ok(ours), Ok(theirs)) => ours == theirs,
        _ => false,
    }
}

/// Whether a local peer running as `uid` may talk to a server running as
/// `me`: the same user, or root (who could read the server's memory anyway).
fn may_connect(uid: u32, me: u32) -> bool {
    uid == me || uid == 0
}

/// At most this many TCP connections authenticate at once; a new one beyond
/// it takes the place of the oldest.
const MAX_PENDING: usize = 64;
/// At most this many of them from one address; a new one beyond it takes
/// the place of that address's oldest.
const MAX_PENDING_PER_PEER: usize = 16;
/// The longest the acceptor sleeps without looking at its deadlines.
const ACCEPTOR_TICK: Duration = Duration::from_secs(1);
/// How often, at most, the acceptor looks for sessions of local clients
/// that are gone (a look reads `/proc/<pid>/stat` per client process).
const REAP_EVERY: Duration = Duration::from_millis(100);

/// A connection that has not authenticated yet: it costs the server a
/// socket and these few bytes, no thread.
struct Pending {
    stream: Stream,
    peer: PeerKey,
    /// `None`: a timeout too large for `Instant` (no deadline).
    deadline: Option<Instant>,
    nonce: [u8; NONCE_BYTES],
    got: [u8; frame::HEADER_BYTES + auth::HANDSHAKE_LIMIT],
    len: usize,
}

/// What one read of a pending handshake came to.
enum Progress {
    More,
    Passed,
    Failed,
}

impl Pending {
    /// Sends the challenge to a fresh connection (a few bytes into an empty
    /// socket buffer: all or nothing).
    fn start(stream: Stream, peer: PeerKey, server: &Server) -> Option<Pending> {
        stream.set_nonblocking(true).ok()?;
        let nonce = auth::random_bytes::<NONCE_BYTES>().ok()?;
        send_now(&stream, &frame::frame_of(&auth::challenge(&nonce)))?;
        Some(Pending {
            stream,
            peer,
            deadline: crate::deadline::deadline(server.handshake_timeout),
            nonce,
            got: [0; frame::HEADER_BYTES + auth::HANDSHAKE_LIMIT],
            len: 0,
        })
    }

    /// Reads what has arrived; judges the answer once it is whole.
    fn advance(&mut self, server: &Server) -> Progress {
        loop {
            let want = if self.len < frame::HEADER_BYTES {
                frame::HEADER_BYTES
            } else {
                let mut header = [0u8; frame::HEADER_BYTES];
                header.copy_from_slice(&self.got[..frame::HEADER_BYTES]);
                let body = u32::from_le_bytes(header) as usize;
                if body > auth::HANDSHAKE_LIMIT {
                    return Progress::Failed;
                }
                frame::HEADER_BYTES + body
            };
            if self.len >= frame::HEADER_BYTES && self.len == want {
                break;
            }
            match self.stream.read(&mut self.got[self.len..want]) {
                Ok(0) => return Progress::Failed,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::More,
                Err(_) => return Progress::Failed,
            }
        }
        let answer = &self.got[frame::HEADER_BYTES..self.len];
        let limit = server.frame_limit as u32; // at most u32::MAX (the builder's cap)
        let (verdict, passed) = auth::judge(&server.authkey, &self.nonce, answer, limit);
        let sent = send_now(&self.stream, &frame::frame_of(&verdict)).is_some();
        if sent && passed {
            Progress::Passed
        } else {
            Progress::Failed
        }
    }
}

/// Sends `bytes` without waiting; `None` unless all of them went.
fn send_now(stream: &Stream, bytes: &[u8]) -> Option<()> {
    let n = rustix::net::send(stream, bytes, SendFlags::NOSIGNAL | SendFlags::DONTWAIT).ok()?;
    (n == bytes.len()).then_some(())
}

/// The server process's body (a [`Process`](crate::Process) function):
/// serves the manager of record `endpoint_at` until asked to stop, or until
/// its parent dies (`PR_SET_PDEATHSIG`, set when the process started).
pub(crate) fn serve(endpoint_at: u64) {
    // Ctrl-C in a terminal reaches the whole process group: leave ending the
    // server to the manager's owner, as Python's manager server does.
    sys::process::ignore_signal(libc::SIGINT);
    sys::process::ignore_signal(libc::SIGPIPE);
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
        sessions: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        next_conn: AtomicU64::new(1),
        authkey: record.authkey().to_vec(),
        frame_limit: record.frame_limit as usize,
        handshake_timeout: record.handshake_timeout(),
    });
    accept_forever(&listener, &server, program_root());
}

/// The acceptor: one thread runs every handshake at once over non-blocking
/// sockets (`poll`), under a cap, a per-peer cap and each one's deadline; a
/// connection gets a thread of its own only once it has authenticated. So a
/// peer without the key costs the server at most a socket for one
/// handshake timeout, and never a thread.
fn accept_forever(listener: &Listener, server: &Arc<Server>, root: i32) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut reaped = Instant::now();
    loop {
        let now = Instant::now();
        pending.retain(|p| p.deadline.map_or(true, |d| d > now));
        let wait = pending
            .iter()
            .filter_map(|p| p.deadline)
            .min()
            .map_or(ACCEPTOR_TICK, |d| d.saturating_duration_since(now))
            .min(ACCEPTOR_TICK);
        // Rounded up, so that a deadline is past when poll returns.
        let wait = Duration::from_millis(wait.as_micros().div_ceil(1000) as u64);
        let mut fds = vec![PollFd::from_borrowed_fd(listener.fd(), PollFlags::IN)];
        fds.extend(
            pending
                .iter()
                .map(|p| PollFd::from_borrowed_fd(p.stream.as_fd(), PollFlags::IN)),
        );
        let timeout = Timespec::try_from(wait).ok();
        let n = rustix::event::poll(&mut fds, timeout.as_ref()).unwrap_or(0);
        if reaped.elapsed() >= REAP_EVERY {
            server.reap_sessions();
            reaped = Instant::now();
        }
        if n == 0 {
            continue; // timeout (deadlines above) or EINTR
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        // Handshakes first (their indexes are those of `fds[1..]`).
        let mut done = Vec::new();
        for (i, &ready) in ready[1..].iter().enumerate() {
            if ready {
                match pending[i].advance(server) {
                    Progress::More => {}
                    Progress::Passed => done.push((i, true)),
                    Progress::Failed => done.push((i, false)),
                }
            }
        }
        for (i, passed) in done.into_iter().rev() {
            let p = pending.swap_remove(i);
            if passed {
                start_connection(p.stream, p.peer, server);
            }
        }
        if ready[0] {
            accept_waiting(listener, server, root, &mut pending);
        }
    }
}

/// Accepts every connection waiting, making room under the caps.
fn accept_waiting(listener: &Listener, server: &Server, root: i32, pending: &mut Vec<Pending>) {
    loop {
        let (stream, peer) = match listener.accept(root) {
            Ok(Some(pair)) => pair,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e)
                if e.raw_os_error() == Some(libc::EMFILE)
                    || e.raw_os_error() == Some(libc::ENFILE) =>
            {
                // Out of descriptors: free the oldest handshake's, try later.
                if !pending.is_empty() {
                    pending.remove(0);
                }
                return;
            }
            Err(_) => return,
        };
        // The caps are for TCP peers: a local peer already proved it is a
        // process of the program (a burst of its threads connecting at once
        // must not evict one another). Oldest first: `pending` is in
        // arrival order.
        if let PeerKey::Ip(_) = peer {
            let remote = |p: &&Pending| matches!(p.peer, PeerKey::Ip(_));
            let from_peer = pending.iter().filter(|p| p.peer == peer).count();
            if from_peer >= MAX_PENDING_PER_PEER {
                if let Some(at) = pending.iter().position(|p| p.peer == peer) {
                    pending.remove(at);
                }
            } else if pending.iter().filter(remote).count() >= MAX_PENDING {
                if let Some(at) = pending.iter().position(|p| remote(&p)) {
                    pending.remove(at);
                }
            }
        }
        if let Some(p) = Pending::start(stream, peer, server) {
            pending.push(p);
        }
    }
}

/// Serves an authenticated connection on a thread of its own. If no thread
/// can be made, the connection is dropped: that client sees the server
/// close, the others go on.
fn start_connection(stream: Stream, peer: PeerKey, server: &Arc<Server>) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let our_code = match peer {
        PeerKey::Pid(pid) => runs_our_executable(pid),
        PeerKey::Ip(_) => false,
    };
    let process = match peer {
        PeerKey::Pid(pid) => start_time(pid).map(|start| (pid, start)),
        PeerKey::Ip(_) => None,
    };
    let server = Arc::clone(server);
    let _ = std::thread::Builder::new()
        .name("shmpool-manager-conn".into())
        .spawn(move || serve_connection(stream, our_code, process, &server));
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
    our_code: bool,
}

impl Caller for Peer<'_> {
    fn id(&self) -> ConnId {
        self.id
    }

    fn gone(&self) -> bool {
        self.stream.peer_gone()
    }

    fn runs_our_code(&self) -> bool {
        self.our_code
    }
}

/// Serves one authenticated connection; `process`: a local client's (pid,
/// start time).
fn serve_connection(
    mut stream: Stream,
    our_code: bool,
    process: Option<(i32, u64)>,
    server: &Server,
) {
    let mut reader = FrameReader::new();
    // From now on an idle client may stay silent for ever: wake only every
    // `handshake_timeout` to check a frame begun and not finished.
    if stream
        .set_read_timeout(Some(server.handshake_timeout))
        .is_err()
    {
        return;
    }
    let id = server.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut holdings = Holdings::new(server, id);
    holdings.process = process;
    let mut out = Vec::new();
    let stalled = stalled(server.handshake_timeout);
    while let Ok(body) = reader.next(&mut stream, server.frame_limit, stalled) {
        let request = postcard::from_bytes::<Request>(body)
            .map_err(|e| Fault::Decode(format!("the request does not decode: {e}")));
        if matches!(request, Ok(Request::Lane)) && matches!(stream, Stream::Unix(_)) {
            match Lane::create() {
                Ok((lane, memfd)) => {
                    if lane::send_fd(stream.as_fd(), Some(memfd.as_fd())).is_ok() {
                        drop(memfd); // only the two mappings remain
                        serve_lane(&lane, &mut stream, &mut reader, &mut holdings, our_code);
                    }
                    return;
                }
                Err(_) if lane::send_fd(stream.as_fd(), None).is_ok() => continue,
                Err(_) => return,
            }
        }
        let stop = respond(request, &stream, &mut holdings, our_code, &mut out);
        if stream.send(&out).is_err() {
            break;
        }
        if stop {
            // The reply is in the client's socket buffer; every other client
            // sees its connection close.
            // It holds nothing that needs saving.
            sys::process::exit_now(0);
        }
    }
}

/// When a frame being read has stalled: idle between requests is fine (a
/// proxy may wait long between calls); a frame begun and not finished
/// within `patience` (twice that at most, as reads wake every `patience`)
/// is a broken peer.
fn stalled(patience: Duration) -> impl Fn(Option<Instant>) -> io::Result<()> + Copy {
    move |begun| match begun {
        Some(at) if at.elapsed() > patience => Err(io::ErrorKind::TimedOut.into()),
        _ => Ok(()),
    }
}

/// Answers `request` into `out` (a whole frame); whether the server must
/// stop once it is sent.
fn respond(
    request: Result<Request, Fault>,
    stream: &Stream,
    holdings: &mut Holdings<'_>,
    our_code: bool,
    out: &mut Vec<u8>,
) -> bool {
    let server = holdings.server;
    let stop = matches!(request, Ok(Request::Shutdown));
    let reply = request.and_then(|request| {
        let peer = Peer {
            id: holdings.id,
            stream,
            our_code,
        };
        server.handle(request, &peer, holdings)
    });
    encode_reply(&reply, server.frame_limit, out);
    stop
}

/// Serves a connection through its shared-memory lane until the client
/// goes; a message too large for the lane travels on the socket.
fn serve_lane(
    lane: &Lane,
    stream: &mut Stream,
    reader: &mut FrameReader,
    holdings: &mut Holdings<'_>,
    our_code: bool,
) {
    let server = holdings.server;
    let stalled = stalled(server.handshake_timeout);
    let mut out = Vec::new();
    loop {
        // The probe borrows the stream only for the wait.
        let waited = lane.request(&|| stream.peer_gone());
        let request = match waited {
            Waited::Message(Some(body)) => postcard::from_bytes::<Request>(&body),
            Waited::Message(None) => match reader.next(stream, server.frame_limit, stalled) {
                Ok(body) => postcard::from_bytes::<Request>(body),
                Err(_) => return,
            },
            Waited::Timeout | Waited::Gone => return,
        };
        let request =
            request.map_err(|e| Fault::Decode(format!("the request does not decode: {e}")));
        let stop = respond(request, stream, holdings, our_code, &mut out);
        let body = &out[frame::HEADER_BYTES..];
        if body.len() <= lane::CAPACITY {
            lane.answer(Some(body));
        } else {
            // Announced first: the client reads the socket only then, and a
            // large frame does not fit in the socket's buffer.
            lane.answer(None);
            if stream.send(&out).is_err() {
                return;
            }
        }
        if stop {
            // The reply is in the client's mapping.
            sys::process::exit_now(0);
        }
    }
}

/// The locks one connection holds, and the session whose references it
/// counts in; dropped when its thread ends, however it ends (the client
/// went, or a bug panicked the thread), it frees the locks (the next holder
/// is told [`Fault::OwnerDied`]) and leaves the session, which ends (its
/// references dropped) if its client is gone (see [`Session`]).
struct Holdings<'a> {
    server: &'a Server,
    id: ConnId,
    held: HashSet<u64>,
    /// `None`: a session of this connection alone (a client that named
    /// none).
    token: Option<u64>,
    session: Arc<Session>,
    /// A local client's process (pid, start time), for its session.
    process: Option<(i32, u64)>,
}

impl<'a> Holdings<'a> {
    fn new(server: &'a Server, id: ConnId) -> Holdings<'a> {
        Holdings {
            server,
            id,
            held: HashSet::new(),
            token: None,
            session: Arc::default(),
            process: None,
        }
    }

    /// Joins the session of `token` (made if new), bringing along the
    /// references taken so far.
    fn join(&mut self, token: u64) -> Result<(), Fault> {
        if self.token.is_some() {
            return Err(Fault::Invalid("this connection has a session".into()));
        }
        let mut sessions = crate::sync::lock(&self.server.sessions);
        let process = self.process;
        let (session, connections) = sessions.entry(token).or_insert_with(|| {
            let session = Session {
                process,
                ..Session::default()
            };
            (Arc::new(session), 0)
        });
        *connections += 1;
        let taken = std::mem::take(&mut *crate::sync::lock(&self.session.refs));
        let mut refs = crate::sync::lock(&session.refs);
        for (id, n) in taken {
            *refs.entry(id).or_default() += n;
        }
        drop(refs);
        self.session = Arc::clone(session);
        self.token = Some(token);
        Ok(())
    }
}

impl Drop for Holdings<'_> {
    fn drop(&mut self) {
        for object in self
            .held
            .iter()
            .filter_map(|at| self.server.object(*at).ok())
        {
            object.abandon(self.id);
        }
        let ended = match self.token {
            None => true,
            Some(token) => {
                let mut sessions = crate::sync::lock(&self.server.sessions);
                match sessions.get_mut(&token) {
                    Some((session, connections)) => {
                        *connections = connections.saturating_sub(1);
                        let ended = !session.lives(*connections);
                        if ended {
                            sessions.remove(&token);
                        }
                        ended
                    }
                    None => true, // ended already; nothing left in it
                }
            }
        };
        if ended {
            self.server.drop_session(&self.session);
        }
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

impl Server {
    fn object(&self, id: u64) -> Result<Arc<Object>, Fault> {
        crate::sync::unpoisoned(self.objects.read())
            .get(&id)
            .map(|slot| Arc::clone(&slot.object))
            .ok_or_else(|| self.missing(id))
    }

    /// Object `id`, if a proxy of the types of `fingerprint` may use it.
    fn typed_object(&self, id: u64, fingerprint: u64) -> Result<Arc<Object>, Fault> {
        let object = self.object(id)?;
        if object.types.fingerprint != fingerprint {
            return Err(Fault::TypeMismatch(format!(
                "the manager's object {id} is a {}; this proxy's types differ",
                object.types.names
            )));
        }
        Ok(object)
    }

    /// Why object `id` is not there: freed, or never made (ids are never
    /// reused, so a stale proxy never reaches another object).
    fn missing(&self, id: u64) -> Fault {
        if id != 0 && id < self.next_id.load(Ordering::Relaxed) {
            Fault::Invalid(format!(
                "the manager's object {id} was freed: every proxy of it was dropped \
                 (a Borrowed proxy works only while a proxy of its object lives)"
            ))
        } else {
            Fault::Invalid(format!("the manager holds no object {id}"))
        }
    }

    /// Makes an object: named (`session` `None`), or with one reference,
    /// held by `session`.
    fn create(&self, spec: Spec, types: Types, session: Option<&Session>) -> Result<u64, Fault> {
        let object = Arc::new(Object::new(spec, types)?);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            object,
            refs: 1,
            named: session.is_none(),
        };
        crate::sync::unpoisoned(self.objects.write()).insert(id, slot);
        if let Some(session) = session {
            *crate::sync::lock(&session.refs).entry(id).or_default() += 1;
        }
        Ok(id)
    }

    /// Adds `delta` references to object `id` on behalf of `session`; frees
    /// it at zero (unless named). `false`: there is no such object.
    fn count(&self, id: u64, delta: i64, session: Option<&Session>) -> bool {
        let mut objects = crate::sync::unpoisoned(self.objects.write());
        let Some(slot) = objects.get_mut(&id) else {
            return false;
        };
        if slot.named {
            return true;
        }
        slot.refs = slot.refs.saturating_add_signed(delta);
        if let Some(session) = session {
            *crate::sync::lock(&session.refs).entry(id).or_default() += delta;
        }
        if slot.refs == 0 {
            if let Some(slot) = objects.remove(&id) {
                drop(objects);
                slot.object.free();
            }
        }
        true
    }

    /// Ends the sessions of local clients whose process is gone, though a
    /// connection of theirs may be open (a forked child's inherited copy).
    fn reap_sessions(&self) {
        let mut ended = Vec::new();
        crate::sync::lock(&self.sessions).retain(|_, (session, connections)| {
            let lives = session.process.is_none() || session.lives(*connections);
            if !lives {
                ended.push(Arc::clone(session));
            }
            lives
        });
        for session in ended {
            self.drop_session(&session);
        }
    }

    /// Drops every reference `session` holds (it ended).
    fn drop_session(&self, session: &Session) {
        let refs = std::mem::take(&mut *crate::sync::lock(&session.refs));
        for (id, n) in refs {
            self.count(id, -n, None);
        }
    }

    fn handle(
        &self,
        request: Request,
        peer: &Peer<'_>,
        holdings: &mut Holdings<'_>,
    ) -> Result<Answer, Fault> {
        match request {
            Request::Create(spec, types) => self
                .create(spec, types, Some(&holdings.session))
                .map(Answer::Id),
            Request::Named(name, spec, types) => {
                let mut names = crate::sync::lock(&self.names);
                if let Some(&id) = names.get(&name) {
                    let object = self.object(id)?;
                    if !object.is(&spec) {
                        return Err(Fault::Invalid(format!(
                            "the manager's object {name:?} is not a {}",
                            spec.kind()
                        )));
                    }
                    if object.types.fingerprint != types.fingerprint {
                        return Err(Fault::TypeMismatch(format!(
                            "the manager's object {name:?} is a {}, not a {}",
                            object.types.names, types.names
                        )));
                    }
                    return Ok(Answer::Id(id));
                }
                let id = self.create(spec, types, None)?;
                names.insert(name, id);
                Ok(Answer::Id(id))
            }
            Request::Call(id, fingerprint, op) => {
                let object = self.typed_object(id, fingerprint)?;
                let held = &mut holdings.held;
                object.apply(op, peer, &mut |holds| {
                    if holds {
                        held.insert(id);
                    } else {
                        held.remove(&id);
                    }
                })
            }
            Request::Session(token) => holdings.join(token).map(|()| Answer::Done),
            Request::Incref(id, fingerprint) => {
                self.typed_object(id, fingerprint)?;
                if self.count(id, 1, Some(&holdings.session)) {
                    Ok(Answer::Done)
                } else {
                    Err(self.missing(id))
                }
            }
            Request::Decref(id) => {
                self.count(id, -1, Some(&holdings.session));
                Ok(Answer::Done)
            }
            Request::Objects => {
                let objects = crate::sync::unpoisoned(self.objects.read());
                Ok(Answer::Count(objects.len() as u64))
            }
            Request::Shutdown => Ok(Answer::Done),
            Request::Lane => Err(Fault::Invalid(
                "a lane is for a local connection, once".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::protocol::Op;

    struct Client(ConnId);

    impl Caller for Client {
        fn id(&self) -> ConnId {
            self.0
        }
        fn gone(&self) -> bool {
            false
        }
        fn runs_our_code(&self) -> bool {
            true
        }
    }

    fn server() -> Server {
        Server {
            objects: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            authkey: b"k".to_vec(),
            frame_limit: 1 << 20,
            handshake_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_program_is_this_process_and_its_descendants() {
        let me = std::process::id() as i32;
        let parent = Pid::as_raw(rustix::process::getppid());
        assert!(in_program(me, me));
        assert!(in_program(me, parent));
        assert!(!in_program(parent, me));
        assert!(!in_program(1, me));
        assert!(!in_program(i32::MAX, me), "no such process");
        assert_eq!(parent_of(me), Some(parent));
    }

    #[test]
    fn a_session_ends_with_its_process_and_gives_back_what_it_held() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("this process runs");
        assert_eq!(start_time(me), Some(start), "stable");
        assert_eq!(start_time(i32::MAX), None, "no such process");
        let server = server();
        let types = Types::new("ValueProxy").with::<u8>();
        let mut holdings = Holdings::new(&server, 1);
        holdings.process = Some((me, start));
        holdings.join(7).unwrap();
        let id = server
            .create(Spec::Value(vec![1]), types, Some(&holdings.session))
            .unwrap();
        drop(holdings);
        // This process lives: its references stay with no connection open.
        server.reap_sessions();
        assert!(server.object(id).is_ok());
        // Another start time: the pid was reused, the client is gone.
        crate::sync::lock(&server.sessions).get_mut(&7).unwrap().0 = Arc::new(Session {
            refs: Mutex::new(HashMap::from([(id, 1)])),
            process: Some((me, start + 1)),
        });
        server.reap_sessions();
        assert!(matches!(server.object(id), Err(Fault::Invalid(m)) if m.contains("freed")));
        assert!(crate::sync::lock(&server.sessions).is_empty());
    }

    #[test]
    fn only_the_same_user_or_root_may_connect() {
        assert!(may_connect(1000, 1000));
        assert!(may_connect(0, 1000));
        assert!(!may_connect(1001, 1000));
        assert!(!may_connect(65534, 0));
        assert!(may_connect(0, 0));
    }

    #[test]
    fn a_call_with_another_type_fingerprint_is_refused() {
        let server = server();
        let types = Types::new("ValueProxy").with::<u64>();
        let id = server
            .create(Spec::Value(vec![7]), types.clone(), None)
            .unwrap();
        let object = server.object(id).unwrap();
        assert_eq!(object.types, types);
        let other = Types::new("ValueProxy").with::<i32>().fingerprint;
        let stream = std::os::unix::net::UnixStream::pair().unwrap().0;
        let stream = Stream::Unix(stream);
        let peer = Peer {
            id: 1,
            stream: &stream,
            our_code: false,
        };
        let mut holdings = Holdings::new(&server, 1);
        let refused = server.handle(Request::Call(id, other, Op::Load), &peer, &mut holdings);
        assert!(matches!(refused, Err(Fault::TypeMismatch(m)) if m.contains("u64")));
        let served = server.handle(
            Request::Call(id, types.fingerprint, Op::Load),
            &peer,
            &mut holdings,
        );
        assert_eq!(served, Ok(Answer::Item(Some(vec![7]))));
    }

    #[test]
    fn a_panicking_connection_thread_releases_its_locks() {
        let server = server();
        let types = Types::new("LockProxy");
        let id = server.create(Spec::Lock, types, None).unwrap();
        let lock = server.object(id).unwrap();
        let acquire = |who| lock.apply(Op::Acquire(Some(0)), &Client(who), &mut |_| {});
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut holdings = Holdings::new(&server, 1);
            assert_eq!(acquire(1), Ok(Answer::Flag(true)));
            holdings.held.insert(id);
            panic!("a bug in a connection thread");
        }));
        assert!(panicked.is_err());
        assert_eq!(acquire(2), Err(Fault::OwnerDied));
        assert_eq!(acquire(2), Ok(Answer::Flag(true)));
    }
}
