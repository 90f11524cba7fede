"""The zero-loss manifold Gamma = {theta : r(theta) = 0} and the Riemannian gradient flow on it.

With J = d r / d theta (N, p) and J^+ its pseudo-inverse:

    P_T v = v - J^+ (J v) = (I - J^T (J J^T)^{-1} J) v     projection onto the tangent space T_theta Gamma
    theta <- theta - J^+ r(theta)                            Gauss-Newton (minimum-norm Newton) retraction

J^+ b is the minimum-norm solution of J d = b, solved by an SVD of the (N, p) Jacobian (lineax): its
accuracy depends on cond(J), not cond(J)^2 as a solve with J J^T would, and it stays finite as J loses rank
(sparse optima of the quadratic parametrisation), where a Cholesky factor of J J^T breaks down.

Label-noise SGD with step eta, noise sigma and batch B, in the slow time tau = eta^2 sigma^2 k / B, follows
the Riemannian gradient flow of F = tr H / 4 (Blanc et al. 2020; Damian et al. 2021; Li, Wang & Arora 2022;
Gatmiry et al. 2024):

    d theta / d tau = -P_T grad F(theta),   F = (1/4) tr H = (1/(4n)) ||J||_F^2 on Gamma.

On Gamma, tr H = tr G (the residual part vanishes) and P_T grad tr H = P_T grad tr G, so the flow uses the
exact gradient of tr G from per-example gradients. The flow integrates

    d theta / d tau = -P_T grad F(theta) - alpha J^+ r(theta),

whose normal term (`stabilize` = alpha) gives d r / d tau = -alpha r exactly: any drift off Gamma from
the solver's local errors decays, and the loss stays at round-off over long horizons.
"""

from collections.abc import Callable, Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from models import Problem, checks
from models.problem import check_start

from .gradient import save_times, solve_ode
from .trajectory import Metric, Trajectory, default_metrics, evaluate

Objective = Callable[[Problem, PyTree], Array]


def label_noise_objective(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """F = tr G / 4 = (1/(4n)) sum_i ||grad f_i||^2, equal to tr H / 4 on the zero-loss manifold."""
    return problem.gauss_newton_trace(params) / 4


def trace_grad(problem: Problem, params: PyTree) -> Float[Array, " p"]:
    """grad tr G = (2/n) sum_i grad^2 f_i grad f_i (flat), exact, from per-example gradients. On Gamma its
    tangent part equals that of grad tr H."""
    flat, unravel = problem.ravel(params)
    return jax.grad(lambda v: problem.gauss_newton_trace(unravel(v)))(flat)


def trace_grad_hutchinson(
    problem: Problem, params: PyTree, key: PRNGKeyArray, num_samples: int = 16
) -> Float[Array, " p"]:
    """An unbiased estimate of grad tr G from tr G = (1/n) E_z ||J^T z||^2, z Rademacher in R^N: each
    sample costs one vector-Jacobian product and its gradient, not N of them (for large n or p)."""
    num_samples = checks.positive_int("num_samples", num_samples)
    flat, unravel = problem.ravel(params)
    z = jax.random.rademacher(key, (num_samples, problem.y.size), flat.dtype)

    def estimate(v):
        _, vjp = jax.vjp(lambda w: problem.residuals(unravel(w)).reshape(-1), v)
        return jnp.mean(jax.vmap(lambda zi: jnp.sum(vjp(zi)[0] ** 2))(z)) / problem.n

    return jax.grad(estimate)(flat)


def min_norm_solve(J: Float[Array, "N p"], b: Float[Array, " N"]) -> Float[Array, " p"]:
    """J^+ b: the minimum-norm least-squares solution of J d = b (SVD, singular values below the default
    relative cut-off dropped)."""
    return lx.linear_solve(lx.MatrixLinearOperator(J), b, lx.SVD()).value


def tangent_projection(problem: Problem, params: PyTree, v: Float[Array, " p"]) -> Float[Array, " p"]:
    """P_T v = v - J^+ (J v)."""
    J = problem.jacobian(params)
    return v - min_norm_solve(J, J @ v)


def riemannian_grad(
    problem: Problem, params: PyTree, objective: Objective | None = None
) -> Float[Array, " p"]:
    """P_T grad F (flat); F defaults to `label_noise_objective`."""
    flat, unravel = problem.ravel(params)
    objective = objective or label_noise_objective
    return tangent_projection(problem, params, jax.grad(lambda v: objective(problem, unravel(v)))(flat))


def retract(problem: Problem, params: PyTree, *, tol=None, max_iter: int = 50) -> PyTree:
    """The Gauss-Newton retraction: theta <- theta - J^+ r(theta) until max_i |r_i| <= tol.

    `tol` defaults to 1e3 eps (1 + max |y|). Raises `ValueError` if it has not converged after `max_iter`
    iterations (the point is too far from the manifold) or went non-finite."""
    return _retract_checked(problem, params, tol=tol, max_iter=max_iter)[0]


def _retract_checked(problem, params, *, tol=None, max_iter=50):
    """`retract`, also returning the singular values of J at the result."""
    flat, unravel = problem.ravel(params)
    if tol is None:
        tol = 1e3 * jnp.finfo(flat.dtype).eps * (1 + jnp.max(jnp.abs(problem.y)))
    final, res, ok, svals = _retract(problem, flat, tol, max_iter)
    message = (
        "retraction onto the zero-loss manifold failed: the start is too far from the manifold "
        "(Gauss-Newton did not reach max|r| <= tol)"
    )
    if checks.is_concrete(ok):
        if not ok:
            raise ValueError(
                f"{message}; max|r| = {float(res):.3g} after {max_iter} iterations, tol = {float(tol):.3g}"
            )
        return unravel(final), svals
    return unravel(eqx.error_if(final, ~ok, message)), svals


@eqx.filter_jit
def _retract(problem, flat, tol, max_iter):
    unravel = problem.ravel(problem.params)[1]

    def residual(v):
        return problem.residuals(unravel(v)).reshape(-1)

    def cond(state):
        _, res, i = state
        return (res > tol) & (i < max_iter) & jnp.isfinite(res)

    def body(state):
        v, _, i = state
        v = v - min_norm_solve(jax.jacrev(residual)(v), residual(v))
        return v, jnp.max(jnp.abs(residual(v))), i + 1

    v, res, _ = jax.lax.while_loop(cond, body, (flat, jnp.max(jnp.abs(residual(flat))), 0))
    return v, res, res <= tol, jnp.linalg.svd(jax.jacrev(residual)(v), compute_uv=False)


def limit_map(
    problem: Problem, params: PyTree, *, tol=None, max_time=1e6, max_steps: int = 100_000
) -> PyTree:
    """Phi(theta): where gradient flow from theta converges.

    Gradient flow (diffrax Tsit5, adaptive, tolerances tol / 100) runs until the RMS of grad L falls below
    `tol` (default 10 sqrt(eps)), a distance delta ~ tol / lambda_min from the manifold; the Gauss-Newton
    `retract` then lands within O(delta^2) of the flow's limit. Maps an SGD iterate near Gamma to the point
    of Gamma it is attached to (Phi differs from the orthogonal projection at second order)."""
    checks.same_structure("params", params, problem.params, "problem.params")
    flat, unravel = problem.ravel(params)
    tol = 10 * jnp.sqrt(jnp.finfo(flat.dtype).eps) if tol is None else checks.positive("tol", tol)
    return retract(problem, unravel(_gradient_flow_limit(problem, flat, tol, max_time, max_steps)))


@eqx.filter_jit
def _gradient_flow_limit(problem, flat, tol, max_time, max_steps):
    unravel = problem.ravel(problem.params)[1]
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, v, args: -jax.grad(lambda w: problem.loss(unravel(w)))(v)),
        diffrax.Tsit5(),
        t0=0.0,
        t1=max_time,
        dt0=None,
        y0=flat,
        stepsize_controller=diffrax.PIDController(rtol=tol / 100, atol=tol / 100),
        event=diffrax.Event(diffrax.steady_state_event(rtol=0.0, atol=tol)),
        max_steps=max_steps,
    )
    return sol.ys[-1]


def riemannian_flow(
    problem: Problem,
    params0: PyTree,
    *,
    t1,
    objective: Objective | None = None,
    ts=None,
    save_every=None,
    stabilize: float = 1.0,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 1_000_000,
    metrics: Mapping[str, Metric] | None = None,
    save_params: bool = True,
    progress: bool = False,
) -> Trajectory:
    """Riemannian gradient flow of `objective` on the zero-loss manifold, from `params0` retracted onto it.

    d theta / dtau = -P_T grad F - alpha J^+ r, with F = `objective` (default `label_noise_objective`,
    tr H / 4, whose flow in the slow time tau = eta^2 sigma^2 k / B is the label-noise limit) and
    alpha = `stabilize`. Solved by `solver` (default Tsit5) with a PID controller (`rtol` default 1e-8 in
    float64, 1e-5 in float32; `atol` default rtol / 100); saved at `ts` (default:
    every `save_every`, else 101 points in [0, t1]). Records `loss`, `objective` and `grad_norm`
    (||P_T grad F||) besides any given `metrics`.

    Raises `ValueError` if params0 cannot be retracted onto the manifold, if J J^T is singular there
    (the constraints are dependent: the manifold is not smooth there), or if params0 is not finite.
    Approaching rank loss along the way (a sparse optimum) is allowed.

    **Returns:** a `Trajectory` with `clock="tau"` for the default objective, `"t"` otherwise.
    """
    params0 = check_start(problem, params0)
    t1 = checks.positive("t1", t1)
    stabilize = checks.non_negative("stabilize", stabilize)
    params0, s = _retract_checked(problem, params0)
    if checks.is_concrete(s):
        if s[-1] <= 1e3 * jnp.finfo(s.dtype).eps * s[0] * max(problem.y.size, problem.num_params):
            raise ValueError(
                f"J J^T is singular at params0 (smallest singular value of J {float(s[-1]):.3g}, largest "
                f"{float(s[0]):.3g}): the constraints r_i = 0 are dependent there, so the zero-loss manifold "
                "is not smooth at the start; start from a generic point"
            )
    objective = objective or label_noise_objective
    if rtol is None:  # below float32's eps a controller cannot meet its tolerance and crawls
        rtol = 1e-8 if problem.ravel(params0)[0].dtype == jnp.float64 else 1e-5
    atol = rtol / 100 if atol is None else atol
    metrics = {**default_metrics(metrics), "objective": objective}
    clock = "tau" if objective is label_noise_objective else "t"
    traj = _riemannian_solve(
        problem,
        params0,
        objective,
        t1,
        save_times(t1, ts, save_every),
        stabilize,
        solver or diffrax.Tsit5(),
        rtol,
        atol,
        max_steps,
        metrics,
        save_params,
        progress,
    )
    return Trajectory(ts=traj.ts, params=traj.params, stats=traj.stats, clock=clock)


@eqx.filter_jit
def _riemannian_solve(
    problem,
    params0,
    objective,
    t1,
    ts,
    stabilize,
    solver,
    rtol,
    atol,
    max_steps,
    metrics,
    save_params,
    progress,
):
    flat0, unravel = problem.ravel(params0)

    def field(t, v, args):
        J = problem.jacobian(unravel(v))
        g = jax.grad(lambda w: objective(problem, unravel(w)))(v)
        r = problem.residuals(unravel(v)).reshape(-1)
        return -(g - min_norm_solve(J, J @ g)) - stabilize * min_norm_solve(J, r)

    def save(t, v, args):
        params = unravel(v)
        stats = evaluate(problem, params, metrics)
        stats["grad_norm"] = jnp.linalg.norm(riemannian_grad(problem, params, objective))
        return (params if save_params else None), stats

    ts, (params, stats) = solve_ode(field, flat0, t1, ts, save, solver, rtol, atol, max_steps, progress)
    return Trajectory(ts=ts, params=params, stats=stats)
