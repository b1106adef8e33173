//! The shared-memory segment of a pool and how its bytes are laid out.
//!
//! * [`segment`]: one anonymous `memfd` mapping per pool (no name, so nothing can
//!   leak in `/dev/shm`, whatever dies and however).
//! * [`layout`]: where the header, the ring, the task slots and the arena sit.
//! * [`arena`]: the parent's allocator for `map` payloads inside the segment.
//! * [`region`]: typed, bounds-checked views of shared bytes ([`region::Shared`]).
//! * [`named`]: [`SharedMemory`](crate::SharedMemory), a *named* object that
//!   unrelated processes can open; tracked by the resource tracker.
//!
//! Only offsets from the segment's base are ever stored in the segment.

pub(crate) mod arena;
pub(crate) mod layout;
pub(crate) mod named;
pub(crate) mod region;
pub(crate) mod segment;
