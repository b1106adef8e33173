//! [`Manager`]: a server process that holds objects of any `serde` type —
//! dicts, lists, namespaces, queues, locks, events, … — which other
//! processes use through proxies, on this machine or over the network, like
//! Python's `multiprocessing.Manager()` and `BaseManager` (see
//! <https://docs.python.org/3/library/multiprocessing.html#managers>).
//! Behind the `manager` feature.
//!
//! Where the heap's objects ([`Queue`](crate::Queue), [`Lock`](crate::Lock),
//! …) are shared memory that every process touches directly, a manager's
//! objects live in one server process, and each proxy call is a request
//! over a socket: slower, but the values can be anything `serde` encodes,
//! and clients can be other programs on other machines.
//!
//! * **Local** (`Manager::start()`): the server listens on a Unix socket in
//!   the abstract namespace (no file on disk) and takes a random key made
//!   once per program, which forked children inherit and proxies carry to
//!   every process of the program (spawned ones included).
//! * **Remote** (`Manager::builder().address(..).authkey(..).start()` and
//!   `Manager::connect(addr, key)`): TCP; an authkey is required.
//! * Both ends prove they know the key (HMAC-SHA256 over random nonces, both
//!   ways) before anything else is read; frames are length-prefixed and
//!   limited in size (64 MiB by default). Locally, the server also refuses a
//!   peer of another user, or a process outside the program, before the
//!   handshake; no connection gets a thread before it authenticates. The
//!   README's threat model says who can read the key.
//! * Each object records its proxy's types: a proxy of other types is
//!   refused ([`Error::Decode`]) before any value is read.
//! * A call with a timeout returns by it (plus 200 ms), whatever the server
//!   does.
//! * The server is a [`Process`] started with the program's
//!   start method (or the builder's): it dies with its parent, `kill -9`
//!   included, and [`Manager::shutdown`] (or dropping the manager) stops it.
//!   Clients then get [`Error::PeersGone`].
//! * A proxy owns a reference to its object, as Python's do: `clone` takes
//!   another, `drop` gives it back, and the server frees an object when its
//!   last proxy is dropped, unless it was made by name (`*_named`), or when
//!   the last process holding references to it exits, `kill -9` included.
//!   What travels to another process is a proxy's [`Borrowed`] form, which
//!   works while a proxy of its object lives (or takes a reference of its
//!   own, [`Borrowed::to_proxy`]).
//!
//! Python's example, in Rust (`examples/manager.rs` prints what Python does):
//!
//! ```
//! use shmpool::manager::{Borrowed, DictProxy, ListProxy};
//! use shmpool::{Manager, Process};
//!
//! fn f(d: Borrowed<DictProxy<i32, String>>, l: Borrowed<ListProxy<i32>>) {
//!     d.insert(&1, &"1".to_string()).unwrap();
//!     l.reverse().unwrap();
//! }
//!
//! let manager = Manager::start()?;
//! let d = manager.dict::<i32, String>()?;
//! let l = manager.list::<i32>()?;
//! l.extend(&(0..10).collect::<Vec<_>>())?;
//! let mut p = Process::new(f, (d.borrowed(), l.borrowed()));
//! p.start()?;
//! assert_eq!(p.join(None)?, Some(0));
//! assert_eq!(d.items()?, [(1, "1".to_string())]);
//! assert_eq!(l.to_vec()?, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
//! # Ok::<(), shmpool::Error>(())
//! ```

mod auth;
mod client;
mod endpoint;
mod frame;
mod lane;
mod objects;
mod protocol;
mod proxy;
mod server;

pub use proxy::{
    ArrayProxy, BarrierProxy, Borrowed, ConditionProxy, ConditionProxyGuard, DictProxy, EventProxy,
    ListProxy, LockProxy, LockProxyGuard, NamespaceProxy, Number, QueueProxy, RLockProxy,
    RLockProxyGuard, SemaphoreProxy, ValueProxy,
};

use crate::error::Error;
use crate::objects::Heap;
use crate::start::StartMethod;
use crate::Process;
use endpoint::{Address, Settings};
use protocol::{encode, Answer, Request, Spec};
use proxy::{unexpected, Borrowed as BorrowedProxy, Handle, Typed};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long `start` waits for the server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `shutdown` waits for the server to exit before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time a peer has to authenticate (and to finish a frame it
/// began).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A manager: a handle to a server process holding shared objects (see the
/// [module docs](self)). Made by [`Manager::start`], [`ManagerBuilder::start`]
/// or [`Manager::connect`]; its proxies are the objects' handles.
///
/// ```
/// use shmpool::Manager;
///
/// let manager = Manager::start()?;
/// let q = manager.queue::<Vec<String>>()?;
/// q.put(&vec!["a".into(), "b".into()])?;
/// assert_eq!(q.get()?.len(), 2);
/// let mut manager = manager;
/// manager.shutdown()?;
/// assert!(matches!(q.put(&vec![]), Err(shmpool::Error::PeersGone)));
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug)]
pub struct Manager {
    endpoint: u64,
    /// The server, if this manager started it.
    server: Option<Process>,
}

/// Builds a [`Manager`] with an address, an authkey, limits or a start
/// method. Made by [`Manager::builder`].
///
/// ```
/// let server = shmpool::Manager::builder()
///     .address("127.0.0.1:0")          // any free port
///     .authkey(b"secret")
///     .start()?;
/// let addr = server.address().unwrap();
/// let jobs = server.queue_named::<String>("jobs")?;
/// jobs.put(&"build".to_string())?;
///
/// // In another program, possibly on another machine:
/// let client = shmpool::Manager::connect(addr, b"secret")?;
/// assert_eq!(client.queue_named::<String>("jobs")?.get()?, "build");
/// assert!(matches!(
///     shmpool::Manager::connect(addr, b"wrong"),
///     Err(shmpool::Error::AuthenticationFailed)
/// ));
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ManagerBuilder {
    address: Option<Result<SocketAddr, String>>,
    authkey: Option<Vec<u8>>,
    frame_limit: usize,
    handshake_timeout: Duration,
    start_method: Option<StartMethod>,
}

/// This program's default authkey: random, made once, inherited by forked
/// children (Python's `current_process().authkey`).
fn program_authkey() -> Result<&'static [u8; 32], Error> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let key = auth::random_bytes::<32>()?;
    Ok(KEY.get_or_init(|| key))
}

impl ManagerBuilder {
    /// Serves over TCP at `address` (port 0: any free port, see
    /// [`Manager::address`]) instead of a local Unix socket. Requires an
    /// [`authkey`](Self::authkey).
    pub fn address(mut self, address: impl ToSocketAddrs) -> Self {
        self.address = Some(match address.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| "the address resolves to nothing".to_owned()),
            Err(e) => Err(e.to_string()),
        });
        self
    }

    /// The key clients must prove they know (at most 256 bytes). Locally,
    /// the default is a random key per program.
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// The largest frame (request or reply) in bytes, 64 MiB by default. A
    /// client's larger request is refused before it is sent
    /// ([`Error::InvalidArgument`]); a peer that sends one anyway is
    /// disconnected.
    pub fn frame_limit(mut self, bytes: usize) -> Self {
        self.frame_limit = bytes.min(u32::MAX as usize);
        self
    }

    /// How long a connecting peer has to authenticate before it is
    /// disconnected, 5 s by default; a client that stops in the middle of a
    /// frame is disconnected after at most twice this.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How the server process is started; the program's start method
    /// ([`set_start_method`](crate::set_start_method), fork by default)
    /// otherwise.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Starts the server process and waits until it listens.
    pub fn start(self) -> Result<Manager, Error> {
        let address = match self.address {
            None => Address::Unix(unique_socket_name()?),
            Some(Err(why)) => return Err(Error::invalid(format!("bad manager address: {why}"))),
            Some(Ok(_)) if self.authkey.is_none() => {
                return Err(Error::invalid(
                    "a manager served over TCP needs an authkey (ManagerBuilder::authkey)",
                ))
            }
            Some(Ok(addr)) => Address::Tcp(addr),
        };
        let authkey = match &self.authkey {
            Some(key) => key.as_slice(),
            None => program_authkey()?.as_slice(),
        };
        let endpoint = endpoint::create(&Settings {
            address,
            authkey,
            frame_limit: self.frame_limit,
            handshake_timeout: self.handshake_timeout,
        })?;
        let method = self
            .start_method
            .unwrap_or_else(crate::start::default_method);
        let mut server = Process::with_method(method, server::serve, (endpoint,));
        // Python's name for a manager's server process.
        static STARTED: AtomicU64 = AtomicU64::new(1);
        server.set_name(format!(
            "SyncManager-{}",
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        server.start()?;
        // The server sends nothing through the heap's objects: it must not
        // count as a peer that could (`Error::PeersGone`).
        if let (Some(pid), Ok(heap)) = (server.pid(), Heap::get()) {
            heap.unregister(pid);
        }
        let manager = Manager {
            endpoint,
            server: Some(server),
        };
        manager.wait_until_listening()?;
        Ok(manager)
    }
}

/// A fresh abstract-socket name: pid, counter and random bits, so no other
/// program (or earlier manager) can hold it.
fn unique_socket_name() -> Result<String, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = u64::from_le_bytes(auth::random_bytes::<8>()?);
    Ok(format!(
        "shmpool-manager-{}-{}-{random:016x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Manager {
    /// Starts a local manager: a server process reached through a Unix
    /// socket with no name on disk, authenticated with this program's key
    /// (Python's `multiprocessing.Manager()`).
    pub fn start() -> Result<Manager, Error> {
        Manager::builder().start()
    }

    /// A builder for a manager over TCP, or with other limits.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder {
            address: None,
            authkey: None,
            frame_limit: frame::DEFAULT_LIMIT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            start_method: None,
        }
    }

    /// Connects to a manager another program serves at `address` (Python's
    /// `BaseManager(address, authkey).connect()`). Fails with
    /// [`Error::AuthenticationFailed`] if the keys differ, and
    /// [`Error::PeersGone`] if nothing listens there. Proxies it makes work
    /// in this program's processes like any other.
    pub fn connect(address: impl ToSocketAddrs, authkey: &[u8]) -> Result<Manager, Error> {
        let addr = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::invalid("the address resolves to nothing"))?;
        let endpoint = endpoint::create(&Settings {
            address: Address::Tcp(addr),
            authkey,
            frame_limit: frame::DEFAULT_LIMIT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })?;
        client::probe(endpoint)?;
        Ok(Manager {
            endpoint,
            server: None,
        })
    }

    fn wait_until_listening(&self) -> Result<(), Error> {
        let record = endpoint::record(self.endpoint)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_micros(20);
        loop {
            match record.state.load(Ordering::Acquire) {
                endpoint::READY => return Ok(()),
                endpoint::FAILED => {
                    let errno = record.errno.load(Ordering::Relaxed) as i32;
                    return Err(Error::Io(std::io::Error::from_raw_os_error(errno)));
                }
                _ => {}
            }
            let server = self.server.as_ref().expect("a started manager");
            let exited = { server.pid().is_some_and(|pid| !process_runs(pid)) };
            if exited || Instant::now() >= deadline {
                return Err(Error::StartFailed(
                    "the manager's server process did not start listening".into(),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// The TCP address the server listens at (its real port, for port 0);
    /// `None` for a local manager.
    pub fn address(&self) -> Option<SocketAddr> {
        match endpoint::record(self.endpoint).ok()?.address() {
            Address::Tcp(addr) => Some(addr),
            Address::Unix(_) => None,
        }
    }

    /// The server process's id, if this manager started it.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(Process::pid)
    }

    /// Stops the server (if this manager started it) and waits for it to
    /// exit; every client's next call (or current wait) then fails with
    /// [`Error::PeersGone`]. A manager made by [`connect`](Self::connect)
    /// only closes this thread's connection. Called by `Drop`; calling it
    /// again does nothing.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        let Some(mut server) = self.server.take() else {
            client::disconnect(self.endpoint);
            return Ok(());
        };
        // Bounded: a stopped server is killed below.
        let asked = client::call_until(
            self.endpoint,
            &Request::Shutdown,
            Instant::now().checked_add(STOP_TIMEOUT),
        );
        client::disconnect(self.endpoint);
        let timeout = if asked.is_ok() {
            STOP_TIMEOUT
        } else {
            Duration::ZERO
        };
        if server.join(Some(timeout))?.is_none() {
            server.kill();
            server.join(Some(STOP_TIMEOUT))?;
        }
        Ok(())
    }

    fn create<P: Typed>(&self, spec: Spec) -> Result<P, Error> {
        self.id_of(Request::Create(spec, P::types()))
    }

    fn named<P: Typed>(&self, name: &str, spec: Spec) -> Result<P, Error> {
        self.id_of(Request::Named(name.to_owned(), spec, P::types()))
    }

    fn id_of<P: Typed>(&self, request: Request) -> Result<P, Error> {
        let (types, counted) = match &request {
            Request::Create(_, types) => (types.fingerprint, 1),
            Request::Named(_, _, types) => (types.fingerprint, 0),
            _ => (0, 0),
        };
        match client::call(self.endpoint, &request)? {
            Answer::Id(id) => Ok(P::of(BorrowedProxy::new(Handle {
                endpoint: self.endpoint,
                id,
                types,
                counted,
            }))),
            other => Err(unexpected(other)),
        }
    }

    /// How many objects the server holds (Python's
    /// `BaseManager._number_of_objects()`): those made by name, and those a
    /// proxy still refers to. An object is freed when its last proxy is
    /// dropped, in whatever process, or when the last process holding
    /// proxies of it exits (killed included).
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let d = manager.dict::<u8, u8>()?;
    /// let e = d.clone();
    /// let _jobs = manager.queue_named::<u8>("jobs")?;
    /// assert_eq!(manager.object_count()?, 2);
    /// drop(d);
    /// assert_eq!(manager.object_count()?, 2); // `e` refers to it
    /// drop((e, _jobs));
    /// assert_eq!(manager.object_count()?, 1); // a named object stays
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn object_count(&self) -> Result<usize, Error> {
        match client::call(self.endpoint, &Request::Objects)? {
            Answer::Count(n) => Ok(n as usize),
            other => Err(unexpected(other)),
        }
    }

    /// A new, empty dict (`manager.dict()`).
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>, Error>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        self.create(Spec::Dict)
    }

    /// A new, empty list (`manager.list()`).
    pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<ListProxy<T>, Error> {
        self.create(Spec::List(Vec::new()))
    }

    /// A new namespace (`manager.Namespace()`).
    pub fn namespace(&self) -> Result<NamespaceProxy, Error> {
        self.create(Spec::Namespace)
    }

    /// A new, unbounded queue (`manager.Queue()`).
    pub fn queue<T: Serialize + DeserializeOwned>(&self) -> Result<QueueProxy<T>, Error> {
        self.create(Spec::Queue)
    }

    /// A new lock (`manager.Lock()`).
    pub fn lock(&self) -> Result<LockProxy, Error> {
        self.create(Spec::Lock)
    }

    /// A new re-entrant lock (`manager.RLock()`).
    pub fn rlock(&self) -> Result<RLockProxy, Error> {
        self.create(Spec::RLock)
    }

    /// A new semaphore with count `value` (`manager.Semaphore(value)`).
    pub fn semaphore(&self, value: u64) -> Result<SemaphoreProxy, Error> {
        let spec = Spec::Semaphore {
            value,
            bounded: false,
        };
        self.create(spec)
    }

    /// A new semaphore that refuses to be released past `value`
    /// (`manager.BoundedSemaphore(value)`).
    pub fn bounded_semaphore(&self, value: u64) -> Result<SemaphoreProxy, Error> {
        let spec = Spec::Semaphore {
            value,
            bounded: true,
        };
        self.create(spec)
    }

    /// A new event, not set (`manager.Event()`).
    pub fn event(&self) -> Result<EventProxy, Error> {
        self.create(Spec::Event)
    }

    /// A new condition with its own re-entrant lock (`manager.Condition()`).
    pub fn condition(&self) -> Result<ConditionProxy, Error> {
        self.create(Spec::Condition)
    }

    /// A new barrier for `parties` (≥ 1) waiters (`manager.Barrier(n)`).
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy, Error> {
        let spec = Spec::Barrier {
            parties: parties as u64,
        };
        self.create(spec)
    }

    /// A new value (`manager.Value(typecode, value)`).
    pub fn value<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
    ) -> Result<ValueProxy<T>, Error> {
        self.create(Spec::Value(encode(value)?))
    }

    /// A new fixed-length array (`manager.Array(typecode, sequence)`).
    pub fn array<T: Serialize + DeserializeOwned>(
        &self,
        items: &[T],
    ) -> Result<ArrayProxy<T>, Error> {
        let items = items.iter().map(encode).collect::<Result<_, _>>()?;
        self.create(Spec::Array(items))
    }

    /// The dict registered under `name`, made empty by the first caller
    /// (get-or-create, in the spirit of `BaseManager.register`). Another
    /// kind of object under that name is [`Error::InvalidArgument`].
    pub fn dict_named<K, V>(&self, name: &str) -> Result<DictProxy<K, V>, Error>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        self.named(name, Spec::Dict)
    }

    /// The list registered under `name` (see [`dict_named`](Self::dict_named)).
    pub fn list_named<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<ListProxy<T>, Error> {
        self.named(name, Spec::List(Vec::new()))
    }

    /// The namespace registered under `name`.
    pub fn namespace_named(&self, name: &str) -> Result<NamespaceProxy, Error> {
        self.named(name, Spec::Namespace)
    }

    /// The queue registered under `name`.
    pub fn queue_named<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<QueueProxy<T>, Error> {
        self.named(name, Spec::Queue)
    }

    /// The lock registered under `name`.
    pub fn lock_named(&self, name: &str) -> Result<LockProxy, Error> {
        self.named(name, Spec::Lock)
    }

    /// The event registered under `name`.
    pub fn event_named(&self, name: &str) -> Result<EventProxy, Error> {
        self.named(name, Spec::Event)
    }

    /// The value registered under `name`, made from `initial` by the first
    /// caller.
    pub fn value_named<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        initial: &T,
    ) -> Result<ValueProxy<T>, Error> {
        self.named(name, Spec::Value(encode(initial)?))
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Whether `pid` still runs (not a zombie).
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rfind(')')
                .map(|i| stat[i + 1..].trim_start().chars().next())?;
            state.map(|s| s != 'Z' && s != 'X')
        })
        .unwrap_or(false)
}
