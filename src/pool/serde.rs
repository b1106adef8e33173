//! [`SerdePool`]: the pool's calls for any serde value (`Pool::serde`).
//!
//! Each chunk of work is one arena block (layout in `task::serde`): the
//! parent encodes the chunk's inputs with postcard into it and reserves room
//! after them for the results, which the worker encodes straight into the
//! block. The room is reserved in *virtual* memory only: the arena is a
//! sparse mapping, so pages never written cost nothing, and a freed block's
//! pages beyond the arena's first 64 MiB go back to the kernel
//! (`docs/ARCHITECTURE.md`, "Serde tasks"). A result that still does not fit
//! fails its chunk with [`Error::CapacityExceeded`], saying how much it
//! needed; the task is not run again.
//!
//! Nothing the worker wrote is trusted: the result count and byte length
//! are checked against the area the parent reserved, and a value that does
//! not decode is [`Error::Decode`].

// Unsafe code: views of a serde chunk's block in the segment.
#![allow(unsafe_code)]

use super::core::{Core, Failure};
use super::job::{Chunk, Job};
use super::lazy::{Chunks, Input, Lazy, Ready};
use super::progress::Progress;
use super::result::AsyncResult;
use super::schedule::{check_chunksize, default_chunksize, Collect, Collected, Window};
use super::{lazy_maps, shorthands, Pool};
use crate::error::Error;
use crate::shm::arena::Block;
use crate::sync::slot::{TaskDesc, WATCHED};
use crate::task::serde::{
    entry, InHeader, OutHeader, SerdeTask, VecFlavor, Wire, IN_HEADER, MAX_MESSAGE, OUT_HEADER,
    STATUS_BAD_INPUT, STATUS_OK, STATUS_OVERFLOW, STATUS_UNENCODABLE,
};
use crate::task::EntryPoint;
use postcard::ser_flavors::Size;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use zerocopy::{FromBytes, IntoBytes};

/// Bytes reserved for one chunk's encoded results unless
/// [`SerdePool::result_capacity`] says otherwise (and at least four times
/// the chunk's encoded inputs).
pub const DEFAULT_RESULT_CAPACITY: usize = 16 << 20;

/// Reserved bytes (inputs and room for results) in flight per call, above
/// the chunks that keep every worker busy: the part of the arena whose pages
/// stay mapped when blocks are freed, so that the pages a call writes are
/// warm for the next one (a page punched out and faulted in again costs
/// more than encoding the 4 KiB it holds).
const IN_FLIGHT_BYTES: usize = super::core::RETAINED_ARENA_BYTES;

/// Most chunks in flight per call.
const MAX_WINDOW: usize = 1024;

/// The pool's calls for any serde value: what [`Pool::serde`] returns.
///
/// The same workers as the pool's, and the same calls as its [`Pod`](crate::Pod)
/// ones, for arguments and results of any type that is `Serialize +
/// DeserializeOwned` ([`Wire`]): `String`, `Vec`, `HashMap`, `Option`,
/// tuples, your own `#[derive(Serialize, Deserialize)]` types. Values travel
/// encoded with postcard through the pool's shared memory, with no frame
/// size to outgrow: a chunk reserves room for
/// [`DEFAULT_RESULT_CAPACITY`] bytes of results (see
/// [`result_capacity`](SerdePool::result_capacity)), or four times its
/// inputs if more. This is Python's `Pool` with pickle.
///
/// The function is, as for the pool, a function item, a non-capturing
/// closure with its argument types written out, a `fn` pointer into the
/// executable, or [`partial(f, value)`](crate::partial) with a serde
/// `value` (cloned for each call in the worker; it travels once per chunk). A panic in it is [`Error::TaskPanicked`], a dead worker
/// [`Error::WorkerDied`]; a result that does not decode (a task that wrote
/// over shared memory) is [`Error::Decode`], never a panic here.
///
/// ```
/// fn count_words(line: String) -> (String, usize) {
///     let n = line.split_whitespace().count();
///     (line, n)
/// }
/// let pool = shmpool::Pool::new(2)?;
/// let lines = vec!["a b c".to_string(), "hello world".to_string()];
/// let counts: Vec<(String, usize)> = pool.serde().map(count_words, &lines)?;
/// assert_eq!(counts[1], ("hello world".to_string(), 2));
///
/// // A value known at run time, bound as the first argument:
/// fn label(prefix: String, line: String) -> String { format!("{prefix}: {line}") }
/// let prefix = std::env::args().next().unwrap_or_default();
/// let labelled = pool.serde().map(shmpool::partial(label, prefix.clone()), &lines)?;
/// assert_eq!(labelled[0], format!("{prefix}: a b c"));
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct SerdePool<'a> {
    pool: &'a Pool,
    result_capacity: usize,
}

impl std::fmt::Debug for SerdePool<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerdePool")
            .field("pool", self.pool)
            .field("result_capacity", &self.result_capacity)
            .finish()
    }
}

impl Pool {
    /// This pool's calls for any serde value, not only [`Pod`](crate::Pod)
    /// ones: see [`SerdePool`].
    ///
    /// ```
    /// fn count_lines(text: String) -> (String, usize) {
    ///     let n = text.lines().count();
    ///     (text, n)
    /// }
    /// let pool = shmpool::Pool::new(2)?;
    /// let texts = vec!["one\ntwo".to_string(), "three".to_string()];
    /// let counts: Vec<(String, usize)> = pool.serde().map(count_lines, &texts)?;
    /// assert_eq!(counts, vec![("one\ntwo".to_string(), 2), ("three".to_string(), 1)]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn serde(&self) -> SerdePool<'_> {
        SerdePool {
            pool: self,
            result_capacity: DEFAULT_RESULT_CAPACITY,
        }
    }
}

/// Where one submitted chunk is: its slot, block and output header.
#[derive(Debug, Clone, Copy)]
struct Submitted {
    slot: u32,
    block: Block,
    /// Segment offset of the chunk's output header.
    out: u64,
    /// Items in the chunk.
    len: usize,
}

impl Submitted {
    fn job(self) -> Job {
        let chunk = Chunk {
            slot: self.slot,
            output: self.out,
            len: self.len,
        };
        Job::single(chunk, Some(self.block))
    }
}

impl<'a> SerdePool<'a> {
    /// Reserves `bytes` (at least 1) for each chunk's encoded results (or
    /// each `apply`'s result) instead of [`DEFAULT_RESULT_CAPACITY`]. The
    /// room is virtual memory: only what the results use is ever touched, so
    /// a large value costs nothing for small results. Raise it for results
    /// larger than the default; [`Error::CapacityExceeded`] says when.
    ///
    /// ```
    /// fn big(n: usize) -> Vec<u8> { vec![7; n] }
    /// let pool = shmpool::Pool::new(1)?;
    /// let small = pool.serde().result_capacity(1 << 10);
    /// assert!(matches!(small.apply(big, (4 << 10,)), Err(shmpool::Error::CapacityExceeded(_))));
    /// assert_eq!(pool.serde().result_capacity(64 << 20).apply(big, (40 << 20,))?.len(), 40 << 20);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn result_capacity(self, bytes: usize) -> SerdePool<'a> {
        SerdePool {
            result_capacity: bytes.max(1),
            ..self
        }
    }

    /// Calls `f(args...)` in a worker and waits for the result; `args` is a
    /// tuple of up to six serde values (Python's `apply`).
    ///
    /// ```
    /// fn greet(name: String, times: usize) -> String { format!("hi {name}! ").repeat(times) }
    /// let pool = shmpool::Pool::new(1)?;
    /// assert_eq!(pool.serde().apply(greet, ("ann".to_string(), 2))?, "hi ann! hi ann! ");
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn apply<F, Args>(&self, f: F, args: Args) -> Result<F::Output, Error>
    where
        F: SerdeTask<Args>,
        Args: Wire,
    {
        let chunk = self.submit_apply(&f, &args, 0)?;
        let core = self.core();
        core.layout().slot(chunk.slot).wait_done(None);
        let value = decode_one::<F::Output>(core, &chunk.job());
        core.dispose(chunk.job());
        value.map_err(Error::from)
    }

    /// Submits `f(args...)` and returns at once with a handle to the result
    /// (Python's `apply_async`). The handle's `get` clones the decoded
    /// value, so the result type is `Clone`.
    ///
    /// ```
    /// fn words(s: String) -> Vec<String> { s.split(' ').map(str::to_owned).collect() }
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.serde().apply_async(words, ("a b".to_string(),))?;
    /// assert_eq!(r.get(None)?, vec!["a".to_string(), "b".to_string()]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn apply_async<F, Args>(&self, f: F, args: Args) -> Result<AsyncResult<F::Output>, Error>
    where
        F: SerdeTask<Args>,
        F::Output: Clone + Send + Sync,
        Args: Wire,
    {
        // WATCHED: its finish is logged, for an awaiting future.
        let chunk = self.submit_apply(&f, &args, WATCHED)?;
        Ok(AsyncResult::new(
            Arc::clone(&self.pool.core),
            chunk.job(),
            decode_one::<F::Output>,
            false,
        ))
    }

    shorthands! {
        /// Applies `f` to every element of `items` in the workers; the results
        /// in order (Python's `map`). Each element is encoded into the pool's
        /// shared memory and decoded by value in a worker. Chunks of
        /// `ceil(len / (4 * processes))` elements, as for [`Pool::map`]; if a
        /// chunk fails (a panic, a dead worker, results too large for their
        /// room), the map returns that error.
        ///
        /// ```
        /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        /// struct Order { id: u32, items: Vec<String> }
        /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        /// struct Summary { id: u32, count: usize }
        ///
        /// fn summarize(o: Order) -> Summary { Summary { id: o.id, count: o.items.len() } }
        ///
        /// let pool = shmpool::Pool::new(2)?;
        /// let orders = vec![Order { id: 1, items: vec!["tea".into(), "jam".into()] }];
        /// assert_eq!(pool.serde().map(summarize, &orders)?, vec![Summary { id: 1, count: 2 }]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn map<F, T>(&self, f: F, items: &[T]) -> Result<Vec<F::Output>, Error>
        where [F: SerdeTask<(T,)>, T: Wire];
        /// [`map`](SerdePool::map) with chunks of `chunksize` elements (at least
        /// 1; zero is [`Error::InvalidArgument`]). Smaller chunks need less room
        /// for their results.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let v = vec!["a".to_string(), "bb".to_string(), "ccc".to_string()];
        /// assert_eq!(pool.serde().map_chunked(|s: String| s.len(), &v, 2)?, vec![1, 2, 3]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked map_chunked;

        /// Like [`map`](SerdePool::map) for functions of several arguments: each
        /// item is a tuple, unpacked for the call (Python's `starmap`).
        ///
        /// ```
        /// fn join(a: String, n: u32) -> String { format!("{a}{n}") }
        /// let pool = shmpool::Pool::new(2)?;
        /// let pairs = vec![("x".to_string(), 1), ("y".to_string(), 2)];
        /// assert_eq!(pool.serde().starmap(join, &pairs)?, vec!["x1", "y2"]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn starmap<F, Args>(&self, f: F, items: &[Args]) -> Result<Vec<F::Output>, Error>
        where [F: SerdeTask<Args>, Args: Wire];
        /// [`starmap`](SerdePool::starmap) with chunks of `chunksize` items.
        ///
        /// ```
        /// fn add(a: String, b: String) -> String { a + &b }
        /// let pool = shmpool::Pool::new(2)?;
        /// let v = vec![("a".to_string(), "b".to_string())];
        /// assert_eq!(pool.serde().starmap_chunked(add, &v, 1)?, vec!["ab"]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked starmap_chunked;

        /// Like [`map`](SerdePool::map), but lazy (Python's `imap`, chunk size
        /// 1): the input is pulled only as results are consumed, with a bounded
        /// number of chunks in flight. Yields `Ok(f(item))` in input order, and
        /// one `Err` per failed chunk.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let names = ["ann", "bob"].map(String::from);
        /// let upper: Vec<String> = pool
        ///     .serde()
        ///     .imap(|s: String| s.to_uppercase(), names)?
        ///     .collect::<Result<_, _>>()?;
        /// assert_eq!(upper, ["ANN", "BOB"]);
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        pub fn imap<F, I>(&self, f: F, items: I) -> Result<SerdeImap<I::IntoIter, F::Output>, Error>
        where [F: SerdeTask<(I::Item,)>, I: IntoIterator, I::Item: Wire];
        /// [`imap`](SerdePool::imap) sending `chunksize` items per task.
        ///
        /// ```
        /// let pool = shmpool::Pool::new(2)?;
        /// let it = pool.serde().imap_chunked(|n: u64| n.to_string(), 0..1000u64, 100)?;
        /// assert_eq!(it.map(Result::unwrap).last(), Some("999".to_string()));
        /// # Ok::<(), shmpool::Error>(())
        /// ```
        chunked imap_chunked;
    }

    /// Like [`imap`](SerdePool::imap), but yields results as they complete,
    /// in any order (Python's `imap_unordered`).
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let mut lens: Vec<usize> = pool
    ///     .serde()
    ///     .imap_unordered(|s: String| s.len(), vec!["abc".to_string(), "d".to_string()])?
    ///     .collect::<Result<_, _>>()?;
    /// lens.sort();
    /// assert_eq!(lens, [1, 3]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap_unordered<F, I, U>(
        &self,
        f: F,
        items: I,
    ) -> Result<SerdeImap<I::IntoIter, U>, Error>
    where
        F: Fn(I::Item) -> U + Copy + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Wire,
        U: Wire,
    {
        self.call().imap_unordered(f, items)
    }

    /// [`imap_unordered`](SerdePool::imap_unordered) sending `chunksize`
    /// items per task; the items of one chunk stay together, in order.
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let n = pool.serde().imap_unordered_chunked(|s: String| s, vec![String::new(); 50], 7)?.count();
    /// assert_eq!(n, 50);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap_unordered_chunked<F, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<SerdeImap<I::IntoIter, F::Output>, Error>
    where
        F: SerdeTask<(I::Item,)>,
        I: IntoIterator,
        I::Item: Wire,
    {
        self.call().chunksize(chunksize).imap_unordered(f, items)
    }

    fn call(&self) -> SerdeCall<'a> {
        SerdeCall {
            view: *self,
            chunksize: None,
        }
    }

    fn core(&self) -> &'a Core {
        &self.pool.core
    }

    fn default_chunksize(&self, len: usize) -> usize {
        default_chunksize(len, self.core().processes)
    }

    /// How many chunks of one call may be in flight, each reserving about
    /// `reserved` bytes.
    fn window(&self, reserved: usize) -> usize {
        (IN_FLIGHT_BYTES / reserved.max(1)).clamp(self.core().processes + 2, MAX_WINDOW)
    }

    /// The entry point for `F` over `Args`, and `f`'s bound value encoded:
    /// what every chunk carries before its items.
    fn prepare<F, Args>(&self, f: &F) -> Result<(EntryPoint, Vec<u8>), Error>
    where
        F: SerdeTask<Args>,
        Args: Wire,
    {
        let entry = self.pool.entry_point(entry::<F, Args>)?;
        let mut bound = Vec::new();
        encode_into(&mut bound, &f.bind()?)?;
        Ok((entry, bound))
    }

    fn submit_apply<F, Args>(&self, f: &F, args: &Args, flags: u32) -> Result<Submitted, Error>
    where
        F: SerdeTask<Args>,
        Args: Wire,
    {
        let (entry, bound) = self.prepare::<F, Args>(f)?;
        let args = std::slice::from_ref(args);
        submit(
            self.core(),
            entry,
            &bound,
            args,
            self.result_capacity,
            flags,
        )
    }

    /// Runs `entry` over `items`, in chunks: encode and submit chunk after
    /// chunk (the workers start on the first while the next is encoded),
    /// decode each as soon as it is done, in order.
    fn map_slice<T: Serialize, U: DeserializeOwned>(
        &self,
        entry: EntryPoint,
        bound: &[u8],
        items: &[T],
        chunksize: usize,
    ) -> Result<Vec<U>, Error> {
        let core = self.core();
        check_chunksize(core, chunksize)?;
        let mut out = Vec::with_capacity(items.len());
        let mut chunks = items.chunks(chunksize);
        let mut window = Window::new(core, Collect::InOrder);
        let mut limit = MAX_WINDOW;
        let mut in_flight = 0;
        let mut all_submitted = false;
        loop {
            while window.accepts() && in_flight < limit && !all_submitted {
                let Some(chunk) = chunks.next() else {
                    all_submitted = true;
                    break;
                };
                let submitted = submit(core, entry, bound, chunk, self.result_capacity, 0);
                match submitted {
                    Ok(s) => {
                        limit = self.window(s.block.len);
                        in_flight += 1;
                        window.push(s.slot, s);
                    }
                    Err(e) => window.fail(e),
                }
            }
            match window.next(all_submitted) {
                None => break,
                Some(Collected::Withdrawn(s)) => {
                    in_flight -= 1;
                    core.free_block(s.block);
                }
                Some(Collected::Done(slot, s)) => {
                    in_flight -= 1;
                    if !window.is_halted() {
                        // Chunks come back in order: this one's first element
                        // is the next result's.
                        let first = out.len();
                        if let Err(f) = decode_chunk(core, s, |u| out.push(u)) {
                            window.fail(Error::from(f).covering(first..first + s.len));
                        }
                    }
                    core.release_slot(slot);
                    core.free_block(s.block);
                }
            }
        }
        window.finish()?;
        Ok(out)
    }
}

/// A [`SerdePool`] call with its chunk size, as [`Call`](crate::Call) is
/// for the pool's `Pod` calls: what `SerdePool`'s shorthands go through.
#[derive(Clone, Copy)]
struct SerdeCall<'a> {
    view: SerdePool<'a>,
    chunksize: Option<usize>,
}

impl<'a> SerdeCall<'a> {
    fn chunksize(self, chunksize: usize) -> Self {
        SerdeCall {
            chunksize: Some(chunksize),
            ..self
        }
    }

    fn map<F, T>(self, f: F, items: &[T]) -> Result<Vec<F::Output>, Error>
    where
        F: SerdeTask<(T,)>,
        T: Wire,
    {
        self.slice::<F, (T,), T>(&f, items)
    }

    fn starmap<F, Args>(self, f: F, items: &[Args]) -> Result<Vec<F::Output>, Error>
    where
        F: SerdeTask<Args>,
        Args: Wire,
    {
        self.slice::<F, Args, Args>(&f, items)
    }

    /// `f` over `items`, each encoded as `f`'s arguments `Args` are
    /// decoded (a `T` as `(T,)`: postcard writes a one-tuple as its value).
    fn slice<F, Args, T>(self, f: &F, items: &[T]) -> Result<Vec<F::Output>, Error>
    where
        F: SerdeTask<Args>,
        Args: Wire,
        T: Serialize,
    {
        let (entry, bound) = self.view.prepare::<F, Args>(f)?;
        let chunksize = self
            .chunksize
            .unwrap_or_else(|| self.view.default_chunksize(items.len()));
        self.view.map_slice(entry, &bound, items, chunksize)
    }

    lazy_maps! {
        SerdeImap: SerdeTask, Wire;
        imap;
        imap_unordered;
        fn lazy(self, f, items, ordered) {
            let (entry, bound) = self.view.prepare::<F, (I::Item,)>(&f)?;
            let chunksize = self.chunksize.unwrap_or(1);
            SerdeImap::new(
                &self.view,
                items.into_iter(),
                entry,
                bound,
                chunksize,
                ordered,
            )
        }
    }
}

/// Appends `value`'s encoding to `buf`.
fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    postcard::serialize_with_flavor(value, VecFlavor(buf)).map_err(|e| unencodable::<T>(&e))
}

/// Lays a chunk into a fresh block: the task's encoded `bound` value, then
/// `items` encoded straight into the block (their sizes measured first),
/// with room for at least `result_capacity` bytes of results; publishes it
/// with `flags` (`slot::WATCHED` for a handle that may be awaited).
fn submit<T: Serialize>(
    core: &Core,
    entry: EntryPoint,
    bound: &[u8],
    items: &[T],
    result_capacity: usize,
    flags: u32,
) -> Result<Submitted, Error> {
    let mut in_bytes = bound.len();
    for item in items {
        let size = postcard::serialize_with_flavor(item, Size::default())
            .map_err(|e| unencodable::<T>(&e))?;
        in_bytes = in_bytes.saturating_add(size);
    }
    let too_large = || Error::full("a chunk's encoded inputs are larger than the pool's arena");
    let out_rel = IN_HEADER
        .checked_add(in_bytes)
        .and_then(|n| n.checked_next_multiple_of(64))
        .ok_or_else(too_large)?;
    // The block's length is a multiple of 64: the worker gets all of it, so
    // that the parent's bound (the block's end) is the worker's.
    let total = out_rel
        .checked_add(OUT_HEADER)
        .and_then(|n| n.checked_add(result_capacity.max(in_bytes.saturating_mul(4))))
        .and_then(|n| n.checked_next_multiple_of(64))
        .ok_or_else(too_large)?;
    let capacity = total - out_rel - OUT_HEADER;
    let mut slot = core.alloc_slot()?;
    let at = slot.attach_block(total, 64)?;
    // SAFETY: `at` is a fresh block of `total` bytes that no worker sees
    // before the slot is published; this thread has it to itself.
    let block = unsafe { std::slice::from_raw_parts_mut(core.layout().at(at), total) };
    // `in_bytes` after the input header, the output header at `out_rel`.
    let area = &mut block[IN_HEADER..IN_HEADER + in_bytes];
    area[..bound.len()].copy_from_slice(bound);
    let mut used = bound.len();
    for item in items {
        // A `Serialize` that gives another length the second time is
        // refused, never trusted.
        used += postcard::to_slice(item, &mut area[used..])
            .map_err(|e| unencodable::<T>(&e))?
            .len();
    }
    let in_header = InHeader {
        in_bytes: used as u64,
        out_capacity: capacity as u64,
    };
    // The input header at the block's start, and an output header zeroed,
    // so that nothing an earlier user of these bytes left reads as a result.
    block[..IN_HEADER].copy_from_slice(in_header.as_bytes());
    block[out_rel..out_rel + OUT_HEADER].fill(0);
    slot.describe(TaskDesc {
        entry: entry.0,
        input: at,
        output: at + out_rel as u64,
        len: items.len() as u64,
        flags,
        ..TaskDesc::default()
    });
    let published = slot.publish()?;
    let (slot, block) = (published.slot, published.block.expect("attached above"));
    Ok(Submitted {
        slot,
        block,
        out: at + out_rel as u64,
        len: items.len(),
    })
}

fn unencodable<T: ?Sized>(e: &postcard::Error) -> Error {
    Error::invalid(format!(
        "cannot encode a {} with postcard: {e}",
        std::any::type_name::<T>()
    ))
}

/// Decodes the one result of a finished single-item job (`apply`).
fn decode_one<U: DeserializeOwned>(core: &Core, job: &Job) -> Result<U, Failure> {
    let mut value = None;
    decode_job(core, job, |u| value = Some(u))?;
    Ok(value.expect("decode_chunk yields len values"))
}

/// [`decode_chunk`] for a finished job of one chunk.
fn decode_job<U: DeserializeOwned>(
    core: &Core,
    job: &Job,
    sink: impl FnMut(U),
) -> Result<(), Failure> {
    let chunk = job.chunks().next().expect("one chunk");
    let submitted = Submitted {
        slot: chunk.slot,
        block: job.block.expect("a serde job has its block"),
        out: chunk.output,
        len: chunk.len,
    };
    decode_chunk(core, submitted, sink)
}

/// Decodes a finished chunk's results into `sink`, in order, checking every
/// length the worker wrote against the block the parent reserved. Reads the
/// slot's outcome first.
fn decode_chunk<U: DeserializeOwned>(
    core: &Core,
    chunk: Submitted,
    mut sink: impl FnMut(U),
) -> Result<(), Failure> {
    core.read_outcome::<()>(chunk.slot, 0)?;
    let block_end = Core::block_offset(chunk.block) + chunk.block.len as u64;
    // The parent's own record: the header and the area after it lie in the block.
    let capacity = (block_end - chunk.out) as usize - OUT_HEADER;
    let out_at = core.layout().at(chunk.out);
    // SAFETY: the output header and the area after it lie in the block
    // (above); the chunk is DONE (seen with Acquire): its worker wrote them.
    let out = unsafe { std::slice::from_raw_parts(out_at, OUT_HEADER + capacity) };
    let (header, area) = out.split_at(OUT_HEADER);
    let Ok((header, _)) = OutHeader::read_from_prefix(header) else {
        unreachable!("OUT_HEADER holds an OutHeader");
    };
    let message = |used: u64| {
        let n = (used.min(capacity as u64) as usize).min(MAX_MESSAGE);
        String::from_utf8_lossy(&area[..n]).into_owned()
    };
    match header.status {
        STATUS_OK => {}
        STATUS_OVERFLOW => {
            return Err(Failure::CapacityExceeded(format!(
                "the results of a {}-item chunk need at least {} bytes, more than the {capacity} \
                 reserved for them: use a smaller chunksize, or more room with \
                 pool.serde().result_capacity(bytes)",
                chunk.len, header.used
            )))
        }
        STATUS_BAD_INPUT => return Err(Failure::Decode(message(header.used))),
        STATUS_UNENCODABLE => return Err(Failure::Unencodable(message(header.used))),
        other => {
            return Err(Failure::Decode(format!(
                "the chunk's result header reads status {other:#x}: shared memory was written over"
            )))
        }
    }
    if header.count as usize != chunk.len {
        return Err(Failure::Decode(format!(
            "the chunk's result header counts {} results for {} inputs",
            header.count, chunk.len
        )));
    }
    if header.used > capacity as u64 {
        return Err(Failure::Decode(format!(
            "the chunk's result header says {} bytes, more than the {capacity} reserved",
            header.used
        )));
    }
    // `used` bytes from the area's start lie in the block (checked above).
    let mut rest = &area[..header.used as usize];
    for i in 0..chunk.len {
        let (value, tail) = postcard::take_from_bytes::<U>(rest).map_err(|e| {
            Failure::Decode(format!(
                "result {i} of the chunk does not decode as {}: {e}",
                std::any::type_name::<U>()
            ))
        })?;
        sink(value);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Failure::Decode(format!(
            "{} bytes left over after the chunk's results",
            rest.len()
        )));
    }
    Ok(())
}

/// The iterator returned by [`SerdePool::imap`] and its variants: yields
/// `Ok(f(item))` for every input item (in input order for `imap`, in
/// completion order for `imap_unordered`) and one `Err` per failed chunk,
/// after which it goes on with the next chunk. As [`Imap`](crate::Imap):
/// an input that panics ends it with [`Error::InputPanicked`]; dropping it
/// stops pulling the input and withdraws chunks not yet started.
///
/// ```
/// use std::time::Duration;
/// let pool = shmpool::Pool::new(2)?;
/// let mut it = pool.serde().imap(|n: u32| vec![n; n as usize], 1..4u32)?;
/// assert_eq!(it.next_timeout(Duration::from_secs(10)).unwrap()?, vec![1]);
/// assert_eq!(it.collect::<Result<Vec<_>, _>>()?, vec![vec![2, 2], vec![3, 3, 3]]);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct SerdeImap<I: Iterator, U> {
    lazy: Lazy<I, U>,
    chunks: SerdeChunks<I::Item>,
}

/// How a serde map's chunk is laid out: one block, the task's bound value
/// and the inputs encoded, then room for the encoded results (`submit`).
struct SerdeChunks<T> {
    entry: EntryPoint,
    /// The task's bound value, encoded: the start of every chunk.
    bound: Vec<u8>,
    chunksize: usize,
    result_capacity: usize,
    /// The items of the chunk being filled.
    pending: Vec<T>,
}

impl<I, U> SerdeImap<I, U>
where
    I: Iterator<Item: Serialize>,
    U: DeserializeOwned,
{
    fn new(
        view: &SerdePool<'_>,
        input: I,
        entry: EntryPoint,
        bound: Vec<u8>,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Self, Error> {
        check_chunksize(view.core(), chunksize)?;
        let core = Arc::clone(&view.pool.core);
        let window = view.window(view.result_capacity);
        Ok(SerdeImap {
            lazy: Lazy::new(core, input, ordered, window, Progress::NONE),
            chunks: SerdeChunks {
                entry,
                bound,
                chunksize,
                result_capacity: view.result_capacity,
                pending: Vec::new(),
            },
        })
    }

    /// Like [`next`](Iterator::next), but gives up after `timeout`:
    /// `Some(Err(Error::Timeout))` if no result arrived by then (the work
    /// goes on; call again to keep waiting). `None` once every result was
    /// yielded.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<U, Error>> {
        let deadline = crate::deadline::deadline(timeout);
        self.lazy.next_until(&mut self.chunks, deadline)
    }
}

impl<I, U> Chunks<I, U> for SerdeChunks<I::Item>
where
    I: Iterator<Item: Serialize>,
    U: DeserializeOwned,
{
    fn submit(&mut self, core: &Core, input: &mut Input<I>) -> Result<Option<Job>, Error> {
        self.pending.clear();
        let pending = &mut self.pending;
        if input.pull(self.chunksize, |_, item| pending.push(item)) == 0 {
            return Ok(None);
        }
        let (entry, bound, items) = (self.entry, &self.bound, &self.pending);
        let submitted = submit(core, entry, bound, items, self.result_capacity, 0)?;
        self.pending.clear();
        Ok(Some(submitted.job()))
    }

    fn collect(&self, core: &Core, job: &Job, ready: &mut Ready<U>) -> Result<(), Failure> {
        decode_job(core, job, |u| ready.push_back(Ok(u)))
    }
}

impl<I: Iterator<Item: Serialize>, U: DeserializeOwned> Iterator for SerdeImap<I, U> {
    type Item = Result<U, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.lazy.next_until(&mut self.chunks, None)
    }
}

impl<I: Iterator, U> std::fmt::Debug for SerdeImap<I, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lazy.debug(f, "SerdeImap", self.chunks.chunksize)
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use crate::remote::AccessRefused;
    use crate::task::{Entry, TaskIo};

    /// Plays a task that wrote over its chunk's output area: writes
    /// `header` (its count `u32::MAX` meaning "the real count") and fills
    /// the first `fill` bytes of the area with 0xFF.
    ///
    /// # Safety
    /// `io` describes a serde chunk (`task::serde`).
    unsafe fn scribble(io: &TaskIo<'_>, mut header: OutHeader, fill: usize) {
        if header.count == u32::MAX {
            header.count = io.len as u32;
        }
        // SAFETY: the output area holds the header and at least `fill`
        // bytes (the tests' capacity is far larger).
        unsafe {
            io.output.cast::<OutHeader>().write_unaligned(header);
            std::ptr::write_bytes(io.output.add(OUT_HEADER), 0xFF, fill);
        }
    }

    macro_rules! hostile {
        ($name:ident, $status:expr, $count:expr, $used:expr, $fill:expr) => {
            unsafe fn $name(io: TaskIo<'_>) -> Result<(), AccessRefused> {
                let header = OutHeader {
                    status: $status,
                    count: $count,
                    used: $used,
                };
                // SAFETY: the pool runs this entry on a serde chunk.
                unsafe { scribble(&io, header, $fill) };
                Ok(())
            }
        };
    }
    hostile!(longer_than_the_block, STATUS_OK, u32::MAX, 1 << 40, 0);
    hostile!(garbage_values, STATUS_OK, u32::MAX, 64, 64);
    hostile!(too_few_results, STATUS_OK, 0, 0, 0);
    hostile!(unknown_status, 0xDEAD, u32::MAX, 0, 0);
    hostile!(a_huge_message, STATUS_BAD_INPUT, 0, u64::MAX, 4096);

    fn map_with(pool: &Pool, entry: Entry, chunksize: usize) -> Result<Vec<String>, Error> {
        let entry = pool.entry_point(entry)?;
        let items = vec!["item".to_string(); 5];
        pool.serde()
            .map_slice::<String, String>(entry, &[0], &items, chunksize)
    }

    #[test]
    fn whatever_a_worker_writes_over_its_results_is_a_decode_error_not_a_panic() {
        let pool = Pool::new(1).unwrap();
        for (entry, expect) in [
            (longer_than_the_block as Entry, "more than the"),
            (garbage_values, "does not decode as"),
            (too_few_results, "counts 0 results for"),
            (unknown_status, "status 0xdead"),
        ] {
            for chunksize in [1, 5] {
                match map_with(&pool, entry, chunksize) {
                    Err(Error::Decode(why)) => assert!(why.contains(expect), "{why}"),
                    other => panic!("expected a decode error ({expect}): {other:?}"),
                }
            }
        }
        // A failure message is read only as far as the parent allows.
        match map_with(&pool, a_huge_message, 5) {
            Err(Error::Decode(why)) => assert_eq!(why.chars().count(), MAX_MESSAGE),
            other => panic!("{other:?}"),
        }
        // The same through an apply's handle.
        let entry = pool.entry_point(garbage_values).unwrap();
        let chunk = submit(pool.core(), entry, &[0], &["x".to_string()], 1 << 10, 0).unwrap();
        let r = AsyncResult::new(
            Arc::clone(&pool.core),
            chunk.job(),
            decode_one::<String>,
            false,
        );
        assert!(matches!(
            r.get(Some(Duration::from_secs(30))),
            Err(Error::Decode(_))
        ));
        // The pool goes on.
        let items = vec!["ok".to_string(); 100];
        assert_eq!(
            pool.serde().map(|s: String| s.len(), &items).unwrap(),
            vec![2; 100]
        );
    }
}
