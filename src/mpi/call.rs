//! The MPI pool's side of [`Call`]: the same per-call options and methods as
//! the local pool's (`pool::call`), carried out over the ranks.

// Unsafe code: maps over a caller's raw buffers (`Pool::map_raw`).
#![allow(unsafe_code)]

use super::protocol::TaskHeader;
use super::{assert_function_item, entry_point, pending, to_bytes, AsyncResult, Imap, Pool};
use crate::error::Error;
use crate::pool::lazy_maps;
use crate::pool::schedule::Elem;
use crate::task::{apply_entry, map_entry, starmap_entry, ApplyInput, Task};
use crate::{Call, NoCallbacks, Pod};
use std::sync::Arc;

impl<'p> Call<'p, NoCallbacks, Pool> {
    fn map_chunksize(&self, len: usize) -> usize {
        self.chunksize
            .unwrap_or_else(|| self.pool.default_chunksize(len))
    }

    /// Calls `f(args...)` on a rank and waits for the result
    /// ([`Pool::apply`](super::Pool::apply)).
    pub fn apply<F, Args>(self, f: F, args: Args) -> Result<F::Output, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        self.apply_async(f, args)?.get(None)
    }

    /// Submits `f(args...)` and returns at once with a handle
    /// ([`Pool::apply_async`](super::Pool::apply_async)). `f` may be a
    /// `partial` or a `fn` pointer.
    pub fn apply_async<F, Args>(self, f: F, args: Args) -> Result<AsyncResult<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        let args: ApplyInput<F, Args> = (f.bind()?, args);
        let entry = entry_point(apply_entry::<F, Args>)?;
        let (input, output) = (Elem::of::<ApplyInput<F, Args>>(), Elem::of::<F::Output>());
        let mut d = self.pool.shared.lock();
        if d.stopped() {
            return Err(Error::Closed);
        }
        let id = d.next_id();
        let task = pending(
            TaskHeader::new(id, entry.0, 1, input, output),
            to_bytes(&[args]),
        )?;
        d.enqueue(task);
        d.assign();
        Ok(AsyncResult::new(Arc::clone(&self.pool.shared), id))
    }

    /// `f` over every element on the ranks, results in order
    /// ([`Pool::map`](super::Pool::map)).
    pub fn map<F, T>(self, _f: F, items: &[T]) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(T,)>,
        T: Pod,
    {
        const { assert_function_item::<F>() };
        let entry = entry_point(map_entry::<F, T>)?;
        let chunksize = self.map_chunksize(items.len());
        self.pool.map_typed(entry, items, chunksize)
    }

    /// `output[i] = f(input[i])`, received straight into `output`
    /// ([`Pool::map_into`](super::Pool::map_into)).
    pub fn map_into<F, T>(self, _f: F, input: &[T], output: &mut [F::Output]) -> Result<(), Error>
    where
        F: Task<(T,)>,
        T: Pod,
    {
        const { assert_function_item::<F>() };
        if input.len() != output.len() {
            return Err(Error::invalid(format!(
                "map_into: input has {} elements, output {}",
                input.len(),
                output.len()
            )));
        }
        let entry = entry_point(map_entry::<F, T>)?;
        let chunksize = self.map_chunksize(input.len());
        // SAFETY: `input` holds `len` T's, `output` room for `len` outputs;
        // both borrowed for the call, and `&mut` keeps them apart.
        unsafe {
            self.pool.map_raw(
                entry,
                input.as_ptr().cast(),
                Elem::of::<T>(),
                output.as_mut_ptr().cast(),
                Elem::of::<F::Output>(),
                input.len(),
                chunksize,
            )
        }
    }

    /// `f(args...)` for every tuple of arguments
    /// ([`Pool::starmap`](super::Pool::starmap)).
    pub fn starmap<F, Args>(self, _f: F, items: &[Args]) -> Result<Vec<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Pod,
    {
        const { assert_function_item::<F>() };
        let entry = entry_point(starmap_entry::<F, Args>)?;
        let chunksize = self.map_chunksize(items.len());
        self.pool.map_typed(entry, items, chunksize)
    }

    lazy_maps! {
        pub Imap: Task, Pod;
        /// A lazy, ordered map over any iterator
        /// ([`Pool::imap`](super::Pool::imap)); one item per task by default.
        imap;
        /// Like [`imap`](Self::imap), yielding results as they complete
        /// ([`Pool::imap_unordered`](super::Pool::imap_unordered)).
        imap_unordered;
        fn lazy(self, _f, items, ordered) {
            const { assert_function_item::<F>() };
            let entry = entry_point(map_entry::<F, I::Item>)?;
            let chunksize = self.chunksize.unwrap_or(1);
            Imap::new(self.pool, items.into_iter(), entry, chunksize, ordered)
        }
    }
}
