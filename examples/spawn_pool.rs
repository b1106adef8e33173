//! A pool whose workers are *spawned* (this program, executed again) instead of
//! forked, as with `multiprocessing.get_context('spawn').Pool()`.
//!
//! `cargo run --release --example spawn_pool`
//!
//! Spawned workers start from a fresh copy of the program: a global set by the
//! parent before the pool exists is not seen by them (with fork it would be).

use shmpool::{current_process, get_context, Error, StartMethod};
use std::sync::atomic::{AtomicU64, Ordering};

static SETTING: AtomicU64 = AtomicU64::new(0);

fn f(x: u64) -> u64 {
    x * x + SETTING.load(Ordering::Relaxed)
}

fn worker_name() -> [u8; 32] {
    let name = current_process().name;
    let mut out = [0u8; 32];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

fn main() -> Result<(), Error> {
    // In a spawned worker this never returns: the process serves the pool.
    shmpool::init();

    SETTING.store(1000, Ordering::Relaxed); // the parent's state only
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let pool = get_context(method).pool(2)?;
        println!("{method}: {:?}", pool.map(f, &[1, 2, 3])?);
        let name = pool.apply(worker_name, ())?;
        println!("{}", String::from_utf8_lossy(&name).trim_end_matches('\0'));
        pool.close();
        pool.join()?;
    }
    println!("parent: {}", current_process().name);
    Ok(())
}
