//! [`partial`]: a task with bound values, after Python's `functools.partial`.

use super::Task;
use crate::error::Error;
use crate::Pod;
use std::mem::{size_of, MaybeUninit};

/// A task with a bound first argument: what [`partial`] returns.
///
/// A `Partial` is a task wherever a function is: [`Pool::map`](crate::Pool::map)
/// and the other maps, `apply`, `imap`, an initializer, a
/// [`Process`](crate::Process).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partial<F, B> {
    pub(crate) f: F,
    pub(crate) bound: B,
}

/// Binds `value` as the first argument of `f`, like Python's
/// `functools.partial(f, value)`: the task `partial(f, value)` called with
/// `(x, ..)` runs `f(value, x, ..)` in the worker.
///
/// This is how a task gets a value known only at run time: a closure that
/// captures it cannot travel to another process, but `value` is a [`Pod`]
/// value (a number, an array, a tuple of several values, your own
/// [`pod!`](crate::pod!) struct) and travels with the call, once per `apply`
/// or per map chunk, never once per element. `f` is a function item, a `fn`
/// pointer, or another `Partial` (to bind more values, or bind a tuple).
///
/// With [`pool.serde()`](crate::Pool::serde) the bound value may be any serde
/// value (a `String`, a `Vec`, your own struct), cloned for each call.
///
/// ```
/// use shmpool::{partial, Pool};
///
/// fn scale(k: f64, x: f64) -> f64 { (x * k).sin() }
/// fn affine((a, b): (f64, f64), x: f64) -> f64 { a * x + b }
///
/// let pool = Pool::new(2)?;
/// let k = std::env::args().count() as f64; // known only at run time
/// let v: Vec<f64> = (0..1000).map(f64::from).collect();
/// let out = pool.map(partial(scale, k), &v)?;
/// assert_eq!(out[10], (10.0 * k).sin());
///
/// assert_eq!(pool.map(partial(affine, (2.0, 1.0)), &[1.0, 2.0])?, [3.0, 5.0]);
/// assert_eq!(pool.apply(partial(scale, k), (0.5,))?, (0.5 * k).sin());
/// # Ok::<(), shmpool::Error>(())
/// ```
pub fn partial<F, B>(f: F, value: B) -> Partial<F, B> {
    Partial { f, bound: value }
}

macro_rules! impl_partial {
    ($($arg:ident),*) => {
        impl<F, B, $($arg),*> Task<($($arg,)*)> for Partial<F, B>
        where
            B: crate::pod::BoundValue,
            F: Task<(B, $($arg,)*)>,
            $($arg: Pod,)*
        {
            type Output = F::Output;
            type Bound = (F::Bound, B);
            const TRAVELS: () = F::TRAVELS;
            const PACKED: usize = F::PACKED + size_of::<B>();

            fn bind(&self) -> Result<Self::Bound, Error> {
                Ok((self.f.bind()?, self.bound))
            }

            fn pack(bound: &Self::Bound, context: &mut Vec<MaybeUninit<u8>>) {
                F::pack(&bound.0, context);
                context.extend_from_slice(crate::pod::bytes_of(&bound.1));
            }

            unsafe fn unpack(context: &[u8]) -> Self::Bound {
                let value = context.get(F::PACKED..).unwrap_or(&[]);
                // SAFETY: `pack` wrote F's bound, then the bytes of a `B`
                // (contract).
                unsafe { (F::unpack(context), super::unpack_at(value, size_of::<B>())) }
            }

            #[inline(always)]
            #[allow(non_snake_case)]
            fn call(bound: &Self::Bound, ($($arg,)*): ($($arg,)*)) -> Self::Output {
                F::call(&bound.0, (bound.1, $($arg,)*))
            }
        }
    };
}
crate::pod::for_each_arity!(impl_partial: A, C, D, E, G);
