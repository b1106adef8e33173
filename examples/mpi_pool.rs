//! The MPI pool: every rank runs this program; rank 0 gets the pool, the
//! other ranks run its tasks in their local worker processes.
//!
//! ```sh
//! cargo build --release --features mpi --example mpi_pool
//! mpirun -n 3 --oversubscribe --bind-to none target/release/examples/mpi_pool
//! srun -n 3 target/release/examples/mpi_pool           # under Slurm
//! ```
//!
//! With an argument it runs one of the checks (`<check>-forkserver`: the
//! same with local workers started by a fork server) `tests/mpi.rs` makes, and
//! prints `ok <check>` on rank 0 when it passes:
//!
//! * `results`: map, map_chunked, map_into, starmap, imap, imap_unordered,
//!   apply and apply_async give what a local `shmpool::Pool` gives;
//! * `crash`: a task that aborts on rank 2 (or in rank 0's local pool) fails
//!   the call with `WorkerDied`, a panic with `TaskPanicked`, and the next
//!   map succeeds;
//! * `lifecycle`: a result not yet there times out and comes later, dropped
//!   handles and iterators leave the pool working, a dropped pool fails
//!   what it had queued with `Terminated`;
//! * `retry`: with `retries(1)`, a task whose worker died runs again on its
//!   rank (rank 0 included) and the call succeeds;
//! * `idle`: worker ranks waiting for work use (almost) no CPU;
//! * `every-rank`: rank 0's local pool runs chunks too, next to the worker
//!   ranks' (`root-idle`: not with `processes_on_rank_0(0)`);
//! * `in-flight`: each rank, rank 0 included, runs two tasks at once;
//! * `million`: a ~1 µs function over 10^6 elements (10^5 in a debug build,
//!   where the function is many times slower) gives the sequential results.

use shmpool::{mpi, Error, StartMethod};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn sq(x: f64) -> f64 {
    x * x
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

/// About 1 µs of arithmetic (in a release build).
fn one_us(x: u64) -> u64 {
    let mut h = x;
    for _ in 0..1_000 {
        h = black_box(
            h.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    h
}

/// The rank this process belongs to, as the launcher told it (inherited by
/// the rank's local worker processes).
fn my_rank() -> Option<u32> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Aborts the local worker process it runs in if that belongs to rank 2.
fn abort_on_rank_2(x: u64) -> u64 {
    if my_rank() == Some(2) {
        std::process::abort();
    }
    x + 1
}

/// Aborts the local worker process it runs in if that belongs to rank 0.
fn abort_on_rank_0(x: u64) -> u64 {
    if my_rank() == Some(0) {
        std::process::abort();
    }
    x + 1
}

fn panic_on_7(x: u64) -> u64 {
    assert_ne!(x, 7, "seven");
    x
}

fn main() -> Result<(), Error> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    // `<check>-forkserver`: the ranks start their local workers from a fork
    // server instead of forking themselves.
    let (check, builder) = match arg.strip_suffix("-forkserver") {
        Some(check) => (
            check,
            mpi::Pool::builder().start_method(StartMethod::ForkServer),
        ),
        None => (arg.as_str(), mpi::Pool::builder()),
    };
    // The demo takes the defaults (each rank's share of the CPUs); the checks
    // set the size, as a program that knows its machine would.
    let builder = match check {
        "demo" => builder,
        "retry" => builder.processes_per_rank(1).retries(1),
        "root-idle" => builder.processes_per_rank(1).processes_on_rank_0(0),
        // Two local workers per rank, so that two tasks can run at once.
        "in-flight" => builder.processes_per_rank(2),
        _ => builder.processes_per_rank(1),
    };
    let Some(pool) = builder.build()? else {
        return Ok(()); // a worker rank: served until rank 0 dropped its pool
    };
    match check {
        "demo" => demo(&pool)?,
        "results" => results(&pool)?,
        "crash" => crash(&pool)?,
        "million" => million(&pool)?,
        "lifecycle" => lifecycle(&pool)?,
        "idle" => idle(&pool)?,
        "retry" => retry(&pool)?,
        "every-rank" => every_rank(&pool)?,
        "root-idle" => root_idle(&pool)?,
        "in-flight" => in_flight(&pool)?,
        other => panic!("unknown check {other}"),
    }
    println!("ok {arg}");
    Ok(())
}

fn demo(pool: &mpi::Pool) -> Result<(), Error> {
    let v: Vec<f64> = (0..1_000_000).map(f64::from).collect();
    let squares = pool.map(sq, &v)?;
    let r = pool.apply_async(add, (20, 22))?;
    println!(
        "{} ranks, {} processes; squares[999] = {}, 20 + 22 = {}",
        pool.ranks(),
        pool.processes(),
        squares[999],
        r.get(Some(Duration::from_secs(30)))?
    );
    Ok(())
}

fn results(pool: &mpi::Pool) -> Result<(), Error> {
    let local = shmpool::Pool::new(2)?;
    let v: Vec<f64> = (0..100_000).map(|i| f64::from(i) * 0.5 - 7.0).collect();
    assert_eq!(pool.map(sq, &v)?, local.map(sq, &v)?);
    let n: Vec<u64> = (1..5_000).collect();
    assert_eq!(
        pool.map_chunked(collatz_steps, &n, 7)?,
        local.map(collatz_steps, &n)?
    );
    assert_eq!(pool.map(sq, &[])?, Vec::<f64>::new());
    let mut into = vec![0.0; v.len()];
    pool.map_into_chunked(sq, &v, &mut into, 999)?;
    assert_eq!(into, local.map(sq, &v)?);
    assert!(matches!(
        pool.map_into(sq, &v, &mut into[1..]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pool.map_chunked(sq, &v, 0),
        Err(Error::InvalidArgument(_))
    ));
    let pairs: Vec<(i64, i64)> = (0..10_000).map(|i| (i, -3 * i + 1)).collect();
    assert_eq!(pool.starmap(add, &pairs)?, local.starmap(add, &pairs)?);
    // The same call surface as the local pool's: options through `call()`,
    // and `partial` / `fn` pointers where MPI takes them (`apply`).
    assert_eq!(
        pool.call().chunksize(333).starmap(add, &pairs)?,
        local.call().chunksize(333).starmap(add, &pairs)?
    );
    assert!(matches!(
        pool.call().chunksize(0).map(sq, &v),
        Err(Error::InvalidArgument(_))
    ));
    let add_ptr: fn(i64, i64) -> i64 = add;
    assert_eq!(pool.call().apply(shmpool::partial(add_ptr, 40), (2,))?, 42);
    let ordered: Vec<u32> = pool
        .imap(collatz_steps, 1..2_000u64)?
        .collect::<Result<_, _>>()?;
    assert_eq!(ordered, local.map(collatz_steps, &n[..1999])?);
    let mut unordered: Vec<u32> = pool
        .imap_unordered(collatz_steps, 1..2_000u64)?
        .collect::<Result<_, _>>()?;
    let mut want = local.map(collatz_steps, &n[..1999])?;
    unordered.sort_unstable();
    want.sort_unstable();
    assert_eq!(unordered, want);
    let mut chunked: Vec<u32> = pool
        .imap_unordered_chunked(collatz_steps, 1..2_000u64, 64)?
        .collect::<Result<_, _>>()?;
    chunked.sort_unstable();
    assert_eq!(chunked, want);
    let handles: Vec<_> = (0..200i64)
        .map(|i| pool.apply_async(add, (i, i * i)))
        .collect::<Result<_, _>>()?;
    for (i, h) in (0..200i64).zip(&handles) {
        let want = local.apply_async(add, (i, i * i))?.get(None)?;
        assert_eq!(h.get(Some(Duration::from_secs(30)))?, want);
    }
    assert_eq!(pool.apply(add, (2, 3))?, local.apply(add, (2, 3))?);
    Ok(())
}

fn crash(pool: &mpi::Pool) -> Result<(), Error> {
    let v: Vec<u64> = (0..64).collect();
    // Chunks of one element: both ranks take chunks, rank 2 among them.
    match pool.map_chunked(abort_on_rank_2, &v, 1) {
        Err(Error::WorkerDied { signal, .. }) => assert_eq!(signal, Some(libc::SIGABRT)),
        other => panic!("a task aborting on rank 2 gave {other:?}"),
    }
    // The same in rank 0's own local pool.
    match pool.map_chunked(abort_on_rank_0, &v, 1) {
        Err(Error::WorkerDied { signal, .. }) => assert_eq!(signal, Some(libc::SIGABRT)),
        other => panic!("a task aborting on rank 0 gave {other:?}"),
    }
    match pool.map_chunked(panic_on_7, &v, 4) {
        Err(Error::TaskPanicked { message }) => assert!(message.contains("seven"), "{message}"),
        other => panic!("a panicking task gave {other:?}"),
    }
    // The job goes on: every rank still serves, with a replaced worker.
    let squares = pool.map_chunked(sq, &[1.0, 2.0, 3.0, 4.0], 1)?;
    assert_eq!(squares, [1.0, 4.0, 9.0, 16.0]);
    let ok: Vec<u64> = pool.map(panic_on_7, &[1, 2, 3])?;
    assert_eq!(ok, [1, 2, 3]);
    Ok(())
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn lifecycle(pool: &mpi::Pool) -> Result<(), Error> {
    let slow = pool.apply_async(nap_ms, (300,))?;
    assert!(matches!(
        slow.get(Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
    assert!(!slow.ready());
    assert_eq!(slow.get(Some(Duration::from_secs(30)))?, 300);
    assert!(slow.ready());
    // Handles dropped before their results come; an iterator dropped early.
    for _ in 0..10 {
        drop(pool.apply_async(nap_ms, (20,))?);
    }
    let mut it = pool.imap(nap_ms, [10u64; 20])?;
    assert_eq!(it.next().transpose()?, Some(10));
    drop(it);
    assert_eq!(pool.map(collatz_steps, &[27, 97])?, [111, 118]);
    assert_eq!(pool.apply(add, (1, 1))?, 2);
    // The panic of one imap chunk is yielded once; the others go on.
    let got: Vec<Result<u64, Error>> = pool.imap(panic_on_7, 5..10u64)?.collect();
    assert!(
        matches!(&got[2], Err(Error::TaskPanicked { .. })),
        "{got:?}"
    );
    let ok: Vec<u64> = got.into_iter().filter_map(Result::ok).collect();
    assert_eq!(ok, [5, 6, 8, 9]);
    Ok(())
}

/// Aborts the first time it runs for `nonce` (on this machine), returns
/// `nonce` the second time.
fn abort_once(nonce: u64) -> u64 {
    let mark = std::env::temp_dir().join(format!("shmpool-mpi-retry-{nonce}"));
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&mark)
        .is_ok()
    {
        std::process::abort();
    }
    let _ = std::fs::remove_file(&mark);
    nonce
}

fn retry(pool: &mpi::Pool) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let nonce = u64::from(std::process::id()) << 32 | u64::from(now);
    assert_eq!(pool.apply(abort_once, (nonce,))?, nonce);
    assert_eq!(
        pool.map(abort_once, &[nonce + 1, nonce + 2])?,
        [nonce + 1, nonce + 2]
    );
    // Three chunks: one on each worker rank and one in rank 0's local pool.
    let three = [nonce + 3, nonce + 4, nonce + 5];
    assert_eq!(pool.map_chunked(abort_once, &three, 1)?, three);
    Ok(())
}

/// The pid of the process that started the local worker running this: its
/// rank (with fork; with a fork server, the server).
fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}

/// User + system CPU time of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn idle(pool: &mpi::Pool) -> Result<(), Error> {
    // Every rank's pid (the ranks of this single-node job share /proc).
    let mut ranks: Vec<u32> = pool
        .map_chunked(|_: u8| parent_pid(), &[0; 64], 1)?
        .into_iter()
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    let before: Vec<u64> = ranks.iter().map(|&p| cpu_ticks(p)).collect();
    std::thread::sleep(Duration::from_secs(2));
    for (&pid, &was) in ranks.iter().zip(&before) {
        let used = cpu_ticks(pid) - was;
        // A spinning wait would take most of a core: ~200 ticks in 2 s.
        assert!(
            used <= 20,
            "rank process {pid} used {used} ticks in 2 s of idling"
        );
    }
    eprintln!("idle ranks {ranks:?}: ok");
    Ok(())
}

fn million(pool: &mpi::Pool) -> Result<(), Error> {
    let n: u64 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let v: Vec<u64> = (0..n).collect();
    let start = Instant::now();
    let got = pool.map(one_us, &v)?;
    let took = start.elapsed();
    let want: Vec<u64> = v.iter().map(|&x| one_us(x)).collect();
    assert!(got == want, "the results differ from a sequential loop");
    eprintln!(
        "{n} elements of ~1 us over {} processes in {took:?}",
        pool.processes()
    );
    Ok(())
}

/// The rank whose local worker ran this (0 if the launcher did not say).
fn rank_of(_: u8) -> u32 {
    my_rank().unwrap_or(u32::MAX)
}

/// How many chunks of a map of one-element chunks each rank ran.
fn chunks_per_rank(pool: &mpi::Pool, chunks: usize) -> Result<Vec<usize>, Error> {
    let ranks = pool.map_chunked(rank_of, &vec![0u8; chunks], 1)?;
    let mut per_rank = vec![0; 3];
    for r in ranks {
        per_rank[r as usize] += 1;
    }
    Ok(per_rank)
}

fn every_rank(pool: &mpi::Pool) -> Result<(), Error> {
    assert_eq!((pool.ranks(), pool.processes()), (3, 3));
    let per_rank = chunks_per_rank(pool, 300)?;
    assert!(
        per_rank.iter().all(|&n| n > 0),
        "chunks per rank: {per_rank:?}"
    );
    // Rank 0's share of a large map (run on the caller's memory) and of
    // apply_async (run in its stage) give the same results as elsewhere.
    let v: Vec<f64> = (0..3_000_000).map(|i| f64::from(i) * 0.5).collect();
    let want: Vec<f64> = v.iter().map(|&x| sq(x)).collect();
    assert!(pool.map(sq, &v)? == want, "a large map's squares differ");
    let handles: Vec<_> = (0..60u8)
        .map(|_| pool.apply_async(rank_of, (0,)))
        .collect::<Result<_, _>>()?;
    let mut ranks: Vec<u32> = handles
        .iter()
        .map(|h| h.get(Some(Duration::from_secs(30))))
        .collect::<Result<_, _>>()?;
    ranks.sort_unstable();
    ranks.dedup();
    assert_eq!(ranks, [0, 1, 2], "ranks that ran apply_async tasks");
    eprintln!("chunks per rank: {per_rank:?}");
    Ok(())
}

fn root_idle(pool: &mpi::Pool) -> Result<(), Error> {
    assert_eq!((pool.ranks(), pool.processes()), (2, 2));
    let per_rank = chunks_per_rank(pool, 60)?;
    assert_eq!(per_rank[0], 0, "chunks per rank: {per_rank:?}");
    assert!(
        per_rank[1] > 0 && per_rank[2] > 0,
        "chunks per rank: {per_rank:?}"
    );
    Ok(())
}

/// The marker a task of `run` on `rank` leaves, numbered `i`.
fn marker(run: u64, rank: u32, i: u64) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shmpool-mpi-inflight-{run}-{rank}-{i}"))
}

/// Leaves a marker, then waits (at most 10 s) until another task of `run`
/// on the same rank has left one: it runs at the same time. Returns how
/// many it saw, 1 if it ran alone.
fn meet(run: u64, i: u64) -> u64 {
    let rank = my_rank().unwrap_or(u32::MAX);
    std::fs::write(marker(run, rank, i), b"").unwrap();
    let prefix = format!("shmpool-mpi-inflight-{run}-{rank}-");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count() as u64;
        if seen >= 2 || Instant::now() >= deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn in_flight(pool: &mpi::Pool) -> Result<(), Error> {
    let run = u64::from(std::process::id());
    // Six one-element tasks on three ranks: two go to each rank at once, and
    // each meets the other of its rank. With one task per rank at a time,
    // each would wait alone and see only its own marker.
    let tasks: Vec<(u64, u64)> = (0..6).map(|i| (run, i)).collect();
    let seen = pool.starmap_chunked(meet, &tasks, 1);
    for rank in 0..3 {
        for i in 0..6 {
            let _ = std::fs::remove_file(marker(run, rank, i));
        }
    }
    let seen = seen?;
    assert!(
        seen.iter().all(|&n| n >= 2),
        "markers each task saw: {seen:?}"
    );
    Ok(())
}
