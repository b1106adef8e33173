//! What travels after authentication: one [`Request`] frame from the client,
//! one [`Reply`] frame back, both encoded with postcard. Values the server
//! holds are opaque bytes (their postcard encoding): the server never needs
//! their types, and only the client that decodes a value can find it is not
//! what it expected ([`Error::Decode`]).

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// A value as the server holds it: its postcard encoding.
pub(crate) type Bytes = Vec<u8>;

/// Which object to make, and its initial state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum Spec {
    Dict,
    List(Vec<Bytes>),
    Namespace,
    Queue,
    Lock,
    RLock,
    Semaphore { value: u64, bounded: bool },
    Event,
    Condition,
    Barrier { parties: u64 },
    Value(Bytes),
    Array(Vec<Bytes>),
}

impl Spec {
    /// The kind of object, ignoring its initial state (for named objects).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Spec::Dict => "dict",
            Spec::List(_) => "list",
            Spec::Namespace => "namespace",
            Spec::Queue => "queue",
            Spec::Lock => "lock",
            Spec::RLock => "rlock",
            Spec::Semaphore { bounded: false, .. } => "semaphore",
            Spec::Semaphore { bounded: true, .. } => "bounded semaphore",
            Spec::Event => "event",
            Spec::Condition => "condition",
            Spec::Barrier { .. } => "barrier",
            Spec::Value(_) => "value",
            Spec::Array(_) => "array",
        }
    }
}

/// A timeout in microseconds (`None`: wait as long as it takes).
pub(crate) type Micros = Option<u64>;

/// Converts a caller's timeout for the wire.
pub(crate) fn micros(t: std::time::Duration) -> Micros {
    Some(u64::try_from(t.as_micros()).unwrap_or(u64::MAX))
}

/// One request.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Request {
    /// Makes an object; answers [`Answer::Id`].
    Create(Spec),
    /// The object registered under the name, made from `Spec` if there is
    /// none; answers [`Answer::Id`].
    Named(String, Spec),
    /// An operation on object `id`.
    Call(u64, Op),
    /// Ends the server (after answering).
    Shutdown,
}

/// Operations on objects; each applies to the kinds named in its comment.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Op {
    /// dict, list, queue, array: how many entries.
    Len,
    /// dict, list: removes everything.
    Clear,
    /// dict: old value if any.
    Insert(Bytes, Bytes),
    /// dict.
    Lookup(Bytes),
    /// dict: the removed value if any.
    Remove(Bytes),
    /// dict.
    Contains(Bytes),
    /// dict: keys in insertion order.
    Keys,
    /// dict: pairs in insertion order.
    Entries,
    /// list.
    Push(Bytes),
    /// list, array: the item at an index (negative counts from the end).
    At(i64),
    /// list, array.
    Put(i64, Bytes),
    /// list.
    InsertAt(i64, Bytes),
    /// list: the last item, or the one at the index.
    Pop(Option<i64>),
    /// list.
    Extend(Vec<Bytes>),
    /// list.
    Reverse,
    /// list, array: every item.
    All,
    /// namespace.
    SetAttr(String, Bytes),
    /// namespace.
    GetAttr(String),
    /// namespace: the removed value if any.
    DelAttr(String),
    /// queue.
    Enqueue(Bytes),
    /// queue: waits for an item.
    Dequeue(Micros),
    /// lock, rlock, semaphore, condition: whether it was acquired in time.
    Acquire(Micros),
    /// lock, rlock, semaphore, condition.
    Release,
    /// event.
    Set,
    /// event.
    Unset,
    /// event.
    IsSet,
    /// event: whether it was set in time.
    Wait(Micros),
    /// condition (lock held): waits for a notify; whether one came in time.
    CondWait(Micros),
    /// condition (lock held): wakes up to this many waiters.
    Notify(u64),
    /// barrier: this waiter's arrival index.
    BarrierWait(Micros),
    /// barrier: breaks it for every waiter.
    Abort,
    /// value.
    Load,
    /// value.
    Store(Bytes),
}

impl Op {
    /// The operation's name, for error messages (without its data).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Len => "len",
            Op::Clear => "clear",
            Op::Insert(..) => "insert",
            Op::Lookup(_) => "get",
            Op::Remove(_) => "remove",
            Op::Contains(_) => "contains_key",
            Op::Keys => "keys",
            Op::Entries => "items",
            Op::Push(_) => "push",
            Op::At(_) => "get",
            Op::Put(..) => "set",
            Op::InsertAt(..) => "insert",
            Op::Pop(_) => "pop",
            Op::Extend(_) => "extend",
            Op::Reverse => "reverse",
            Op::All => "to_vec",
            Op::SetAttr(..) => "set",
            Op::GetAttr(_) => "get",
            Op::DelAttr(_) => "remove",
            Op::Enqueue(_) => "put",
            Op::Dequeue(_) => "get",
            Op::Acquire(_) => "acquire",
            Op::Release => "release",
            Op::Set => "set",
            Op::Unset => "clear",
            Op::IsSet => "is_set",
            Op::Wait(_) => "wait",
            Op::CondWait(_) => "wait",
            Op::Notify(_) => "notify",
            Op::BarrierWait(_) => "wait",
            Op::Abort => "abort",
            Op::Load => "get",
            Op::Store(_) => "set",
        }
    }
}

/// A successful reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) enum Answer {
    Done,
    Id(u64),
    Flag(bool),
    Count(u64),
    Item(Option<Bytes>),
    Items(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
}

/// Why a request failed on the server.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) enum Fault {
    /// The request frame did not decode.
    Decode(String),
    /// No object has this id, or it is not of the kind the operation needs.
    Invalid(String),
    /// The wait ended before the object was ready.
    Timeout,
    /// The lock's holder disconnected (died) holding it; it is free now.
    OwnerDied,
    /// The barrier is broken.
    BrokenBarrier,
    /// The reply would exceed the frame limit.
    TooLarge(u64),
}

/// One reply.
pub(crate) type Reply = Result<Answer, Fault>;

impl From<Fault> for Error {
    fn from(fault: Fault) -> Error {
        match fault {
            Fault::Decode(why) => Error::Decode(why),
            Fault::Invalid(why) => Error::InvalidArgument(why),
            Fault::Timeout => Error::Timeout,
            Fault::OwnerDied => Error::OwnerDied,
            Fault::BrokenBarrier => Error::BrokenBarrier,
            Fault::TooLarge(n) => Error::InvalidArgument(format!(
                "the reply ({n} bytes) exceeds the manager's frame limit"
            )),
        }
    }
}

/// A value's encoding.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Error> {
    postcard::to_allocvec(value)
        .map_err(|e| Error::invalid(format!("cannot encode the value: {e}")))
}

/// Decodes a value the server held or returned. Bytes left over mean the
/// value was written as another type (postcard does not describe types, so
/// this is the check it allows).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let failed = |why: String| {
        Error::Decode(format!(
            "the manager's value does not decode as {}: {why}",
            std::any::type_name::<T>()
        ))
    };
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(failed(format!("{} bytes left over", rest.len()))),
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_another_type_is_a_decode_error() {
        let bytes = encode(&"not a number").unwrap();
        assert!(
            matches!(decode::<Vec<String>>(&bytes), Err(Error::Decode(m)) if m.contains("Vec"))
        );
        assert_eq!(decode::<String>(&bytes).unwrap(), "not a number");
        assert!(matches!(decode::<u8>(&bytes), Err(Error::Decode(m)) if m.contains("left over")));
    }

    #[test]
    fn requests_round_trip() {
        let req = Request::Call(7, Op::Insert(vec![1], vec![2, 3]));
        let bytes = postcard::to_allocvec(&req).unwrap();
        let back: Request = postcard::from_bytes(&bytes).unwrap();
        assert!(matches!(back, Request::Call(7, Op::Insert(k, v)) if k == [1] && v == [2, 3]));
    }
}
