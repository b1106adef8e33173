//! [`ValueProxy`] and [`ArrayProxy`].

use super::proxy;
use crate::error::Error;
use crate::manager::protocol::{decode, encode, Op};
use serde::de::DeserializeOwned;
use serde::Serialize;

proxy!(
    /// One value held by a manager, like Python's `manager.Value(typecode,
    /// value)` (`v.value` is `v.get()`, `v.value = x` is `v.set(&x)`). Each
    /// `get` and `set` is atomic; a read-modify-write needs a
    /// [`LockProxy`](super::LockProxy) around it, as in Python.
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

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// `v.value`.
    pub fn get(&self) -> Result<T, Error> {
        let item = self.handle.item(Op::Load)?;
        decode(&item.ok_or_else(|| Error::invalid("no value"))?)
    }

    /// `v.value = value`.
    pub fn set(&self, value: &T) -> Result<(), Error> {
        self.handle.done(Op::Store(encode(value)?))
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

impl<T: Serialize + DeserializeOwned> ArrayProxy<T> {
    /// `a[index]` (negative counts from the end).
    pub fn get(&self, index: i64) -> Result<T, Error> {
        let item = self.handle.item(Op::At(index))?;
        decode(&item.ok_or_else(|| Error::invalid("no item"))?)
    }

    /// `a[index] = value`.
    pub fn set(&self, index: i64, value: &T) -> Result<(), Error> {
        self.handle.done(Op::Put(index, encode(value)?))
    }

    /// `len(a)`.
    pub fn len(&self) -> Result<usize, Error> {
        Ok(self.handle.count(Op::Len)? as usize)
    }

    /// `len(a) == 0`.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// `a[:]`.
    pub fn to_vec(&self) -> Result<Vec<T>, Error> {
        self.handle
            .items(Op::All)?
            .iter()
            .map(|v| decode(v))
            .collect()
    }
}
