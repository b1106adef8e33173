//! The `Value` / `Array` example of Python's docs (sharing state between processes), in Rust:
//!
//! ```python
//! def f(n, a):
//!     n.value = 3.1415927
//!     for i in range(len(a)):
//!         a[i] = -a[i]
//! num = Value('d', 0.0)
//! arr = Array('i', range(10))
//! p = Process(target=f, args=(num, arr)); p.start(); p.join()
//! print(num.value)
//! print(arr[:])
//! ```
//!
//! prints `3.1415927` and `[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]`.

use shmpool::{Array, Process, Value};

#[allow(clippy::approx_constant)] // Python's literal, printed as Python prints it
fn f(n: Value<f64>, a: Array<i32>) {
    n.set(3.1415927).unwrap();
    for x in a.lock().unwrap().iter_mut() {
        *x = -*x;
    }
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let num = Value::new(0.0f64)?;
    let arr = Array::new(&(0..10).collect::<Vec<i32>>())?;
    let mut p = Process::new(f, (num, arr));
    p.start()?;
    p.join(None)?;
    println!("{}", num.get()?);
    println!("{:?}", arr.to_vec()?);
    Ok(())
}
