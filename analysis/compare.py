"""Discrete runs against their continuous limits: ensemble moments with confidence bands, weak errors.

The slow clock (label noise): label-noise SGD at step eta, noise sigma, batch B is read at
tau = eta^2 sigma^2 k / B, its iterates mapped onto the zero-loss manifold by Phi (`flows.limit_map`),
and held against the Riemannian flow of tr H / 4 in tau (`flows.riemannian_flow`).
"""

from collections.abc import Callable

import jax
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree
from scipy.stats import norm

from flows import label_noise_sgd, limit_map, riemannian_flow, timescale
from models import Problem, checks


def mean_band(values, axis: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Mean over `axis` and the half-width of its normal confidence interval at `level`:
    z_{(1+level)/2} * std / sqrt(N), with the unbiased std over N samples."""
    values = np.asarray(values)
    count = values.shape[axis]
    if count < 2:
        raise ValueError(f"a confidence band needs at least 2 samples along axis {axis}, got {count}")
    half = norm.ppf((1 + level) / 2) * values.std(axis=axis, ddof=1) / np.sqrt(count)
    return values.mean(axis=axis), half


def weak_error(sample_mean, reference) -> float:
    """sup over the saved times of |E[phi(theta_k)] - phi_ref(t_k)|."""
    return float(np.max(np.abs(np.asarray(sample_mean) - np.asarray(reference))))


def order(etas, errors) -> float:
    """The slope of log(error) against log(eta): the observed order of convergence."""
    return float(np.polyfit(np.log(np.asarray(etas)), np.log(np.asarray(errors)), 1)[0])


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
    observable: Callable[[Problem, PyTree], Array] | None = None,
) -> dict[str, np.ndarray]:
    """Label-noise SGD ensembles at each eta, mapped by Phi, against the Riemannian flow, in tau.

    From `params0` mapped onto the manifold, every eta runs `seeds` label-noise SGD paths for
    tau1 * B / (eta^2 sigma^2) steps (rounded to a multiple of `num_saves`), saves `num_saves + 1` points,
    maps each by Phi and evaluates `observable` (default tr H, which on the manifold is tr G = 4 F). The
    flow is evaluated at the same tau.

    **Returns:** arrays `tau_{eta}`, `sgd_mean_{eta}`, `sgd_band_{eta}` (95% half-width), `flow_{eta}` and
    `weak_error_{eta}` for each eta, and `order` (the slope of the weak error against eta on log axes).
    """
    sigma = float(checks.positive("sigma", sigma))
    seeds = checks.positive_int("seeds", seeds)
    batch = checks.batch_size(batch_size, problem.n)
    observable = observable or (lambda prob, p: prob.gauss_newton_trace(p))
    start = limit_map(problem, params0)
    out, errors = {}, []
    for i, eta in enumerate(etas):
        every = max(1, timescale.steps_for_slow_time(tau1 / num_saves, eta, sigma, batch))
        taus = timescale.slow_time(np.arange(num_saves + 1) * every, eta, sigma, batch)
        runs = jax.vmap(
            lambda k, eta=eta, every=every: (
                label_noise_sgd(
                    problem,
                    start,
                    steps=every * num_saves,
                    eta=eta,
                    sigma=sigma,
                    key=k,
                    batch_size=batch_size,
                    save_every=every,
                ).params
            )
        )(jax.random.split(jax.random.fold_in(key, i), seeds))
        values = jax.vmap(jax.vmap(lambda p: observable(problem, limit_map(problem, p))))(runs)
        flow = riemannian_flow(
            problem, start, t1=taus[-1], ts=taus, save_params=False, metrics={"observable": observable}
        )
        mean, band = mean_band(values)
        out |= {
            f"tau_{eta}": taus,
            f"sgd_mean_{eta}": mean,
            f"sgd_band_{eta}": band,
            f"flow_{eta}": np.asarray(flow.stats["observable"]),
        }
        errors.append(weak_error(mean, flow.stats["observable"]))
        out[f"weak_error_{eta}"] = np.asarray(errors[-1])
    if len(etas) > 1:
        out["order"] = np.asarray(order(etas, errors))
    return out
