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
    out["create_destroy_ms"] = median_of(
        lambda: ctx.Pool(processes).terminate(), budget=budget) * 1e3
    print(json.dumps(out))


if __name__ == "__main__":
    main()
