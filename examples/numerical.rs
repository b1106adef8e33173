//! A numerical job with a parameter known only at run time: the parameter
//! is bound with `shmpool::partial`, mapped over a large slice, and summed
//! with `map_reduce` without building the vector of results.
//!
//! Run with `cargo run --release --example numerical -- 0.25`.

use shmpool::{partial, Error, Pool};

/// The model: `sin(k x)`, with `k` bound once per call.
fn model(k: f64, x: f64) -> f64 {
    (k * x).sin()
}

fn add(a: f64, b: f64) -> f64 {
    a + b
}

fn main() -> Result<(), Error> {
    let k: f64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("not a number: {arg}")))?,
        None => 0.5,
    };
    let pool = Pool::builder().build()?; // one worker per CPU
    let xs: Vec<f64> = (0..10_000_000).map(|i| f64::from(i) * 1e-3).collect();

    let ys = pool.map(partial(model, k), &xs)?;
    let total = pool.map_reduce(partial(model, k), add, &xs)?.unwrap_or(0.0);

    let serial: f64 = ys.iter().sum();
    println!("k = {k}: {} values, sum = {total:.6}", ys.len());
    println!("the same sum from the vector: {serial:.6}");
    Ok(())
}
