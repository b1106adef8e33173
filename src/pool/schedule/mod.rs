//! How a call becomes tasks: submission of `apply` and `map_async` (`submit`),
//! and the synchronous maps (`map`), which reach their data in one of two
//! ways, chosen per call by [`map_raw`]:
//!
//! * **Where it lies** (`where_it_lies`): workers read the input and
//!   write the output in place, in the pool's segment (a [`SharedVec`]) or in
//!   the caller's own memory (`pool::zero_copy`). Only task descriptions
//!   travel; nothing of the data is copied through the parent.
//! * **Through the arena** (`through_arena`, the fallback, when the kernel
//!   does not let workers reach the caller's memory, or `zero_copy(false)`):
//!   the parent copies chunk after chunk into one arena block and publishes
//!   each at once, keeps at most `WINDOW` chunks in flight, and copies each
//!   chunk's output out as soon as it is done, so copy-in, compute and
//!   copy-out overlap.
//!
//! Both keep their chunks in flight in a `Window`; how a call is cut into
//! chunks and laid out in memory is in `layout`, the page advice for fresh
//! output buffers in `memory`.
//!
//! [`SharedVec`]: crate::SharedVec

mod layout;
mod map;
mod memory;
mod submit;
mod through_arena;
mod where_it_lies;
mod window;

pub(crate) use layout::{
    check_chunksize, check_context, default_chunksize, imap_window, Elem, MapBytes, MapLayout,
};
#[cfg(feature = "serde")]
pub(crate) use map::halves;
pub(crate) use map::{map_inplace, map_into, map_raw, map_slice, MapCall};
#[cfg(feature = "mpi")]
pub(crate) use memory::prefault;
pub(crate) use submit::{submit_apply, submit_slice};
#[cfg(feature = "mpi")]
pub(crate) use where_it_lies::{Place, SMALL_MAP_BYTES};
#[cfg(feature = "serde")]
pub(crate) use window::{Collect, Collected, Window};
