//! The pool example of Python's `multiprocessing` documentation, in Rust.
//! Run with `cargo run --release --example quickstart`.

use shmpool::{Error, Pool};
use std::time::Duration;

fn f(x: u64) -> u64 {
    x * x
}
fn nap(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs))
}

fn main() -> Result<(), Error> {
    let pool = Pool::new(4)?; // 4 worker processes, forked once
    let v: Vec<u64> = (0..10).collect();
    println!("{:?}", pool.map(f, &v)?); // [0, 1, 4, ..., 81]

    // the same numbers, in the order they finish
    for i in pool.imap_unordered(f, 0..10)? {
        println!("{}", i?);
    }

    let res = pool.apply_async(f, (20,))?; // runs in one worker
    println!("{}", res.get(Some(Duration::from_secs(1)))?); // 400

    let pid = pool
        .apply_async(std::process::id, ())?
        .get(Some(Duration::from_secs(1)))?;
    println!("{pid}"); // a worker's pid, not ours

    let handles = (0..4)
        .map(|_| pool.apply_async(std::process::id, ()))
        .collect::<Result<Vec<_>, _>>()?;
    let pids = handles
        .iter()
        .map(|h| h.get(Some(Duration::from_secs(1))))
        .collect::<Result<Vec<u32>, _>>()?;
    println!("{pids:?}");

    match pool
        .apply_async(nap, (10,))?
        .get(Some(Duration::from_secs(1)))
    {
        Err(Error::Timeout) => println!("We lacked patience and got a timeout"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    println!("For the moment, the pool remains available for more work");
    drop(pool); // like leaving Python's with-block: terminates the workers at once
    println!("Now the pool is closed and no longer available");
    Ok(())
}
