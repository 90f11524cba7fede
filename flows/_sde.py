"""The first-order SDE limits of SGD (stochastic modified equations) in gradient-flow time t = eta * k:

    d theta = -grad L(theta) dt + sqrt(eta) [F_label(theta) dW_label + F_batch(theta) dW_batch]     (Ito)

with independent Brownian motions and the noise factors of `flows/_noise.py` (F F^T is the covariance of one
step's gradient noise). Label-noise GD (B = n) has only the label term; plain SGD only the batch term;
label-noise SGD on minibatches both.

**The default: Euler on the step grid, four substeps a step.** Fixed steps h = eta / `substeps` on the
`flows.BrownianGrid` path: the increment over step k of size eta is sqrt(eta) z_k with z_k drawn
exactly as label-noise SGD draws its step-k label noise, so an SDE path and a label-noise GD run with the
same key are coupled; `substeps = 2^L` refines each step by Brownian bridges, and every refinement sees the
same path. The default `substeps=4` solves the SDE (on a two-layer net at eta = 0.1, t = 1: its distance to
a 64-substep solve on the same path is 4.4 times smaller than label-noise GD's, 2.7 times for minibatch
noise; tests/flows/test_sde.py). **`substeps=1` is not a solve of the SDE:** Euler at the step size *is*
label-noise GD (the same iterates to round-off, with the same key), and for `sgd_sde` it is SGD with its
minibatch gradient replaced by a Gaussian of the same mean and covariance; a comparison of SGD with the SDE
at `substeps=1` measures nothing but that. One Euler-Maruyama step is

    theta <- theta + J^T [-(h / n) r + sqrt(eta) (sigma dW_label + c_B r * (dW_batch - mean)) / sqrt(B n)]

one forward pass and ONE vector-Jacobian product of the outputs, drift and noise together: the cost of a
label-noise SGD step. Each GD step's 2^L increments are drawn at its first substep, the whole bridge tree at
once (`BrownianGrid.step_increments`: 2^L normal draws a step, not L + 1 a substep), so the default solve
costs about four label-noise GD steps a step. It runs as loops with dynamic bounds, so eta, t1 and the
save times may be traced (`jax.jit`, `jax.vmap`); the number of saves is static.

**Other solvers** run through diffrax (`MultiTerm(ODETerm, ControlTerm)`), which evaluates drift and noise
as two terms. These are Ito SDEs: `diffrax.ItoMilstein` (strong order 1 where the noise is commutative,
e.g. one example or additive noise; not checked; it forms the (p, m) factor, which diffrax's Milstein
differentiates as a matrix) solves them as they stand. A Stratonovich solver (`diffrax.Heun`, `Midpoint`,
`SPaRK`, ... ; the ones that allow adaptive steps) is given the Ito-Stratonovich drift correction

    drift = -grad L - (1/2) sum_j D G_j(theta) G_j(theta),   G_j = sqrt(eta) F e_j the j-th noise column,

so that it solves the same SDE. ShARK, SRA1 and SEA assume additive noise and are refused. Adaptive steps
(`rtol=...`) run on `diffrax.VirtualBrownianTree`, which answers any interval, at the cost of a tree descent
per evaluation; they save at `ts` by interpolation. The diffrax path needs eta and t1 as concrete numbers
(they fix its static step budget). Solves run forward (`diffrax.ForwardMode`): differentiate through a path
with `jax.jvp` / `jax.jacfwd`.

Fixed-step saves lie on the step grid (`flows.Saves`): `ts` (or multiples of `save_every`) off it
is refused; the default saves `num_saves` = 101 grid points spread evenly over [0, t1].
"""

from collections.abc import Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax
from jaxtyping import PRNGKeyArray, PyTree

from models import Problem, checks
from models.problem import check_start

from . import timescale
from ._brownian import BrownianGrid
from ._integrate import Saves, Solve
from ._noise import StepNoise, diffusion, ito_correction, noise_cotangent, noise_dim, noise_parts
from ._trajectory import (
    Metric,
    Trajectory,
    compiled,
    default_metrics,
    diverged_where,
    evaluate,
    finish,
    solver_result,
)

__all__ = ["label_noise_sde", "sgd_sde"]

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
    noise_batch_size: int | None = None,
    replace: bool = True,
    substeps: int = 4,
    ts=None,
    save_every=None,
    num_saves: int = 101,
    save_params: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    progress: bool = False,
    metrics: Mapping[str, Metric] | None = None,
    throw: bool = True,
) -> Trajectory:
    """The SDE of label-noise SGD (`flows.label_noise_sgd` with the same eta, sigma, batch_size,
    noise_batch_size, replace): the label term, plus the minibatch term when `batch_size < n`. With a
    label-noise batch of B_eps apart from the gradient batch (`noise_batch_size`), the label term's
    covariance is B_eps / B times that of noise on the gradient batch: sigma is taken as
    sigma sqrt(B_eps / B) (and the SDE is no longer coupled path by path with label-noise SGD).

    **Arguments:**

    - `t1`: the end time, in gradient-flow time t = eta * k; a whole number of steps eta / `substeps`.
    - `eta > 0`, `sigma >= 0`, `batch_size` in 1..n (default n: label-noise GD), `noise_batch_size`,
      `replace`: as for `label_noise_sgd`.
    - `key`: the Brownian path's key; with the same key, label-noise GD draws the same increments.
    - `substeps`: fixed steps of eta / substeps (a power of two) on the `BrownianGrid` path; default 4.
      `substeps=1` is label-noise SGD itself, not a solve of the SDE (module docstring).
    - `ts`, `save_every`, `num_saves`, `save_params` (`flows.Saves`): on the step grid; the
      default `num_saves` points are each rounded to the nearest step. `metrics` as for `gradient_flow`.
    - `solver`, `rtol`, `atol`, `max_steps`, `progress` (`flows.Solve`): default `diffrax.Euler()`
      (see the module docstring for the others). With `rtol` (`atol` default rtol) steps are adaptive (PID
      controller, from eta / substeps) on a `diffrax.VirtualBrownianTree`, saved at the times themselves by
      interpolation; the solver must have an error estimate (e.g. `diffrax.Heun()`). `max_steps` bounds
      adaptive solves (default 100 times the fixed step count); `progress` shows diffrax's tqdm meter on the
      diffrax path.

    - `throw`: raise on a failed path, or return the Trajectory with its `result` code.

    **Returns:** a `Trajectory` in gradient-flow time t, recording eta and its `StepNoise`.

    **Raises:** `ValueError` naming a bad argument (a `t1` or save time off the step grid, `substeps` not a
    power of two, a solver that cannot solve this SDE, a problem without residuals); with `throw=True`,
    `equinox.EquinoxRuntimeError` naming the time when a path's loss becomes non-finite or an adaptive solve
    fails (the `result` code says which).

    **Example:** with the same key, the SDE's path is coupled to label-noise GD's: at `substeps=1` they are
    the same iterates, and the default `substeps=4` solves the SDE on the same Brownian path.

    ```pycon
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flows import label_noise_sgd
    >>> from models import Problem, TwoLayerNet, data
    >>> X = data.gaussian(jax.random.key(0), 16, 3)
    >>> problem = Problem(TwoLayerNet(3, 8, key=jax.random.key(1), activation="tanh"), X, X[:, 0])
    >>> key, ts = jax.random.key(2), [0.0, 1.0]
    >>> hyper = dict(eta=0.1, sigma=0.5, key=key)
    >>> sgd = label_noise_sgd(problem, problem.params, steps=10, save_every=10, **hyper)
    >>> same = label_noise_sde(problem, problem.params, t1=1.0, substeps=1, ts=ts, **hyper)
    >>> bool(jnp.allclose(problem.ravel(same.final)[0], problem.ravel(sgd.final)[0], atol=1e-5))
    True
    >>> sde = label_noise_sde(problem, problem.params, t1=1.0, ts=ts, **hyper)
    >>> sde.stats["loss"].shape
    (2,)

    ```
    """
    batch_size = checks.batch_size(batch_size, problem.n)
    sigma = checks.non_negative("sigma", sigma)
    return _sde(
        "label_noise_sde",
        problem,
        params0,
        key,
        eta,
        StepNoise(batch_size=batch_size, sigma=sigma, replace=replace, noise_batch_size=noise_batch_size),
        t1,
        substeps,
        Saves(ts, save_every, num_saves, save_params),
        _solve(solver, rtol, atol, max_steps, progress),
        metrics,
        throw,
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
    substeps: int = 4,
    ts=None,
    save_every=None,
    num_saves: int = 101,
    save_params: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    progress: bool = False,
    metrics: Mapping[str, Metric] | None = None,
    throw: bool = True,
) -> Trajectory:
    """The SDE of minibatch SGD (`flows.sgd` with the same eta, batch_size < n, replace): the batch term
    only.

    **Arguments:** `batch_size` in 1..n - 1 (B = n is GD, which has no noise); the others as for
    `label_noise_sde`.

    **Returns:** a `Trajectory` in gradient-flow time t, recording eta and its `StepNoise`.

    **Raises:** as `label_noise_sde`, and `ValueError` for `batch_size = n`."""
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
        StepNoise(batch_size=batch_size, replace=replace),
        t1,
        substeps,
        Saves(ts, save_every, num_saves, save_params),
        _solve(solver, rtol, atol, max_steps, progress),
        metrics,
        throw,
    )


# -- the solve ---------------------------------------------------------------------------------------------
def _solve(solver, rtol, atol, max_steps, progress) -> Solve:
    """The SDEs' `Solve`: Euler unless told, adaptive only with `rtol` (then `atol` defaults to it)."""
    atol = rtol if atol is None and rtol is not None else atol
    return Solve(solver or diffrax.Euler(), rtol, atol, max_steps, progress)


def _sde(
    name,
    problem,
    params0,
    key,
    eta,
    noise: StepNoise,
    t1,
    substeps,
    saves: Saves,
    solve: Solve,
    metrics,
    throw,
) -> Trajectory:
    params0 = check_start(problem, params0)
    if noise.sigma is not None:
        problem.require_square(f"{name} (label noise)")
    eta = checks.positive("eta", eta)
    given_t1, t1 = t1, checks.positive("t1", t1)  # the saves from t1 as given: a literal stays concrete
    if key is None:
        raise ValueError(f"{name} needs a PRNG key")
    substeps = checks.positive_int("substeps", substeps)
    if substeps & (substeps - 1):
        raise ValueError(f"substeps must be a power of two, got {substeps}")
    _check_solver(solve.solver, solve.rtol)
    dtype = problem.X.dtype
    h = eta / substeps
    steps = timescale.steps_for_time(t1, h, name="t1")
    index = saves.grid_index(given_t1, h, steps) if solve.rtol is None else None
    hyper = noise.factor_args
    if solve.rtol is None and type(solve.solver) is diffrax.Euler:
        even = _even(index)
        traj = _euler(
            problem, params0, key, eta, index, even, substeps, hyper, default_metrics(metrics), saves.params
        )
    else:
        if not checks.is_concrete((eta, t1)):
            raise ValueError(
                f"{name} with solver {type(solve.solver).__name__} needs eta and t1 as concrete numbers "
                "(they fix the solve's static step budget); under jit only the default Euler path takes "
                "traced ones"
            )
        steps = int(steps)
        times = index.astype(dtype) * h if index is not None else saves.times(given_t1)
        budget = solve.max_steps or (steps if solve.rtol is None else max(100 * steps, 4096))
        traj = _diffrax_solve(
            problem, params0, key, eta, t1, times, hyper, steps, substeps, solve, budget,
            default_metrics(metrics), saves.params,
        )  # fmt: skip
    traj = eqx.tree_at(lambda tr: tr.result, traj, diverged_where(traj.result, traj.stats["loss"]))
    traj = eqx.tree_at(lambda tr: (tr.eta, tr.noise), traj, (eta, noise), is_leaf=lambda x: x is None)

    def where():
        bad = ~np.isfinite(np.asarray(traj.stats["loss"]))
        return (
            f" by t = {float(traj.ts[np.argmax(bad)]):.4g} with eta = {float(eta):.4g}" if bad.any() else ""
        )

    return finish(name, traj, throw, where)


def _check_solver(solver, rtol):
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


def _even(index) -> tuple[int, int] | None:
    """(first, every) when the save indices are concrete and evenly spaced after the first: the loops then
    have static lengths (a `lax.scan`, a little faster than the while loop traced indices need)."""
    if not checks.is_concrete(index) or index.shape[0] < 2:
        return None
    host = np.asarray(index)
    gaps = np.diff(host)
    return (int(host[0]), int(gaps[0])) if np.all(gaps == gaps[0]) and gaps[0] > 0 else None


@compiled
def _euler(problem, params0, key, eta, index, even, substeps, hyper, metrics, save_params):
    """Euler-Maruyama on the BrownianGrid, one forward pass and one VJP a step; saves at fine-step `index`
    (`even`: static (first, every) for evenly spaced saves)."""
    dtype = problem.X.dtype
    parts = noise_parts(problem, hyper["sigma"], hyper["batch_size"])
    path = BrownianGrid(key, eta, parts, levels=substeps.bit_length() - 1, dtype=dtype)
    h = eta / substeps
    drift = (h / problem.n).astype(dtype)

    per = 2**path.levels  # fine steps a coarse step

    def step(j, carry):
        # the increments of fine step j's coarse step, drawn at its first substep and carried to the others
        params, cached = carry
        cached = lax.cond(j % per == 0, lambda: path.step_increments(j // per), lambda: cached)
        out, vjp = jax.vjp(problem.outputs, params)
        q = problem.output_grads(out)  # d l_i / d f_i: the residuals for square loss
        (delta,) = vjp(noise_cotangent(problem, q, cached[j % per], eta=eta, **hyper) - drift * q)
        return jax.tree.map(jnp.add, params, delta), cached

    def record(params):
        return (params if save_params else None), evaluate(problem, params, metrics)

    def segment(carry, target):  # fine steps j..target - 1 (a segment may start inside a coarse step)
        params, j = carry
        params = lax.fori_loop(j, target, step, (params, path.step_increments(j // per)))[0]
        return (params, target), record(params)

    def run(params, first, length):  # the same with a static length: a scan
        js = first + jnp.arange(length, dtype=jnp.int32)
        cached = path.step_increments(first // per)
        return lax.scan(lambda c, j: (step(j, c), None), (params, cached), js)[0][0]

    if even is None:
        _, (params, stats) = lax.scan(segment, (params0, jnp.zeros((), jnp.int32)), index)
    else:
        first, every = even
        start = run(params0, 0, first)
        rest = index[:-1]
        _, saved = lax.scan(lambda p, j: (lambda q: (q, record(q)))(run(p, j, every)), start, rest)
        params, stats = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), record(start), saved)
    return Trajectory(ts=index.astype(dtype) * h.astype(dtype), params=params, stats=stats, clock="t")


class _ColumnsTerm(diffrax.ControlTerm):
    """A control term whose vector field is the (p, m) factor as a pytree shaped like the parameters with a
    trailing axis of m columns (Milstein needs the matrix)."""

    def prod(self, vf, control):
        return jax.tree.map(lambda columns: columns @ control, vf)


def _levy_class(levy):
    if issubclass(levy, diffrax.AbstractSpaceTimeTimeLevyArea):
        return diffrax.SpaceTimeTimeLevyArea
    if issubclass(levy, diffrax.AbstractSpaceTimeLevyArea):
        return diffrax.SpaceTimeLevyArea
    return diffrax.BrownianIncrement


@compiled
def _diffrax_solve(
    problem, params0, key, eta, t1, ts, hyper, steps, substeps, solve: Solve, max_steps, metrics, save_params
):
    solver, rtol = solve.solver, solve.rtol
    hyper = dict(eta=eta, **hyper)
    parts = noise_parts(problem, hyper["sigma"], hyper["batch_size"])
    dtype = problem.X.dtype
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
    t1 = jnp.asarray(t1, dtype)
    if rtol is None:
        path = BrownianGrid(key, eta, parts, levels=substeps.bit_length() - 1, dtype=dtype)
        grid = (
            (jnp.arange(steps + 1, dtype=dtype) * h).astype(dtype).at[-1].set(t1)
        )  # StepTo wants t1 exactly
        controller, dt0 = diffrax.StepTo(ts=grid), None
    else:
        levy = _levy_class(getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement))
        shape = jax.ShapeDtypeStruct((noise_dim(parts),), dtype)
        path = diffrax.VirtualBrownianTree(0.0, t1, tol=h / 64, shape=shape, key=key, levy_area=levy)
        controller, dt0 = solve.controller(), h.astype(dtype)
    noise_term = (_ColumnsTerm if isinstance(solver, _MILSTEIN) else diffrax.ControlTerm)(noise, path)
    sol = diffrax.diffeqsolve(
        diffrax.MultiTerm(diffrax.ODETerm(drift), noise_term),
        solver,
        t0=jnp.zeros((), dtype),
        t1=t1,
        dt0=dt0,
        y0=params0,
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts, dtype), fn=save),
        stepsize_controller=controller,
        max_steps=max_steps,
        progress_meter=solve.meter(),
        adjoint=diffrax.ForwardMode(),
        throw=False,  # the failure convention of flows/_trajectory.py: a result code, raised by `finish`
    )
    params, stats = sol.ys
    return Trajectory(ts=sol.ts, params=params, stats=stats, clock="t", result=solver_result(sol.result))
