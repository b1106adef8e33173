//! The MPI pool against the hand-written MPI program it replaces, in one
//! run: squaring 10M `f64` held by rank 0.
//!
//! * baseline: rsmpi `MPI_Scatterv` of the vector over all ranks, each
//!   squares its part, `MPI_Gatherv` back to rank 0, into a fresh
//!   `vec![0.0; n]` (what `map` returns is fresh too) or, as a second row,
//!   into one output buffer warm from the rounds before;
//! * `shmpool::mpi`: `pool.map(sq, &v)` on rank 0 (every rank, rank 0
//!   included, runs chunks in its local pool), and `pool.map_into(sq, &v, &mut warm)`
//!   into the warm buffer of the second baseline row.
//!
//! ```sh
//! cargo build --release --features mpi --example mpi_compare
//! mpirun -n 3 --oversubscribe --bind-to none target/release/examples/mpi_compare
//! mpirun -n 3 --oversubscribe --bind-to none target/release/examples/mpi_compare -- --quick
//! ```
//!
//! Rounds go baseline, pool, baseline (5 each, 10 for each baseline row; the pool's ranks serve only
//! while it lives), so both see the machine in the same state; each cell is
//! a median with the min–max spread. Throughput is input bytes per second.
//! Prints a markdown table on rank 0.

use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Threading;
use mpi::traits::*;
use mpi::Count;
use std::time::{Duration, Instant};

fn sq(x: f64) -> f64 {
    x * x
}

const ROUNDS: usize = 5;

fn main() -> Result<(), shmpool::Error> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 1_000_000 } else { 10_000_000 };
    let (universe, _) =
        mpi::initialize_with_threading(Threading::Serialized).expect("MPI initialized once");
    let world = universe.world();
    let rank = world.rank();
    let v: Vec<f64> = if rank == 0 {
        (0..n).map(|i| i as f64 * 0.25).collect()
    } else {
        Vec::new()
    };

    let mut baseline = Vec::new();
    let mut reused = Vec::new();
    let mut reference = Vec::new();
    let mut warm = if rank == 0 {
        vec![0.0f64; n]
    } else {
        Vec::new()
    };
    for _ in 0..ROUNDS {
        let (took, out) = scatter_square_gather(&world, &v, n, None);
        baseline.push(took);
        reference = out;
        reused.push(scatter_square_gather(&world, &v, n, Some(&mut warm)).0);
    }

    let mut pooled = Vec::new();
    let mut pooled_into = Vec::new();
    let mut processes = 0;
    let mut ranks = 0;
    let mut round_trips = Vec::new();
    if let Some(pool) = shmpool::mpi::Pool::world()? {
        processes = pool.processes();
        ranks = pool.ranks();
        for i in 0..if quick { 200 } else { 2000 } {
            let start = Instant::now();
            assert_eq!(pool.apply(sq, (2.0,))?, 4.0, "round {i}");
            round_trips.push(start.elapsed());
        }
        let _ = pool.map(sq, &v[..1000])?; // warm-up: buffers on the ranks
        for _ in 0..ROUNDS {
            let start = Instant::now();
            let out = pool.map(sq, &v)?;
            pooled.push(start.elapsed());
            assert!(
                out == reference,
                "the pool's squares differ from the baseline's"
            );
            warm.fill(0.0);
            let start = Instant::now();
            pool.map_into(sq, &v, &mut warm)?;
            pooled_into.push(start.elapsed());
            assert!(warm == reference, "map_into's squares differ");
        }
    }

    for _ in 0..ROUNDS {
        baseline.push(scatter_square_gather(&world, &v, n, None).0);
        reused.push(scatter_square_gather(&world, &v, n, Some(&mut warm)).0);
    }
    assert!(rank != 0 || warm == reference);

    if rank == 0 {
        round_trips.sort();
        let at = |q: f64| round_trips[((round_trips.len() - 1) as f64 * q) as usize];
        println!(
            "apply round trip (rank 0 -> a worker rank -> its local worker and back): \
             median {:.1} us, p10 {:.1} us, p90 {:.1} us",
            at(0.5).as_secs_f64() * 1e6,
            at(0.1).as_secs_f64() * 1e6,
            at(0.9).as_secs_f64() * 1e6
        );
        let bytes = (n * 8) as f64;
        let (b, p) = (Stats::of(&baseline, bytes), Stats::of(&pooled, bytes));
        let r = Stats::of(&reused, bytes);
        let pi = Stats::of(&pooled_into, bytes);
        println!(
            "| {}M f64, `mpirun -n {}` | time (median, min–max) | GB/s (median) | ratio |",
            n / 1_000_000,
            world.size()
        );
        println!("|---|---|---|---|");
        println!(
            "| rsmpi Scatterv → square → Gatherv ({} ranks compute), fresh output | {} | {:.2} | 1.00 |",
            world.size(),
            b.range(),
            b.rate
        );
        println!(
            "| the same, gathering into one warm output buffer | {} | {:.2} | {:.2} |",
            r.range(),
            r.rate,
            r.rate / b.rate
        );
        println!(
            "| `shmpool::mpi::Pool::map` ({ranks} ranks × local pool, {processes} processes) | {} | {:.2} | {:.2} |",
            p.range(),
            p.rate,
            p.rate / b.rate
        );
        println!(
            "| `shmpool::mpi::Pool::map_into` the same warm output buffer | {} | {:.2} | {:.2} (×{:.2} the warm row) |",
            pi.range(),
            pi.rate,
            pi.rate / b.rate,
            pi.rate / r.rate
        );
    }
    Ok(())
}

/// One round of the hand-written program; rank 0's time and result (a fresh
/// `vec![0.0; n]`, or the results left in `warm`).
fn scatter_square_gather(
    world: &mpi::topology::SimpleCommunicator,
    v: &[f64],
    n: usize,
    warm: Option<&mut Vec<f64>>,
) -> (Duration, Vec<f64>) {
    let size = world.size() as usize;
    let counts: Vec<Count> = (0..size)
        .map(|r| (n / size + usize::from(r < n % size)) as Count)
        .collect();
    let displs: Vec<Count> = counts
        .iter()
        .scan(0, |at, &c| {
            let d = *at;
            *at += c;
            Some(d)
        })
        .collect();
    let root = world.process_at_rank(0);
    let rank = world.rank() as usize;
    world.barrier();
    let start = Instant::now();
    let mut part = vec![0.0f64; counts[rank] as usize];
    if rank == 0 {
        root.scatter_varcount_into_root(
            &Partition::new(v, &counts[..], &displs[..]),
            &mut part[..],
        );
    } else {
        root.scatter_varcount_into(&mut part[..]);
    }
    for x in &mut part {
        *x = sq(*x);
    }
    let mut fresh = Vec::new();
    if rank == 0 {
        let out = match warm {
            Some(warm) => warm,
            None => {
                fresh = vec![0.0f64; n];
                &mut fresh
            }
        };
        let mut into = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
        root.gather_varcount_into_root(&part[..], &mut into);
    } else {
        root.gather_varcount_into(&part[..]);
    }
    (start.elapsed(), fresh)
}

struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
    rate: f64,
}

impl Stats {
    fn of(times: &[Duration], bytes: f64) -> Stats {
        let mut t = times.to_vec();
        t.sort();
        let median = t[t.len() / 2];
        Stats {
            median,
            min: t[0],
            max: t[t.len() - 1],
            rate: bytes / median.as_secs_f64() / 1e9,
        }
    }

    fn range(&self) -> String {
        format!(
            "{:.1} ms ({:.1}–{:.1})",
            self.median.as_secs_f64() * 1e3,
            self.min.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}
