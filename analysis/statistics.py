"""Statistics of trajectories and ensembles: means with Student-t confidence bands (of arrays and of an
ensemble's every stat), time averages over a window of saves, distances between parameter pytrees, paired
differences, weak errors with their sampling noise removed, and observed orders of convergence. numpy, on
the host (not under jit)."""

import equinox as eqx
import jax
import numpy as np
from scipy.stats import t as student_t

from flows import Trajectory

__all__ = [
    "mean_band",
    "ensemble_bands",
    "time_average",
    "distance",
    "paired_difference",
    "debiased_weak_error",
    "resolved_order",
    "order",
]


def mean_band(values, axis: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Mean over `axis` and the half-width of its Student-t confidence interval at `level`:
    t_{(1+level)/2, N-1} * std / sqrt(N), with the unbiased std over N samples (t, not the normal quantile:
    at 16 seeds the normal band is 8% too narrow).

    **Arguments:** the samples `values`, the sample `axis`, the confidence `level`.

    **Returns:** (mean, half-width), NumPy arrays.

    **Raises:** `ValueError` for fewer than two samples along `axis`."""
    values = np.asarray(values)
    count = values.shape[axis]
    if count < 2:
        raise ValueError(f"a confidence band needs at least 2 samples along axis {axis}, got {count}")
    half = student_t.ppf((1 + level) / 2, count - 1) * values.std(axis=axis, ddof=1) / np.sqrt(count)
    return values.mean(axis=axis), half


def ensemble_bands(traj: Trajectory, level: float = 0.95) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every stat of an ensemble (a Trajectory with a leading seed axis, `analysis.ensembles.ensemble`):
    name -> (mean over the seeds, Student-t half-width at `level`) at each saved time (`mean_band`).

    **Arguments:** the ensemble `traj`, the confidence `level`.

    **Returns:** a dict name -> (mean, half-width).

    **Raises:** `ValueError` for a single run (no seed axis) or fewer than two seeds."""
    if np.ndim(traj.ts) < 2:
        raise ValueError(
            f"traj must be an ensemble (ts of shape (seeds, T)), got ts of shape {np.shape(traj.ts)}"
        )
    return {name: mean_band(values, level=level) for name, values in traj.stats.items()}


def time_average(traj: Trajectory, window: int) -> Trajectory:
    """`traj` with its parameters and stats averaged over a centred window of `window` consecutive saves:
    at save k the mean over saves k - window // 2 .. k - window // 2 + window - 1, NaN where that window
    leaves the run; `ts` and the rest unchanged. A GD run saved every step, averaged over its cycles at the
    edge of stability, is what the central flow predicts (Cohen, Damian et al. 2024). An ensemble is
    averaged along its save axis. Running sums in float64: cost O(T) per number, memory that of `traj`.

    **Arguments:** `traj`, the `window` in saves (1..T).

    **Returns:** the averaged `Trajectory`.

    **Raises:** `ValueError` for a `window` that is not an int in 1..T."""
    T = np.shape(traj.ts)[-1]
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or not 1 <= window <= T:
        raise ValueError(f"window must be an int in 1..{T} (the saves), got {window!r}")
    axis, start = np.ndim(traj.ts) - 1, window // 2

    def average(x):
        dtype = np.result_type(np.asarray(x).dtype, np.float32)  # an int stat averages to floats
        x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
        sums = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(x, axis=0)])
        out = np.full(x.shape, np.nan)
        valid = np.arange(start, T - (window - start) + 1)  # saves whose window lies inside the run
        out[valid] = (sums[valid - start + window] - sums[valid - start]) / window
        return np.moveaxis(out, 0, axis).astype(dtype)

    return eqx.tree_at(
        lambda tr: (tr.params, tr.stats),
        traj,
        (jax.tree.map(average, traj.params), {k: average(v) for k, v in traj.stats.items()}),
        is_leaf=lambda x: x is None,
    )


def distance(a, b, *, batch_dims: int = 0) -> np.ndarray:
    """The Euclidean distance ||a - b|| between two parameter pytrees of one structure, over every leaf: the
    root of the sum of squared differences over each leaf's axes after its first `batch_dims` (e.g.
    `batch_dims=1` for a Trajectory's saved params against one point, which broadcasts against them).

    **Arguments:** the pytrees `a`, `b`, `batch_dims`.

    **Returns:** the distances, a NumPy array of the batch shape (a 0-d array for `batch_dims=0`).

    **Raises:** `ValueError` for pytrees of different structures."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError("a and b must be pytrees of the same structure (parameters of one model)")
    squares = [
        np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2, axis=tuple(range(batch_dims, d)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
        for d in [max(np.ndim(x), np.ndim(y))]
    ]
    return np.asarray(np.sqrt(sum(squares)))


def paired_difference(a: Trajectory, b: Trajectory, stat: str, level: float = 0.95):
    """Mean over seeds of a.stats[stat] - b.stats[stat] at each saved time, and its confidence half-width.
    `a` and `b` are ensembles (leading seed axis) on the same clock and save times, run with the same keys
    (coupled where the flows allow it, which shrinks the band).

    **Arguments:** the ensembles `a`, `b`, the `stat`, the confidence `level`.

    **Returns:** (mean, half-width) over the saved times.

    **Raises:** `ValueError` for different clocks or save times."""
    if a.clock != b.clock:
        raise ValueError(f"mismatched clocks: {a.clock!r} against {b.clock!r}")
    ta, tb = np.asarray(a.ts), np.asarray(b.ts)
    if ta.shape != tb.shape or not np.allclose(ta, tb, rtol=1e-6, atol=1e-9):
        raise ValueError(
            f"mismatched save times: {ta.shape[-1]} times against {tb.shape[-1]}, or different ones"
        )
    return mean_band(np.asarray(a.stats[stat]) - np.asarray(b.stats[stat]), level=level)


def debiased_weak_error(diff_mean, diff_band, seeds: int, level: float = 0.95) -> tuple[float, float]:
    """sup_t |E a - E b| over T saved times, from the sample mean d_t of a - b over `seeds` samples and its
    pointwise Student-t half-width at `level` (`mean_band`, or the root sum of squares of two such bands of
    independent ensembles of `seeds` each), with the sampling noise removed: |d_t|^2 overestimates
    (E d_t)^2 by se_t^2 on average (se_t = half-width / t_{(1+level)/2, seeds-1}, the quantile the band was
    made with), so the estimate is sup_t sqrt(max(d_t^2 - se_t^2, 0)).

    **Arguments:** `diff_mean` (T,), `diff_band` (T,), the sample size `seeds`, the `level` of the band.

    **Returns:** (estimate, half-width), Python floats: the half-width is simultaneous over the T times
    (Bonferroni, t_{1 - (1 - level) / (2T), seeds-1} se at the time of the sup), since a sup over T noisy
    values picks the largest. An error below its half-width is not resolved by the sample.

    **Raises:** `ValueError` for fewer than two seeds."""
    seeds = int(seeds)
    if seeds < 2:
        raise ValueError(f"seeds must be at least 2 (the band's sample size), got {seeds}")
    d, band = np.atleast_1d(np.asarray(diff_mean, float)), np.atleast_1d(np.asarray(diff_band, float))
    se = band / student_t.ppf((1 + level) / 2, seeds - 1)
    debiased = np.sqrt(np.maximum(d**2 - se**2, 0.0))
    i = int(np.argmax(debiased))
    return float(debiased[i]), float(student_t.ppf(1 - (1 - level) / (2 * d.size), seeds - 1) * se[i])


def resolved_order(etas, errors_and_bands) -> float:
    """`order` of the errors against eta, or NaN unless every error exceeds its half-width (an order fitted
    to sampling noise is no measurement).

    **Arguments:** the step sizes `etas` and each one's (error, half-width) `errors_and_bands`.

    **Returns:** the order, a Python float (NaN when unresolved)."""
    errors = np.array([e for e, _ in errors_and_bands])
    bands = np.array([b for _, b in errors_and_bands])
    return order(etas, errors) if np.all(errors > bands) else float("nan")


def order(etas, errors) -> float:
    """The slope of log(error) against log(eta): the observed order of convergence (NaN when an error is 0,
    e.g. an observable the runs never moved).

    **Arguments:** the step sizes `etas` and the `errors`.

    **Returns:** the slope, a Python float."""
    errors = np.asarray(errors, dtype=float)
    if np.any(errors <= 0):
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(etas)), np.log(errors), 1)[0])
