"""Timing for the scripts/benchmarks/bench_*.py benchmarks: medians of repeated runs, printed as ratios."""

import statistics
import time

import jax


def median_time(fn, *, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds (JAX results waited for), after `warmup` calls (compilation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_times(fns: dict, *, repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median wall times of several `fns` (name -> fn), their repeats interleaved (a, b, c, a, b, c, ...) so
    that a change in the machine's load falls on every row alike: the ratios are what they are timed for."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def table(title: str, rows: list[tuple[str, float]], baseline: str) -> list[dict]:
    """Print `rows` (name, seconds) with each one's ratio to the `baseline` row; return them as dicts."""
    base = dict(rows)[baseline]
    print(f"\n{title}")
    print(f"{'':42s} {'median s':>10s} {'vs ' + baseline:>22s}")
    out = []
    for name, t in rows:
        print(f"{name:42s} {t:10.4f} {t / base:21.2f}x")
        out.append({"benchmark": title, "run": name, "seconds": t, "baseline": baseline, "ratio": t / base})
    return out
