"""The first-order SDE limits of SGD (stochastic modified equations) in gradient-flow time t = eta * k:

    d theta = -grad L(theta) dt + sqrt(eta) [F_label(theta) dW_label + F_batch(theta) dW_batch]     (Ito)

with independent Brownian motions and the noise factors of DESIGN.md, F F^T being the covariance of one
step's gradient noise:

    F_label = (sigma / sqrt(B n)) J^T                      (p, N)  label noise eps ~ N(0, sigma^2), batch B
    F_batch = (c_B / sqrt(B n)) [g_1 - gbar, ..., g_n - gbar]  (p, n)  minibatch of B, g_i = J_i^T r_i

with c_B = 1 for batches drawn with replacement and sqrt((n - B) / (n - 1)) without. Label-noise GD
(B = n) has only the label term; plain SGD only the batch term; label-noise SGD on minibatches both.
Neither factor is formed: F_label w + F_batch v = J^T [sigma w + c_B r * (v - mean v)] / sqrt(B n) is one
vector-Jacobian product of the residuals, and the p x p covariance never appears.

**Solvers.** These are Ito SDEs. `diffrax.Euler` (Euler-Maruyama, the default: strong order 1/2, weak 1)
and `diffrax.ItoMilstein` (strong order 1 where the noise is commutative, e.g. one example or additive
noise; not checked; it forms the (p, m) factor, which diffrax's Milstein differentiates as a matrix) solve
them as they stand. A Stratonovich solver (`diffrax.Heun`, `Midpoint`, `SPaRK`,
... ; the ones that allow adaptive steps) is given the Ito-Stratonovich drift correction

    drift = -grad L - (1/2) sum_j D G_j(theta) G_j(theta),   G_j = sqrt(eta) F e_j the j-th noise column,

so that it solves the same SDE. ShARK, SRA1 and SEA assume additive noise and are refused.

**Brownian paths.** Fixed steps (the default) run on `BrownianGrid`: the increment over step k of size eta
is sqrt(eta) z_k with z_k drawn exactly as label-noise SGD draws its step-k label noise, so an SDE path and
a label-noise GD run with the same key are coupled (Euler with `substeps=1` *is* label-noise GD); with
`substeps = 2^L` each step is refined by Brownian bridges, and every refinement sees the same path
(convergence studies, strong errors against SGD). It draws O(L) normals per step and no tree search.
Adaptive steps (`rtol=...`) run on `diffrax.VirtualBrownianTree`, which answers any interval, at the cost
of a tree descent per evaluation (about 6x a plain scan in `scripts/bench_sde.py`).

Solves run forward (`diffrax.ForwardMode`, ~10% faster than the checkpointed reverse-mode adjoint here):
differentiate through a path with `jax.jvp` / `jax.jacfwd`.
"""

import math
from collections.abc import Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from models import Problem, checks
from models.problem import check_start

from .discrete import step_keys
from .gradient import save_times
from .trajectory import Metric, Trajectory, default_metrics, evaluate

_ADDITIVE_ONLY = (diffrax.ShARK, diffrax.SRA1, diffrax.SEA)
_MILSTEIN = (diffrax.ItoMilstein, diffrax.StratonovichMilstein)


def label_noise_sde(
    problem: Problem,
    params0: PyTree,
    *,
    t1,
    eta,
    sigma,
    key: PRNGKeyArray,
    batch_size: int | None = None,
    replace: bool = True,
    substeps: int = 1,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    ts=None,
    save_every=None,
    max_steps: int | None = None,
    metrics: Mapping[str, Metric] | None = None,
    save_params: bool = True,
    progress: bool = False,
    raise_on_divergence: bool = True,
) -> Trajectory:
    """The SDE of label-noise SGD (`flows.label_noise_sgd` with the same eta, sigma, batch_size, replace):
    the label term, plus the minibatch term when `batch_size < n`.

    **Arguments:**

    - `t1`: the end time, in gradient-flow time t = eta * k; a whole number of steps eta / `substeps`.
    - `eta > 0`, `sigma >= 0`, `batch_size` in 1..n (default n: label-noise GD), `replace`: as for SGD.
    - `key`: the Brownian path's key; with the same key, label-noise GD draws the same increments.
    - `substeps`: fixed steps of eta / substeps (a power of two) on the `BrownianGrid` path.
    - `solver`: default `diffrax.Euler()`; see the module docstring for the others.
    - `rtol`, `atol`: given, steps are adaptive (PID controller, from eta / substeps) on a
      `diffrax.VirtualBrownianTree`; the solver must have an error estimate (e.g. `diffrax.Heun()`).
    - `ts` / `save_every`, `metrics`, `save_params`: as for `gradient_flow`; `progress` shows diffrax's tqdm
      progress meter; `max_steps` bounds adaptive solves (default 100 times the fixed step count).

    **Returns:** a `Trajectory` in gradient-flow time t. A path whose loss becomes non-finite raises
    `FloatingPointError` naming the time, unless `raise_on_divergence=False`.
    """
    return _sde(
        "label_noise_sde",
        problem,
        params0,
        key,
        eta,
        checks.non_negative("sigma", sigma),
        checks.batch_size(batch_size, problem.n),
        replace,
        t1=t1,
        substeps=substeps,
        solver=solver,
        rtol=rtol,
        atol=atol,
        ts=ts,
        save_every=save_every,
        max_steps=max_steps,
        metrics=metrics,
        save_params=save_params,
        progress=progress,
        raise_on_divergence=raise_on_divergence,
    )


def sgd_sde(
    problem: Problem,
    params0: PyTree,
    *,
    t1,
    eta,
    batch_size: int,
    key: PRNGKeyArray,
    replace: bool = True,
    substeps: int = 1,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    ts=None,
    save_every=None,
    max_steps: int | None = None,
    metrics: Mapping[str, Metric] | None = None,
    save_params: bool = True,
    progress: bool = False,
    raise_on_divergence: bool = True,
) -> Trajectory:
    """The SDE of minibatch SGD (`flows.sgd` with the same eta, batch_size < n, replace): the batch term
    only. Arguments as `label_noise_sde`."""
    batch_size = checks.batch_size(batch_size, problem.n)
    if batch_size == problem.n:
        raise ValueError(
            f"batch_size = n = {problem.n} is full-batch GD, which has no noise: use gradient_flow"
        )
    return _sde(
        "sgd_sde",
        problem,
        params0,
        key,
        eta,
        None,
        batch_size,
        replace,
        t1=t1,
        substeps=substeps,
        solver=solver,
        rtol=rtol,
        atol=atol,
        ts=ts,
        save_every=save_every,
        max_steps=max_steps,
        metrics=metrics,
        save_params=save_params,
        progress=progress,
        raise_on_divergence=raise_on_divergence,
    )


# -- the noise ---------------------------------------------------------------------------------------------
def noise_parts(problem: Problem, sigma, batch_size: int) -> dict[str, tuple[int, ...]]:
    """The blocks of the Brownian motion, in order: `"label"` (shaped like y) when `sigma` is given,
    `"batch"` (n,) when `batch_size < n`. The SDE's Brownian motion is their concatenation, flattened."""
    parts = {}
    if sigma is not None:
        parts["label"] = problem.y.shape
    if batch_size < problem.n:
        parts["batch"] = (problem.n,)
    return parts


def diffusion(
    problem: Problem,
    params: PyTree,
    w: Float[Array, " m"],
    *,
    eta,
    sigma,
    batch_size: int,
    replace: bool = True,
) -> PyTree:
    """sqrt(eta) [F_label w_label + F_batch w_batch] at `params` for w = (w_label, w_batch) flattened (see
    `noise_parts`), as one VJP of the residuals; the module docstring gives F. The covariance of one SGD
    step's gradient noise is F F^T."""
    n = problem.n
    w = _split(w, noise_parts(problem, sigma, batch_size))
    r, vjp = jax.vjp(problem.residuals, params)
    cotangent = jnp.zeros_like(r)
    if "label" in w:
        cotangent = cotangent + sigma * w["label"]
    if "batch" in w:
        v = w["batch"] - jnp.mean(w["batch"])
        c = 1.0 if replace else jnp.sqrt((n - batch_size) / (n - 1))
        cotangent = cotangent + c * r * v.reshape((n,) + (1,) * (r.ndim - 1))
    (out,) = vjp(cotangent * (jnp.sqrt(eta) / jnp.sqrt(batch_size * n)))
    return out


def noise_dim(parts: dict[str, tuple[int, ...]]) -> int:
    """m, the dimension of the Brownian motion with these blocks."""
    return sum(math.prod(shape) for shape in parts.values())


def _split(w, parts: dict[str, tuple[int, ...]]) -> dict[str, Array]:
    out, start = {}, 0
    for name, shape in parts.items():
        size = math.prod(shape)
        out[name] = w[start : start + size].reshape(shape)
        start += size
    if start != w.shape[0]:
        raise ValueError(f"the noise w has {w.shape[0]} entries, expected {start} (blocks {parts})")
    return out


def ito_correction(
    problem: Problem, params: PyTree, *, eta, sigma, batch_size: int, replace: bool = True
) -> PyTree:
    """(1/2) sum_j D G_j(theta)[G_j(theta)], G_j = `diffusion` applied to the j-th unit vector: a Stratonovich
    solver with drift (Ito drift - this) solves the Ito SDE. One JVP of a VJP per noise column (vmapped).

    The label columns alone give (eta sigma^2 / (4B)) grad tr G, tr G = (1/n) sum_i ||grad f_i||^2.
    """
    hyper = dict(eta=eta, sigma=sigma, batch_size=batch_size, replace=replace)
    m = noise_dim(noise_parts(problem, sigma, batch_size))

    def term(e):
        column = lambda p: diffusion(problem, p, e, **hyper)  # noqa: E731
        return jax.jvp(column, (params,), (column(params),))[1]

    terms = jax.vmap(term)(jnp.eye(m, dtype=problem.y.dtype))
    return jax.tree.map(lambda x: 0.5 * jnp.sum(x, axis=0), terms)


class BrownianGrid(diffrax.AbstractBrownianPath):
    """Brownian motion on the grid t = k * dt / 2^levels, for fixed steps of that size.

    The motion is the concatenation of the blocks `parts` (see `noise_parts`). Its increment over coarse
    step k, [k dt, (k+1) dt], is sqrt(dt) z_k with z_k ~ N(0, I) drawn from step k's keys
    (`flows.discrete.step_keys`): the `"label"` block exactly as label-noise SGD draws its label noise (so
    the two are coupled), the `"batch"` block from the batch key. Each coarse increment is split `levels`
    times by Brownian bridges (halves D/2 +- sqrt(h) xi / 2 of an increment D over h, xi drawn from the
    step's bridge key, the level and the position), so paths with the same key and different `levels` are
    one Brownian motion seen on finer grids. `evaluate(t0, t1)` answers one fine step [t0, t1].
    """

    key: PRNGKeyArray
    dt: Array = eqx.field(converter=jnp.asarray)
    parts: tuple = eqx.field(static=True, converter=lambda p: tuple(dict(p).items()))
    levels: int = eqx.field(static=True, default=0)
    dtype: DTypeLike = eqx.field(static=True, default=jnp.float32)
    levy_area: type = eqx.field(static=True, default=diffrax.BrownianIncrement)

    @property
    def shape(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((noise_dim(dict(self.parts)),), self.dtype)

    @property
    def t0(self):
        return 0.0

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        del left
        if t1 is None:
            raise ValueError("BrownianGrid answers increments over one grid step, not W(t) at a point")
        h = self.dt / 2**self.levels
        j = jnp.round(t0 / h).astype(jnp.int32)
        k, local = j // 2**self.levels, j % 2**self.levels
        k_batch, k_noise, k_bridge = step_keys(self.key, k)
        blocks = []
        for i, (name, shape) in enumerate(self.parts):
            z = jax.random.normal(k_noise if name == "label" else k_batch, shape, self.dtype).reshape(-1)
            d = jnp.sqrt(self.dt).astype(self.dtype) * z
            kb = jax.random.fold_in(k_bridge, i)
            for level in range(1, self.levels + 1):
                parent = local >> (self.levels - level + 1)
                right = (local >> (self.levels - level)) & 1
                key = jax.random.fold_in(jax.random.fold_in(kb, level), parent)
                half = jnp.sqrt(self.dt / 2 ** (level - 1)).astype(self.dtype) / 2
                d = d / 2 + jnp.where(right, -half, half) * jax.random.normal(key, d.shape, self.dtype)
            blocks.append(d)
        w = jnp.concatenate(blocks)
        if use_levy:
            return diffrax.BrownianIncrement(dt=t1 - t0, W=w)
        return w


# -- the solve ---------------------------------------------------------------------------------------------
def _sde(
    name,
    problem,
    params0,
    key,
    eta,
    sigma,
    batch_size,
    replace,
    *,
    t1,
    substeps,
    solver,
    rtol,
    atol,
    ts,
    save_every,
    max_steps,
    metrics,
    save_params,
    progress,
    raise_on_divergence,
) -> Trajectory:
    params0 = check_start(problem, params0)
    eta_given, t1_given = eta, t1  # the step count is static: read it before they become (traced) arrays
    eta = checks.positive("eta", eta)
    t1 = checks.positive("t1", t1)
    if key is None:
        raise ValueError(f"{name} needs a PRNG key")
    substeps = checks.positive_int("substeps", substeps)
    if substeps & (substeps - 1):
        raise ValueError(f"substeps must be a power of two, got {substeps}")
    steps = _whole(
        float(t1_given) * substeps / float(eta_given),
        f"t1 = {float(t1_given)} is not a whole number of steps eta / substeps = "
        f"{float(eta_given) / substeps}",
    )
    solver = solver or diffrax.Euler()
    if isinstance(solver, _ADDITIVE_ONLY):
        raise ValueError(
            f"solver {type(solver).__name__} assumes additive noise; SGD noise depends on the parameters"
        )
    if not isinstance(solver, diffrax.AbstractItoSolver | diffrax.AbstractStratonovichSolver):
        raise ValueError(f"solver must be an SDE solver (Ito or Stratonovich), got {type(solver).__name__}")
    levy = getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement)
    if rtol is None and levy is not diffrax.BrownianIncrement:
        raise ValueError(
            f"solver {type(solver).__name__} needs Levy area, which the fixed-step BrownianGrid does not "
            "carry: give rtol (adaptive steps on a VirtualBrownianTree)"
        )
    if rtol is not None and not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ValueError(
            f"adaptive steps (rtol) need a solver with an error estimate, e.g. diffrax.Heun(); "
            f"{type(solver).__name__} has none"
        )
    traj = _solve(
        problem,
        params0,
        key,
        eta,
        sigma,
        t1,
        save_times(t1_given, ts, save_every),
        batch_size=batch_size,
        replace=replace,
        steps=steps,
        substeps=substeps,
        solver=solver,
        rtol=rtol,
        atol=rtol if atol is None and rtol is not None else atol,
        max_steps=max_steps or (steps if rtol is None else max(100 * steps, 4096)),
        metrics=default_metrics(metrics),
        save_params=save_params,
        progress=progress,
    )
    if not raise_on_divergence:
        return traj
    bad = ~jnp.isfinite(traj.stats["loss"])

    def where():
        return f" by t = {float(traj.ts[jnp.argmax(bad)]):.4g} with eta = {float(eta):.4g}"

    return checks.diverged(name, traj, jnp.any(bad), where)


class _ColumnsTerm(diffrax.ControlTerm):
    """A control term whose vector field is the (p, m) factor as a pytree shaped like the parameters with a
    trailing axis of m columns (Milstein needs the matrix)."""

    def prod(self, vf, control):
        return jax.tree.map(lambda columns: columns @ control, vf)


def _whole(x: float, message: str) -> int:
    k = round(x)
    if k < 1 or abs(x - k) > 1e-6 * max(1.0, x):
        raise ValueError(message)
    return k


def _levy_class(levy):
    if issubclass(levy, diffrax.AbstractSpaceTimeTimeLevyArea):
        return diffrax.SpaceTimeTimeLevyArea
    if issubclass(levy, diffrax.AbstractSpaceTimeLevyArea):
        return diffrax.SpaceTimeLevyArea
    return diffrax.BrownianIncrement


@eqx.filter_jit
def _solve(
    problem,
    params0,
    key,
    eta,
    sigma,
    t1,
    ts,
    *,
    batch_size,
    replace,
    steps,
    substeps,
    solver,
    rtol,
    atol,
    max_steps,
    metrics,
    save_params,
    progress,
):
    hyper = dict(eta=eta, sigma=sigma, batch_size=batch_size, replace=replace)
    parts = noise_parts(problem, sigma, batch_size)
    dtype = problem.y.dtype
    stratonovich = isinstance(solver, diffrax.AbstractStratonovichSolver)

    def drift(t, params, args):
        g = problem.grad(params)
        if stratonovich:
            g = jax.tree.map(jnp.add, g, ito_correction(problem, params, **hyper))
        return jax.tree.map(jnp.negative, g)

    def noise(t, params, args):
        if not isinstance(solver, _MILSTEIN):
            return lx.FunctionLinearOperator(lambda w: diffusion(problem, params, w, **hyper), path.shape)
        # diffrax's Milstein differentiates the diffusion as a matrix: give it the (p, m) factor.
        basis = jnp.eye(path.shape.shape[0], dtype=dtype)
        return jax.vmap(lambda e: diffusion(problem, params, e, **hyper), out_axes=-1)(basis)

    def save(t, params, args):
        return (params if save_params else None), evaluate(problem, params, metrics)

    h = eta / substeps
    if rtol is None:
        path = BrownianGrid(key, eta, parts, levels=substeps.bit_length() - 1, dtype=dtype)
        grid = (jnp.arange(steps + 1) * h).at[-1].set(t1)  # StepTo wants t1 exactly
        controller, dt0 = diffrax.StepTo(ts=grid), None
    else:
        levy = _levy_class(getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement))
        shape = jax.ShapeDtypeStruct((noise_dim(parts),), dtype)
        path = diffrax.VirtualBrownianTree(0.0, t1, tol=h / 64, shape=shape, key=key, levy_area=levy)
        controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), h
    noise_term = (_ColumnsTerm if isinstance(solver, _MILSTEIN) else diffrax.ControlTerm)(noise, path)
    sol = diffrax.diffeqsolve(
        diffrax.MultiTerm(diffrax.ODETerm(drift), noise_term),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=params0,
        saveat=diffrax.SaveAt(ts=ts, fn=save),
        stepsize_controller=controller,
        max_steps=max_steps,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
        adjoint=diffrax.ForwardMode(),
    )
    params, stats = sol.ys
    return Trajectory(ts=sol.ts, params=params, stats=stats, clock="t")
