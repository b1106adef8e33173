//! [`ValueProxy`] and [`ArrayProxy`].

use super::{fetch_add, indexed, proxy, update, Borrowed, Number};
use crate::error::Error;
use crate::manager::protocol::{encode, Op};
use serde::de::DeserializeOwned;
use serde::Serialize;

proxy!(
    /// One value held by a manager, like Python's `manager.Value(typecode,
    /// value)` (`v.value` is `v.get()`, `v.value = x` is `v.set(&x)`). Each
    /// call is atomic; a read-modify-write is `fetch_add` or `update` (in
    /// Python it needs a lock around it).
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let v = manager.value(&3.25f64)?;
    /// v.set(&(v.get()? * 2.0))?;
    /// assert_eq!(v.get()?, 6.5);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    ValueProxy<T>
);

impl<T: Serialize + DeserializeOwned> Borrowed<ValueProxy<T>> {
    /// `v.value`.
    pub fn get(&self) -> Result<T, Error> {
        self.handle
            .value(Op::Load)?
            .ok_or_else(|| Error::invalid("no value"))
    }

    /// `v.value = value`.
    pub fn set(&self, value: &T) -> Result<(), Error> {
        self.handle.done(Op::Store(encode(value)?))
    }

    /// `v.value += delta` as one atomic operation in the server; the value
    /// before. An integer sum that would overflow is
    /// [`Error::InvalidArgument`] and changes nothing.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let n = manager.value(&10i32)?;
    /// assert_eq!(n.fetch_add(-3)?, 10);
    /// assert_eq!(n.get()?, 7);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn fetch_add(&self, delta: T) -> Result<T, Error>
    where
        T: Number,
    {
        fetch_add(&self.handle, None, delta)
    }

    /// `v.value = f(v.value)` as one atomic operation in the server (see
    /// a [`DictProxy`](super::DictProxy)'s `update` for what `f` may be;
    /// `f` must give a value); the new value.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let name = manager.value(&"ab".to_string())?;
    /// assert_eq!(name.update(|s| s.map(|s| s + "c"))?, "abc");
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn update(&self, f: fn(Option<T>) -> Option<T>) -> Result<T, Error> {
        update(&self.handle, None, f)?
            .ok_or_else(|| Error::Decode("no new value in the reply".into()))
    }
}

proxy!(
    /// A fixed-length array held by a manager, like Python's
    /// `manager.Array(typecode, sequence)`.
    ///
    /// ```
    /// let manager = shmpool::Manager::start()?;
    /// let a = manager.array(&[1u8, 2, 3])?;
    /// a.set(0, &9)?;
    /// assert_eq!(a.to_vec()?, [9, 2, 3]);
    /// assert_eq!((a.len()?, a.get(-1)?), (3, 3));
    /// assert!(a.set(3, &0).is_err()); // fixed length
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    ArrayProxy<T>
);

impl<T: Serialize + DeserializeOwned> Borrowed<ArrayProxy<T>> {
    indexed!("a");
}
