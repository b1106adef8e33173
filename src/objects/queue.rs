//! [`Queue`]: a bounded multi-producer multi-consumer queue of [`Pod`] values
//! between processes; [`Pipe`]: two of them as a duplex pair of connections.

// Unsafe code: queue elements in shared memory; queue handles are `Pod`.
#![allow(unsafe_code)]

use super::heap::{bad_handle, resolve, shared_object, Heap};
use super::lock::{kind, RawMutex};
use crate::error::Error;
use crate::sync::wake::WakeWord;
use crate::Pod;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a receiver with nothing to receive checks that some other process
/// of the program is still alive to send.
const PEER_CHECK: Duration = Duration::from_millis(100);

/// The queue's header; `capacity` elements of `elem_size` bytes follow it.
#[repr(C)]
struct QueueObject {
    kind: AtomicU32,
    elem_size: AtomicU32,
    capacity: AtomicU32,
    closed: AtomicU32,
    mutex: RawMutex,
    /// Positions, read and written only with `mutex` held (atomics so that
    /// a `&QueueObject` is all it takes): `head` is the next to read, `tail`
    /// the next to write; `tail - head` elements are queued.
    head: AtomicU64,
    tail: AtomicU64,
    /// Receivers sleep here; notified on put and close.
    items: WakeWord,
    /// Senders sleep here; notified on get and close.
    spaces: WakeWord,
    /// Mirror of `tail - head`, readable without the lock.
    len: AtomicU32,
}

shared_object!(QueueObject);

impl QueueObject {
    /// `(head, tail)`; the caller holds `mutex` (Relaxed: the lock orders).
    fn positions(&self) -> (u64, u64) {
        (
            self.head.load(Ordering::Relaxed),
            self.tail.load(Ordering::Relaxed),
        )
    }
}

const HEADER: usize = std::mem::size_of::<QueueObject>().next_multiple_of(64);

/// A bounded queue shared by the processes of the program, like Python's
/// `multiprocessing.Queue`, for [`Pod`] values (copied as bytes: no pickling).
///
/// `put` waits while the queue is full, `get` while it is empty. A `get`
/// without a timeout that waits while **nothing can put any more** returns
/// [`Error::PeersGone`] instead of waiting forever (Python would wait
/// forever): no other process of the program is alive, and this process has
/// no thread but the waiting one and shmpool's own (threads named
/// `shmpool-…`), checked every 100 ms. A `get_timeout` never does: it
/// returns [`Error::Timeout`] at its deadline, as Python's `get(timeout=…)`
/// raises `Empty`. [`close`](Queue::close)
/// makes further `put`s fail and lets `get` drain what is left, then fail
/// with [`Error::Closed`].
///
/// ```
/// use shmpool::{Process, Queue};
///
/// fn produce(q: Queue<u64>) {
///     for i in 0..3 { q.put(i * 10).unwrap(); }
/// }
///
/// let q = Queue::<u64>::new(16)?;
/// let mut p = Process::new(produce, (q,));
/// p.start()?;
/// let got: Vec<u64> = (0..3).map(|_| q.get()).collect::<Result<_, _>>()?;
/// assert_eq!(got, [0, 10, 20]);
/// p.join(None)?;
/// # Ok::<(), shmpool::Error>(())
/// ```
#[repr(C)]
pub struct Queue<T: crate::pod::Message> {
    at: u64,
    _marker: PhantomData<fn(T) -> T>,
}

impl<T: Pod> Clone for Queue<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Pod> Copy for Queue<T> {}
impl<T: Pod> PartialEq for Queue<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl<T: Pod> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("at", &self.at).finish()
    }
}

// SAFETY: an offset into the program's object heap, checked on every use
// (kind tag and element size).
#[diagnostic::do_not_recommend]
unsafe impl<T: Pod> Pod for Queue<T> {}

impl<T: Pod> Queue<T> {
    /// An empty queue with room for `capacity` (≥ 1) values.
    pub fn new(capacity: usize) -> Result<Queue<T>, Error> {
        if capacity == 0 || capacity > u32::MAX as usize {
            return Err(Error::invalid("a queue holds 1 to 2^32 - 1 values"));
        }
        let bytes = capacity
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(HEADER))
            .ok_or_else(|| Error::invalid("queue too large"))?;
        let heap = Heap::get()?;
        let at = heap.alloc(bytes, std::mem::align_of::<T>().max(64))?;
        let obj: &QueueObject = heap.at(at).expect("fresh allocation");
        obj.mutex.init(false)?;
        obj.elem_size
            .store(std::mem::size_of::<T>() as u32, Ordering::Relaxed);
        obj.capacity.store(capacity as u32, Ordering::Relaxed);
        obj.kind.store(kind::QUEUE, Ordering::Release);
        Ok(Queue {
            at,
            _marker: PhantomData,
        })
    }

    fn object(&self) -> Result<(&'static QueueObject, *mut T), Error> {
        let obj: &QueueObject = resolve(self.at, kind::QUEUE)?;
        if obj.elem_size.load(Ordering::Relaxed) as usize != std::mem::size_of::<T>() {
            return Err(bad_handle());
        }
        let heap = Heap::existing().ok_or_else(bad_handle)?;
        let cap = obj.capacity.load(Ordering::Relaxed) as usize;
        let data = heap
            .ptr(self.at + HEADER as u64, cap * std::mem::size_of::<T>())
            .ok_or_else(bad_handle)?;
        Ok((obj, data.cast()))
    }

    /// Appends `value`, waiting while the queue is full.
    pub fn put(&self, value: T) -> Result<(), Error> {
        self.put_until(value, None)
    }

    /// [`put`](Self::put), giving up with [`Error::Timeout`] after `timeout`.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), Error> {
        self.put_until(value, crate::deadline::deadline(timeout))
    }

    fn put_until(&self, value: T, deadline: Option<Instant>) -> Result<(), Error> {
        let (obj, data) = self.object()?;
        let cap = obj.capacity.load(Ordering::Relaxed) as u64;
        loop {
            if obj.closed.load(Ordering::Acquire) != 0 {
                return Err(Error::Closed);
            }
            obj.mutex.lock(None).or_else(owner_died_is_ok)?;
            let (head, tail) = obj.positions();
            if tail - head < cap {
                // SAFETY: index < capacity, and the element is ours while
                // `mutex` is held; it is written before the tail moves, so a
                // holder dying here loses only this put.
                unsafe { data.add((tail % cap) as usize).write(value) };
                obj.tail.store(tail + 1, Ordering::Relaxed);
                obj.len.fetch_add(1, Ordering::Release);
                obj.mutex.unlock();
                obj.items.notify_one();
                return Ok(());
            }
            obj.mutex.unlock();
            let wait = remaining(deadline)?;
            obj.spaces.park_unless(
                || {
                    (obj.len.load(Ordering::Acquire) as u64) < cap
                        || obj.closed.load(Ordering::Acquire) != 0
                },
                wait,
            );
        }
    }

    /// Removes and returns the oldest value, waiting while the queue is empty.
    /// [`Error::PeersGone`] if it is empty and nothing can put any more (no
    /// other process of the program alive, no other thread in this one but
    /// shmpool's own); [`Error::Closed`] if it is empty and closed.
    pub fn get(&self) -> Result<T, Error> {
        self.get_until(None)
    }

    /// [`get`](Self::get), giving up with [`Error::Timeout`] after `timeout`
    /// (never [`Error::PeersGone`]: it waits out its timeout).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.get_until(crate::deadline::deadline(timeout))
    }

    /// The oldest value if there is one now.
    pub fn try_get(&self) -> Result<Option<T>, Error> {
        match self.get_until(Some(Instant::now())) {
            Ok(v) => Ok(Some(v)),
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<T, Error> {
        let (obj, data) = self.object()?;
        let cap = obj.capacity.load(Ordering::Relaxed) as u64;
        loop {
            obj.mutex.lock(None).or_else(owner_died_is_ok)?;
            let (head, tail) = obj.positions();
            if tail > head {
                // SAFETY: index < capacity, the element is ours while `mutex`
                // is held, and it was written before the tail passed it.
                let value = unsafe { data.add((head % cap) as usize).read() };
                obj.head.store(head + 1, Ordering::Relaxed);
                obj.len.fetch_sub(1, Ordering::Release);
                obj.mutex.unlock();
                obj.spaces.notify_one();
                return Ok(value);
            }
            obj.mutex.unlock();
            if obj.closed.load(Ordering::Acquire) != 0 {
                return Err(Error::Closed);
            }
            // A bounded wait ends at its deadline, with Timeout (Python's
            // `Empty`); only an unbounded one looks for senders, in slices.
            let wait = remaining(deadline)?;
            obj.items.park_unless(
                || obj.len.load(Ordering::Acquire) > 0 || obj.closed.load(Ordering::Acquire) != 0,
                Some(wait.unwrap_or(PEER_CHECK)),
            );
            if deadline.is_none() && obj.len.load(Ordering::Acquire) == 0 && !anyone_may_send() {
                return Err(Error::PeersGone);
            }
        }
    }

    /// How many values are queued now.
    pub fn len(&self) -> Result<usize, Error> {
        Ok(self.object()?.0.len.load(Ordering::Acquire) as usize)
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Refuses further `put`s (they fail with [`Error::Closed`]); `get` still
    /// returns what is queued, then fails with [`Error::Closed`]. Wakes every
    /// waiter.
    pub fn close(&self) -> Result<(), Error> {
        let (obj, _) = self.object()?;
        obj.closed.store(1, Ordering::Release);
        obj.items.notify_all();
        obj.spaces.notify_all();
        Ok(())
    }
}

/// Whether anything could still put into a queue this thread waits on: some
/// other process of the program is alive, or this process has another
/// thread that is not one of shmpool's own (named `shmpool-…`).
fn anyone_may_send() -> bool {
    Heap::existing().is_some_and(|h| h.others_alive()) || other_threads_here()
}

/// Whether this process has a thread other than the caller and shmpool's
/// own service threads. If the program itself is named `shmpool-…`, its
/// threads cannot be told from ours by name: then every thread counts.
fn other_threads_here() -> bool {
    const OURS: &str = "shmpool-";
    let me = rustix::thread::gettid().as_raw_nonzero().to_string();
    let name = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let ours_by_name = !name("/proc/self/comm".into()).starts_with(OURS);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return true; // cannot tell: assume someone may send
    };
    tasks.flatten().any(|task| {
        task.file_name().to_str() != Some(me.as_str())
            && !(ours_by_name && name(task.path().join("comm")).starts_with(OURS))
    })
}

/// A queue's positions stay consistent whatever instruction a holder died at
/// (each operation moves a position only after its element is complete), so
/// the lock's recovery is enough: carry on.
fn owner_died_is_ok(e: Error) -> Result<(), Error> {
    match e {
        Error::OwnerDied => Ok(()),
        e => Err(e),
    }
}

fn remaining(deadline: Option<Instant>) -> Result<Option<Duration>, Error> {
    match deadline {
        None => Ok(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(l) if !l.is_zero() => Ok(Some(l)),
            _ => Err(Error::Timeout),
        },
    }
}

/// One end of a [`Pipe`]: sends into one queue, receives from the other.
///
/// ```
/// let (a, b) = shmpool::Pipe::new::<u32>()?;
/// a.send(7)?;
/// assert!(b.poll(None)?);
/// assert_eq!(b.recv()?, 7);
/// b.send(8)?;
/// assert_eq!(a.recv()?, 8);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[repr(C)]
pub struct Connection<T: crate::pod::Message> {
    /// The queue `send` writes (offset 0: none, a receive-only end).
    tx: u64,
    /// The queue `recv` reads (offset 0: none, a send-only end).
    rx: u64,
    _marker: PhantomData<fn(T) -> T>,
}

impl<T: Pod> Clone for Connection<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Pod> Copy for Connection<T> {}
impl<T: Pod> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("can_send", &(self.tx != 0))
            .field("can_recv", &(self.rx != 0))
            .finish()
    }
}

// SAFETY: two heap offsets (0: none), each checked on use; any bit pattern
// is a valid value.
#[diagnostic::do_not_recommend]
unsafe impl<T: Pod> Pod for Connection<T> {}

/// Messages one end can hold before `send` waits.
const PIPE_CAPACITY: usize = 1024;

/// Connected pairs of [`Connection`]s, like Python's `multiprocessing.Pipe()`.
#[derive(Debug)]
pub struct Pipe;

impl Pipe {
    /// A duplex pair: each end sends to and receives from the other (Python's
    /// `Pipe()`).
    #[allow(clippy::new_ret_no_self)] // a pipe *is* its two ends, as in Python
    pub fn new<T: crate::pod::Message>() -> Result<(Connection<T>, Connection<T>), Error> {
        let (ab, ba) = (
            Queue::<T>::new(PIPE_CAPACITY)?,
            Queue::<T>::new(PIPE_CAPACITY)?,
        );
        Ok((Connection::of(ab.at, ba.at), Connection::of(ba.at, ab.at)))
    }

    /// A one-way pair `(receiver, sender)` (Python's `Pipe(duplex=False)`):
    /// the first end can only receive, the second only send.
    ///
    /// ```
    /// let (rx, tx) = shmpool::Pipe::one_way::<u8>()?;
    /// tx.send(1)?;
    /// assert_eq!(rx.recv()?, 1);
    /// assert!(rx.send(2).is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn one_way<T: crate::pod::Message>() -> Result<(Connection<T>, Connection<T>), Error> {
        let q = Queue::<T>::new(PIPE_CAPACITY)?;
        Ok((Connection::of(0, q.at), Connection::of(q.at, 0)))
    }
}

impl<T: Pod> Connection<T> {
    fn of(tx: u64, rx: u64) -> Self {
        Connection {
            tx,
            rx,
            _marker: PhantomData,
        }
    }

    fn queue(at: u64) -> Queue<T> {
        Queue {
            at,
            _marker: PhantomData,
        }
    }

    fn tx(&self) -> Result<Queue<T>, Error> {
        match self.tx {
            0 => Err(Error::invalid("this end of a one-way pipe only receives")),
            at => Ok(Self::queue(at)),
        }
    }

    fn rx(&self) -> Result<Queue<T>, Error> {
        match self.rx {
            0 => Err(Error::invalid("this end of a one-way pipe only sends")),
            at => Ok(Self::queue(at)),
        }
    }

    /// Sends `value` to the other end (waits while 1024 messages are unread).
    pub fn send(&self, value: T) -> Result<(), Error> {
        self.tx()?.put(value)
    }

    /// Receives the next message, waiting for it ([`Error::PeersGone`] if
    /// nothing can send it any more, as for [`Queue::get`]).
    pub fn recv(&self) -> Result<T, Error> {
        self.rx()?.get()
    }

    /// [`recv`](Self::recv), giving up with [`Error::Timeout`] after
    /// `timeout` (never [`Error::PeersGone`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.rx()?.get_timeout(timeout)
    }

    /// Whether a message is ready, waiting up to `timeout` for one (`None`:
    /// do not wait).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        let rx = self.rx()?;
        let deadline = crate::deadline::deadline(timeout.unwrap_or(Duration::ZERO));
        loop {
            if !rx.is_empty()? {
                return Ok(true);
            }
            let pause = Duration::from_micros(200);
            let pause = match deadline {
                None => pause,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => pause.min(left),
                    _ => return Ok(false),
                },
            };
            std::thread::sleep(pause);
        }
    }

    /// Closes this end's sending side: the other end's `recv` drains what was
    /// sent, then fails with [`Error::Closed`].
    pub fn close(&self) -> Result<(), Error> {
        match self.tx {
            0 => Ok(()),
            at => Self::queue(at).close(),
        }
    }
}
