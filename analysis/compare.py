"""The experiment drivers: discrete runs against their continuous limits, as ensembles with confidence bands
and weak errors (`analysis.ensembles`, `analysis.statistics`).

The fast clock (t = eta * k): SGD and label-noise SGD ensembles against the SDE paths that model them
(`flows.sgd_sde`, `flows.label_noise_sde`), driven by the same keys. For label-noise GD the SDE's Brownian
path is built from the SGD run's own draws (`flows.BrownianGrid`), so SGD and SDE are coupled path by
path and their difference has far less variance than either; for minibatch noise the keys match but the
noises are independent. Gradient flow is the noiseless baseline.

The edge of stability: GD at step eta, every step kept, against gradient flow and the central flow
(`flows.central_flow`) read at common times t = eta k; GD's loss and parameters averaged over a window of
steps (its oscillation at the edge averaged out) are what the central flow predicts.

The slow clock (label noise): label-noise SGD at step eta, noise sigma, batch B is read at
tau = eta^2 sigma^2 k / B, its iterates mapped onto the zero-loss manifold by Phi (`flows.limit_map`),
and held against the Riemannian flow of tr H / 4 in tau (`flows.riemannian_flow`).
"""

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from flows import (
    central_flow,
    gd,
    gradient_flow,
    label_noise_sde,
    label_noise_sgd,
    limit_map,
    riemannian_flow,
    sgd,
    sgd_sde,
    svag,
    timescale,
)
from models import Problem, checks

from . import hessian
from .ensembles import ensemble
from .statistics import (
    debiased_weak_error,
    distance,
    ensemble_bands,
    mean_band,
    paired_difference,
    resolved_order,
    time_average,
)

__all__ = [
    "sde_vs_sgd",
    "svag_vs_sde",
    "edge_of_stability",
    "edge_errors",
    "edge_summary",
    "label_noise_slow_clock",
]


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
    mesh=None,
    progress: bool = False,
    part: Callable[[str, Callable[[], dict]], dict] | None = None,
) -> dict:
    """SGD (`noise="batch"`: `flows.sgd` with `batch_size`) or label-noise SGD (`noise="label"`:
    `flows.label_noise_sgd` with `sigma`, full batch unless `batch_size`) against its SDE and gradient flow.

    For each eta, `seeds` SGD runs of t1 / eta steps and `seeds` SDE paths (Euler, fixed steps of
    eta / `substeps`, the same keys) are saved at `num_saves + 1` times in [0, t1], as ensembles over
    `mesh` (`analysis.ensembles.ensemble`; `mesh=False`: a plain vmap). For each metric (the loss, and
    `metrics`, default {"trace_H": `hessian.trace`}, exact at p Hessian-vector products a call): the
    ensemble means and 95% bands, the paired SGD - SDE difference, the weak error sup_t |E SGD - E SDE|
    and that of gradient flow, sup_t |E SGD - GF|, each with its sampling noise removed and its 95% band
    (`debiased_weak_error`). Label noise couples SGD and SDE path by path (a small band); minibatch noise
    cannot be coupled, and its band is that of two independent ensembles.

    **Arguments:** `problem`, `params0`; `noise` (`"batch"` or `"label"`), the step sizes `etas`, `t1` (a
    whole number of steps of each eta), `key`, `seeds`, `sigma` (label noise), `batch_size`, the SDE's
    `substeps`, `num_saves`, `metrics`, `mesh`, `progress`, `part` (below).

    **Returns:** a dict: `t`, the save times; `gf[m]`, gradient flow's metric m; `eta[str(eta)][m]`, a dict of
    `sgd_mean`, `sgd_band`, `sde_mean`, `sde_band`, `diff_mean`, `diff_band` (over time), `weak_error`,
    `weak_error_band`, `gf_error`, `gf_error_band`; and with two or more etas `order[m]` and `gf_order[m]`,
    the slopes of the weak errors against eta on log axes: NaN unless every error is resolved (above its
    band). `analysis.store` stores and reads it back as it is.

    `part(label, compute) -> arrays`, when given (e.g. `analysis.store.part`), runs each eta's computation
    (label `eta{eta}`) so that it can be stored as it finishes and read back by a resumed run.

    **Raises:** `ValueError` for another `noise`, label noise without `sigma > 0`, minibatch noise with
    `batch_size = n`, or a bad `seeds`; the flows' own errors (a `t1` that is not a whole number of steps).
    """
    if noise not in ("batch", "label"):
        raise ValueError(f"noise must be 'batch' (minibatch SGD) or 'label' (label-noise SGD), got {noise!r}")
    if noise == "label":
        sigma = checks.positive_float("sigma", sigma)
    elif checks.batch_size(batch_size, problem.n) == problem.n:
        raise ValueError("noise='batch' needs batch_size < n")
    seeds = checks.positive_int("seeds", seeds)
    metrics = {"trace_H": hessian.trace} if metrics is None else dict(metrics)
    keys = jax.random.split(key, seeds)
    t = np.linspace(0.0, t1, num_saves + 1)
    gf = gradient_flow(problem, params0, t1=t1, ts=t, save_params=False, metrics=metrics)
    out = {"t": t, "gf": {m: np.asarray(v) for m, v in gf.stats.items()}, "eta": {}}
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

        a = ensemble(discrete, keys, mesh=mesh, progress=progress)
        b = ensemble(continuous, keys, mesh=mesh, progress=progress)
        r = {}
        for m in gf.stats:
            s = r[m] = {}
            s["sgd_mean"], s["sgd_band"] = mean_band(a.stats[m])
            s["sde_mean"], s["sde_band"] = mean_band(b.stats[m])
            s["diff_mean"], s["diff_band"] = paired_difference(a, b, m)
            s["weak_error"], s["weak_error_band"] = debiased_weak_error(s["diff_mean"], s["diff_band"], seeds)
            s["gf_error"], s["gf_error_band"] = debiased_weak_error(
                s["sgd_mean"] - out["gf"][m], s["sgd_band"], seeds
            )
        return jax.tree.map(np.asarray, r)  # arrays throughout, as `analysis.store` reads them back

    for eta in etas:
        out["eta"][str(eta)] = part(f"eta{eta}", lambda eta=eta: at_eta(eta))
    if len(etas) > 1:
        out["order"] = {m: _order(etas, out["eta"], m, "weak_error") for m in gf.stats}
        out["gf_order"] = {m: _order(etas, out["eta"], m, "gf_error") for m in gf.stats}
    return out


def svag_vs_sde(
    problem: Problem,
    params0: PyTree,
    *,
    eta: float,
    ls,
    t1: float,
    batch_size: int,
    key: PRNGKeyArray,
    seeds: int,
    num_saves: int,
    metrics: Callable[[PRNGKeyArray], Mapping] | None = None,
    substeps: int = 32,
    seeds_at_once: int | None = None,
    mesh=None,
    progress: bool = False,
    part: Callable[[str, Callable[[], dict]], dict] | None = None,
) -> dict:
    """SVAG (`flows.svag`) at each l of `ls` (l = 1 is SGD with `batch_size`) and the SGD SDE
    (`flows.sgd_sde`, Euler with `substeps` a step), `seeds` runs each, saved at `num_saves + 1` times in
    [0, t1] (t = k eta / l for SVAG).

    `metrics(metric_key)` gives each seed its metrics (the loss is always recorded): default
    `{"trace_H": hessian.TraceProbe(metric_key)}`, one Hutchinson probe a seed, unbiased for the ensemble's
    mean E tr H, its probe variance inside the band (`hessian.TraceProbe`). Seed i's metric key is the same
    in every run, SVAG's at each l and the SDE's (common random numbers: from the common start every run's
    estimate at t = 0 is the same number, and the probes add no variance to the gaps' differences); SVAG's
    ensembles share their keys over l (from `key`); the SDE's noise is independent of them.

    **Returns:** a dict: `t`; for each run (`svag{l}`, `sde`) and stat m, `m` (the ensemble mean over time)
    and `m_band` (its 95% half-width); `gap[m]`, shape (len(ls), 2): the weak gap sup_t |E m(SVAG_l) -
    E m(SDE)| with its noise floor removed and its 95% band (`debiased_weak_error`, two independent
    ensembles). Memory: the saved stats; cost per seed: t1 l / eta SVAG steps (two minibatch gradients each)
    for each l, t1 substeps / eta SDE steps, and the metrics at each save.

    **Arguments:** `problem`, `params0`, `eta`, the SVAG factors `ls`, `t1`, `batch_size`, `key`, `seeds`,
    `num_saves` (t1 l / eta steps must be a multiple of it), `metrics`, the SDE's `substeps`,
    `seeds_at_once` (seeds a compiled call), `mesh`, `progress`, `part` (as in `sde_vs_sgd`: each run
    `svag{l}` and `sde` through it).

    **Raises:** `ValueError` for a bad `seeds` or `num_saves`, or a step count that `num_saves` does not
    divide; the flows' own errors."""
    seeds = checks.positive_int("seeds", seeds)
    metrics = metrics or (lambda k: {"trace_H": hessian.TraceProbe(k)})
    t = np.linspace(0.0, t1, checks.positive_int("num_saves", num_saves) + 1)
    keys = jax.random.split(key, seeds)
    sde_keys = jax.random.split(jax.random.fold_in(key, 1), seeds)
    metric_keys = jax.random.split(jax.random.fold_in(key, 2), seeds)  # the same in every run
    part = part or _unstored

    def summarised(runs):
        """Each stat's ensemble mean `m` and 95% half-width `m_band` over time (`ensemble_bands`)."""
        r = {}
        for m, (mean, band) in ensemble_bands(runs).items():
            r[m], r[f"{m}_band"] = mean, band
        return jax.tree.map(np.asarray, r)

    out = {"t": t, "gap": {}}
    for ell in ls:
        steps = timescale.steps_for_time(t1, eta / ell)  # SVAG's step is eta / l
        if steps % num_saves:
            raise ValueError(f"t1 l / eta = {steps} steps (l = {ell}) is not a multiple of num_saves")

        def run(k, mk, ell=ell, steps=steps):
            return svag(problem, params0, steps=steps, eta=eta, batch_size=batch_size, l=ell, key=k,
                        save_every=steps // num_saves, save_params=False, metrics=metrics(mk))  # fmt: skip

        out[f"svag{ell}"] = part(
            f"svag{ell}",
            lambda run=run: summarised(
                ensemble(run, keys, metric_keys, seeds_at_once=seeds_at_once, mesh=mesh, progress=progress)
            ),
        )

    def sde(k, mk):
        return sgd_sde(problem, params0, t1=t1, eta=eta, batch_size=batch_size, key=k, ts=t,
                       substeps=substeps, save_params=False, metrics=metrics(mk))  # fmt: skip

    out["sde"] = part(
        "sde",
        lambda: summarised(
            ensemble(sde, sde_keys, metric_keys, seeds_at_once=seeds_at_once, mesh=mesh, progress=progress)
        ),
    )
    for m in (m for m in out["sde"] if f"{m}_band" in out["sde"]):
        gaps = []
        for ell in ls:
            d = out[f"svag{ell}"][m] - out["sde"][m]
            band = np.hypot(out[f"svag{ell}"][f"{m}_band"], out["sde"][f"{m}_band"])
            gaps.append(debiased_weak_error(d, band, seeds))  # two independent ensembles of `seeds`
        out["gap"][m] = np.asarray(gaps)
    return jax.tree.map(np.asarray, out)


def edge_of_stability(
    problem: Problem,
    params0: PyTree,
    *,
    eta: float,
    t1: float,
    num_saves: int,
    window: int,
    num_eigs: int = 3,
    substeps: int = 4,
    sharpness_every: int | None = None,
    part: Callable[[str, Callable[[], dict]], dict] | None = None,
) -> dict:
    """GD with step `eta` for t1 / eta steps (every step kept), gradient flow and the central flow
    (`num_eigs` eigenpairs, `substeps` steps per GD step), read at the steps k = 0, K, 2K, ... (K = steps //
    num_saves), t = eta k.

    **Returns:** a dict of arrays: `t`; GD's `gd_loss` (every step), `gd_mean_loss` (averaged over a centred
    window of `window` steps, `analysis.statistics.time_average`; NaN where the window leaves the run) and
    `gd_lambda` (lambda_max(H) by Lanczos) at the saves, and `gd_sharpness` at GD's steps
    `gd_sharpness_steps` (every `sharpness_every` steps, default K: GD's overshoots past the edge last a
    few steps, which the saves miss); gradient flow's `gf_loss`, `gf_lambda`; the central flow's
    `cf_loss`, `cf_predicted` (L + (1/2) <Sigma, H>, its prediction of GD's averaged loss), `cf_lambda`
    (its top eigenvalue), `cf_edge_count`; and `gf_distance`, `cf_distance`: each flow's distance from GD's
    averaged parameters.

    Memory: GD's parameters at every step, steps x p numbers (on the host after the run), and
    O(p num_eigs^2) for the central flow; cost: a gradient a GD step, 2k Hessian-vector products and
    k(k+1)/2 third derivatives a central-flow substep for k = num_eigs (~10 gradients at k = 2 on a small
    CNN, ~27 on a wider one: scripts/benchmarks/bench_edge.py), a Lanczos run (40 products) at each GD step
    that is a save or a multiple of `sharpness_every` (once a step).

    **Arguments:** `problem`, `params0`, `eta`, `t1` (a whole number of steps), `num_saves`, the averaging
    `window`, `num_eigs`, `substeps`, `sharpness_every`, `part` (as in `sde_vs_sgd`: the three runs,
    labels `gd`, `gf`, `cf`, through it, each a checkpoint a resumed run reads back).

    **Raises:** `ValueError` for a `t1` that is not a whole number of steps or a bad `num_saves`; the flows'
    own errors."""
    steps = timescale.steps_for_time(t1, eta)
    ks = np.arange(0, steps + 1, max(1, steps // checks.positive_int("num_saves", num_saves)))
    every = (
        int(ks[1] - ks[0])
        if sharpness_every is None
        else checks.positive_int("sharpness_every", sharpness_every)
    )
    sharp_ks = np.arange(0, steps + 1, every)
    lambda_ks = np.union1d(ks, sharp_ks)  # each GD step's sharpness measured once, for both outputs
    ts = jnp.asarray(timescale.flow_time(ks, eta))
    part = part or _unstored
    flat = functools.partial(_flat_saves, problem)

    def discrete():
        run = gd(problem, params0, steps=steps, eta=eta, save_every=1)
        averaged = time_average(run, window)
        sharpness = jax.lax.map(lambda k: hessian.lambda_max(problem, run.at(k)), jnp.asarray(lambda_ks))
        return {
            "gd_loss": run.stats["loss"],
            "gd_mean_loss": averaged.stats["loss"][ks],
            "gd_lambda": sharpness[np.searchsorted(lambda_ks, ks)],
            "gd_sharpness": sharpness[np.searchsorted(lambda_ks, sharp_ks)],
            "gd_sharpness_steps": sharp_ks,
            "gd_mean_params": flat(jax.tree.map(lambda x: x[ks], averaged.params)),
        }

    def flows():
        gf = gradient_flow(problem, params0, t1=t1, ts=ts, metrics={"lambda_max": hessian.lambda_max})
        return {"loss": gf.stats["loss"], "lambda": gf.stats["lambda_max"], "params": flat(gf.params)}

    def central():
        cf = central_flow(problem, params0, eta=eta, t1=t1, ts=ts, num_eigs=num_eigs, substeps=substeps)
        return {
            "loss": cf.stats["loss"],
            "predicted": cf.stats["predicted_loss"],
            "lambda": cf.stats["eigenvalues"][:, 0],
            "edge_count": cf.stats["edge_count"],
            "params": flat(cf.params),
        }

    g = part("gd", lambda: jax.tree.map(np.asarray, discrete()))
    mean_params = g["gd_mean_params"]
    gf = part("gf", lambda: jax.tree.map(np.asarray, flows()))
    cf = part("cf", lambda: jax.tree.map(np.asarray, central()))
    return {
        "t": np.asarray(ts),
        **{k: v for k, v in g.items() if k != "gd_mean_params"},
        "gf_loss": gf["loss"],
        "gf_lambda": gf["lambda"],
        "cf_loss": cf["loss"],
        "cf_predicted": cf["predicted"],
        "cf_lambda": cf["lambda"],
        "cf_edge_count": cf["edge_count"],
        "gf_distance": np.asarray(distance(gf["params"], mean_params, batch_dims=1)),
        "cf_distance": np.asarray(distance(cf["params"], mean_params, batch_dims=1)),
    }


def edge_errors(r: Mapping[str, np.ndarray], eta: float) -> dict | None:
    """Of an `edge_of_stability` result `r`, over the saved points where the central flow holds an eigenvalue
    at the edge (and GD's window fits in the run): `cf_mean`, `cf_max`, the mean and largest relative error
    of the central flow's predicted loss against GD's averaged loss, and `gf_mean`, `gf_max`, those of
    gradient flow's loss; `gd_first` and `cf_first`, the first saved steps at which GD's eta lambda_max
    reaches 2 and the central flow's edge opens; `cf_distance` and `gf_distance`, each flow's distance from
    GD's averaged parameters at the last full window.

    **Arguments:** the result `r`, its `eta`.

    **Returns:** that dict of Python numbers, or None where the central flow never reaches the edge."""
    edge = r["cf_edge_count"] > 0
    use = edge & np.isfinite(r["gd_mean_loss"])
    if not use.any():
        return None
    target = r["gd_mean_loss"][use]
    cf = np.abs(r["cf_predicted"][use] - target) / target
    gf = np.abs(r["gf_loss"][use] - target) / target
    steps = np.round(r["t"] / eta).astype(int)
    reached = eta * r["gd_lambda"] >= 2
    last = np.flatnonzero(np.isfinite(r["cf_distance"]))[-1]
    return {
        "cf_mean": float(cf.mean()),
        "cf_max": float(cf.max()),
        "gf_mean": float(gf.mean()),
        "gf_max": float(gf.max()),
        "gd_first": int(steps[np.argmax(reached)]) if reached.any() else None,
        "cf_first": int(steps[np.argmax(edge)]),
        "cf_distance": float(r["cf_distance"][last]),
        "gf_distance": float(r["gf_distance"][last]),
    }


def edge_summary(r: Mapping[str, np.ndarray], eta: float, window: int) -> str:
    """`edge_errors` of an `edge_of_stability` result in one sentence, as the central-flow figures print it.

    **Arguments:** the result `r`, its `eta`, GD's averaging `window` in steps.

    **Returns:** the sentence."""
    e = edge_errors(r, eta)
    if e is None:
        return "the central flow never reaches the edge"
    return (
        f"GD reaches eta lambda_max = 2 at step {e['gd_first']}, the central flow's edge opens at "
        f"{e['cf_first']}; GD's loss averaged over {window} steps is predicted by the central flow to "
        f"{e['cf_mean']:.1%} on average ({e['cf_max']:.1%} at most), by gradient flow to {e['gf_mean']:.1%} "
        f"({e['gf_max']:.1%}); distance from GD's averaged parameters at the last full window: "
        f"{e['cf_distance']:.3g} to the central flow, {e['gf_distance']:.3g} to gradient flow"
    )


def _order(etas, per_eta, m, error: str) -> np.ndarray:
    """`resolved_order` of one error of metric m (per_eta[str(eta)][m][error] and its band) over etas."""
    stats = [per_eta[str(eta)][m] for eta in etas]
    return np.asarray(resolved_order(etas, [(float(s[error]), float(s[f"{error}_band"])) for s in stats]))


def _flat_saves(problem, params):
    """Saved parameters (stacked over a leading axis of saves) flattened: (saves, p)."""
    return jax.vmap(lambda p: problem.ravel(p)[0])(params)


def _unstored(label, compute):
    """The `part` of a driver run without a store: `compute()`."""
    return compute()


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
) -> dict:
    """Label-noise SGD ensembles at each eta, mapped by Phi, against the Riemannian flow, in tau.

    From `params0` mapped onto the manifold, every eta runs `seeds` label-noise SGD paths for
    tau1 * B / (eta^2 sigma^2) steps (`flows.timescale`: with a label-noise batch `noise_batch_size` apart
    from the gradient batch, tau1 * B^2 / (B_eps eta^2 sigma^2)), saves `num_saves + 1` points,
    maps each by Phi and evaluates every observable (name -> `fn(problem, params)`; default
    `{"trace_H": Problem.gauss_newton_trace}`, tr G = tr H on the manifold). The flow is evaluated at the
    same tau. Memory: the saved parameters, seeds * (num_saves + 1) * p per eta.

    **Arguments:** `problem`, `params0`, `etas`, `sigma > 0`, `tau1`, `key`, `seeds`, `num_saves`,
    `batch_size`, `noise_batch_size`, `observables`, `part` (below).

    **Returns:** a dict: `tau[str(eta)]`, each eta's save times; `eta[str(eta)][name]`, a dict of `sgd_mean`,
    `sgd_band` (95% half-width), `flow`, `weak_error` and `weak_error_band` (`debiased_weak_error`) for each
    observable; and `order[name]` (the slope of the weak error against eta on log axes, with two or more
    etas; NaN unless every error is resolved).
    `part` as in `sde_vs_sgd`: each eta (label `eta{eta}`) through it, and inside it its checkpoints: the
    ensemble's iterates (`eta{eta}-sgd`), their Phi one save at a time (`eta{eta}-phi{j}`, the costly
    piece: a limit_map a point), the flow (`eta{eta}-flow`).

    **Raises:** `ValueError` for a bad `sigma`, `seeds` or `batch_size`, or a problem without residuals;
    `equinox.EquinoxRuntimeError` where Phi cannot map a point (`flows.limit_map`).
    """
    sigma = checks.positive_float("sigma", sigma)
    seeds = checks.positive_int("seeds", seeds)
    batch = checks.batch_size(batch_size, problem.n)
    observables = dict(observables or {"trace_H": Problem.gauss_newton_trace})
    start = limit_map(problem, params0)
    out = {"tau": {}, "eta": {}}

    def evaluate_all(p):
        on = limit_map(problem, p)
        return {name: fn(problem, on) for name, fn in observables.items()}

    part = part or _unstored

    unravel = problem.ravel(start)[1]

    def at_eta(i, eta):
        every = max(1, timescale.steps_for_slow_time(tau1 / num_saves, eta, sigma, batch, noise_batch_size))
        taus = timescale.slow_time(np.arange(num_saves + 1) * every, eta, sigma, batch, noise_batch_size)

        def runs():  # the saved iterates, flattened: (seeds, num_saves + 1, p)
            def one(k):
                run = label_noise_sgd(problem, start, steps=every * num_saves, eta=eta, sigma=sigma, key=k,
                                      batch_size=batch_size, noise_batch_size=noise_batch_size,
                                      save_every=every)  # fmt: skip
                return _flat_saves(problem, run.params)

            return {"flat": np.asarray(jax.vmap(one)(jax.random.split(jax.random.fold_in(key, i), seeds)))}

        flat = part(f"eta{eta}-sgd", runs)["flat"]
        # Phi of every seed's iterate, one save at a time: a checkpoint each
        mapped = [
            part(
                f"eta{eta}-phi{j}",
                lambda j=j: jax.tree.map(
                    np.asarray, jax.vmap(lambda v: evaluate_all(unravel(v)))(jnp.asarray(flat[:, j]))
                ),
            )
            for j in range(num_saves + 1)
        ]
        values = {name: np.stack([m[name] for m in mapped], axis=1) for name in observables}
        flow = part(
            f"eta{eta}-flow",
            lambda: jax.tree.map(
                np.asarray,
                riemannian_flow(
                    problem, start, t1=taus[-1], ts=taus, save_params=False, metrics=observables
                ).stats,
            ),
        )
        r = {"tau": taus, "observables": {}}
        for name in observables:
            s = r["observables"][name] = {}
            s["sgd_mean"], s["sgd_band"] = mean_band(values[name])
            s["flow"] = np.asarray(flow[name])
            s["weak_error"], s["weak_error_band"] = debiased_weak_error(
                s["sgd_mean"] - s["flow"], s["sgd_band"], seeds
            )
        return r

    for i, eta in enumerate(etas):
        r = part(f"eta{eta}", lambda i=i, eta=eta: at_eta(i, eta))
        out["tau"][str(eta)], out["eta"][str(eta)] = r["tau"], r["observables"]
    if len(etas) > 1:
        out["order"] = {name: _order(etas, out["eta"], name, "weak_error") for name in observables}
    return out
