"""Python's multiprocessing.Pool on the workloads of `examples/compare.rs`.

Run by the example (`cargo run --release --example compare`); prints one JSON
object: median timings of each workload with `Pool(processes)`. Standard
library only.
"""
import json
import multiprocessing as mp
import statistics
import sys
import time


def sq(x):
    return x * x


def upper(s):
    return s.upper()


def spread_of(fn, min_reps=5, max_reps=21, budget=1.0):
    """(median, min, max) seconds of fn() over repetitions filling about `budget` seconds."""
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def median_of(fn, min_reps=3, max_reps=21, budget=1.0):
    """Median seconds of fn() over repetitions filling about `budget` seconds."""
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _manager_client(d, l, q, n, results):
    """A child process doing n operations of each kind; seconds per operation."""
    figures = []
    for op in (lambda i: d.__setitem__(i, i), d.__getitem__, l.append,
               lambda i: (q.put(i), q.get())):
        t = time.perf_counter()
        for i in range(n):
            op(i)
        figures.append((time.perf_counter() - t) / n)
    results.put(figures)


def manager_figures(out, quick, budget):
    """multiprocessing.Manager(): proxy calls from a child, and start + shutdown."""
    ctx = mp.get_context("fork")
    n = 500 if quick else 5_000
    with ctx.Manager() as m:
        results = ctx.Queue()
        # Held here: the server frees an object when its last proxy goes.
        proxies = (m.dict(), m.list(), m.Queue())
        p = ctx.Process(target=_manager_client, args=(*proxies, n, results))
        p.start()
        figures = results.get()
        p.join()
    for key, seconds in zip(("dict_set", "dict_get", "list_append", "queue_put_get"), figures):
        out[f"manager_{key}_us"] = seconds * 1e6
    out["manager_start_shutdown_ms"] = median_of(
        lambda: ctx.Manager().shutdown(), budget=budget) * 1e3


def main():
    processes = int(sys.argv[1])
    quick = len(sys.argv) > 2 and sys.argv[2] == "--quick"
    budget = 0.2 if quick else 1.0
    out = {"python": sys.version.split()[0]}
    ctx = mp.get_context("fork")
    with ctx.Pool(processes) as pool:
        n = 200
        out["apply_us"] = median_of(lambda: [pool.apply(sq, (i,)) for i in range(n)], budget=budget) / n * 1e6
        n = 10_000

        def tiny():
            handles = [pool.apply_async(sq, (i,)) for i in range(n)]
            for h in handles:
                h.get()

        out["apply_async_per_s"] = n / median_of(tiny, budget=budget)
        n = 10_000
        called = []

        def with_callbacks():
            handles = [pool.apply_async(sq, (i,), callback=called.append) for i in range(n)]
            for h in handles:
                h.wait()

        out["apply_async_callback_per_s"] = n / median_of(with_callbacks, budget=budget)
        n = 20_000
        out["imap_unordered_per_s"] = n / median_of(
            lambda: sum(pool.imap_unordered(sq, range(n))), budget=budget)
        for n in (1_000, 100_000, 1_000_000):
            data = [float(i) for i in range(n)]
            out[f"map_{n}_ms"] = median_of(lambda: pool.map(sq, data), budget=budget) * 1e3
        # Any picklable value: 10,000 strings of 100 bytes, and 10 bytes
        # objects of 1 MiB, upper-cased (examples/compare.rs, "serde").
        strings = [f"string {i} ".ljust(100, "x") for i in range(10_000)]
        vectors = [bytes(range(256)) * 4096 for _ in range(10)]
        for key, data in (("serde_strings", strings), ("serde_vectors", vectors)):
            med, lo, hi = spread_of(lambda: pool.map(upper, data), budget=budget)
            out[f"{key}_ms"], out[f"{key}_min_ms"], out[f"{key}_max_ms"] = med * 1e3, lo * 1e3, hi * 1e3
    out["create_destroy_ms"] = median_of(
        lambda: ctx.Pool(processes).terminate(), budget=budget) * 1e3
    manager_figures(out, quick, budget)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
