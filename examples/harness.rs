//! A small benchmark harness: a table of task functions, each mapped over
//! the same inputs by a pool whose workers are pinned one per CPU, timed,
//! and then the pool's own figures (`Pool::stats`, `Pool::insights`).
//!
//! Its workers come from the fork server: a harness usually makes its pools
//! after loading its data, and a fork would copy the page tables of all of
//! it (about 30 ms per GiB, per worker), where the fork server starts a
//! worker in well under a millisecond whatever this process holds.
//!
//! ```text
//! cargo run --release --example harness
//! ```

use shmpool::{Pool, PoolStats, StartMethod};
use std::time::{Duration, Instant};

fn collatz_steps(mut n: u64) -> u64 {
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn digit_sum(n: u64) -> u64 {
    (0..20).fold(n, |acc, _| {
        let mut x = acc;
        let mut s = 0;
        while x > 0 {
            s += x % 10;
            x /= 10;
        }
        acc.wrapping_mul(31).wrapping_add(s)
    })
}

fn xorshift(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// A benchmark: a name and the task function, as a plain fn pointer (a
/// function of this executable, so a task like a function item).
type Benchmark = (&'static str, fn(u64) -> u64);

const BENCHMARKS: [Benchmark; 3] = [
    ("collatz_steps", collatz_steps),
    ("digit_sum", digit_sum),
    ("xorshift", xorshift),
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let pool = Pool::builder()
        .pin_workers()
        .start_method(StartMethod::ForkServer)
        .build()?;
    let items: Vec<u64> = (1..=50_000).collect();
    const RUNS: usize = 5;
    println!(
        "{} workers from the fork server, pinned one per CPU; {} items, median of {RUNS} runs",
        pool.processes(),
        items.len()
    );
    for &(name, f) in &BENCHMARKS {
        let before: PoolStats = pool.stats();
        let mut times = Vec::with_capacity(RUNS);
        let mut check = 0u64;
        for _ in 0..RUNS {
            let start = Instant::now();
            let out = pool.map(f, &items)?;
            times.push(start.elapsed());
            check = out.iter().fold(0, |a, &x| a ^ x);
        }
        let after = pool.stats();
        let tasks = after.tasks_done - before.tasks_done;
        let busy = after.busy.saturating_sub(before.busy) / RUNS as u32;
        println!(
            "{name:>14}: {:>10.3?} per map, {tasks:>4} tasks in all, workers busy {:>10.3?} per map (check {check:#x})",
            median(times),
            busy
        );
    }
    println!("{}", pool.insights());
    Ok(())
}
