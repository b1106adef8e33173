//! How worker processes are started.
//!
//! Only `fork` exists so far; `forkserver` and `spawn` come with the start-method
//! issue and will live beside it, behind the same [`fork::Child`] shape.

pub(crate) mod fork;
