//! [`Call`]: one call's options (chunk size, callbacks) in one place, and the
//! one home of every way to submit work. `Pool`'s methods are shorthands for
//! a `Call` with default options.

use super::job::Job;
use super::result::{decode_one, decode_vec, Decode};
use super::{schedule, AsyncResult, Imap, Pool};
use crate::error::Error;
use crate::sync::slot::WATCHED;
use crate::task::{
    context_of, inplace_entry, map_entry, reduce_context, reduce_entry, starmap_entry,
    ReduceBounds, Task,
};
use crate::Pod;
use std::sync::Arc;

/// Writes a pool's shorthand methods: each is its `call()` with default
/// options (`pool.map(f, xs)` is `pool.call().map(f, xs)`), so the rules of
/// a call live in one place ([`Call`]). One signature gives a method and its
/// twins, each entry's docs before it:
///
/// * `chunked map_chunked;` adds `map_chunked(.., chunksize)`, which is
///   `call().chunksize(chunksize).map(..)`;
/// * `with map_async_with -> R;` adds `map_async_with(.., callback,
///   error_callback)`, which is `call().callbacks(..).map_async(..)`, where
///   `callback` takes the result, `R`.
///
/// The bounds go in brackets, without a trailing comma.
macro_rules! shorthands {
    (
        @twins $name:ident [$($g:ident),+] [$($arg:ident: $ty:ty),+] [$ret:ty] [$($bound:tt)*]
        $(#[$doc:meta])*
        chunked $chunked:ident;
        $($rest:tt)*
    ) => {
        $(#[$doc])*
        pub fn $chunked<$($g),+>(&self, $($arg: $ty,)+ chunksize: usize) -> $ret
        where
            $($bound)*
        {
            $crate::task::travels!(F);
            self.call().chunksize(chunksize).$name($($arg),+)
        }
        $crate::pool::shorthands! {
            @twins $name [$($g),+] [$($arg: $ty),+] [$ret] [$($bound)*] $($rest)*
        }
    };
    (
        @twins $name:ident [$($g:ident),+] [$($arg:ident: $ty:ty),+] [$ret:ty] [$($bound:tt)*]
        $(#[$doc:meta])*
        with $with:ident -> $r:ty;
        $($rest:tt)*
    ) => {
        $(#[$doc])*
        pub fn $with<$($g,)+ C, E>(
            &self,
            $($arg: $ty,)+
            callback: C,
            error_callback: E,
        ) -> $ret
        where
            $($bound)*,
            C: FnOnce($r) + Send + 'static,
            E: FnOnce(Error) + Send + 'static,
        {
            $crate::task::travels!(F);
            self.call()
                .callbacks(callback, error_callback)
                .$name($($arg),+)
        }
        $crate::pool::shorthands! {
            @twins $name [$($g),+] [$($arg: $ty),+] [$ret] [$($bound)*] $($rest)*
        }
    };
    (@twins $name:ident [$($g:tt)*] [$($arg:tt)*] [$ret:ty] [$($bound:tt)*] $($rest:tt)*) => {
        $crate::pool::shorthands! { $($rest)* }
    };
    () => {};
    (
        $(#[$doc:meta])*
        pub fn $name:ident<$($g:ident),+>(&self, $($arg:ident: $ty:ty),+) -> $ret:ty
        where [$($bound:tt)*];
        $($rest:tt)*
    ) => {
        $(#[$doc])*
        pub fn $name<$($g),+>(&self, $($arg: $ty),+) -> $ret
        where
            $($bound)*
        {
            $crate::task::travels!(F);
            self.call().$name($($arg),+)
        }
        $crate::pool::shorthands! {
            @twins $name [$($g),+] [$($arg: $ty),+] [$ret] [$($bound)*] $($rest)*
        }
    };
}
pub(crate) use shorthands;

/// Writes a call's `imap` and `imap_unordered` (with the docs given, in
/// that order) and the one lazy map behind both, `lazy(f, items, ordered)`,
/// whose body is given: one signature for the three, in each call type that
/// has them. The head names the iterator type returned, the task trait and
/// the element bound: `pub Imap: Task, Pod`.
macro_rules! lazy_maps {
    (
        $vis:vis $imap:ident: $task:ident, $elem:ident;
        $(#[$ordered:meta])* imap;
        $(#[$unordered:meta])* imap_unordered;
        fn lazy($self:ident, $f:ident, $items:ident, $in_order:ident) $body:block
    ) => {
        $(#[$ordered])*
        $vis fn imap<F, I>(self, f: F, items: I) -> Result<$imap<I::IntoIter, F::Output>, Error>
        where
            F: $task<(I::Item,)>,
            I: IntoIterator,
            I::Item: $elem,
        {
            $crate::task::travels!(F);
            self.lazy(f, items, true)
        }

        $(#[$unordered])*
        $vis fn imap_unordered<F, I>(
            self,
            f: F,
            items: I,
        ) -> Result<$imap<I::IntoIter, F::Output>, Error>
        where
            F: $task<(I::Item,)>,
            I: IntoIterator,
            I::Item: $elem,
        {
            $crate::task::travels!(F);
            self.lazy(f, items, false)
        }

        fn lazy<F, I>(
            $self,
            $f: F,
            $items: I,
            $in_order: bool,
        ) -> Result<$imap<I::IntoIter, F::Output>, Error>
        where
            F: $task<(I::Item,)>,
            I: IntoIterator,
            I::Item: $elem,
        $body
    };
}
#[cfg(any(feature = "serde", feature = "mpi"))]
pub(crate) use lazy_maps;

/// A call to a [`Pool`] with per-call options, like the keyword arguments of
/// Python's `Pool` methods (`chunksize=`, `callback=`, `error_callback=`).
/// Made by [`Pool::call`]; each option is set once, then one method submits
/// the work.
///
/// Every Python call shape is written the same way:
///
/// | Python | shmpool |
/// |---|---|
/// | `pool.map(f, xs, chunksize=8)` | `pool.call().chunksize(8).map(f, &xs)` |
/// | `pool.starmap_async(f, pairs, chunksize=8)` | `pool.call().chunksize(8).starmap_async(f, &pairs)` |
/// | `pool.map_async(f, xs, 8, callback=cb, error_callback=ecb)` | `pool.call().chunksize(8).callbacks(cb, ecb).map_async(f, &xs)` |
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// let pool = shmpool::Pool::new(2)?;
/// let pairs: Vec<(i64, i64)> = (0..100).map(|i| (i, i)).collect();
/// let sums = pool.call().chunksize(8).starmap_async(add, &pairs)?;
/// assert_eq!(sums.get(None)?[99], 198);
///
/// let (tx, rx) = mpsc::channel();
/// pool.call()
///     .chunksize(8)
///     .callbacks(move |v: Vec<i64>| tx.send(v.len()).unwrap(), |e| eprintln!("{e}"))
///     .starmap_async(add, &pairs)?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 100);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// The same surface serves `shmpool::mpi::Pool` (feature `mpi`):
/// its `call()` returns a `Call` over the ranks of an MPI job, with the same
/// options and methods (without callbacks).
#[must_use = "a Call does nothing until one of its methods submits the work"]
pub struct Call<'p, C = NoCallbacks, P = Pool> {
    pub(crate) pool: &'p P,
    pub(crate) chunksize: Option<usize>,
    callbacks: C,
}

/// A [`Call`] without callbacks: its results are read from the handle.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCallbacks;

/// A [`Call`]'s callbacks, set by [`Call::callbacks`].
pub struct WithCallbacks<C, E> {
    callback: C,
    error_callback: E,
}

impl<'p, P> Call<'p, NoCallbacks, P> {
    pub(crate) fn new(pool: &'p P) -> Self {
        Call {
            pool,
            chunksize: None,
            callbacks: NoCallbacks,
        }
    }
}

impl<'p, C, P> Call<'p, C, P> {
    /// Cuts maps into chunks of `chunksize` elements (at least 1; zero is
    /// [`Error::InvalidArgument`] when the work is submitted). The default is
    /// CPython's, `ceil(len / (4 * processes))`, and 1 for `imap`.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.chunksize = Some(chunksize);
        self
    }
}

impl<'p> Call<'p, NoCallbacks> {
    /// Runs `callback(result)` or `error_callback(error)` in this process
    /// when the work finishes, like Python's `callback=` and
    /// `error_callback=`; for the `*_async` methods. They run on the pool's
    /// callback thread (see [`Pool::apply_async_with`] for the rules).
    pub fn callbacks<C, E>(self, callback: C, error_callback: E) -> Call<'p, WithCallbacks<C, E>> {
        Call {
            pool: self.pool,
            chunksize: self.chunksize,
            callbacks: WithCallbacks {
                callback,
                error_callback,
            },
        }
    }

    /// Calls `f(args...)` in a worker and waits for the result
    /// ([`Pool::apply`]).
    pub fn apply<F, Args>(self, f: F, args: Args) -> Result<F::Output, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        crate::task::travels!(F);
        self.pool.submit_apply(f, args, 0)?.finish(&self.pool.core)
    }

    /// `f` over every element, results in order ([`Pool::map`]).
    pub fn map<F, T>(self, f: F, items: &[T]) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(T,)>,
        T: Pod,
    {
        crate::task::travels!(F);
        let bound = f.bind()?;
        let entry = self.pool.entry_point(map_entry::<F, T>)?;
        let chunksize = self.map_chunksize(items.len());
        let context = context_of::<F, (T,)>(&bound);
        let core = &self.pool.core;
        schedule::map_slice::<T, F::Output>(core, items, chunksize, entry, &context, false)
    }

    /// `f(args...)` for every tuple of arguments, results in order
    /// ([`Pool::starmap`]).
    pub fn starmap<F, Args>(self, f: F, items: &[Args]) -> Result<Vec<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        crate::task::travels!(F);
        let bound = f.bind()?;
        let entry = self.pool.entry_point(starmap_entry::<F, Args>)?;
        let chunksize = self.map_chunksize(items.len());
        let context = context_of::<F, Args>(&bound);
        let core = &self.pool.core;
        schedule::map_slice::<Args, F::Output>(core, items, chunksize, entry, &context, false)
    }

    /// `data[i] = f(data[i])` where `data` lies ([`Pool::map_inplace`]).
    pub fn map_inplace<F, T>(self, f: F, data: &mut [T]) -> Result<(), Error>
    where
        F: Task<(T,), Output = T>,
        T: Pod,
    {
        crate::task::travels!(F);
        let bound = f.bind()?;
        let entry = self.pool.entry_point(inplace_entry::<F, T>)?;
        let chunksize = self.map_chunksize(data.len());
        let context = context_of::<F, (T,)>(&bound);
        schedule::map_inplace(&self.pool.core, data, chunksize, entry, &context)
    }

    /// `output[i] = f(input[i])`, written straight into `output`
    /// ([`Pool::map_into`]).
    pub fn map_into<F, T>(self, f: F, input: &[T], output: &mut [F::Output]) -> Result<(), Error>
    where
        F: Task<(T,)>,
        T: Pod,
    {
        if input.len() != output.len() {
            return Err(Error::invalid(format!(
                "map_into: input has {} elements, output {}",
                input.len(),
                output.len()
            )));
        }
        crate::task::travels!(F);
        let bound = f.bind()?;
        let entry = self.pool.entry_point(map_entry::<F, T>)?;
        let chunksize = self.map_chunksize(input.len());
        let context = context_of::<F, (T,)>(&bound);
        schedule::map_into(&self.pool.core, input, output, chunksize, entry, &context)
    }

    /// Maps and folds without the vector ([`Pool::map_reduce`]).
    pub fn map_reduce<F, O, T>(self, f: F, op: O, items: &[T]) -> Result<Option<F::Output>, Error>
    where
        F: Task<(T,)>,
        O: Task<(F::Output, F::Output), Output = F::Output>,
        T: Pod,
    {
        crate::task::travels!(F, O);
        let bounds: ReduceBounds<F, O, T, F::Output> = (f.bind()?, op.bind()?);
        let entry = self.pool.entry_point(reduce_entry::<F, O, T>)?;
        let chunksize = self.map_chunksize(items.len());
        let context = reduce_context::<F, O, T>(&bounds);
        let core = &self.pool.core;
        let per_chunk =
            schedule::map_slice::<T, F::Output>(core, items, chunksize, entry, &context, true)?;
        // In index order, so an associative `op` gives the same answer
        // whatever the chunk size.
        let combine = |a, b| O::call(&bounds.1, (a, b));
        Ok(per_chunk.into_iter().reduce(combine))
    }

    lazy_maps! {
        pub Imap: Task, Pod;
        /// A lazy, ordered map over any iterator ([`Pool::imap`]); the chunk
        /// size defaults to 1, as in Python.
        imap;
        /// Like [`imap`](Self::imap), yielding results as they complete
        /// ([`Pool::imap_unordered`]).
        imap_unordered;
        fn lazy(self, f, items, ordered) {
            let bound = f.bind()?;
            let entry = self.pool.entry_point(map_entry::<F, I::Item>)?;
            let context = context_of::<F, (I::Item,)>(&bound);
            Imap::new(
                Arc::clone(&self.pool.core),
                items.into_iter(),
                entry.0,
                self.chunksize.unwrap_or(1),
                ordered,
                context,
            )
        }
    }
}

impl<'p, C> Call<'p, C> {
    /// Submits `f(args...)` and returns at once with a handle
    /// ([`Pool::apply_async`]).
    pub fn apply_async<F, Args>(self, f: F, args: Args) -> Result<AsyncResult<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Pod,
        C: Deliver<F::Output>,
    {
        // WATCHED: its finish is logged, for callbacks or an awaiting future.
        crate::task::travels!(F);
        let job = self.pool.submit_apply(f, args, WATCHED)?.into_job();
        deliver(self.pool, job, decode_one::<F::Output>, self.callbacks)
    }

    /// Submits a map and returns at once with a handle to the vector of
    /// results ([`Pool::map_async`]).
    pub fn map_async<F, T>(self, f: F, items: &[T]) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Task<(T,)>,
        T: Pod,
        C: Deliver<Vec<F::Output>>,
    {
        crate::task::travels!(F);
        let bound = f.bind()?;
        let entry = self.pool.entry_point(map_entry::<F, T>)?;
        let context = context_of::<F, (T,)>(&bound);
        self.submit_slice(items, entry, &context)
    }

    /// Submits a starmap and returns at once with a handle
    /// ([`Pool::starmap_async`]).
    pub fn starmap_async<F, Args>(
        self,
        f: F,
        items: &[Args],
    ) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Task<Args>,
        Args: Pod,
        C: Deliver<Vec<F::Output>>,
    {
        crate::task::travels!(F);
        let bound = f.bind()?;
        let entry = self.pool.entry_point(starmap_entry::<F, Args>)?;
        let context = context_of::<F, Args>(&bound);
        self.submit_slice(items, entry, &context)
    }

    fn submit_slice<T: Pod, U: Pod>(
        self,
        items: &[T],
        entry: crate::task::EntryPoint,
        context: &[std::mem::MaybeUninit<u8>],
    ) -> Result<AsyncResult<Vec<U>>, Error>
    where
        C: Deliver<Vec<U>>,
    {
        let chunksize = self.map_chunksize(items.len());
        let core = &self.pool.core;
        let job = schedule::submit_slice::<T, U>(core, items, chunksize, entry, WATCHED, context)?;
        deliver(self.pool, job, decode_vec::<U>, self.callbacks)
    }

    fn map_chunksize(&self, len: usize) -> usize {
        self.chunksize
            .unwrap_or_else(|| schedule::default_chunksize(len, self.pool.core.processes))
    }
}

/// What a [`Call`] does with a finished result: nothing ([`NoCallbacks`]:
/// the handle reads it), or run callbacks ([`WithCallbacks`]). Sealed.
pub trait Deliver<R>: sealed::Sealed {
    /// The callbacks to run, boxed for the callback thread.
    #[doc(hidden)]
    fn into_callbacks(self) -> Option<Boxed<R>>;
}

/// A result callback and an error callback, boxed.
#[doc(hidden)]
pub type Boxed<R> = (
    Box<dyn FnOnce(R) + Send + 'static>,
    Box<dyn FnOnce(Error) + Send + 'static>,
);

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::NoCallbacks {}
    impl<C, E> Sealed for super::WithCallbacks<C, E> {}
}

impl<R> Deliver<R> for NoCallbacks {
    fn into_callbacks(self) -> Option<Boxed<R>> {
        None
    }
}

impl<R, C, E> Deliver<R> for WithCallbacks<C, E>
where
    C: FnOnce(R) + Send + 'static,
    E: FnOnce(Error) + Send + 'static,
{
    fn into_callbacks(self) -> Option<Boxed<R>> {
        Some((Box::new(self.callback), Box::new(self.error_callback)))
    }
}

/// Hands a submitted job to its result handle, and to the callback thread
/// if there are callbacks.
fn deliver<R, D>(
    pool: &Pool,
    job: Job,
    decode: Decode<R>,
    callbacks: D,
) -> Result<AsyncResult<R>, Error>
where
    R: Clone + Send + Sync + 'static,
    D: Deliver<R>,
{
    match callbacks.into_callbacks() {
        None => Ok(pool.result(job, decode, false)),
        Some((on_ok, on_err)) => pool.watched(job, decode, on_ok, on_err),
    }
}

impl<C, P> std::fmt::Debug for Call<'_, C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("chunksize", &self.chunksize)
            .field(
                "callbacks",
                &(std::any::type_name::<C>() != std::any::type_name::<NoCallbacks>()),
            )
            .finish()
    }
}

impl<C, E> std::fmt::Debug for WithCallbacks<C, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WithCallbacks")
    }
}
