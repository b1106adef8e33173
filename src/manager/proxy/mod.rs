//! Proxies: copyable handles to objects a manager's server holds. Each is
//! the offset of the manager's endpoint record in the object heap plus the
//! object's id on the server, so it is [`Pod`](crate::Pod): an ordinary
//! argument of a [`Process`](crate::Process) or a pool task, which connects
//! on its first call in whatever process it reaches.

mod collections;
mod queue;
mod sync;
mod value;

pub use collections::{DictProxy, ListProxy, NamespaceProxy};
pub use queue::QueueProxy;
pub use sync::{
    BarrierProxy, ConditionProxy, ConditionProxyGuard, EventProxy, LockProxy, LockProxyGuard,
    RLockProxy, RLockProxyGuard, SemaphoreProxy,
};
pub use value::{ArrayProxy, ValueProxy};

use super::client;
use super::protocol::{Answer, Bytes, Op, Request};
use crate::error::Error;

/// What every proxy is: the manager's endpoint record and an object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub(crate) struct Handle {
    pub(crate) endpoint: u64,
    pub(crate) id: u64,
}

impl Handle {
    pub(crate) fn call(&self, op: Op) -> Result<Answer, Error> {
        client::call(self.endpoint, &Request::Call(self.id, op))
    }

    pub(crate) fn done(&self, op: Op) -> Result<(), Error> {
        match self.call(op)? {
            Answer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn flag(&self, op: Op) -> Result<bool, Error> {
        match self.call(op)? {
            Answer::Flag(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn count(&self, op: Op) -> Result<u64, Error> {
        match self.call(op)? {
            Answer::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn item(&self, op: Op) -> Result<Option<Bytes>, Error> {
        match self.call(op)? {
            Answer::Item(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn items(&self, op: Op) -> Result<Vec<Bytes>, Error> {
        match self.call(op)? {
            Answer::Items(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }
}

/// A reply of the wrong shape: the peer is not the server this client
/// speaks with (another version), so it is a decoding failure.
pub(crate) fn unexpected(answer: Answer) -> Error {
    let shape = format!("{answer:?}");
    Error::Decode(format!(
        "unexpected reply from the manager: {}",
        shape.split('(').next().unwrap_or("")
    ))
}

/// Declares a proxy type: a [`Handle`] with a type marker, `Copy`, `Debug`
/// and [`Pod`](crate::Pod).
macro_rules! proxy {
    ($(#[$doc:meta])* $name:ident $(<$($t:ident),+>)?) => {
        $(#[$doc])*
        #[repr(C)]
        pub struct $name $(<$($t),+>)? {
            pub(crate) handle: $crate::manager::proxy::Handle,
            _marker: ::std::marker::PhantomData<fn() -> ($($($t,)+)?)>,
        }

        impl $(<$($t),+>)? $name $(<$($t),+>)? {
            pub(crate) fn of(handle: $crate::manager::proxy::Handle) -> Self {
                $name { handle, _marker: ::std::marker::PhantomData }
            }
        }

        impl $(<$($t),+>)? Clone for $name $(<$($t),+>)? {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl $(<$($t),+>)? Copy for $name $(<$($t),+>)? {}

        impl $(<$($t),+>)? ::std::fmt::Debug for $name $(<$($t),+>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("endpoint", &self.handle.endpoint)
                    .field("id", &self.handle.id)
                    .finish()
            }
        }

        // SAFETY: two integers (a heap offset, checked against the record's
        // tag on use, and a server-side id, checked by the server) and a
        // zero-sized marker; they mean the same in every process of the
        // program.
        unsafe impl $(<$($t: 'static),+>)? $crate::Pod for $name $(<$($t),+>)? {}
    };
}
pub(crate) use proxy;
