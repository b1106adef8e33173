//! Side-by-side comparison in one run: shmpool, rayon, a sequential loop and
//! Python's `multiprocessing.Pool`, on the same machine, with the same number
//! of processes (threads for rayon).
//!
//! ```sh
//! cargo run --release --example compare             # ~2 minutes; rewrites docs/PERFORMANCE.md
//! cargo run --release --example compare -- --quick  # a smoke run; writes nothing
//! cargo run --release --example compare --features manager  # adds the Manager rows
//! ```
//!
//! The shared-heap section comes from `examples/compare_shared_alloc.rs`, a
//! program of its own (with `SharedAlloc` as its global allocator), which this
//! one builds and runs last.
//!
//! Every cell is the median of repeated runs (at least 5, as many as fit in
//! about a second, at most 51) after one warm-up run, except the "first call"
//! and "peak memory" rows: each of their figures comes from a fresh process
//! (this program run again with `--fresh`), the median of several, with the
//! spread in the row's name. Python's numbers come from
//! `benches/compare.py`, run with `python3` (skipped with a message when there
//! is none). Ratios compare throughput: above 1 means shmpool is faster.

#[path = "common/measure.rs"]
mod measure;

use measure::{ping_pong, private_bytes, run_self, status_kib, two_forks};
use rayon::prelude::*;
use shmpool::{get_context, partial, Pool, SharedVec, StartMethod};
use std::fmt::Write as _;
use std::future::IntoFuture;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

const PROCESSES: usize = 2;

fn square_u64(x: u64) -> u64 {
    x.wrapping_mul(x)
}
fn square_f64(x: f64) -> f64 {
    x * x
}
/// About 1 µs of arithmetic.
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

/// Median seconds of `f` (one warm-up run, then 5..=51 runs in ~`budget`).
fn median(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 51 && (times.len() < 5 || start.elapsed() < budget) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Seconds for a forked child to copy `src` out of this process with
/// `process_vm_readv`, in 128 KiB pieces (a zero-copy worker's stage size):
/// the best of `reps` passes. Needs the same ptrace permission as zero-copy
/// maps; `None` if the kernel refuses.
fn vm_readv_seconds(src: &[f64], reps: u32) -> Option<f64> {
    const PIECE: usize = 128 << 10;
    // SAFETY: PR_SET_PTRACER changes no memory (EINVAL without Yama).
    unsafe {
        libc::prctl(
            libc::PR_SET_PTRACER,
            libc::getpid() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let parent = std::process::id() as libc::pid_t;
    let (addr, bytes) = (src.as_ptr() as usize, std::mem::size_of_val(src));
    let mut fds = [0; 2];
    // SAFETY: a pipe for the child's one answer.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only reads our memory through the kernel, writes 8
    // bytes to the pipe and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut buf = vec![0u8; PIECE];
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            for off in (0..bytes).step_by(PIECE) {
                let len = PIECE.min(bytes - off);
                let local = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: len,
                };
                let remote = libc::iovec {
                    iov_base: (addr + off) as *mut _,
                    iov_len: len,
                };
                // SAFETY: `local` covers `buf`; the kernel checks `remote`.
                if unsafe { libc::process_vm_readv(parent, &local, 1, &remote, 1, 0) }
                    != len as isize
                {
                    best = f64::NAN;
                    break;
                }
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        // SAFETY: writes 8 bytes we own to our pipe, then leaves.
        unsafe {
            libc::write(fds[1], (&best as *const f64).cast(), 8);
            libc::_exit(0)
        };
    }
    let mut best = f64::NAN;
    // SAFETY: reads 8 bytes into `best`; reaps our own child; closes our fds.
    unsafe {
        libc::read(fds[0], (&mut best as *mut f64).cast(), 8);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    best.is_finite().then_some(best)
}

/// A manager's start + shutdown, measured early for the same reason as a
/// pool's: forking its server costs more as the parent's memory grows.
#[cfg(feature = "manager")]
fn manager_start_row(budget: Duration, py_get: &dyn Fn(&str) -> Option<f64>) -> Row {
    Row {
        name: "Manager start + shutdown".into(),
        unit: Unit::Millis,
        shmpool: Some(median(budget, || drop(shmpool::Manager::start().unwrap()))),
        rayon: None,
        sequential: None,
        python: py_get("manager_start_shutdown_ms").map(|ms| ms / 1e3),
    }
}

/// A child process doing `n` operations of each kind, as Python's figures
/// are taken; seconds per operation into `out`. Like Python's proxies when
/// they reach a process, it first takes references of its own (which
/// connects it to the servers), outside the timing.
#[cfg(feature = "manager")]
use shmpool::manager::{Borrowed, DictProxy, ListProxy, QueueProxy, ValueProxy};

#[cfg(feature = "manager")]
fn manager_client(
    d: Borrowed<DictProxy<u32, u32>>,
    l: Borrowed<ListProxy<u32>>,
    q: Borrowed<QueueProxy<u32>>,
    tcp_d: Borrowed<DictProxy<u32, u32>>,
    out: Borrowed<ValueProxy<Vec<f64>>>,
    n: u32,
) {
    let (d, l, q) = (
        d.to_proxy().unwrap(),
        l.to_proxy().unwrap(),
        q.to_proxy().unwrap(),
    );
    let tcp_d = tcp_d.to_proxy().unwrap();
    let per_op = |f: &mut dyn FnMut(u32)| {
        let t = Instant::now();
        (0..n).for_each(f);
        t.elapsed().as_secs_f64() / f64::from(n)
    };
    let figures = vec![
        per_op(&mut |i| {
            black_box(d.insert(&i, &i).unwrap());
        }),
        per_op(&mut |i| {
            black_box(d.get(&i).unwrap());
        }),
        per_op(&mut |i| l.push(&i).unwrap()),
        per_op(&mut |i| {
            q.put(&i).unwrap();
            black_box(q.get().unwrap());
        }),
        per_op(&mut |i| {
            black_box(tcp_d.insert(&i, &i).unwrap());
        }),
    ];
    out.set(&figures).unwrap();
}

/// The Manager rows: a child process doing `n` operations of each kind (as
/// Python's figures are taken), and a TCP-loopback dict set.
#[cfg(feature = "manager")]
fn manager_rows(quick: bool, py_get: &dyn Fn(&str) -> Option<f64>) -> Vec<Row> {
    use shmpool::Manager;
    let n: u32 = if quick { 500 } else { 5_000 };
    let manager = Manager::start().expect("manager");
    let tcp = Manager::builder()
        .address("127.0.0.1:0")
        .authkey(b"compare")
        .start()
        .expect("TCP manager");
    let out = manager.value(&Vec::<f64>::new()).expect("value");
    // Held here until the child is done: their borrowed forms travel.
    let held = (
        manager.dict().expect("dict"),
        manager.list().expect("list"),
        manager.queue().expect("queue"),
        tcp.dict().expect("dict"),
    );
    let args = (
        held.0.borrowed(),
        held.1.borrowed(),
        held.2.borrowed(),
        held.3.borrowed(),
        out.borrowed(),
        n,
    );
    let mut child = shmpool::Process::new(manager_client, args);
    child.start().expect("client process");
    child.join(None).expect("client process");
    let figures = out.get().expect("figures");
    let names = [
        (
            "Manager `dict` set (`d[i] = i`), from a child",
            "manager_dict_set_us",
        ),
        (
            "Manager `dict` get (`d[i]`), from a child",
            "manager_dict_get_us",
        ),
        (
            "Manager `list` append, from a child",
            "manager_list_append_us",
        ),
        (
            "Manager queue put + get, from a child",
            "manager_queue_put_get_us",
        ),
        ("Manager `dict` set over TCP loopback, from a child", ""),
    ];
    names
        .iter()
        .zip(figures)
        .map(|(&(name, py), t)| Row {
            name: name.into(),
            unit: Unit::Micros,
            shmpool: Some(t),
            rayon: None,
            sequential: None,
            python: py_get(py).map(|us| us / 1e6),
        })
        .collect()
}

/// One row: a workload's time (or rate) for each contender.
struct Row {
    name: String,
    unit: Unit,
    shmpool: Option<f64>,
    rayon: Option<f64>,
    sequential: Option<f64>,
    python: Option<f64>,
}

/// A performance target, checked against this run.
#[derive(Clone, Copy)]
enum Goal {
    /// shmpool's time at most this many seconds.
    MaxSeconds(f64),
    /// shmpool's rate at least this many per second.
    MinRate(f64),
    /// shmpool's throughput at least this fraction of rayon's.
    MinVsRayon(f64),
    /// shmpool's rate at least this fraction of another row's (named by a
    /// prefix).
    MinVsRow(&'static str, f64),
    /// shmpool's time at most this many times a limit row's (named by a
    /// prefix), measured in the same run.
    MaxVsLimit(&'static str, f64),
}

/// (target, the row it is read from (a prefix of its name), goal).
const GOALS: &[(&str, &str, Goal)] = &[
    (
        "`apply` round trip ≤ 1 µs",
        "`apply` round trip",
        Goal::MaxSeconds(1e-6),
    ),
    (
        "tiny `apply_async` ≥ 3 M/s, 100,000 in flight",
        "tiny `apply_async`:",
        Goal::MinRate(3e6),
    ),
    (
        "awaiting 100,000 tiny `apply_async` ≥ 1/1.5 of blocking `get`",
        "tiny `apply_async` `.await`ed in order",
        Goal::MinVsRow("tiny `apply_async`:", 1.0 / 1.5),
    ),
    (
        "`imap_unordered` chunk size 1 ≥ 3 M items/s",
        "`imap_unordered`",
        Goal::MinRate(3e6),
    ),
    (
        "`map_inplace` ≥ 0.9× rayon `par_iter_mut`, 10M f64",
        "`map_inplace",
        Goal::MinVsRayon(0.9),
    ),
    (
        "warm `map(&[T]) -> Vec` ≥ 0.9× rayon `collect`, 10^5 f64",
        "`map(x * x)` → `Vec`, 100000 ",
        Goal::MinVsRayon(0.9),
    ),
    (
        "warm `map(&[T]) -> Vec` ≥ 0.9× rayon `collect`, 10^6 f64",
        "`map(x * x)` → `Vec`, 1000000 ",
        Goal::MinVsRayon(0.9),
    ),
    (
        "warm `map(&[T]) -> Vec` ≥ 0.9× rayon `collect`, 10^7 f64",
        "`map(x * x)` → `Vec`, 10000000 ",
        Goal::MinVsRayon(0.9),
    ),
    (
        "~1 µs per element ≥ 0.95× rayon",
        "`map` of a ~1 µs function",
        Goal::MinVsRayon(0.95),
    ),
    (
        "pool create + destroy, 2 workers ≤ 1 ms (fork)",
        "pool create + destroy, 2 processes, fork",
        Goal::MaxSeconds(1e-3),
    ),
    (
        "pool create + destroy in a 1 GiB parent ≤ 3 ms (forkserver)",
        "pool create + destroy, 2 processes, forkserver, 1 GiB parent, median",
        Goal::MaxSeconds(3e-3),
    ),
    (
        "`apply` round trip ≤ 3× the spinning round trip between two processes",
        "`apply` round trip",
        Goal::MaxVsLimit("limit: round trip between two processes spinning", 3.0),
    ),
    (
        "`imap_unordered` chunk size 1 ≥ 5 M items/s",
        "`imap_unordered`",
        Goal::MinRate(5e6),
    ),
    (
        "pool create + destroy, 2 workers ≤ 2× two forks and their waits",
        "pool create + destroy, 2 processes, fork",
        Goal::MaxVsLimit("limit: two forks", 2.0),
    ),
];

/// The targets table: each goal, what this run measured, met or not.
fn render_goals(rows: &[Row]) -> String {
    let mut t = String::from("| target | this run | |\n|---|---|---|\n");
    for (target, row_name, goal) in GOALS {
        let Some(row) = rows.iter().find(|r| r.name.starts_with(row_name)) else {
            continue;
        };
        let Some(ours) = row.shmpool else { continue };
        let (measured, met) = match *goal {
            Goal::MaxSeconds(max) => (row.unit.show(Some(ours)), ours <= max),
            Goal::MinRate(min) => (row.unit.show(Some(ours)), ours >= min),
            Goal::MinVsRayon(min) => {
                let ratio = row.rayon.map_or(f64::NAN, |r| r / ours);
                (format!("{ratio:.2}× rayon"), ratio >= min)
            }
            Goal::MaxVsLimit(limit, max) => {
                let theirs = rows
                    .iter()
                    .find(|r| r.name.starts_with(limit))
                    .and_then(|r| r.sequential);
                let ratio = theirs.map_or(f64::NAN, |t| ours / t);
                (format!("{ratio:.2}× the limit"), ratio <= max)
            }
            Goal::MinVsRow(other, min) => {
                let theirs = rows
                    .iter()
                    .find(|r| r.name.starts_with(other))
                    .and_then(|r| r.shmpool);
                let ratio = theirs.map_or(f64::NAN, |t| ours / t);
                (format!("{ratio:.2}×"), ratio >= min)
            }
        };
        let verdict = if met { "met" } else { "**missed**" };
        let _ = writeln!(t, "| {target} | {measured} | {verdict} |");
    }
    t
}

/// How a row's numbers read: a duration (lower is better) or a rate.
#[derive(Clone, Copy)]
enum Unit {
    Micros,
    Millis,
    PerSecond,
}

impl Unit {
    fn show(self, v: Option<f64>) -> String {
        match (self, v) {
            (_, None) => "–".into(),
            (Unit::Micros, Some(s)) => format!("{:.2} µs", s * 1e6),
            (Unit::Millis, Some(s)) => format!("{:.3} ms", s * 1e3),
            (Unit::PerSecond, Some(r)) if r >= 1e6 => format!("{:.2} M/s", r / 1e6),
            (Unit::PerSecond, Some(r)) => format!("{:.1} k/s", r / 1e3),
        }
    }

    /// How many times faster `a` is than `b`.
    fn speedup(self, a: Option<f64>, b: Option<f64>) -> String {
        match (a, b) {
            (Some(a), Some(b)) => match self {
                Unit::PerSecond => format!("{:.2}", a / b),
                _ => format!("{:.2}", b / a),
            },
            _ => "–".into(),
        }
    }
}

fn python(quick: bool) -> Result<serde_like::Map, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/compare.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(PROCESSES.to_string());
    if quick {
        cmd.arg("--quick");
    }
    let child = cmd.output().map_err(|e| format!("python3 not run ({e})"))?;
    if !child.status.success() {
        return Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&child.stderr)
        ));
    }
    serde_like::parse(&String::from_utf8_lossy(&child.stdout))
}

/// Just enough JSON for the flat object `compare.py` prints.
mod serde_like {
    pub type Map = std::collections::BTreeMap<String, String>;

    pub fn parse(s: &str) -> Result<Map, String> {
        let body = s.trim().strip_prefix('{').and_then(|s| s.strip_suffix('}'));
        let body = body.ok_or("not a JSON object")?;
        let mut map = Map::new();
        for pair in body.split(", ") {
            let (k, v) = pair.split_once(": ").ok_or("not a key: value pair")?;
            map.insert(k.trim_matches('"').into(), v.trim_matches('"').into());
        }
        Ok(map)
    }
}

/// What a fresh process runs (`--fresh <contender> <n>`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    /// `pool.map` with zero-copy (the default).
    Shmpool,
    /// `pool.map` through the arena (`zero_copy(false)`).
    ShmpoolCopying,
    Rayon,
    Sequential,
}

impl Contender {
    const ALL: [Contender; 4] = [
        Contender::Shmpool,
        Contender::ShmpoolCopying,
        Contender::Rayon,
        Contender::Sequential,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Shmpool => "shmpool",
            Contender::ShmpoolCopying => "shmpool-copying",
            Contender::Rayon => "rayon",
            Contender::Sequential => "sequential",
        }
    }
}

/// In a fresh process: builds the pool (untimed), then the input, then times
/// the first `map(x * x)` over `n` f64 and four more. Prints `first warm
/// peak_bytes`: seconds of the first call, median seconds of the next four,
/// and peak memory: this process's peak RSS (`VmHWM`, which counts the shared
/// pages it touched) plus what the workers hold privately at the end
/// (`Private_*` of `/proc/<pid>/smaps_rollup`: their copies, stages and any
/// shared pages only they touched).
fn fresh(who: Contender, n: usize) {
    let pool = matches!(who, Contender::Shmpool | Contender::ShmpoolCopying).then(|| {
        Pool::builder()
            .processes(PROCESSES)
            .zero_copy(who == Contender::Shmpool)
            .build()
            .expect("pool")
    });
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .expect("rayon");
    let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let call = || -> Vec<f64> {
        match (who, &pool) {
            (Contender::Rayon, _) => rayon.install(|| v.par_iter().map(|&x| x * x).collect()),
            (Contender::Sequential, _) => v.iter().map(|&x| x * x).collect(),
            (_, Some(pool)) => pool.map(square_f64, &v).expect("map"),
            (_, None) => unreachable!(),
        }
    };
    let mut times = Vec::new();
    let mut workers_private = 0;
    for i in 0..5 {
        let t = Instant::now();
        let out = black_box(call());
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(out[n - 1], square_f64(v[n - 1]));
        if i == 0 {
            if let Some(pool) = &pool {
                workers_private = pool.worker_pids().iter().map(|&p| private_bytes(p)).sum();
            }
        }
    }
    let peak = status_kib("/proc/self/status", "VmHWM:") * 1024 + workers_private;
    let mut warm = times[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    println!("{} {} {peak}", times[0], warm[warm.len() / 2]);
}

/// `square_f64` for C callers: never inlined, as a C function is not.
#[inline(never)]
extern "C" fn square_c(x: f64) -> f64 {
    x * x
}

/// A Rust task that calls the C function: separates the cost of calling a
/// function per element from the C API's own.
fn square_via_c(x: f64) -> f64 {
    square_c(black_box(x))
}

/// `pool.map_into(square_f64, v, out)` against `shmpool_map_f64(square_c,
/// ...)`, both into a reused array, alternating, medians: a table and its
/// target line.
fn c_api_overhead(v: &[f64], budget: Duration) -> String {
    let capi_pool = {
        let mut opt = shmpool::capi::shmpool_options_default();
        opt.processes = PROCESSES;
        // SAFETY: valid options.
        unsafe { shmpool::capi::shmpool_pool_new(&opt) }
    };
    assert!(!capi_pool.is_null());
    // SAFETY: a live pool, freed only at the end of this function.
    let pool = unsafe { &*capi_pool }.as_pool();
    let (mut out, mut rust_out) = (vec![0.0; v.len()], vec![0.0; v.len()]);
    let (mut rust, mut via, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    let mut round = 0;
    while rust.len() < 51 && (rust.len() < 7 || start.elapsed() < budget * 2) {
        // Each round starts with another of the three, so none always runs
        // right after the same neighbour.
        for j in 0..3 {
            let t = Instant::now();
            match (round + j) % 3 {
                0 => {
                    pool.map_into(square_f64, v, &mut rust_out).unwrap();
                    rust.push(t.elapsed().as_secs_f64() * 1e3);
                }
                1 => {
                    pool.map_into(square_via_c, v, &mut rust_out).unwrap();
                    via.push(t.elapsed().as_secs_f64() * 1e3);
                }
                _ => {
                    // SAFETY: a live pool; `v` and `out` hold v.len() doubles each.
                    let rc = unsafe {
                        shmpool::capi::shmpool_map_f64(
                            capi_pool,
                            Some(square_c),
                            v.as_ptr(),
                            out.as_mut_ptr(),
                            v.len(),
                        )
                    };
                    c.push(t.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(rc, shmpool::capi::SHMPOOL_OK);
                }
            }
        }
        round += 1;
    }
    // SAFETY: the pool made above, freed once.
    unsafe { shmpool::capi::shmpool_pool_free(capi_pool) };
    assert_eq!(out[v.len() - 1], square_f64(v[v.len() - 1]));
    let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.3} ms ({lo:.3}–{hi:.3})");
    let (r, w, cc) = (spread(rust), spread(via), spread(c));
    let vs_inlined = cc.0 / r.0 - 1.0;
    let overhead = cc.0 / w.0 - 1.0;
    let verdict = if overhead <= 0.05 {
        "met"
    } else {
        "**missed**"
    };
    format!(
        "\n### The C API\n\nThe same map of `x * x` over {} f64 into a reused array, alternating on \
         one pool of {PROCESSES} (each round starting with another), medians and ranges: from Rust with the function inlined \
         (`Pool::map_into`), from Rust calling a non-inlined `extern \"C\"` function per element, \
         and from the C API (`shmpool_map_f64`, that function called through a pointer). The \
         second pair isolates the API's own cost from the cost of a call per element.\n\n\
         | Rust, inlined | Rust, a C function per element | C API | C API vs Rust calling the same function | C API vs inlined Rust |\n\
         |---|---|---|---|---|\n\
         | {} | {} | {} | {:+.1} % | {:+.1} % |\n\n\
         | target | this run | |\n|---|---|---|\n\
         | C API overhead per call ≤ 5 % at 10^6 elements (against Rust calling the same function) | {:+.1} % | {verdict} |\n",
        v.len(),
        show(r),
        show(w),
        show(cc),
        overhead * 100.0,
        vs_inlined * 100.0,
        overhead * 100.0
    )
}

fn scale_f64(k: f64, x: f64) -> f64 {
    x * k
}
fn add_f64(a: f64, b: f64) -> f64 {
    a + b
}
fn add_u64(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

/// Medians and ranges (ms) of `calls`, run in alternation, each round
/// starting with another, so that drift on a noisy machine hits all alike.
fn alternating(budget: Duration, calls: &mut [&mut dyn FnMut()]) -> Vec<(f64, f64, f64)> {
    let k = calls.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); k];
    for c in calls.iter_mut() {
        c(); // warm-up
    }
    let start = Instant::now();
    let mut round = 0;
    while times[0].len() < 51 && (times[0].len() < 7 || start.elapsed() < budget * k as u32) {
        for j in 0..k {
            let i = (round + j) % k;
            let t = Instant::now();
            calls[i]();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
        round += 1;
    }
    times.into_iter().map(spread).collect()
}

/// `partial` against a bare function item, and `map_reduce` against rayon's
/// `par_iter().map().reduce()` and a sequential loop: a section of its own.
fn task_rows(pool: &Pool, rayon: &rayon::ThreadPool, budget: Duration, quick: bool) -> String {
    let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.3} ms ({lo:.3}–{hi:.3})");
    let n = if quick { 1_000_000 } else { 10_000_000 };
    let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let k = black_box(2.0);
    let (mut bare, mut bound) = (
        || drop(black_box(pool.map(square_f64, &v).unwrap())),
        || drop(black_box(pool.map(partial(scale_f64, k), &v).unwrap())),
    );
    let t = alternating(budget, &mut [&mut bare, &mut bound]);
    let partial_cost = t[1].0 / t[0].0 - 1.0;
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut out = format!(
        "\n### Tasks: bound values and map-reduce\n\n\
         `map` over {n} f64 into a fresh `Vec`, alternating on one pool of {PROCESSES} (each \
         round starting with another), medians and ranges: a bare function item (`x * x`) \
         against `partial(scale, k)` (`x * k`, `k` bound at run time).\n\n\
         | function item | `partial(scale, k)` | `partial` vs item |\n|---|---|---|\n\
         | {} | {} | {:+.1} % |\n",
        show(t[0]),
        show(t[1]),
        partial_cost * 100.0
    );
    let reduce_trivial = {
        let (mut ours, mut theirs, mut seq) = (
            || {
                black_box(pool.map_reduce(square_f64, add_f64, &v).unwrap());
            },
            || {
                black_box(
                    rayon.install(|| v.par_iter().map(|&x| x * x).reduce(|| 0.0, |a, b| a + b)),
                );
            },
            || {
                black_box(v.iter().map(|&x| x * x).fold(0.0, |a, b| a + b));
            },
        );
        alternating(budget, &mut [&mut ours, &mut theirs, &mut seq])
    };
    let m = if quick { 20_000 } else { 1_000_000 };
    let w: Vec<u64> = (0..m).collect();
    let reduce_heavy = {
        let (mut ours, mut theirs, mut seq) = (
            || {
                black_box(pool.map_reduce(one_us, add_u64, &w).unwrap());
            },
            || {
                black_box(rayon.install(|| w.par_iter().map(|&x| one_us(x)).reduce(|| 0, add_u64)));
            },
            || {
                black_box(w.iter().map(|&x| one_us(x)).fold(0, add_u64));
            },
        );
        alternating(budget, &mut [&mut ours, &mut theirs, &mut seq])
    };
    let _ = write!(
        out,
        "\n`map_reduce(f, add, &v)` against rayon's `par_iter().map(f).reduce(|| 0, add)` \
         ({PROCESSES} threads) and a sequential `map().fold()`, alternating, medians and \
         ranges.\n\n| workload | shmpool `map_reduce` | rayon | sequential | vs rayon |\n\
         |---|---|---|---|---|\n\
         | `x * x` over {n} f64 | {} | {} | {} | {:.2}× |\n\
         | a ~1 µs function over {m} u64 | {} | {} | {} | {:.2}× |\n",
        show(reduce_trivial[0]),
        show(reduce_trivial[1]),
        show(reduce_trivial[2]),
        reduce_trivial[1].0 / reduce_trivial[0].0,
        show(reduce_heavy[0]),
        show(reduce_heavy[1]),
        show(reduce_heavy[2]),
        reduce_heavy[1].0 / reduce_heavy[0].0,
    );
    let _ = write!(
        out,
        "\n| target | this run | |\n|---|---|---|\n\
         | `partial` within 5 % of a bare function item, {n} f64 | {:+.1} % | {} |\n\
         | `map_reduce` ≥ 0.9× rayon, `x * x` over {n} f64 | {:.2}× | {} |\n\
         | `map_reduce` ≥ 0.9× rayon, a ~1 µs function | {:.2}× | {} |\n",
        partial_cost * 100.0,
        verdict(partial_cost.abs() <= 0.05),
        reduce_trivial[1].0 / reduce_trivial[0].0,
        verdict(reduce_trivial[1].0 / reduce_trivial[0].0 >= 0.9),
        reduce_heavy[1].0 / reduce_heavy[0].0,
        verdict(reduce_heavy[1].0 / reduce_heavy[0].0 >= 0.9),
    );
    out
}

/// One fresh process's figures: seconds of the first call, median seconds of
/// the next four, peak bytes.
struct FreshSample {
    first: f64,
    warm: f64,
    peak_bytes: f64,
}

/// Per contender, the samples of its fresh processes.
type FreshRuns = Vec<(Contender, Vec<FreshSample>)>;

/// Runs `--fresh` `reps` times for each contender, interleaved so that the
/// machine's state drifts alike for all; returned in `Contender::ALL` order.
fn fresh_runs(n: usize, reps: usize) -> FreshRuns {
    let mut runs: FreshRuns = Contender::ALL.iter().map(|&c| (c, Vec::new())).collect();
    for round in 0..reps {
        // Each round starts with another contender: on a VM, whoever first
        // touches memory the guest never used pays the host's faults.
        runs.rotate_left(usize::from(round > 0));
        for (who, samples) in &mut runs {
            let f = run_self(&["--fresh", who.name(), &n.to_string()]);
            samples.push(FreshSample {
                first: f[0],
                warm: f[1],
                peak_bytes: f[2],
            });
        }
    }
    runs.sort_by_key(|(who, _)| Contender::ALL.iter().position(|c| c == who));
    runs
}

/// The median and the range of `xs`.
fn spread(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

/// The heap a "big parent" holds: a harness that has loaded its data.
const BIG_PARENT_BYTES: usize = 1 << 30;

/// In a child (`--big-parent METHOD`): touches [`BIG_PARENT_BYTES`] of heap,
/// then prints the seconds of its first pool create + destroy and the median
/// of the next ones.
fn big_parent(method: StartMethod) {
    let mut heap = vec![0u8; BIG_PARENT_BYTES];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&heap);
    let t = Instant::now();
    drop(get_context(method).pool(PROCESSES).unwrap());
    let first = t.elapsed().as_secs_f64();
    let warm = median(Duration::from_millis(500), || {
        drop(get_context(method).pool(PROCESSES).unwrap())
    });
    println!("{first} {warm}");
    black_box(heap);
}

/// Pool create + destroy in a parent holding 1 GiB of touched heap, each
/// start method in a child process of its own, first pool and warm median.
fn big_parent_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for method in StartMethod::ALL {
        let f = run_self(&["--big-parent", method.name()]);
        for (when, seconds) in [("first pool", f[0]), ("median", f[1])] {
            rows.push(Row {
                name: format!(
                    "pool create + destroy, {PROCESSES} processes, {method}, \
                     1 GiB parent, {when}"
                ),
                unit: Unit::Millis,
                shmpool: Some(seconds),
                rayon: None,
                sequential: None,
                python: None,
            });
        }
    }
    rows
}

fn main() {
    // In a process procspawn started, this runs its job and never returns.
    procspawn::init();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--fresh") {
        let who = Contender::ALL
            .into_iter()
            .find(|c| c.name() == args[i + 1])
            .expect("a contender");
        fresh(who, args[i + 2].parse().expect("a length"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--big-parent") {
        big_parent(args[i + 1].parse().expect("a start method"));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let py = python(quick);
    let py_get = |key: &str| -> Option<f64> { py.as_ref().ok()?.get(key)?.parse().ok() };
    let mut rows = Vec::new();

    // 0. Pool create + destroy, first: fork time grows with the parent's
    //    memory, which the later workloads inflate.
    for method in StartMethod::ALL {
        rows.push(Row {
            name: format!("pool create + destroy, {PROCESSES} processes, {method}"),
            unit: Unit::Millis,
            shmpool: Some(median(budget, || {
                drop(get_context(method).pool(PROCESSES).unwrap())
            })),
            rayon: None,
            sequential: None,
            python: if method == StartMethod::Fork {
                py_get("create_destroy_ms").map(|ms| ms / 1e3)
            } else {
                None
            },
        });
    }

    rows.extend(big_parent_rows());

    rows.push(Row {
        name: "limit: two forks of a child that exits at once, and their waits".into(),
        unit: Unit::Millis,
        shmpool: None,
        rayon: None,
        sequential: Some(median(budget, || {
            two_forks();
        })),
        python: None,
    });

    #[cfg(feature = "manager")]
    rows.push(manager_start_row(budget, &py_get));

    let pool = Pool::new(PROCESSES).expect("pool");
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .expect("rayon");

    // 1. apply round trip.
    let n = 1000;
    let t = median(budget, || {
        for i in 0..n {
            black_box(pool.apply(square_u64, (i,)).unwrap());
        }
    }) / n as f64;
    rows.push(Row {
        name: "`apply` round trip (one tiny task)".into(),
        unit: Unit::Micros,
        shmpool: Some(t),
        rayon: None,
        sequential: None,
        python: py_get("apply_us").map(|us| us / 1e6),
    });

    // 2. Tiny tasks, 100,000 in flight.
    let n = 100_000u64;
    let t = median(budget, || {
        let handles: Vec<_> = (0..n)
            .map(|i| pool.apply_async(square_u64, (i,)).unwrap())
            .collect();
        black_box(handles.iter().map(|h| h.get(None).unwrap()).sum::<u64>());
    });
    rows.push(Row {
        name: "tiny `apply_async`: 100,000 submitted, then collected".into(),
        unit: Unit::PerSecond,
        shmpool: Some(n as f64 / t),
        rayon: None,
        sequential: None,
        python: py_get("apply_async_per_s"),
    });

    // 2b. The same with a callback on each result (run on the pool's
    //     callback thread, as Python's result handler runs them).
    let called = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = median(budget, || {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let called = std::sync::Arc::clone(&called);
                pool.apply_async_with(
                    square_u64,
                    (i,),
                    move |v| {
                        called.fetch_add(black_box(v) & 1, std::sync::atomic::Ordering::Relaxed);
                    },
                    |e| panic!("{e}"),
                )
                .unwrap()
            })
            .collect();
        for h in &handles {
            assert!(h.wait(None));
        }
    });
    rows.push(Row {
        name: "tiny `apply_async_with` (a callback each): 100,000 submitted, then awaited".into(),
        unit: Unit::PerSecond,
        shmpool: Some(n as f64 / t),
        rayon: None,
        sequential: None,
        python: py_get("apply_async_callback_per_s"),
    });

    // 2c. The same results `.await`ed instead of waited for: in order, on a
    //     minimal executor, and as many concurrent tokio tasks (woken by the
    //     pool's callback thread; the runtime's thread never blocks).
    let t = median(budget, || {
        let handles: Vec<_> = (0..n)
            .map(|i| pool.apply_async(square_u64, (i,)).unwrap())
            .collect();
        black_box(futures_executor::block_on(async {
            let mut sum = 0u64;
            for h in handles {
                sum = sum.wrapping_add(h.await.unwrap());
            }
            sum
        }));
    });
    rows.push(Row {
        name: "tiny `apply_async` `.await`ed in order: 100,000 submitted, then awaited \
               (`futures::executor::block_on`)"
            .into(),
        unit: Unit::PerSecond,
        shmpool: Some(n as f64 / t),
        rayon: None,
        sequential: None,
        python: None,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = median(budget, || {
        black_box(rt.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|i| tokio::spawn(pool.apply_async(square_u64, (i,)).unwrap().into_future()))
                .collect();
            let mut sum = 0u64;
            for t in tasks {
                sum = sum.wrapping_add(t.await.unwrap().unwrap());
            }
            sum
        }));
    });
    rows.push(Row {
        name: "tiny `apply_async` `.await`ed by 100,000 tokio tasks (current-thread runtime)"
            .into(),
        unit: Unit::PerSecond,
        shmpool: Some(n as f64 / t),
        rayon: None,
        sequential: None,
        python: None,
    });

    // 3. imap_unordered, chunk size 1.
    let t = median(budget, || {
        black_box(
            pool.imap_unordered(square_u64, 0..n)
                .unwrap()
                .map(Result::unwrap)
                .sum::<u64>(),
        );
    });
    rows.push(Row {
        name: "`imap_unordered`, chunk size 1, 100,000 items".into(),
        unit: Unit::PerSecond,
        shmpool: Some(n as f64 / t),
        rayon: None,
        sequential: None,
        python: py_get("imap_unordered_per_s"),
    });

    // 4. x * x over f64 slices.
    for n in [1_000usize, 100_000, 1_000_000, 10_000_000] {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let ours = median(budget, || {
            drop(black_box(pool.map(square_f64, &v).unwrap()))
        });
        let theirs = median(budget, || {
            drop(black_box(rayon.install(|| {
                v.par_iter().map(|&x| x * x).collect::<Vec<f64>>()
            })))
        });
        let seq = median(budget, || {
            drop(black_box(v.iter().map(|&x| x * x).collect::<Vec<f64>>()))
        });
        rows.push(Row {
            name: format!("`map(x * x)` → `Vec`, {n} f64 (rayon: `par_iter().map().collect()`)"),
            unit: Unit::Millis,
            shmpool: Some(ours),
            rayon: Some(theirs),
            sequential: Some(seq),
            python: py_get(&format!("map_{n}_ms")).map(|ms| ms / 1e3),
        });
    }
    let n = 10_000_000;
    let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let mut shared = SharedVec::from_slice(&pool, &v).expect("shared vec");
    let mut out = SharedVec::<f64>::zeroed(&pool, n).expect("shared vec");
    let mut plain = v.clone();
    let mut plain_out = vec![0.0; n];
    rows.push(Row {
        name: "`map_inplace(x * x)` on a `SharedVec`, 10M f64 (rayon: `par_iter_mut`)".into(),
        unit: Unit::Millis,
        shmpool: Some(median(budget, || {
            pool.map_inplace(square_f64, &mut shared).unwrap()
        })),
        rayon: Some(median(budget, || {
            rayon.install(|| plain.par_iter_mut().for_each(|x| *x = *x * *x))
        })),
        sequential: Some(median(budget, || {
            black_box(&mut plain).iter_mut().for_each(|x| *x = *x * *x)
        })),
        python: None,
    });
    rows.push(Row {
        name: "`map_into(x * x)` between `SharedVec`s, 10M f64 (rayon: zip into a `Vec`)".into(),
        unit: Unit::Millis,
        shmpool: Some(median(budget, || {
            pool.map_into(square_f64, &shared, &mut out).unwrap()
        })),
        rayon: Some(median(budget, || {
            rayon.install(|| {
                plain_out
                    .par_iter_mut()
                    .zip(plain.par_iter())
                    .for_each(|(o, &x)| *o = x * x)
            })
        })),
        sequential: Some(median(budget, || {
            black_box(&mut plain_out)
                .iter_mut()
                .zip(&plain)
                .for_each(|(o, &x)| *o = x * x)
        })),
        python: None,
    });
    drop((shared, out, plain, plain_out));

    // 4b. The same map through the C API, alternating with the Rust call.
    let n = 1_000_000;
    let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let c_api = c_api_overhead(&v, budget);

    // 4b'. Any serde value: `pool.serde()` against rayon, Python and procspawn.
    let (serde_rows, serde_table) = serde_section(&pool, &rayon, budget, &py_get);
    rows.extend(serde_rows);

    // 4d. Bound values and map-reduce.
    let tasks = task_rows(&pool, &rayon, budget, quick);

    // 4c. What a user meets first: the first call in a fresh process, and
    //     peak memory, each from fresh processes.
    let reps = if quick { 1 } else { 5 };
    let mut fresh_table = Vec::new();
    for n in [1_000_000usize, 10_000_000] {
        fresh_table.push(FreshRow::first_call(n, fresh_runs(n, reps)));
    }
    let n = if quick { 1_000_000 } else { 100_000_000 };
    fresh_table.push(FreshRow::peak_memory(n, fresh_runs(n, reps.min(3))));

    // 5. A function that costs ~1 µs per element.
    let n = if quick { 20_000 } else { 1_000_000 };
    let v: Vec<u64> = (0..n).collect();
    rows.push(Row {
        name: format!("`map` of a ~1 µs function, {n} elements"),
        unit: Unit::Millis,
        shmpool: Some(median(budget, || {
            drop(black_box(pool.map(one_us, &v).unwrap()))
        })),
        rayon: Some(median(budget, || {
            drop(black_box(rayon.install(|| {
                v.par_iter().map(|&x| one_us(x)).collect::<Vec<u64>>()
            })))
        })),
        sequential: Some(median(budget, || {
            drop(black_box(
                v.iter().map(|&x| one_us(x)).collect::<Vec<u64>>(),
            ))
        })),
        python: None,
    });

    // 6. A manager's proxies (with `--features manager`).
    #[cfg(feature = "manager")]
    rows.extend(manager_rows(quick, &py_get));

    // 7. Physical limits on this machine, for scale.
    let trips = if quick { 2_000 } else { 20_000 };
    let (spin, sleep) = (ping_pong(trips, false), ping_pong(trips, true));
    for (name, t) in [
        (
            "limit: round trip between two processes spinning on a shared word",
            spin,
        ),
        (
            "limit: round trip between two processes sleeping in futex_wait",
            sleep,
        ),
    ] {
        rows.push(Row {
            name: name.into(),
            unit: Unit::Micros,
            shmpool: None,
            rayon: None,
            sequential: Some(t),
            python: None,
        });
    }
    let src = vec![1.0f64; 10_000_000];
    let mut dst = vec![0.0f64; 10_000_000];
    dst.iter_mut().for_each(|x| *x = black_box(1.0)); // touch every page
    rows.push(Row {
        name: "limit: `memcpy` of 80 MB into a touched buffer (one thread)".into(),
        unit: Unit::Millis,
        shmpool: None,
        rayon: None,
        sequential: Some(median(budget, || {
            black_box(&mut dst).copy_from_slice(black_box(&src))
        })),
        python: None,
    });
    rows.push(Row {
        name:
            "limit: `process_vm_readv` of the same 80 MB by a child, in 128 KiB pieces (best pass)"
                .into(),
        unit: Unit::Millis,
        shmpool: None,
        rayon: None,
        sequential: vm_readv_seconds(&src, if quick { 2 } else { 10 }),
        python: None,
    });

    let mut table = render(&rows, &py, &fresh_table);
    let _ = write!(table, "{c_api}{serde_table}{tasks}");
    table.push_str(&shared_alloc_section(quick));
    println!("{table}");
    if quick {
        println!("(--quick: docs/PERFORMANCE.md left unchanged)");
    } else {
        write_doc(&table);
    }
}

/// The section on maps over the shared heap: `examples/compare_shared_alloc.rs`
/// is its own program (a program has one global allocator), built here with
/// the cargo that runs this one, and run after everything else.
fn shared_alloc_section(quick: bool) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let name = "compare_shared_alloc";
    let built = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    if !built.is_ok_and(|s| s.success()) {
        return format!("\n(`{name}` did not build: its section is missing.)\n");
    }
    let exe = std::env::current_exe()
        .expect("own path")
        .with_file_name(name);
    let mut cmd = Command::new(exe);
    if quick {
        cmd.arg("--quick");
    }
    match cmd.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => format!(
            "\n(`{name}` failed: {})\n",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("\n(`{name}` did not run: {e})\n"),
    }
}

/// (median, fastest, slowest) seconds of `f`, as [`median`] runs it.
fn median_spread(budget: Duration, mut f: impl FnMut()) -> (f64, f64, f64) {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 51 && (times.len() < 5 || start.elapsed() < budget) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    spread(times)
}

fn upper(s: String) -> String {
    s.to_uppercase()
}
fn upper_bytes(v: Vec<u8>) -> Vec<u8> {
    v.to_ascii_uppercase()
}
fn upper_all(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(upper).collect()
}

/// `pool.serde()` on Python's "any picklable" workloads (10,000 strings of
/// 100 bytes, 10 vectors of 1 MiB, upper-cased), against rayon, Python's
/// `Pool` and procspawn's pool (serde over ipc-channel, one job per chunk of
/// the same size as ours); and what the serde path costs against the `Pod`
/// one. Rows for the main table, and a table with the spread of each.
fn serde_section(
    pool: &Pool,
    rayon: &rayon::ThreadPool,
    budget: Duration,
    py_get: &dyn Fn(&str) -> Option<f64>,
) -> (Vec<Row>, String) {
    let procspawn = procspawn::Pool::new(PROCESSES).expect("procspawn pool");
    let strings: Vec<String> = (0..10_000)
        .map(|i| format!("{:x<100}", format!("string {i} ")))
        .collect();
    let pattern: Vec<u8> = (0..=255u8).collect();
    let vectors: Vec<Vec<u8>> = (0..10).map(|_| pattern.repeat(4096)).collect();
    let mut rows = Vec::new();
    let mut table = String::from(
        "\n### Any serde value: `pool.serde()`\n\n\
         Median, then the fastest and slowest run, in ms. procspawn: its pool of \
         2 processes, one job per chunk of the size shmpool uses (`ceil(len / 8)` \
         strings), or per vector, one job per process at a time (more queued jobs of \
         this size block its sender). \
         The machine is shared and noisy: compare medians, and read the spread.\n\n\
         | workload | shmpool `serde().map` | procspawn | Python `Pool(2).map` | shmpool vs procspawn | shmpool vs Python |\n\
         |---|---|---|---|---|---|\n",
    );
    let ms =
        |(m, lo, hi): (f64, f64, f64)| format!("{:.3} ({:.3}–{:.3})", m * 1e3, lo * 1e3, hi * 1e3);
    let py3 = |key: &str| -> Option<(f64, f64, f64)> {
        Some((
            py_get(&format!("{key}_ms"))? / 1e3,
            py_get(&format!("{key}_min_ms"))? / 1e3,
            py_get(&format!("{key}_max_ms"))? / 1e3,
        ))
    };

    // Strings.
    let ours = median_spread(budget, || {
        drop(black_box(pool.serde().map(upper, &strings).unwrap()))
    });
    let chunk = strings.len().div_ceil(4 * PROCESSES);
    let theirs = median_spread(budget, || {
        // One job per process at a time: with more queued, a large job's
        // send blocks for good here (procspawn 1.0.2).
        let chunks: Vec<&[String]> = strings.chunks(chunk).collect();
        for wave in chunks.chunks(PROCESSES) {
            let handles: Vec<_> = wave
                .iter()
                .map(|c| procspawn.spawn(c.to_vec(), upper_all))
                .collect();
            for h in handles {
                black_box(h.join().unwrap());
            }
        }
    });
    let py = py3("serde_strings");
    rows.push(Row {
        name: "`serde().map(to_uppercase)`, 10,000 `String`s of 100 bytes (rayon: `par_iter().map().collect()`)".into(),
        unit: Unit::Millis,
        shmpool: Some(ours.0),
        rayon: Some(median(budget, || {
            drop(black_box(rayon.install(|| {
                strings.par_iter().map(|s| s.to_uppercase()).collect::<Vec<String>>()
            })))
        })),
        sequential: Some(median(budget, || {
            drop(black_box(strings.iter().map(|s| s.to_uppercase()).collect::<Vec<String>>()))
        })),
        python: py.map(|p| p.0),
    });
    let _ = writeln!(
        table,
        "| 10,000 strings of 100 bytes | {} | {} | {} | {:.1} | {} |",
        ms(ours),
        ms(theirs),
        py.map_or("–".into(), ms),
        theirs.0 / ours.0,
        py.map_or("–".into(), |p| format!("{:.1}", p.0 / ours.0)),
    );

    // Vectors of 1 MiB.
    let ours = median_spread(budget, || {
        drop(black_box(pool.serde().map(upper_bytes, &vectors).unwrap()))
    });
    let theirs = median_spread(budget, || {
        for wave in vectors.chunks(PROCESSES) {
            let handles: Vec<_> = wave
                .iter()
                .map(|v| procspawn.spawn(v.clone(), upper_bytes))
                .collect();
            for h in handles {
                black_box(h.join().unwrap());
            }
        }
    });
    let py = py3("serde_vectors");
    rows.push(Row {
        name: "`serde().map(to_ascii_uppercase)`, 10 `Vec<u8>` of 1 MiB".into(),
        unit: Unit::Millis,
        shmpool: Some(ours.0),
        rayon: Some(median(budget, || {
            drop(black_box(rayon.install(|| {
                vectors
                    .par_iter()
                    .map(|v| v.to_ascii_uppercase())
                    .collect::<Vec<_>>()
            })))
        })),
        sequential: Some(median(budget, || {
            drop(black_box(
                vectors
                    .iter()
                    .map(|v| v.to_ascii_uppercase())
                    .collect::<Vec<_>>(),
            ))
        })),
        python: py.map(|p| p.0),
    });
    let _ = writeln!(
        table,
        "| 10 vectors (`Vec<u8>`; Python: `bytes`) of 1 MiB | {} | {} | {} | {:.1} | {} |",
        ms(ours),
        ms(theirs),
        py.map_or("–".into(), ms),
        theirs.0 / ours.0,
        py.map_or("–".into(), |p| format!("{:.1}", p.0 / ours.0)),
    );

    // What encoding costs: the same map of u64s through both paths.
    let _ = write!(
        table,
        "\nWhat the serde path costs against the `Pod` path (the same `map(x * x)`):\n\n\
         | workload | `pool.map` (Pod) | `pool.serde().map` | serde / Pod |\n|---|---|---|---|\n"
    );
    for n in [10_000usize, 1_000_000] {
        let v: Vec<u64> = (0..n as u64).collect();
        let pod = median_spread(budget, || {
            drop(black_box(pool.map(square_u64, &v).unwrap()))
        });
        let ser = median_spread(budget, || {
            drop(black_box(pool.serde().map(square_u64, &v).unwrap()))
        });
        let _ = writeln!(
            table,
            "| {n} `u64` | {} | {} | {:.1}× slower |",
            ms(pod),
            ms(ser),
            ser.0 / pod.0
        );
    }
    let strings_pod: Vec<[u8; 100]> = strings
        .iter()
        .map(|s| s.as_bytes().try_into().unwrap())
        .collect();
    let pod = median_spread(budget, || {
        drop(black_box(pool.map(upper_array, &strings_pod).unwrap()))
    });
    let ser = median_spread(budget, || {
        drop(black_box(pool.serde().map(upper, &strings).unwrap()))
    });
    let _ = writeln!(
        table,
        "| 10,000 strings of 100 bytes (Pod: `[u8; 100]`) | {} | {} | {:.1}× slower |",
        ms(pod),
        ms(ser),
        ser.0 / pod.0
    );
    (rows, table)
}

fn upper_array(mut a: [u8; 100]) -> [u8; 100] {
    a.make_ascii_uppercase();
    a
}

/// A row of the fresh-process table: per contender, the median and range of
/// one measure over several fresh processes.
struct FreshRow {
    name: String,
    unit: &'static str,
    /// (median, min, max) per contender, in `Contender::ALL` order.
    cells: Vec<(f64, f64, f64)>,
    /// Warm medians (same processes), for the first-call ÷ warm ratio.
    warm: Vec<f64>,
    /// Lower is better (time, bytes).
    kind: FreshKind,
    n: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FreshKind {
    FirstCall,
    PeakMemory,
}

impl FreshRow {
    fn first_call(n: usize, runs: FreshRuns) -> FreshRow {
        FreshRow {
            name: format!("first `map(x * x)` → `Vec` in a fresh process, {n} f64"),
            unit: "ms",
            cells: runs
                .iter()
                .map(|(_, s)| spread(s.iter().map(|x| x.first * 1e3).collect()))
                .collect(),
            warm: runs
                .iter()
                .map(|(_, s)| spread(s.iter().map(|x| x.warm * 1e3).collect()).0)
                .collect(),
            kind: FreshKind::FirstCall,
            n,
        }
    }

    fn peak_memory(n: usize, runs: FreshRuns) -> FreshRow {
        FreshRow {
            name: format!("peak memory of `map(x * x)` → `Vec`, {n} f64 (RSS + workers' private)"),
            unit: "MB",
            cells: runs
                .iter()
                .map(|(_, s)| spread(s.iter().map(|x| x.peak_bytes / 1e6).collect()))
                .collect(),
            warm: Vec::new(),
            kind: FreshKind::PeakMemory,
            n,
        }
    }

    fn cell(&self, who: Contender) -> (f64, f64, f64) {
        self.cells[Contender::ALL.iter().position(|&c| c == who).unwrap()]
    }
}

/// The fresh-process table and the targets read from it.
fn render_fresh(rows: &[FreshRow]) -> (String, String) {
    let mut t = String::from(
        "| workload | shmpool | shmpool, `zero_copy(false)` | rayon | sequential | shmpool vs rayon |\n|---|---|---|---|---|---|\n",
    );
    let mut goals = String::new();
    for r in rows {
        let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} {} ({lo:.1}–{hi:.1})", r.unit);
        let (ours, _, _) = r.cell(Contender::Shmpool);
        let (theirs, _, _) = r.cell(Contender::Rayon);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {:.2} |",
            r.name,
            show(r.cell(Contender::Shmpool)),
            show(r.cell(Contender::ShmpoolCopying)),
            show(r.cell(Contender::Rayon)),
            show(r.cell(Contender::Sequential)),
            theirs / ours,
        );
        let verdict = |met: bool| if met { "met" } else { "**missed**" };
        match r.kind {
            FreshKind::FirstCall => {
                let (seq, _, _) = r.cell(Contender::Sequential);
                let warm = r.warm[0];
                if r.n == 10_000_000 {
                    let _ = writeln!(
                        goals,
                        "| first call, fresh process, 10^7 f64 ≥ 0.8× rayon's first call | {:.2}× rayon | {} |",
                        theirs / ours,
                        verdict(theirs / ours >= 0.8)
                    );
                }
                let _ = writeln!(
                    goals,
                    "| first call, fresh process, {} f64, never slower than the sequential loop | {ours:.1} ms vs {seq:.1} ms | {} |",
                    r.n,
                    verdict(ours <= seq)
                );
                let _ = writeln!(
                    goals,
                    "| first call, {} f64, within 1.3× of the same process's warm calls | {:.2}× ({ours:.1} ms vs {warm:.1} ms) | {} |",
                    r.n,
                    ours / warm,
                    verdict(ours <= 1.3 * warm)
                );
            }
            FreshKind::PeakMemory => {
                let _ = writeln!(
                    goals,
                    "| peak memory, map of {} f64, ≤ 1.15× rayon's | {:.2}× ({ours:.0} MB vs {theirs:.0} MB) | {} |",
                    r.n,
                    ours / theirs,
                    verdict(ours <= 1.15 * theirs)
                );
            }
        }
    }
    (t, goals)
}

fn render(rows: &[Row], py: &Result<serde_like::Map, String>, fresh: &[FreshRow]) -> String {
    let mut t = String::new();
    let sh = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let python = match py {
        Ok(map) => format!(
            "Python {} `multiprocessing.Pool({PROCESSES})` (fork)",
            map.get("python").map_or("?", String::as_str)
        ),
        Err(why) => format!("Python: skipped ({why})"),
    };
    let _ = writeln!(
        t,
        "Machine: {} CPUs, Linux {}, {}; {python}. Pools of {PROCESSES} processes, rayon with {PROCESSES} threads. Medians.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sh("uname", &["-r"]),
        sh("rustc", &["--version"]),
    );
    let _ = writeln!(
        t,
        "| workload | shmpool | rayon | sequential | Python | shmpool vs rayon | shmpool vs Python |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.unit.show(r.shmpool),
            r.unit.show(r.rayon),
            r.unit.show(r.sequential),
            r.unit.show(r.python),
            r.unit.speedup(r.shmpool, r.rayon),
            r.unit.speedup(r.shmpool, r.python),
        );
    }
    let (fresh_table, fresh_goals) = render_fresh(fresh);
    let _ = write!(
        t,
        "\nRatios are throughput ratios (> 1: shmpool is faster). Python's `map` \
         rows use a list of floats and its default chunk size.\n\n\
         ### Fresh processes: the first call, and peak memory\n\n\
         Each cell: the median over fresh processes (this program run again with \
         `--fresh`, contenders interleaved), and the range. Pools (and rayon's pool) are \
         built before the clock starts; the input is made after the pool. Peak memory is \
         the process's `VmHWM` plus what its workers hold privately.\n\n{fresh_table}\n\
         ### Targets, from this run\n\n{}{fresh_goals}",
        render_goals(rows)
    );
    t
}

/// Replaces the text between the markers in docs/PERFORMANCE.md.
fn write_doc(table: &str) {
    const BEGIN: &str = "<!-- compare:begin -->";
    const END: &str = "<!-- compare:end -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PERFORMANCE.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!(
        "{BEGIN}\n## Side by side (one run)\n\nReproduce with `cargo run --release --example compare` \
         (this section is rewritten by it).\n\n{table}\n{END}"
    );
    let new = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &doc[..b], &doc[e + END.len()..]),
        _ => format!("{doc}\n{section}\n"),
    };
    std::fs::write(path, new).expect("write docs/PERFORMANCE.md");
    println!("docs/PERFORMANCE.md updated");
}
