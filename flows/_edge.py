"""Edge Flow: GD at the edge of stability as a centre, an oscillation direction and an oscillation magnitude
(after Marion 2026, "Edge Flow", arXiv 2606.18080; the equations here are derived below, not copied).

GD with step eta near the edge oscillates with period two along the top eigenvector u of H. Write its
iterates as theta_k = c_k + (-1)^k rho_k u_k: a centre c, a unit direction u and a magnitude rho >= 0. One
GD step from c +- rho u moves the centre by -eta times the mean of the two gradients, and along u the
deviation from the centre changes sign and is multiplied by |1 - eta lambda| (lambda = u^T H u). In
gradient-flow time t = eta k that is

    dc / dt   = -(1/2) [grad L(c + rho u) + grad L(c - rho u)],   the gradient of the symmetrised loss,
    d rho / dt = rho log|eta lambda - 1| / eta,                   growth above eta lambda = 2, decay below,
    du / dt   = H u - (u^T H u) u,                                Rayleigh-quotient ascent,

with H and lambda at the centre; the direction's rate is GD's own power iteration near the edge
(d/d lambda of log|eta lambda - 1| / eta is 1 at eta lambda = 2). The symmetrised loss is
L(c) + (1/2) rho^2 u^T H u + O(rho^4): its gradient is the central flow's drift with Sigma = rho^2 u u^T,
and the feedback that holds eta lambda at 2 comes out of the coupled equations, with no complementarity
problem. GD's time-averaged loss is predicted as (1/2) [L(c + rho u) + L(c - rho u)].

The magnitude starts at rho_0 = (eta / 2) |u^T grad L(theta_0)|, half the step GD takes along u, and is
kept above eps rho_0 (eps the dtype's): below the edge it decays, and from there it grows again when the
edge is reached, as GD's own oscillation does (the smaller it has become, the later: the flow overshoots
the edge first, as GD does).

Each step of h = eta / `substeps` (default 1, one GD step) is an exponential Heun step (ETD2RK, Cox &
Matthews 2002) with the stiff part -lambda u u^T of the centre's field taken exactly: along u the centre
relaxes at rate lambda = 2 / eta at the edge, where Euler's factor 1 - h lambda is -1 at h = eta and Heun's
grows past the edge. With the field F = (dc/dt, du/dt, d log rho/dt) at (c, u, rho), lambda and u frozen
over the step and phi_1(-z) = (1 - e^-z) / z, phi_2(-z) = (e^-z - 1 + z) / z^2 at z = h lambda:

    stage       a = c + h F_c + h (phi_1 - 1) (u^T F_c) u,   u' = u + h F_u,   rho' = rho e^{h F_rho},
    step        c <- a + (h/2) (I - u u^T) D + h phi_2 (u^T D + lambda u^T (a - c)) u,   D = F_c' - F_c,
                u <- u + (h/2) (F_u + F_u'),   rho <- rho e^{(h/2) (F_rho + F_rho')},

F' the field at (a, u' / |u'|, rho'). It is second order in h, exact on a quadratic along u (where the
centre decays as e^{-lambda t}), and Heun's across u; where eta lambda crosses 1 (GD's factor along u is
0 there) the magnitude's rate is singular, though integrable, and the order drops locally. A step costs
two fields: two Hessian-vector products and four gradients, 4.2 gradients' time a GD step at the default
on a small CNN (scripts/benchmarks/bench_edge.py), against the central flow's 2k Hessian-vector products
and k(k+1)/2 third derivatives at each of its substeps. Cost O(n p) a step, memory O(p) (plus the
activations of n examples). On the digits CNN at eta = 0.7 (square loss, float32) the predicted loss is
1.2% from GD's 40-step average over the edge stretch at 1 substep and 1.7% at 2 and 4 (the central flow
1.0%, gradient flow 5.5%).
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import PyTree

from models import Problem, checks
from models.problem import check_start

from . import timescale
from ._central import _initial_vectors, _top_eigenpairs
from ._integrate import Saves
from ._trajectory import SUCCESSFUL, Trajectory, compiled, default_metrics, diverged_where, evaluate, finish

__all__ = ["edge_flow"]

_COLD = 100  # Rayleigh-Ritz steps for the starting direction


def edge_flow(
    problem: Problem,
    params0: PyTree,
    *,
    eta,
    t1,
    substeps: int = 1,
    ts=None,
    save_every=None,
    num_saves: int = 101,
    save_params: bool = True,
    metrics=None,
    throw: bool = True,
) -> Trajectory:
    """Edge Flow of GD with step `eta` from `params0` (module docstring), in gradient-flow time t = eta k, to
    `t1`: the centre c, the direction u (the top eigenvector of H at the start, by Rayleigh-Ritz) and the
    magnitude rho (from rho_0).

    **Arguments:** `eta > 0`; `t1`, a whole number of steps eta / substeps; `substeps` steps a GD step;
    `ts`, `save_every`, `num_saves`, `save_params` (`flows.Saves`, on the step grid); `metrics` (evaluated
    at the centre), `throw` as for `gradient_flow`.

    Records `loss` (at the centre), `predicted_loss` = (1/2) [L(c + rho u) + L(c - rho u)] (GD's
    time-averaged loss), `sharpness` = u^T H u at the centre, `residual` = ||H u - (u^T H u) u|| / |u^T H u|
    (0 where u is an eigenvector: the direction follows Rayleigh-quotient ascent, so it lags a turning
    eigenvector, and the start's 100 Rayleigh-Ritz steps may leave it short of one), `rho`, and any
    `metrics`; `params` are the centre's.

    **Returns:** a `Trajectory` with `clock="t"`; `DIVERGED` when a loss becomes non-finite.

    **Raises:** `ValueError` naming a bad argument (`t1` or a save time off the step grid); with
    `throw=True`, `equinox.EquinoxRuntimeError` for a diverged run."""
    params0 = check_start(problem, params0)
    eta = checks.positive("eta", eta)
    t1 = checks.positive("t1", t1)
    substeps = checks.positive_int("substeps", substeps)
    saves = Saves(ts, save_every, num_saves, save_params)
    h = eta / substeps
    index = saves.grid_index(t1, h, timescale.steps_for_time(t1, h, name="t1"))
    traj = _solve(problem, params0, eta, index, substeps, default_metrics(metrics), saves.params)
    return finish("edge_flow", traj, throw)


@compiled
def _solve(problem, params0, eta, index, substeps, metrics, save_params):
    flat0, unravel = problem.ravel(params0)
    dtype = flat0.dtype
    eta = jnp.asarray(eta, dtype)
    h = eta / substeps

    def loss(w):
        return problem.loss(unravel(w))

    grad = jax.grad(loss)

    def rayleigh(c, u):
        """H u at c and lambda = u^T H u."""
        Hu = jax.linearize(grad, c)[1](u)
        return Hu, u @ Hu

    def field(c, u, rho):
        """The right-hand sides at (c, u, rho): -(1/2) [g(c + rho u) + g(c - rho u)], H u - lambda u and
        d log rho / dt = log|eta lambda - 1| / eta; and lambda."""
        Hu, lam = rayleigh(c, u)
        plus, minus = jax.vmap(grad)(jnp.stack([c + rho * u, c - rho * u]))
        return -0.5 * (plus + minus), Hu - lam * u, jnp.log(jnp.abs(eta * lam - 1)) / eta, lam

    def step(state):
        c, u, rho = state
        f1, v1, r1, lam = field(c, u, rho)
        phi1, phi2 = _phi(h * lam)
        a = c + h * f1 + h * (phi1 - 1) * (u @ f1) * u  # exponential Euler along u, Euler across
        w = u + h * v1
        f2, v2, r2, _ = field(a, w / jnp.linalg.norm(w), jnp.maximum(rho * jnp.exp(h * r1), rho_min))
        d = f2 - f1
        c = a + 0.5 * h * (d - (u @ d) * u) + h * phi2 * (u @ d + lam * (u @ (a - c))) * u
        u = u + 0.5 * h * (v1 + v2)
        return c, u / jnp.linalg.norm(u), jnp.maximum(rho * jnp.exp(0.5 * h * (r1 + r2)), rho_min)

    def record(c, u, rho):
        params = unravel(c)
        stats = evaluate(problem, params, metrics)
        Hu, lam = rayleigh(c, u)
        stats |= {
            "predicted_loss": 0.5 * (loss(c + rho * u) + loss(c - rho * u)),
            "sharpness": lam,
            "residual": jnp.linalg.norm(Hu - lam * u) / jnp.maximum(jnp.abs(lam), jnp.finfo(dtype).tiny),
            "rho": rho,
        }
        return (params if save_params else None), stats

    g0, hvp0 = jax.linearize(grad, flat0)
    _, U, _ = _top_eigenpairs(hvp0, _initial_vectors(flat0.size, 1, dtype), _COLD)
    u0 = U[:, 0]
    rho0 = 0.5 * eta * jnp.abs(u0 @ g0)  # half GD's step along u
    rho_min = jnp.finfo(dtype).eps * rho0
    state0 = (flat0, u0, rho0)

    def segment(carry, target):
        state, j = carry
        state = lax.fori_loop(j, target, lambda _, s: step(s), state)
        return (state, target), record(*state)

    _, (params, stats) = lax.scan(segment, (state0, jnp.zeros((), index.dtype)), index)
    result = diverged_where(jnp.asarray(SUCCESSFUL), stats["loss"])
    return Trajectory(ts=index.astype(dtype) * h, params=params, stats=stats, clock="t", result=result)


def _phi(z):
    """(phi_1(-z), phi_2(-z)) = ((1 - e^-z) / z, (e^-z - 1 + z) / z^2), the exponential integrator's weights
    (1 and 1/2 at z = 0): their Taylor series to z^16 for |z| < 1 (where the closed forms cancel), the
    closed forms beyond (relative error within a few eps either way)."""
    small = jnp.abs(z) < 1
    zs = jnp.where(small, 1.0, z)
    e = jnp.expm1(-zs)  # e^-z - 1
    series1 = series2 = jnp.zeros_like(z)
    for k in range(16, -1, -1):  # Horner: sum_k (-z)^k / (k + 1)!, sum_k (-z)^k / (k + 2)!
        series1 = series1 * -z + 1 / math.factorial(k + 1)
        series2 = series2 * -z + 1 / math.factorial(k + 2)
    return jnp.where(small, series1, -e / zs), jnp.where(small, series2, (e + zs) / zs**2)
