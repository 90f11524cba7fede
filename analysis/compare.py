"""Discrete runs against their continuous limits: ensemble moments with confidence bands, weak errors.

The fast clock (t = eta * k): SGD and label-noise SGD ensembles against the SDE paths that model them
(`flows.sgd_sde`, `flows.label_noise_sde`), driven by the same keys. For label-noise GD the SDE's Brownian
path is built from the SGD run's own draws (`flows.sde.BrownianGrid`), so SGD and SDE are coupled path by
path and their difference has far less variance than either; for minibatch noise the keys match but the
noises are independent. Gradient flow is the noiseless baseline.

The slow clock (label noise): label-noise SGD at step eta, noise sigma, batch B is read at
tau = eta^2 sigma^2 k / B, its iterates mapped onto the zero-loss manifold by Phi (`flows.limit_map`),
and held against the Riemannian flow of tr H / 4 in tau (`flows.riemannian_flow`).
"""

import functools
import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray, PyTree
from scipy.stats import norm
from scipy.stats import t as student_t

from flows import (
    Trajectory,
    gradient_flow,
    label_noise_sde,
    label_noise_sgd,
    limit_map,
    riemannian_flow,
    sgd,
    sgd_sde,
    timescale,
)
from models import Problem, checks

from . import hessian


def mean_band(values, axis: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Mean over `axis` and the half-width of its Student-t confidence interval at `level`:
    t_{(1+level)/2, N-1} * std / sqrt(N), with the unbiased std over N samples (t, not the normal quantile:
    at 16 seeds the normal band is 8% too narrow)."""
    values = np.asarray(values)
    count = values.shape[axis]
    if count < 2:
        raise ValueError(f"a confidence band needs at least 2 samples along axis {axis}, got {count}")
    half = student_t.ppf((1 + level) / 2, count - 1) * values.std(axis=axis, ddof=1) / np.sqrt(count)
    return values.mean(axis=axis), half


def init_processes() -> None:
    """Join a multi-process `jax.distributed` run when this process was started as one of its processes:
    `jax.distributed.initialize` from SHARPFLOW_COORDINATOR (host:port of process 0),
    SHARPFLOW_NUM_PROCESSES and SHARPFLOW_PROCESS_ID, which `scripts/launch.py` sets. Does nothing when they
    are unset. Call it before anything else touches JAX's devices."""
    coordinator = os.environ.get("SHARPFLOW_COORDINATOR")
    if coordinator is None:
        return
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["SHARPFLOW_NUM_PROCESSES"]),
        process_id=int(os.environ["SHARPFLOW_PROCESS_ID"]),
    )


def seed_mesh(devices=None) -> Mesh:
    """A one-axis mesh, `"seeds"`, over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("seeds",))


def ensemble(
    flow: Callable[..., Trajectory], keys, *per_seed, chunk: int | None = None, mesh=None, progress=False
):
    """`flow(key, *args)` for every key (and the matching slices of `per_seed`, pytrees with a leading seed
    axis), stacked over a leading seed axis: `jax.vmap`-ed, compiled once (`jax.jit`) and sharded over the
    seed axis of `mesh` (default `seed_mesh()`: all devices of all processes), `chunk` seeds at a time (all at
    once by default; `progress=True` shows a tqdm bar over the chunks).

    Every device runs the same compiled per-seed program on its share of the seeds, so the same keys give
    the same bits on one device, on several and across processes (`jax.distributed`, started by
    `scripts/launch.py`); tested with 1 against 4 CPU devices
    (`XLA_FLAGS=--xla_force_host_platform_device_count=4`) and 1 against 2 processes. A chunk
    is padded to a multiple of the mesh size with copies of its last seed, which are dropped. Across
    processes every process passes the same keys and gets the whole result back.
    """
    from tqdm.auto import tqdm

    keys = jnp.asarray(keys)
    typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    impl = jax.random.key_impl(keys) if typed else None
    data = np.asarray(jax.random.key_data(keys) if typed else keys)
    per_seed = jax.tree.map(np.asarray, per_seed)
    mesh = mesh if mesh is not None else seed_mesh()
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))

    run = _vmapped(flow, impl)
    chunk = chunk or len(data)
    parts = []
    for start in tqdm(range(0, len(data), chunk), disable=not progress, desc="seeds"):
        count = min(chunk, len(data) - start)
        pad = -count % mesh.size

        def shard(x, start=start, count=count, pad=pad):
            x = x[start : start + count]
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        out = run(shard(data), *jax.tree.map(shard, per_seed))
        if jax.process_count() > 1:
            out = multihost_utils.process_allgather(out, tiled=True)
        parts.append(jax.tree.map(lambda a, count=count: a[:count], out))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


@functools.lru_cache(maxsize=16)
def _vmapped(flow, impl):
    """jit(vmap(flow)) taking raw key data, cached on the flow so that calling `ensemble` again with the same
    flow (say, chunk after chunk of a long run) does not compile again."""

    def one(k, *args):
        return flow(jax.random.wrap_key_data(k, impl=impl) if impl is not None else k, *args)

    return jax.jit(jax.vmap(one))


def paired_difference(a: Trajectory, b: Trajectory, stat: str, level: float = 0.95):
    """Mean over seeds of a.stats[stat] - b.stats[stat] at each saved time, and its confidence half-width.
    `a` and `b` are ensembles (leading seed axis) on the same clock and save times, run with the same keys
    (coupled where the flows allow it, which shrinks the band)."""
    if a.clock != b.clock:
        raise ValueError(f"mismatched clocks: {a.clock!r} against {b.clock!r}")
    ta, tb = np.asarray(a.ts), np.asarray(b.ts)
    if ta.shape != tb.shape or not np.allclose(ta, tb, rtol=1e-6, atol=1e-9):
        raise ValueError(
            f"mismatched save times: {ta.shape[-1]} times against {tb.shape[-1]}, or different ones"
        )
    return mean_band(np.asarray(a.stats[stat]) - np.asarray(b.stats[stat]), level=level)


def trace_h(problem, params):
    """tr H (exact; `analysis.hessian.trace`), a metric for the flows."""
    return hessian.trace(problem, params)


def sde_vs_sgd(
    problem: Problem,
    params0: PyTree,
    *,
    noise: str,
    etas,
    t1: float,
    key: PRNGKeyArray,
    seeds: int = 64,
    sigma: float | None = None,
    batch_size: int | None = None,
    substeps: int = 4,
    num_saves: int = 20,
    metrics=None,
    progress: bool = False,
    part: Callable[[str, Callable[[], dict]], dict] | None = None,
) -> dict[str, np.ndarray]:
    """SGD (`noise="batch"`: `flows.sgd` with `batch_size`) or label-noise SGD (`noise="label"`:
    `flows.label_noise_sgd` with `sigma`, full batch unless `batch_size`) against its SDE and gradient flow.

    For each eta, `seeds` SGD runs of t1 / eta steps and `seeds` SDE paths (Euler, fixed steps of
    eta / `substeps`, the same keys) are saved at `num_saves + 1` times in [0, t1]. For each metric (default
    the loss and tr H): the ensemble means and 95% bands, the paired SGD - SDE difference, the weak error
    sup_t |E SGD - E SDE| and that of gradient flow, sup_t |E SGD - GF|, each with its sampling noise removed
    and its 95% band (`debiased_weak_error`). Label noise couples SGD and SDE path by path (a small band);
    minibatch noise cannot be coupled, and its band is that of two independent ensembles.

    **Returns:** `t`; `gf_{m}`; per eta `sgd_mean_{m}_{eta}`, `sgd_band_...`, `sde_mean_...`, `sde_band_...`,
    `diff_mean_...`, `diff_band_...`, `weak_error_{m}_{eta}` and `weak_error_band_...`, `gf_error_{m}_{eta}`
    and `gf_error_band_...`; and with two or more etas `order_{m}` and `gf_order_{m}`, the slopes of the
    weak errors against eta on log axes: NaN unless every error is resolved (above its band).

    `part(label, compute) -> arrays`, when given (e.g. `analysis.store.part`), runs each eta's computation
    (label `eta{eta}`) so that it can be stored as it finishes and read back by a resumed run.
    """
    if noise not in ("batch", "label"):
        raise ValueError(f"noise must be 'batch' (minibatch SGD) or 'label' (label-noise SGD), got {noise!r}")
    if noise == "label":
        sigma = float(checks.positive("sigma", sigma))
    elif checks.batch_size(batch_size, problem.n) == problem.n:
        raise ValueError("noise='batch' needs batch_size < n")
    seeds = checks.positive_int("seeds", seeds)
    metrics = {"trace_H": trace_h} | dict(metrics or {})
    keys = jax.random.split(key, seeds)
    t = np.linspace(0.0, t1, num_saves + 1)
    gf = gradient_flow(problem, params0, t1=t1, ts=t, save_params=False, metrics=metrics)
    out = {"t": t} | {f"gf_{m}": np.asarray(v) for m, v in gf.stats.items()}
    errors = {m: ([], []) for m in gf.stats}
    noise_args = {"sigma": sigma} if noise == "label" else {}
    part = part or _unstored

    def at_eta(eta):
        steps = timescale.steps_for_time(t1, eta)
        if steps % num_saves:
            raise ValueError(f"t1 / eta = {steps} steps is not a multiple of num_saves = {num_saves}")
        common = dict(eta=eta, batch_size=batch_size, save_params=False, metrics=metrics, **noise_args)

        def discrete(k):
            run = label_noise_sgd if noise == "label" else sgd
            return run(problem, params0, key=k, steps=steps, save_every=steps // num_saves, **common)

        def continuous(k):
            run = label_noise_sde if noise == "label" else sgd_sde
            return run(problem, params0, key=k, t1=t1, ts=t, substeps=substeps, **common)

        a = ensemble(discrete, keys, progress=progress)
        b = ensemble(continuous, keys, progress=progress)
        r = {}
        for m in gf.stats:
            r[f"sgd_mean_{m}"], r[f"sgd_band_{m}"] = mean_band(a.stats[m])
            r[f"sde_mean_{m}"], r[f"sde_band_{m}"] = mean_band(b.stats[m])
            r[f"diff_mean_{m}"], r[f"diff_band_{m}"] = paired_difference(a, b, m)
            r[f"weak_error_{m}"], r[f"weak_error_band_{m}"] = debiased_weak_error(
                r[f"diff_mean_{m}"], r[f"diff_band_{m}"]
            )
            r[f"gf_error_{m}"], r[f"gf_error_band_{m}"] = debiased_weak_error(
                r[f"sgd_mean_{m}"] - out[f"gf_{m}"], r[f"sgd_band_{m}"]
            )
        return r

    for eta in etas:
        r = part(f"eta{eta}", lambda eta=eta: at_eta(eta))
        out |= {f"{k}_{eta}": np.asarray(v) for k, v in r.items()}
        for m in gf.stats:
            errors[m][0].append((float(r[f"weak_error_{m}"]), float(r[f"weak_error_band_{m}"])))
            errors[m][1].append((float(r[f"gf_error_{m}"]), float(r[f"gf_error_band_{m}"])))
    if len(etas) > 1:
        for m, (sde_err, gf_err) in errors.items():
            out[f"order_{m}"] = np.asarray(resolved_order(etas, sde_err))
            out[f"gf_order_{m}"] = np.asarray(resolved_order(etas, gf_err))
    return out


def _unstored(label, compute):
    """The `part` of a driver run without a store: `compute()`."""
    return compute()


def debiased_weak_error(diff_mean, diff_band, level: float = 0.95) -> tuple[float, float]:
    """sup_t |E a - E b| over T saved times, from the sample mean d_t of a - b and its pointwise confidence
    half-width at `level`, with the sampling noise removed: |d_t|^2 overestimates (E d_t)^2 by se_t^2 on
    average (se_t = half-width / z), so the estimate is sup_t sqrt(max(d_t^2 - se_t^2, 0)).

    Returns (estimate, half-width): the half-width is simultaneous over the T times (Bonferroni,
    z_{1 - (1 - level) / (2T)} se at the time of the sup), since a sup over T noisy values picks the
    largest. An error below its half-width is not resolved by the sample."""
    d, band = np.atleast_1d(np.asarray(diff_mean, float)), np.atleast_1d(np.asarray(diff_band, float))
    se = band / norm.ppf((1 + level) / 2)
    debiased = np.sqrt(np.maximum(d**2 - se**2, 0.0))
    i = int(np.argmax(debiased))
    return float(debiased[i]), float(norm.ppf(1 - (1 - level) / (2 * d.size)) * se[i])


def resolved_order(etas, errors_and_bands) -> float:
    """`order` of the errors against eta, or NaN unless every error exceeds its half-width (an order fitted
    to sampling noise is no measurement)."""
    errors = np.array([e for e, _ in errors_and_bands])
    bands = np.array([b for _, b in errors_and_bands])
    return order(etas, errors) if np.all(errors > bands) else float("nan")


def order(etas, errors) -> float:
    """The slope of log(error) against log(eta): the observed order of convergence (NaN when an error is 0,
    e.g. an observable the runs never moved)."""
    errors = np.asarray(errors, dtype=float)
    if np.any(errors <= 0):
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(etas)), np.log(errors), 1)[0])


def trace_g(problem, params):
    """tr G = (1/n) ||J||_F^2, which is tr H on the zero-loss manifold (`Problem.gauss_newton_trace`)."""
    return problem.gauss_newton_trace(params)


def label_noise_slow_clock(
    problem: Problem,
    params0: PyTree,
    *,
    etas,
    sigma: float,
    tau1: float,
    key: PRNGKeyArray,
    seeds: int = 16,
    num_saves: int = 10,
    batch_size: int | None = None,
    noise_batch_size: int | None = None,
    observables: Mapping[str, Callable[[Problem, PyTree], Array]] | None = None,
    part: Callable[[str, Callable[[], dict]], dict] | None = None,
) -> dict[str, np.ndarray]:
    """Label-noise SGD ensembles at each eta, mapped by Phi, against the Riemannian flow, in tau.

    From `params0` mapped onto the manifold, every eta runs `seeds` label-noise SGD paths for
    tau1 * B / (eta^2 sigma^2) steps (`flows.timescale`: with a label-noise batch `noise_batch_size` apart
    from the gradient batch, tau1 * B^2 / (B_eps eta^2 sigma^2)), saves `num_saves + 1` points,
    maps each by Phi and evaluates every observable (name -> `fn(problem, params)`; default
    `{"trace_H": trace_g}`, tr H on the manifold). The flow is evaluated at the same tau. Memory: the saved
    parameters, seeds * (num_saves + 1) * p per eta.

    **Returns:** arrays `tau_{eta}`; for each observable `name`, `sgd_mean_{name}_{eta}`,
    `sgd_band_{name}_{eta}` (95% half-width), `flow_{name}_{eta}`, and `weak_error_{name}_{eta}` with
    `weak_error_band_{name}_{eta}` (`debiased_weak_error`) for each eta; and `order_{name}` (the slope of the
    weak error against eta on log axes, with two or more etas; NaN unless every error is resolved).
    `part` as in `sde_vs_sgd`: each eta (label `eta{eta}`) through it.
    """
    sigma = float(checks.positive("sigma", sigma))
    seeds = checks.positive_int("seeds", seeds)
    batch = checks.batch_size(batch_size, problem.n)
    observables = dict(observables or {"trace_H": trace_g})
    start = limit_map(problem, params0)
    out, errors = {}, {name: [] for name in observables}

    def evaluate_all(p):
        on = limit_map(problem, p)
        return {name: fn(problem, on) for name, fn in observables.items()}

    part = part or _unstored

    def at_eta(i, eta):
        every = max(1, timescale.steps_for_slow_time(tau1 / num_saves, eta, sigma, batch, noise_batch_size))
        taus = timescale.slow_time(np.arange(num_saves + 1) * every, eta, sigma, batch, noise_batch_size)
        runs = jax.vmap(
            lambda k: (
                label_noise_sgd(
                    problem,
                    start,
                    steps=every * num_saves,
                    eta=eta,
                    sigma=sigma,
                    key=k,
                    batch_size=batch_size,
                    noise_batch_size=noise_batch_size,
                    save_every=every,
                ).params
            )
        )(jax.random.split(jax.random.fold_in(key, i), seeds))
        values = jax.vmap(jax.vmap(evaluate_all))(runs)
        flow = riemannian_flow(problem, start, t1=taus[-1], ts=taus, save_params=False, metrics=observables)
        r = {"tau": taus}
        for name in observables:
            r[f"sgd_mean_{name}"], r[f"sgd_band_{name}"] = mean, band = mean_band(values[name])
            r[f"flow_{name}"] = np.asarray(flow.stats[name])
            r[f"weak_error_{name}"], r[f"weak_error_band_{name}"] = debiased_weak_error(
                mean - r[f"flow_{name}"], band
            )
        return r

    for i, eta in enumerate(etas):
        r = part(f"eta{eta}", lambda i=i, eta=eta: at_eta(i, eta))
        out |= {f"{k}_{eta}": np.asarray(v) for k, v in r.items()}
        for name in observables:
            errors[name].append((float(r[f"weak_error_{name}"]), float(r[f"weak_error_band_{name}"])))
    if len(etas) > 1:
        for name, errs in errors.items():
            out[f"order_{name}"] = np.asarray(resolved_order(etas, errs))
    return out
