//! `map(x * x)` → `Vec` with `SharedAlloc` as the global allocator, against
//! rayon, a sequential loop and shmpool without it, in one run. A program has
//! one global allocator, so this is its own program; `compare` runs it and
//! puts its section into `docs/PERFORMANCE.md`.
//!
//! ```sh
//! cargo run --release --example compare_shared_alloc             # prints the section
//! cargo run --release --example compare_shared_alloc -- --quick  # a smoke run
//! ```
//!
//! The global allocator here is a switch: `SharedAlloc` while `SHARED` is
//! set, `System` otherwise, so every contender runs in this one process, in
//! alternation, with the allocator it would have: rayon and the loop with
//! `System` (as in any program), shmpool with `SharedAlloc`, and, for
//! reference, rayon with `SharedAlloc` too and shmpool without it (today's
//! zero-copy path). Frees go through `SharedAlloc`, which hands `System`'s
//! blocks back to `System`.
//!
//! The first-call and peak-memory figures come from fresh processes (this
//! program again, with `--fresh`).

#[path = "common/measure.rs"]
mod measure;

use measure::{private_bytes, run_self, status_kib};
use rayon::prelude::*;
use shmpool::{Pool, SharedAlloc};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PROCESSES: usize = 2;

static SHARED: AtomicBool = AtomicBool::new(false);
static HEAP: SharedAlloc = SharedAlloc::new();

/// `SharedAlloc` while [`SHARED`] is set, `System` otherwise.
struct Switch;

// SAFETY: every block comes from `SharedAlloc` or `System`, and
// `SharedAlloc`'s `dealloc`/`realloc` take `System`'s blocks back to `System`
// (it tells them apart by address), so either may free any block.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if SHARED.load(Ordering::Relaxed) {
            // SAFETY: forwarded contract.
            unsafe { HEAP.alloc(layout) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc(layout) }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract (see the impl's comment).
        unsafe { HEAP.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if SHARED.load(Ordering::Relaxed) || SharedAlloc::contains(ptr) {
            // SAFETY: forwarded contract.
            unsafe { HEAP.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: not in the heap, so `System`'s.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOC: Switch = Switch;

fn square_f64(x: f64) -> f64 {
    x * x
}

/// Runs `f` with the shared heap on or off.
fn with_heap<R>(on: bool, f: impl FnOnce() -> R) -> R {
    SHARED.store(on, Ordering::Relaxed);
    let r = f();
    SHARED.store(false, Ordering::Relaxed);
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// shmpool with `SharedAlloc`: input and output in the shared heap.
    Heap,
    /// shmpool without it: today's zero-copy path over the caller's memory.
    Plain,
    Rayon,
    /// rayon with `SharedAlloc` (its output in the heap, kept warm).
    RayonHeap,
    Sequential,
}

impl Who {
    const ALL: [Who; 5] = [
        Who::Heap,
        Who::Plain,
        Who::Rayon,
        Who::RayonHeap,
        Who::Sequential,
    ];

    fn name(self) -> &'static str {
        match self {
            Who::Heap => "heap",
            Who::Plain => "plain",
            Who::Rayon => "rayon",
            Who::RayonHeap => "rayon-heap",
            Who::Sequential => "sequential",
        }
    }

    fn shared(self) -> bool {
        matches!(self, Who::Heap | Who::RayonHeap)
    }
}

/// The input for `who`, allocated by the allocator it runs with.
fn input(who: Who, n: usize) -> Vec<f64> {
    with_heap(who.shared(), || (0..n).map(|i| i as f64).collect())
}

fn call(who: Who, pool: &Pool, rayon: &rayon::ThreadPool, v: &[f64]) -> Vec<f64> {
    with_heap(who.shared(), || match who {
        Who::Heap | Who::Plain => pool.map(square_f64, v).expect("map"),
        Who::Rayon | Who::RayonHeap => rayon.install(|| v.par_iter().map(|&x| x * x).collect()),
        Who::Sequential => v.iter().map(|&x| x * x).collect(),
    })
}

/// (median, min, max) of `xs`.
fn spread(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

/// Warm medians and ranges (ms) of every contender over `n` f64, run in
/// alternation (each round starting with another), in ~`budget` each.
fn warm(
    n: usize,
    pool: &Pool,
    rayon: &rayon::ThreadPool,
    budget: Duration,
) -> Vec<(f64, f64, f64)> {
    let inputs: Vec<Vec<f64>> = Who::ALL.iter().map(|&w| input(w, n)).collect();
    let k = Who::ALL.len();
    for (i, &w) in Who::ALL.iter().enumerate() {
        drop(black_box(call(w, pool, rayon, &inputs[i]))); // warm-up
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); k];
    let start = Instant::now();
    let mut round = 0;
    while times[0].len() < 101 && (times[0].len() < 7 || start.elapsed() < budget * k as u32) {
        for j in 0..k {
            let i = (round + j) % k;
            let t = Instant::now();
            let out = black_box(call(Who::ALL[i], pool, rayon, &inputs[i]));
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(out[n - 1], square_f64((n - 1) as f64));
            drop(out);
        }
        round += 1;
    }
    times.into_iter().map(spread).collect()
}

/// In a fresh process: the pool (untimed), the input, then the first call
/// timed and four more. Prints `first warm peak_bytes` (peak: this process's
/// `VmHWM`, which counts the shared pages it touched, plus the workers'
/// private bytes).
fn fresh(who: Who, n: usize) {
    let pool = Pool::new(PROCESSES).expect("pool");
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .expect("rayon");
    let v = input(who, n);
    let mut times = Vec::new();
    let mut workers = 0;
    for i in 0..5 {
        let t = Instant::now();
        let out = black_box(call(who, &pool, &rayon, &v));
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(out[n - 1], square_f64(v[n - 1]));
        if i == 0 && matches!(who, Who::Heap | Who::Plain) {
            workers = pool.worker_pids().iter().map(|&p| private_bytes(p)).sum();
        }
    }
    let peak = status_kib("/proc/self/status", "VmHWM:") * 1024 + workers;
    let mut warm = times[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    println!("{} {} {peak}", times[0], warm[warm.len() / 2]);
}

/// `(first, warm, peak)` samples of `reps` fresh processes per contender,
/// interleaved, each round starting with another.
fn fresh_runs(n: usize, reps: usize) -> Vec<Vec<(f64, f64, f64)>> {
    let mut runs = vec![Vec::new(); Who::ALL.len()];
    for round in 0..reps {
        for j in 0..Who::ALL.len() {
            let i = (round + j) % Who::ALL.len();
            let f = run_self(&["--fresh", Who::ALL[i].name(), &n.to_string()]);
            runs[i].push((f[0], f[1], f[2]));
        }
    }
    runs
}

/// What the parent of a benchmark harness holds when it makes its pools.
const BIG_PARENT_BYTES: usize = 1 << 30;

/// In a fresh process: 1 GiB of touched heap (in the shared heap if
/// `shared`, else `System`'s), then pools of the default start method (fork)
/// made and dropped. Prints `first median` in seconds: fork copies the page
/// tables of private memory, not of a shared mapping, so where the data
/// lies decides what a pool costs.
fn big_parent(shared: bool) {
    let mut heap = with_heap(shared, || vec![0u8; BIG_PARENT_BYTES]);
    assert_eq!(SharedAlloc::contains(heap.as_ptr()), shared);
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&heap);
    let once = || {
        let t = Instant::now();
        drop(Pool::new(PROCESSES).expect("pool"));
        t.elapsed().as_secs_f64()
    };
    let first = once();
    let mut rest: Vec<f64> = (0..20).map(|_| once()).collect();
    rest.sort_by(f64::total_cmp);
    println!("{first} {}", rest[rest.len() / 2]);
    black_box(heap);
}

/// `(first, median)` of `reps` fresh big parents each, with and without the
/// shared heap, interleaved.
fn big_parent_runs(reps: usize) -> [Vec<(f64, f64)>; 2] {
    let mut runs = [Vec::new(), Vec::new()];
    for round in 0..reps {
        for j in 0..2 {
            let i = (round + j) % 2;
            let f = run_self(&["--big-parent", ["heap", "system"][i]]);
            runs[i].push((f[0], f[1]));
        }
    }
    runs
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A table row: every contender's cell (in `Who::ALL` order), then ours
/// against rayon and against the loop.
fn row(label: &str, c: &[(f64, f64, f64)]) -> String {
    let cells: Vec<String> = c.iter().map(|&x| ms(x)).collect();
    format!(
        "| {label} | {} | {:.2}× | {:.2}× |\n",
        cells.join(" | "),
        c[2].0 / c[0].0,
        c[4].0 / c[0].0
    )
}

fn ms((m, lo, hi): (f64, f64, f64)) -> String {
    format!("{m:.3} ({lo:.3}–{hi:.3})")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--fresh") {
        let who = Who::ALL
            .into_iter()
            .find(|w| w.name() == args[i + 1])
            .expect("a contender");
        fresh(who, args[i + 2].parse().expect("a length"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--big-parent") {
        big_parent(args[i + 1] == "heap");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 50 } else { 600 });
    let load_before = loadavg();
    let pool = Pool::new(PROCESSES).expect("pool");
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .expect("rayon");

    let mut out = String::from(
        "\n### Maps over the shared heap: `SharedAlloc`\n\n\
         `examples/compare_shared_alloc.rs`, run by `compare`: one program with \
         `SharedAlloc` as its global allocator (switched off for the contenders that \
         would not have it), every contender in alternation within one run. \
         Median, then the fastest and slowest run, in ms. \"shmpool + SharedAlloc\": \
         input and result in the shared heap (the workers read and write them in \
         place); \"shmpool\": the same map over `System` memory (the zero-copy path); \
         \"rayon + SharedAlloc\": rayon's result allocated in the heap too. Ratios are \
         throughput (above 1: shmpool + SharedAlloc is faster) against rayon and the \
         loop under `System`.\n\n\
         | warm `map(x * x)` → `Vec` | shmpool + SharedAlloc | shmpool | rayon | rayon + SharedAlloc | sequential | vs rayon | vs loop |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let sizes: &[usize] = if quick {
        &[100_000, 1_000_000]
    } else {
        &[100_000, 1_000_000, 10_000_000]
    };
    for &n in sizes {
        let c = warm(n, &pool, &rayon, budget);
        out.push_str(&row(&format!("{n} f64"), &c));
    }
    drop(pool);

    let reps = if quick { 1 } else { 5 };
    let _ = write!(
        out,
        "\nIn fresh processes ({reps} each, interleaved; median and range): the first call, \
         the median of the next four, and peak memory (the parent's peak RSS, which counts \
         the shared pages it touched, plus what the workers hold alone).\n\n\
         | fresh process | shmpool + SharedAlloc | shmpool | rayon | rayon + SharedAlloc | sequential | vs rayon | vs loop |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let fresh_sizes: &[usize] = if quick {
        &[1_000_000]
    } else {
        &[1_000_000, 10_000_000]
    };
    for &n in fresh_sizes {
        let runs = fresh_runs(n, reps);
        let first: Vec<_> = runs
            .iter()
            .map(|r| spread(r.iter().map(|s| s.0 * 1e3).collect()))
            .collect();
        let warm: Vec<_> = runs
            .iter()
            .map(|r| spread(r.iter().map(|s| s.1 * 1e3).collect()))
            .collect();
        let peak: Vec<_> = runs
            .iter()
            .map(|r| spread(r.iter().map(|s| s.2 / 1e6).collect()))
            .collect();
        for (what, c) in [
            ("first call, ms", &first),
            ("next four (median), ms", &warm),
            ("peak memory, MB", &peak),
        ] {
            out.push_str(&row(&format!("{n} f64, {what}"), c));
        }
    }
    let [heap, system] = big_parent_runs(reps.min(3));
    let cell = |r: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        ms(spread(r.iter().map(|s| pick(s) * 1e3).collect()))
    };
    let heap_median = spread(heap.iter().map(|s| s.1 * 1e3).collect()).0;
    let _ = write!(
        out,
        "\nPool create + destroy with the default start method (fork), 2 workers, in a \
         parent holding 1 GiB of touched heap (fresh parents, {} of each, interleaved; \
         median and range, ms). Fork copies the page tables of private memory, one entry per \
         page, but not those of a shared mapping: data in the shared heap costs a fork \
         nothing.\n\n\
         | 1 GiB parent | data in `SharedAlloc` | data in `System` |\n\
         |---|---|---|\n\
         | first pool | {} | {} |\n\
         | median of the next 20 | {} | {} |\n\n\
         | target | this run | |\n|---|---|---|\n\
         | pool create + destroy in a 1 GiB parent ≤ 3 ms, default start method (data in `SharedAlloc`) | {heap_median:.3} ms | {} |\n",
        heap.len(),
        cell(&heap, |s| s.0),
        cell(&system, |s| s.0),
        cell(&heap, |s| s.1),
        cell(&system, |s| s.1),
        if heap_median <= 3.0 { "met" } else { "**missed**" },
    );
    // What a small allocation costs with SharedAlloc: one size comparison.
    let small = |on: bool| {
        with_heap(on, || {
            let t = Instant::now();
            for i in 0..1_000_000usize {
                black_box(Vec::<u8>::with_capacity(16 + (i & 255)));
            }
            t.elapsed().as_secs_f64() * 1e3
        })
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 3 } else { 15 } {
        with.push(small(true));
        without.push(small(false));
    }
    let (with, without) = (spread(with), spread(without));
    let _ = writeln!(
        out,
        "\nA small allocation and its free (`Vec::with_capacity(16..272)`, 10^6 in a row, \
         alternated; ns per pair, median and range): {:.2} ({:.2}–{:.2}) with `SharedAlloc`, \
         {:.2} ({:.2}–{:.2}) with `System` (both behind this program's switch).",
        with.0, with.1, with.2, without.0, without.1, without.2
    );
    let _ = writeln!(
        out,
        "\nLoad average (1, 5, 15 min) before: {load_before}; after: {}. \
         For peak memory, \"vs\" is the contender's bytes over ours (above 1: ours is smaller).",
        loadavg()
    );
    print!("{out}");
}
