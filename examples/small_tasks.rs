//! The small-task and pool-creation figures of `compare`, alone and in
//! rounds, each next to the limit it is judged against, measured in the same
//! round: the spinning round trip between two processes, and two forks plus
//! their waits.
//!
//! `cargo run --release --example small_tasks -- [rounds] [rows]` prints one
//! line per round and the median and spread of each row; `rows` picks some
//! (a comma-separated list of `spin,apply,async,imap,create,fork`). Two
//! builds of it run alternately give an A/B comparison under the same load.

#[path = "common/measure.rs"]
mod measure;

use measure::{ping_pong, two_forks};
use shmpool::Pool;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn square_u64(x: u64) -> u64 {
    x * x
}

/// The median of `reps` timings of `f` (seconds), after one warm-up.
fn median_of(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let wanted = args.get(2).cloned().unwrap_or_else(|| "all".into());
    let want = |row: &str| wanted == "all" || wanted.split(',').any(|w| w == row);
    let n = 100_000u64;
    let names = [
        "spin round trip (us)",
        "apply round trip (us)",
        "apply / spin",
        "tiny apply_async (M/s)",
        "imap_unordered chunk 1 (M/s)",
        "create + destroy, 2 fork workers (ms)",
        "two forks + waits (ms)",
        "create / forks",
    ];
    let mut table: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        let mut row = [f64::NAN; 8];
        if want("create") || want("fork") {
            let forks = median_of(9, two_forks);
            let create = median_of(9, || timed(|| drop(Pool::new(2).unwrap())));
            if std::env::var_os("PHASES").is_some() {
                let new = median_of(9, || {
                    let t = Instant::now();
                    let pool = Pool::new(2).unwrap();
                    let e = t.elapsed().as_secs_f64();
                    drop(pool);
                    e
                });
                eprintln!("create: new {:.3} ms of {:.3} ms", new * 1e3, create * 1e3);
            }
            row[5] = create * 1e3;
            row[6] = forks * 1e3;
            row[7] = create / forks;
        }
        let procs: usize = std::env::var("PROCS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let pool = Pool::new(procs).unwrap();
        if want("spin") || want("apply") {
            let spin = median_of(5, || ping_pong(2000, false));
            let apply = median_of(5, || {
                timed(|| {
                    for i in 0..1000 {
                        black_box(pool.apply(square_u64, (i,)).unwrap());
                    }
                }) / 1000.0
            });
            row[0] = spin * 1e6;
            row[1] = apply * 1e6;
            row[2] = apply / spin;
        }
        if want("async") {
            let t = median_of(5, || {
                let t0 = Instant::now();
                let handles: Vec<_> = (0..n)
                    .map(|i| pool.apply_async(square_u64, (i,)).unwrap())
                    .collect();
                let t1 = Instant::now();
                black_box(handles.iter().map(|h| h.get(None).unwrap()).sum::<u64>());
                let t2 = Instant::now();
                drop(handles);
                let t3 = Instant::now();
                if std::env::var_os("PHASES").is_some() {
                    eprintln!(
                        "submit {:.2} ms, collect {:.2} ms, drop {:.2} ms",
                        (t1 - t0).as_secs_f64() * 1e3,
                        (t2 - t1).as_secs_f64() * 1e3,
                        (t3 - t2).as_secs_f64() * 1e3
                    );
                }
                (t3 - t0).as_secs_f64()
            });
            row[3] = n as f64 / t / 1e6;
        }
        if want("imap") {
            let t = median_of(5, || {
                timed(|| {
                    black_box(
                        pool.imap_unordered(square_u64, 0..n)
                            .unwrap()
                            .map(Result::unwrap)
                            .sum::<u64>(),
                    );
                })
            });
            row[4] = n as f64 / t / 1e6;
        }
        drop(pool);
        let line: Vec<String> = row.iter().map(|v| format!("{v:.3}")).collect();
        println!("round: {}", line.join("  "));
        for (col, v) in table.iter_mut().zip(row) {
            col.push(v);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (name, mut col) in names.into_iter().zip(table) {
        if col.iter().any(|v| v.is_nan()) {
            continue;
        }
        col.sort_by(f64::total_cmp);
        println!(
            "{name:40} median {:8.3}  min {:8.3}  max {:8.3}",
            col[col.len() / 2],
            col[0],
            col[col.len() - 1]
        );
    }
}
