"""The zero-loss manifold Gamma = {theta : r(theta) = 0} and the Riemannian gradient flow on it.

With J = d r / d theta (N, p) and K = J J^T (N, N):

    P_T v = v - J^T K^+ J v       projection onto the tangent space T_theta Gamma = null(J)
    theta <- theta - J^T K^+ r     Gauss-Newton (minimum-norm Newton) retraction
    Phi(theta)                     where gradient flow from theta converges (`limit_map`)

The linear algebra is `flows/_geometry.py`: J formed and factorised by QR once per point, or matrix-free
products and conjugate gradients for problems whose J does not fit in memory; neither forms a p x p array.

Label-noise SGD with step eta, noise sigma and batch B, in the slow time tau = eta^2 sigma^2 k / B (or
eta^2 sigma^2 B_eps k / B^2 with label noise on B_eps examples apart from the batch), follows
the Riemannian gradient flow of F = tr H / 4 (Blanc et al. 2020; Damian et al. 2021; Li, Wang & Arora 2022;
Gatmiry et al. 2024):

    d theta / d tau = -P_T grad F(theta),   F = (1/4) tr H = (1/(4n)) ||J||_F^2 on Gamma.

On Gamma, tr H = tr G (the residual part vanishes) and P_T grad tr H = P_T grad tr G, so the flow uses the
exact gradient of tr G from per-example terms. The flow integrates

    d theta / d tau = -P_T grad F(theta) - alpha J^+ r(theta) = -grad F + J^T K^+ (J grad F - alpha r),

one solve with K per evaluation, whose normal term (`stabilize` = alpha) gives d r / d tau = -alpha r
exactly: any drift off Gamma from the solver's local errors decays, and the loss stays at round-off over
long horizons.
"""

from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from models import Problem, checks
from models.problem import check_start

from . import _geometry as geometry
from . import _numerics as numerics
from . import _rosenbrock as rosenbrock
from ._integrate import Saves, Solve, solve_ode
from ._numerics import Mode
from ._trajectory import (
    INNER_SOLVER_FAILED,
    OFF_MANIFOLD,
    SUCCESSFUL,
    Metric,
    Trajectory,
    compiled,
    default_metrics,
    diverged_where,
    evaluate,
    finish,
)

__all__ = [
    "Objective",
    "label_noise_objective",
    "trace_grad",
    "trace_grad_hutchinson",
    "tangent_projection",
    "riemannian_grad",
    "retract",
    "limit_map",
    "riemannian_flow",
]

Objective = Callable[[Problem, PyTree], Array]


def label_noise_objective(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """F = tr G / 4 = (1/(4n)) sum_i ||grad f_i||^2, equal to tr H / 4 on the zero-loss manifold.

    **Arguments:** `problem`, `params`.

    **Returns:** F, a scalar."""
    return problem.gauss_newton_trace(params) / 4


def trace_grad(
    problem: Problem, params: PyTree, *, mode: Mode = "auto", chunk: int | None = None
) -> Float[Array, " p"]:
    """grad tr G = (2/n) sum_a grad^2 f_a grad f_a (flat), exact, reverse over reverse per example: memory
    N p in the dense mode, `chunk` * p streamed (flows/_geometry.py). On Gamma its tangent part equals that
    of grad tr H.

    **Arguments:** `problem`, `params`, `mode` (`"auto"`, `"dense"`, `"matrix_free"`), `chunk` (examples a
    pass in the matrix-free mode; default the problem's `chunk`, else 256).

    **Returns:** grad tr G, flat (p,).

    **Raises:** `ValueError` for a problem without residuals (cross-entropy: no zero-loss manifold) or with N
    > p; a bad `mode`."""
    flat, unravel = problem.ravel(params)
    mode = numerics.mode_for(problem, mode, flat.dtype)
    return geometry.Point(problem, flat, unravel, mode, trace_grad=True, chunk=chunk).trace_grad


def trace_grad_hutchinson(
    problem: Problem, params: PyTree, key: PRNGKeyArray, num_samples: int = 16
) -> Float[Array, " p"]:
    """An unbiased estimate of grad tr G from tr G = (1/n) E_z ||J^T z||^2, z Rademacher in R^N: each
    sample costs one vector-Jacobian product and its gradient, not N of them (for large n or p). Memory
    `num_samples` N + p.

    **Arguments:** `problem`, `params`, the probes' `key`, `num_samples`.

    **Returns:** the estimate of grad tr G, flat (p,).

    **Raises:** `ValueError` for `num_samples` not a positive integer."""
    num_samples = checks.positive_int("num_samples", num_samples)
    flat, unravel = problem.ravel(params)
    z = jax.random.rademacher(key, (num_samples, problem.y.size), flat.dtype)

    def estimate(v):
        _, vjp = jax.vjp(lambda w: problem.residuals(unravel(w)).reshape(-1), v)
        return jnp.mean(jax.vmap(lambda zi: jnp.sum(vjp(zi)[0] ** 2))(z)) / problem.n

    return jax.grad(estimate)(flat)


def tangent_projection(
    problem: Problem, params: PyTree, v: Float[Array, " p"], *, mode: Mode = "auto"
) -> Float[Array, " p"]:
    """P_T v = v - J^T K^+ J v (flows/_geometry.py: dense memory N p, cost N^2 p; matrix-free memory
    O(N + p), cost one JVP and one VJP per conjugate-gradient step).

    **Arguments:** `problem`, `params` (the point), `v` (flat, p), `mode`.

    **Returns:** P_T v, flat (p,).

    **Raises:** `ValueError` for a problem without residuals (cross-entropy: no zero-loss manifold) or with N
    > p; a bad `mode`; `equinox.EquinoxRuntimeError` where the matrix-free mode's conjugate gradients did not
    converge (never a NaN projection)."""
    flat, unravel = problem.ravel(params)
    point = geometry.Point(problem, flat, unravel, numerics.mode_for(problem, mode, flat.dtype))
    return _solved("tangent_projection", point, point.project(v))


def riemannian_grad(
    problem: Problem, params: PyTree, objective: Objective | None = None, *, mode: Mode = "auto"
) -> Float[Array, " p"]:
    """P_T grad F; F defaults to `label_noise_objective`, whose gradient comes out of the same per-example
    pass as J.

    **Arguments:** `problem`, `params`, `objective` (`fn(problem, params)` -> scalar, or None), `mode`.

    **Returns:** P_T grad F, flat (p,).

    **Raises:** `ValueError` for a problem without residuals (cross-entropy: no zero-loss manifold) or with N
    > p; a bad `mode`; `equinox.EquinoxRuntimeError` where the matrix-free mode's conjugate gradients did not
    converge."""
    flat, unravel = problem.ravel(params)
    mode = numerics.mode_for(problem, mode, flat.dtype)
    point, g = _point_and_grad(problem, flat, unravel, objective, mode)
    return _solved("riemannian_grad", point, point.project(g))


def _solved(name: str, point, value):
    """`value`, computed with `point`'s solves, or an `equinox.EquinoxRuntimeError` naming `name` where a
    conjugate-gradient solve failed (eagerly at once, traced through `eqx.error_if`)."""
    what = f"{name}: the conjugate-gradient solve with J J^T did not converge (matrix-free mode)"
    if checks.is_concrete(point.solved):
        if not bool(point.solved):
            raise eqx.EquinoxRuntimeError(what)
        return value
    return eqx.error_if(value, ~point.solved, what)


def _point_and_grad(problem, flat, unravel, objective, mode):
    """The geometry at `flat` and grad F there (from the per-example pass for the default objective)."""
    default = objective is None or objective is label_noise_objective
    point = geometry.Point(problem, flat, unravel, mode, trace_grad=default)
    if default:
        return point, point.trace_grad / 4
    return point, jax.grad(lambda v: objective(problem, unravel(v)))(flat)


def retract(problem: Problem, params: PyTree, *, tol=None, max_iter: int = 50, mode: Mode = "auto") -> PyTree:
    """The Gauss-Newton retraction: theta <- theta - J^T K^+ r(theta) until max_i |r_i| <= tol.

    Each iteration is one solve with K (flows/_geometry.py).

    **Arguments:** `problem`, `params` (the start), `tol` (default 1e3 eps (1 + max |y|)), `max_iter`,
    `mode`.

    **Returns:** the retracted parameters, a pytree shaped like `params`.

    **Raises:** `equinox.EquinoxRuntimeError` if it has not converged after `max_iter` iterations (the point
    is too far from the manifold) or went non-finite; `ValueError` where J J^T is singular."""
    return _onto(problem, params, phi=False, res_tol=tol, max_iter=max_iter, mode=mode)


def limit_map(
    problem: Problem, params: PyTree, *, tol=None, max_time=1e6, max_steps: int = 100_000, mode: Mode = "auto"
) -> PyTree:
    """Phi(theta): where gradient flow from theta converges.

    Gradient flow runs until the RMS of grad L falls below `tol` (or the residuals reach round-off,
    `residual_floor` in flows/_numerics.py), a distance delta ~ tol / lambda_min(K / n) from the manifold; the
    Gauss-Newton `retract` then lands within O(delta^2) of the flow's limit. The flow is stiff there (its
    explicit step bound by lambda_max(K / n), its tail decaying at lambda_min):

    Up to 256 Tsit5 steps (a non-stiff flow settles within them), then the Rosenbrock-W method ROS34PW2 with
    the Gauss-Newton matrix as W (flows/_rosenbrock.py), whose steps grow geometrically as the normal modes
    decay; local errors 1e-8 (1 + |theta|) in float64, 1e-6 in float32; default `tol` 1e-10 in float64,
    1e-7 in float32.

    - dense mode: one J and one N x N eigh serve several steps. Its landing is ~50 rtol from Phi in the
      parameters (measured 1.6e-7 on the digits MLP, N = 64, p = 8,385, where it maps a label-noise GD
      save in 0.32 s, 5.8x faster than Tsit5 did; 4e-7 on one with N = 32, cond(K) = 1.6e3, against Tsit5
      at rtol 1e-12 to t = 2e4).
    - matrix-free mode: the same steps with J never formed, each stage's W solved by conjugate gradients
      on I + c K (~sqrt(cond) products with K, one JVP and one VJP each); it lands where the dense mode
      does (1e-15 apart on the digits MLP) in 0.64-0.86x the time Tsit5 took to its old stop, 1.5e-7.

    (Why these: `limit_map_tol` in flows/_numerics.py.) Maps an SGD iterate near Gamma to the point of Gamma
    it is attached to (Phi differs from the orthogonal projection at second order). Memory: the dense mode's
    J (N p); one compiled call.

    **Arguments:** `problem`, `params` (the start), `tol` (above), `max_time` and `max_steps` (the gradient
    flow's budget), `mode`.

    **Returns:** Phi(params), a pytree shaped like `params`.

    **Raises:** `equinox.EquinoxRuntimeError` naming `limit_map` when gradient flow has not settled within
    `max_time` and `max_steps` (the start is far from any zero-loss point, or gradient flow has no zero-loss
    limit there), and `ValueError` saying so when the landing fails because J J^T is singular there (a
    degenerate point is bad input)."""
    return _onto(problem, params, phi=True, flow_tol=tol, max_time=max_time, max_steps=max_steps, mode=mode)


_UNSETTLED = (
    "limit_map: gradient flow from params did not settle (RMS of grad L <= tol) within max_time and "
    "max_steps; the start is far from the zero-loss manifold or gradient flow has no limit on it there"
)
_UNSOLVED = (
    "retraction onto the zero-loss manifold failed: conjugate gradients did not reach their tolerance in a "
    "matrix-free Gauss-Newton step (J J^T too ill-conditioned there); mode='dense' factorises it where J fits"
)
_TOO_FAR = (
    "retraction onto the zero-loss manifold failed: the start is too far from the manifold "
    "(Gauss-Newton did not reach max|r| <= tol)"
)


class _Budget(NamedTuple):
    """How a start is mapped onto the manifold: Phi's gradient flow stops at the RMS gradient `flow_tol`
    within `max_time` and `max_steps`; the Gauss-Newton landing at max|r| <= `res_tol` within `max_iter`
    iterations; the linear algebra in `mode` (resolved, never "auto")."""

    flow_tol: float | Array
    res_tol: float | Array
    max_time: float
    max_steps: int
    max_iter: int
    mode: Literal["dense", "matrix_free"]


def _budget(
    problem, dtype, flow_tol=None, res_tol=None, max_time=1e6, max_steps=100_000, max_iter=50, mode="auto"
):
    """The `_Budget` of `limit_map` and `retract` for parameters of `dtype`, their defaults filled in."""
    flow_tol = numerics.limit_map_tol(dtype) if flow_tol is None else checks.positive("tol", flow_tol)
    res_tol = numerics.retract_tol(dtype, problem.y) if res_tol is None else res_tol
    return _Budget(flow_tol, res_tol, max_time, max_steps, max_iter, numerics.mode_for(problem, mode, dtype))


class _Landing(NamedTuple):
    """Where `_land` put a start: the landing `params` (a pytree like the start); whether Phi's gradient
    flow `settled`; max|r| there (`res`); whether `res` <= res_tol (`ok`); whether every inner solve
    succeeded (`solved`); J's singular range there (`stats`, as `_singular_range`; dense mode, when asked)
    or None; and whether all went well (`landed`: settled, ok, solved, and J `_regular` where `stats`
    says)."""

    params: PyTree
    settled: Array
    res: Array
    ok: Array
    solved: Array
    stats: Array | None
    landed: Array


def _onto(problem, params, *, phi: bool, **budget):
    """Map `params` onto the manifold (Phi when `phi`, else the retraction) in one compiled call, raising
    the errors of `limit_map` and `retract` (`_checked_landing`); `budget`: `_budget`'s keywords."""
    checks.same_structure("params", params, problem.params, "problem.params")
    dtype = jnp.result_type(*jax.tree.leaves(params))
    budget = _budget(problem, dtype, **budget)
    landing = _onto_compiled(problem, params, budget, phi)
    return _checked_landing(problem, landing, budget, dtype, landing.params)


def _checked_landing(problem, landing: _Landing, budget: _Budget, dtype, x):
    """`x` once `landing` is known to have succeeded. Concrete: raises `equinox.EquinoxRuntimeError` where
    the map failed to converge (with the numbers) and `ValueError` where J J^T is singular at the landing (a
    degenerate start); traced: `x` under `eqx.error_if` with the same messages, less the numbers."""
    if not checks.is_concrete(landing.landed):
        for failed, message in (
            (~landing.settled, _UNSETTLED),
            (~landing.solved, _UNSOLVED),
            (~landing.ok, _TOO_FAR),
            (~landing.landed, _SINGULAR),
        ):
            x = eqx.error_if(x, failed, message)
        return x
    if landing.landed:  # one scalar read on success; the reason read only on failure
        return x
    settled, res, ok, solved, stats, _ = jax.device_get(landing[1:])
    if not settled:
        raise eqx.EquinoxRuntimeError(
            f"{_UNSETTLED} (max_time = {budget.max_time:g}, max_steps = {budget.max_steps})"
        )
    if not solved:
        raise eqx.EquinoxRuntimeError(_UNSOLVED)
    if stats is not None:
        _check_regular(problem, stats, dtype, budget.mode, "where the start lands")
    if not ok:
        if numerics.mode_for(problem, "auto", dtype) == "dense":  # J fits: read its singular values
            J = problem.jacobian(landing.params)
            _check_regular(problem, _singular_range(J), dtype, budget.mode, "near the start")
        raise eqx.EquinoxRuntimeError(
            f"{_TOO_FAR}; max|r| = {float(res):.3g} after {budget.max_iter} iterations, "
            f"tol = {float(budget.res_tol):.3g}"
        )
    return x


_DEPENDENT = (
    "the constraints r_i = 0 are dependent there, so the zero-loss manifold is not smooth there; start from "
    "a generic point"
)
_SINGULAR = f"J J^T is singular where the start lands: {_DEPENDENT}"


def _singular_range(J):
    """(smallest singular value of J, largest, max_a ||grad f_a||^2): what `_check_regular` reads."""
    s = geometry.singular_values(J)
    return jnp.stack([s[-1], s[0], jnp.max(jnp.sum(J**2, axis=1))])


def _regular(problem, stats, dtype, mode):
    """Whether J, with `_singular_range` `stats` (traced or on the host), is regular by the rank rule of
    `mode` (`numerics.rcond`): its smallest squared singular value is above mu."""
    return stats[0] ** 2 > numerics.rcond(problem.y.size, dtype, mode) * stats[2]


def _check_regular(problem, stats, dtype, mode, where: str) -> None:
    """Raise unless J, with `_singular_range` `stats`, is `_regular`."""
    low, high, sq = (float(x) for x in jax.device_get(stats))
    if not _regular(problem, (low, high, sq), dtype, mode):
        raise ValueError(
            f"J J^T is singular {where} (singular values of J from {low:.3g} to {high:.3g}; "
            f"N = {problem.y.size} constraints, p = {problem.num_params} parameters): {_DEPENDENT}"
        )


# limit_map's explicit steps before it calls the flow stiff and goes on by Rosenbrock-W steps: a
# non-stiff flow settles within them (the two-layer nets of the growth study: 190-280 Tsit5 steps, 3-4x
# faster than Rosenbrock-W steps, which build J); a stiff one (the digits MLP: 2,750) spends little on them
_EXPLICIT_STEPS = 256


def _to_rest(problem, flat, unravel, mode, tol, max_time, max_steps):
    """Gradient flow from `flat` until it is at rest, within `max_time` and `max_steps`: (where it stopped,
    whether it came to rest). At rest: the RMS of grad L at most `tol`, or max_i |r_i| at round-off
    (`residual_floor`; there the gradient is rounding and the flow has nothing left to do). Tsit5 first
    (`limit_map_rtol`, at most `_EXPLICIT_STEPS`); a flow not at rest within those goes on by
    `rosenbrock.settle` in `mode` with the rest of the budget."""
    grad = jax.grad(lambda w: problem.loss(unravel(w)))
    floor = numerics.residual_floor(flat.dtype, problem.y)

    def at_rest(theta, f):
        residual = jnp.max(jnp.abs(problem.residuals(unravel(theta))))
        return (jnp.sqrt(jnp.mean(f**2)) <= tol) | (residual <= floor)

    rtol = numerics.limit_map_rtol(flat.dtype)
    explicit = min(_EXPLICIT_STEPS, max_steps)
    solve = Solve(diffrax.Tsit5(), rtol, rtol, explicit)
    sol = diffrax.diffeqsolve(  # the event, not save times, ends this solve
        diffrax.ODETerm(lambda t, v, args: -grad(v)),
        solve.solver,
        t0=jnp.zeros((), flat.dtype),
        t1=jnp.asarray(max_time, flat.dtype),
        dt0=None,
        y0=flat,
        stepsize_controller=solve.controller(),
        event=diffrax.Event(lambda t, y, args, **kwargs: at_rest(y, -grad(y))),
        max_steps=solve.max_steps,
        throw=False,
    )
    flat, settled = sol.ys[-1], sol.result == diffrax.RESULTS.event_occurred
    if explicit == max_steps:
        return flat, settled

    def stiff():
        rest = max_time - sol.ts[-1]
        return rosenbrock.settle(problem, flat, unravel, at_rest, rtol, rest, max_steps - explicit, mode)[:2]

    return lax.cond(sol.result == diffrax.RESULTS.max_steps_reached, stiff, lambda: (flat, settled))


def _land(problem, params, budget: _Budget, phi: bool, gram: bool) -> _Landing:
    """Map `params` onto the manifold within `budget`: Phi's gradient flow when `phi` (`_to_rest`; skipped
    for a start already within res_tol of the manifold, so that Phi runs once per start), then
    Gauss-Newton steps until max|r| <= res_tol and one more where it lowers max|r|; with `gram`, J's
    singular range (as `_singular_range`) where that last step was taken, from its QR (dense mode). Traced;
    raveled and unraveled here."""
    flat, unravel = problem.ravel(params)
    max_residual = lambda v: jnp.max(jnp.abs(problem.residuals(unravel(v))))  # noqa: E731
    settled, res0 = jnp.asarray(True), max_residual(flat)
    if phi:  # a start already on the manifold (max|r| <= res_tol, e.g. mapped by limit_map) is its own Phi

        def flow_to_rest():
            v, at_rest = _to_rest(
                problem, flat, unravel, budget.mode, budget.flow_tol, budget.max_time, budget.max_steps
            )
            return v, at_rest, max_residual(v)

        on = res0 <= budget.res_tol
        flat, settled, res0 = lax.cond(on, lambda: (flat, jnp.asarray(True), res0), flow_to_rest)

    def cond(state):
        _, res, i, solved = state
        return (res > budget.res_tol) & (i < budget.max_iter) & jnp.isfinite(res) & solved

    def step(v):  # one Gauss-Newton step: (the new point, max|r| there, the geometry it was taken with)
        point = geometry.Point(problem, v, unravel, budget.mode)
        v = v - point.min_norm(point.r)
        return v, jnp.max(jnp.abs(problem.residuals(unravel(v)))), point

    def body(state):
        v, _, i, solved = state
        v, res, point = step(v)
        return v, res, i + 1, solved & point.solved

    v, res, i, solved = jax.lax.while_loop(cond, body, (flat, res0, 0, jnp.asarray(True)))
    # one more Gauss-Newton step squares a residual at res_tol down to round-off; kept where it helps
    polished, res2, point = step(v)
    better = (res2 < res) & point.solved
    v, res = jax.tree.map(lambda a, b: jnp.where(better, a, b), (polished, res2), (v, res))
    landing = unravel(v)
    ok = res <= budget.res_tol
    landed = settled & ok & solved
    stats = None
    if gram and budget.mode == "dense":
        # J's singular range from the last step's QR, one Gauss-Newton step (max|r| <= res_tol) from the
        # landing: an SVD of R (N x N), not of J (N x p: N^2 p, and a copy of J the flow's compiled call
        # held beside its own, 0.3 GB at N = 1,024, p = 32,768 in float64)
        sigma = point.singular_values()
        stats = jnp.stack([sigma[-1], sigma[0], jnp.max(point.sq)])
        landed = landed & _regular(problem, stats, v.dtype, budget.mode)
    return _Landing(landing, settled, res, ok, solved, stats, landed)


@compiled
def _onto_compiled(problem, params, budget, phi):
    return _land(problem, params, budget, phi, gram=False)


def riemannian_flow(
    problem: Problem,
    params0: PyTree,
    *,
    t1,
    t0=0.0,
    objective: Objective | None = None,
    start: Literal["limit_map", "retract"] = "limit_map",
    mode: Mode = "auto",
    stabilize: float = 1.0,
    ts=None,
    save_every=None,
    num_saves: int = 101,
    save_params: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 1_000_000,
    progress: bool = False,
    metrics: Mapping[str, Metric] | None = None,
    throw: bool = True,
) -> Trajectory:
    """Riemannian gradient flow of `objective` on the zero-loss manifold, on [t0, t1].

    d theta / dtau = -P_T grad F - alpha J^+ r, with F = `objective` (default `label_noise_objective`,
    tr H / 4, whose flow in the slow time tau = eta^2 sigma^2 k / B, or eta^2 sigma^2 B_eps k / B^2 with a
    separate noise batch (`flows.timescale`, `Trajectory.slow_time`), is the label-noise limit) and
    alpha = `stabilize`.

    **Arguments:**

    - `params0`: the start. `start="limit_map"` (default) maps it onto the manifold by Phi, where gradient
      flow from it converges: the point label-noise SGD started at params0 is attached to. A start already on
      the manifold stays where it is. `start="retract"` takes the Gauss-Newton retraction instead (it
      differs from Phi at second order in the distance to the manifold). The landing and the flow are one
      compiled call; where the landing fails, the flow is skipped and the landing's error raised.
    - `mode`: the linear algebra (`flows/_geometry.py`): `"dense"` (J formed and factorised by QR once per
      evaluation: memory 3 N p, cost N gradient evaluations and 3 N^2 p), `"matrix_free"` (JVPs and VJPs,
      conjugate gradients: memory O(N + p) plus `chunk` examples' gradients), or `"auto"` (dense while J
      fits in 1 GiB).
    - `solver`, `rtol`, `atol`, `max_steps`, `progress` (`flows.Solve`): default Tsit5 with PID
      steps, `rtol` default 1e-8 in float64, 1e-5 in float32, `atol` default rtol / 100.
    - `ts`, `save_every`, `num_saves`, `save_params` (`flows.Saves`): saved at `ts`, else every
      `save_every`, else `num_saves` points in [t0, t1]; records `loss`, `objective` and `grad_norm`
      (||P_T grad F||) and `max_residual` (max_i |r_i|) besides any given `metrics`.

    - `throw`: raise on a failed solve, or return the Trajectory with its `result` code.

    **Returns:** a `Trajectory` with `clock="tau"` for the default objective, `"t"` otherwise.

    **Raises:** `ValueError` if J J^T is singular where params0 lands (the constraints are dependent, or
    N > p: the manifold is not smooth there; checked in the dense mode, since the matrix-free one never
    forms J), if params0 is not finite, or for another bad argument; `equinox.EquinoxRuntimeError` if it
    cannot be mapped onto the manifold (`limit_map`). Approaching rank loss along the way (a sparse optimum)
    is allowed. A solve that fails on the way (`max_steps`, a non-finite loss, an inner solve, or residuals
    past `numerics.manifold_drift_tol` at a save: `OFF_MANIFOLD`, the flow left a manifold that is not C^2,
    as a ReLU net's or one with max pooling is) has its `result` code set and, with `throw=True`, raises
    `equinox.EquinoxRuntimeError`.

    **Example:** a two-layer net with a fixed outer layer on 4 examples (N = 4 constraints, p = 24): mapped
    onto the manifold by Phi, the flow lowers tr H / 4 while the loss stays at zero.

    ```pycon
    >>> import jax
    >>> from models import Problem, TwoLayerNet, data
    >>> X = data.gaussian(jax.random.key(0), 4, 3)
    >>> net = TwoLayerNet(3, 8, key=jax.random.key(1), activation="tanh", train_outer=False)
    >>> problem = Problem(net, X, X[:, 0])
    >>> flow = riemannian_flow(problem, problem.params, t1=0.5, ts=[0.0, 0.5])
    >>> flow.clock, bool(flow.stats["objective"][-1] < flow.stats["objective"][0])
    ('tau', True)
    >>> bool(flow.stats["loss"].max() < 1e-8)
    True

    ```
    """
    params0 = check_start(problem, params0)
    given_t1, t1 = t1, checks.positive("t1", t1)
    checks.forward_span(t0, given_t1)  # on the number given (t1 is now an array)
    stabilize = checks.non_negative("stabilize", stabilize)
    saves = Saves(ts, save_every, num_saves, save_params)
    if start not in ("limit_map", "retract"):
        raise ValueError(f"start must be 'limit_map' or 'retract', got {start!r}")
    dtype = jnp.result_type(*jax.tree.leaves(params0))
    budget = _budget(problem, dtype, mode=mode)
    rtol = numerics.slow_flow_rtol(dtype) if rtol is None else rtol
    solve = Solve(solver or diffrax.Tsit5(), rtol, rtol / 100 if atol is None else atol, max_steps, progress)
    clock = "tau" if objective in (None, label_noise_objective) else "t"
    ts = saves.times(given_t1, t0)
    traj, landing = _riemannian_solve(
        problem, params0, budget, start == "limit_map", objective, stabilize, t0, t1, ts, saves.params, solve,
        default_metrics(metrics), clock,
    )  # fmt: skip
    return finish("riemannian_flow", _checked_landing(problem, landing, budget, dtype, traj), throw)


def _slow_field(problem, unravel, objective, mode, stabilize) -> Callable:
    """The flow's vector field (t, v, args) -> -P_T grad F(v) - alpha J^+ r(v), alpha = `stabilize`, on
    flat parameters v: one `geometry.Point` (one factorisation or one set of solves) an evaluation."""

    def field(t, v, args):
        point, g = _point_and_grad(problem, v, unravel, objective, mode)
        return -point.project(g, stabilize * point.r)

    return field


@compiled
def _riemannian_solve(
    problem, params0, budget, phi, objective, stabilize, t0, t1, ts, save_params, solve, metrics, clock
):
    """params0 landed on the manifold (`_land`, Phi when `phi`) and the flow from there, in one compiled
    call: (the Trajectory, the `_Landing`). Where the landing failed the flow is skipped (NaN saves) and
    `_checked_landing` reports why."""
    landing = _land(problem, params0, budget, phi, gram=True)
    mode = budget.mode

    def flow():
        flat0, unravel = problem.ravel(landing.params)
        field = _slow_field(problem, unravel, objective, mode, stabilize)

        def save(t, v, args):
            params = unravel(v)
            point, g = _point_and_grad(problem, v, unravel, objective, mode)
            stats = evaluate(problem, params, metrics)
            # the default objective tr G / 4 from the squared gradient norms the geometry has (never J in
            # the matrix-free mode)
            default = objective is None or objective is label_noise_objective
            stats["objective"] = (
                jnp.sum(point.sq) / (4 * problem.n) if default else objective(problem, params)
            )
            stats["grad_norm"] = jnp.linalg.norm(point.project(g))
            stats["max_residual"] = jnp.max(jnp.abs(point.r))
            return (params if save_params else None), (stats, point.solved)

        times, (params, (stats, solved)), result = solve_ode(field, flat0, t0, t1, ts, save, solve)
        # a failed conjugate-gradient solve at a save (matrix-free mode) is an inner failure, not a
        # divergence; residuals past the drift tolerance mean the flow left the manifold
        result = jnp.where(jnp.all(solved), result, INNER_SOLVER_FAILED)
        drift = numerics.manifold_drift_tol(flat0.dtype, problem.y, solve.atol)
        off = ~(jnp.max(stats["max_residual"]) <= drift) & jnp.all(jnp.isfinite(stats["loss"]))
        result = jnp.where((result == SUCCESSFUL) & off, OFF_MANIFOLD, result)
        result = diverged_where(result, stats["loss"])
        return Trajectory(ts=times, params=params, stats=stats, clock=clock, result=result)

    def skipped():
        return jax.tree.map(_nan_like, jax.eval_shape(flow))

    return lax.cond(landing.landed, flow, skipped), landing


def _nan_like(leaf: jax.ShapeDtypeStruct) -> Array:
    """NaN (zero for an integer dtype) of `leaf`'s shape and dtype: the saves of a flow that did not run."""
    fill = jnp.nan if jnp.issubdtype(leaf.dtype, jnp.inexact) else 0
    return jnp.full(leaf.shape, fill, leaf.dtype)
