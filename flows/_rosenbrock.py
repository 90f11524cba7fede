"""Gradient flow to its limit, stiff: the Rosenbrock-W method ROS34PW2 with the Gauss-Newton matrix as W.

Near the zero-loss manifold gradient flow d theta / dt = f(theta) = -grad L is stiff: its Jacobian -H has the
eigenvalues of -K / n (K = J J^T) on the normal directions, spread over decades, and ~0 along the manifold.
An explicit solver's step is bound by 1 / lambda_max(K / n) while the tail decays at lambda_min(K / n), so
Tsit5 takes ~ cond(K) log(1 / tol) steps. A Rosenbrock-W method solves one linear system per stage with a
matrix W ~ I - gamma h df/dtheta that need not be the exact Jacobian: its order holds for any W. Here

    W = I + gamma h G,   G = J^T J / n   (the Gauss-Newton part of H; H - G = sum_a r_a grad^2 f_a / n -> 0
                                          on the manifold, so W becomes the exact Jacobian's there),

and with K = U diag(lambda) U^T (eigh of N x N, lambda clamped at 0) the push-through identity solves it
in O(N p) without a p x p array:

    W^{-1} b = b - J^T U diag(c / (1 + c lambda)) U^T J b,   c = gamma h / n.

ROS34PW2 (Rang & Angermann 2005): 4 stages, order 3 as a W-method, L-stable and stiffly accurate, with an
embedded order-2 solution for the step control. The stage equations (Hairer & Wanner's form, A = -G):

    W k_i = h f(theta + sum_j a_ij k_j) + h A sum_j gamma_ij k_j,   theta_1 = theta + sum_i b_i k_i.

Its steps grow geometrically as the normal modes decay (L-stability removes a mode once h lambda >> 1), so
the step count grows with log cond(K), not cond(K): on the digits MLP (N = 64, p = 8,385, cond(K) = 4,400) it
settles a label-noise GD iterate in ~160 steps where Tsit5 took ~2,500, and lands 100x closer to the limit
(`scripts/benchmarks/bench_limit_map.py`). Used by `flows.limit_map` in both modes.

Dense (`gauss_newton_w`, `step`): 4 gradients and 8 passes over J a step (products J v, J^T u; the stages
are solved in the coordinates U^T J). A new W costs J (N per-example gradients, memory N p), K (N^2 p) and
its eigh (N^3); it is refreshed every few accepted steps and after a rejected one (`settle`): a W-method
keeps its order with a W from an earlier point, and the shift c = gamma h / n changes for free.

Matrix-free (`matrix_free_w`, `step_matrix_free`; J never formed, memory O(N + p)): the same stages with
W^{-1} b = b - J^T (K + I / c)^{-1} J b solved by conjugate gradients, ~sqrt(cond(I + c K)) products with
K (a JVP and a VJP) a stage. Late in the tail c lambda_max ~ cond(K), so a step costs ~4 sqrt(cond(K))
products where Tsit5 needs ~cond(K) steps in all: on the digits MLP the 151 steps took ~12,000 products
against Tsit5's ~16,500 gradients to a 1,500x looser stop, and landed 30x closer to Phi (1.8e-7 against
5.4e-6 in the parameters).
"""

import jax
import jax.numpy as jnp
from jax import lax

from . import _geometry as geometry

__all__ = ["gauss_newton_w", "matrix_free_w", "step", "step_matrix_free", "refresh_interval", "settle"]

# ROS34PW2 (Rang & Angermann, "New Rosenbrock W-methods of order 3 for partial differential algebraic
# equations of index 1", BIT 45, 2005): gamma, the stage couplings a and gamma_ij, the weights b and the
# embedded order-2 weights
_GAMMA = 4.3586652150845900e-01
# (Python floats: weakly typed, so the stages stay in the state's dtype)
_A = (
    (),
    (8.7173304301691801e-01,),
    (8.4457060015369423e-01, -1.1299064236484185e-01),
    (0.0, 0.0, 1.0),
)
_COUPLING = (
    (),
    (-8.7173304301691801e-01,),
    (-9.0338057013044082e-01, 5.4180672388095326e-02),
    (2.4212380706095346e-01, -1.2232505839045147e00, 5.4526025533510214e-01),
)
_B = (2.4212380706095346e-01, -1.2232505839045147e00, 1.5452602553351020e00, 4.3586652150845900e-01)
_B_EMBEDDED = (3.7810903145819369e-01, -9.6042292212423178e-02, 5.0e-01, 2.1793326075422950e-01)
_ORDER = 3

_eigh = geometry.one_at_a_time(lambda K: tuple(jnp.linalg.eigh(K)))  # batched eigh deadlocks (one_at_a_time)


def gauss_newton_w(problem, flat, unravel):
    """(J, U, lambda) at `flat`: J (N, p) and K = J J^T = U diag(lambda) U^T, lambda clamped at 0 (rounding
    can push K's smallest eigenvalues below it in float32, where 1 + c lambda would cross 0). With
    Q = U^T J, G = Q^T Q / n and Q Q^T = diag(lambda); Q is never formed (Q v = U^T (J v)). Cost: J, then
    2 N^2 p + O(N^3); memory N p.

    **Arguments:** the `problem` (square loss), the flat parameters `flat`, `unravel` (from `problem.ravel`).

    **Returns:** the tuple (J, U, lambda)."""
    J = problem.jacobian(unravel(flat))
    lam, U = _eigh(J @ J.T)
    return J, U, jnp.maximum(lam, 0.0)


def matrix_free_w(problem, flat, unravel):
    """The matrix-free W at `flat`: (flat, ||grad f_a||^2 per output), the point whose linearisation J the
    stages use (rebuilt by one forward pass a step) and K's diagonal, the conjugate-gradient preconditioner.
    Cost: N per-example gradients, 256 examples at a time (memory 256 p); no J.

    **Arguments:** the `problem` (square loss), the flat parameters `flat`, `unravel`.

    **Returns:** the tuple (flat, diag K)."""
    return flat, geometry.squared_gradient_norms(problem, flat, unravel)


def step(problem, grad, w, theta, f, h):
    """One ROS34PW2 step of d theta / dt = -grad L from `theta` (where f = -grad L) of size `h`, with the
    Gauss-Newton W `w` (`gauss_newton_w`, possibly from an earlier point): (theta_1, the embedded error
    theta_1 - theta_1^(2), True).

    In the coordinates z_j = Q k_j (Q = U^T J) every stage takes two passes over J: with c = gamma h / n and
    D = diag(c / (1 + c lambda)), W^{-1} = I - Q^T D Q, and with s = sum_j gamma_ij z_j

        q = Q rhs_i = h Q f_i - (h / n) lambda s,   k_i = h f_i - Q^T ((h / n) s + D q),
        z_i = q / (1 + c lambda).

    **Arguments:** the `problem`, `grad` (flat parameters -> grad L), the W `w`, the flat `theta`,
    `f` = -grad L(theta), the step `h`.

    **Returns:** (theta_1, the embedded error, whether the solves succeeded: always)."""
    J, U, lam = w
    n = problem.n
    c = _GAMMA * h / n
    D = c / (1 + c * lam)
    ks, zs = [], []
    for i in range(4):
        f_i = f if i == 0 else -grad(theta + sum(a * k for a, k in zip(_A[i], ks)))
        s = sum((g * z for g, z in zip(_COUPLING[i], zs)), jnp.zeros_like(lam))
        q = h * (U.T @ (J @ f_i)) - (h / n) * lam * s
        ks.append(h * f_i - (U @ ((h / n) * s + D * q)) @ J)
        zs.append(q / (1 + c * lam))
    return _combine(theta, ks) + (jnp.asarray(True),)


def step_matrix_free(problem, grad, w, theta, f, h, unravel, cg_rtol):
    """`step` without J: the stage equations W k_i = h f_i - h G s_i (s_i = sum_j gamma_ij k_j) with
    W = I + gamma h G, G = J^T J / n, J linearised at the W's point (`matrix_free_w`), solved by the
    push-through identity W^{-1} b = b - J^T (K + I / c)^{-1} J b, c = gamma h / n: conjugate gradients on
    the N x N system (`geometry.shifted_solve`, preconditioned by diag K + 1 / c) to `cg_rtol`. A stage
    costs one gradient, ~sqrt(cond(I + c K)) CG iterations of one JVP and one VJP each, and two to four more
    products; memory O(N + p).

    **Arguments:** as `step`, with the matrix-free `w`, `unravel` and the CG tolerance `cg_rtol`.

    **Returns:** (theta_1, the embedded error, whether every CG solve reached `cg_rtol`)."""
    at, sq = w
    n = problem.n
    shift = n / (_GAMMA * h)
    jv = jax.linearize(lambda v: problem.residuals(unravel(v)).reshape(-1), at)[1]
    vjp = jax.linear_transpose(jv, at)
    jtu = lambda u: vjp(u)[0]  # noqa: E731
    ks, solved = [], jnp.asarray(True)
    for i in range(4):
        f_i = f if i == 0 else -grad(theta + sum(a * k for a, k in zip(_A[i], ks)))
        rhs = h * f_i
        if i > 0:
            rhs = rhs - (h / n) * jtu(jv(sum(g * k for g, k in zip(_COUPLING[i], ks))))
        x, ok = geometry.shifted_solve(jv, jtu, sq, shift, jv(rhs), cg_rtol)
        solved = solved & ok
        ks.append(rhs - jtu(x))
    return _combine(theta, ks) + (solved,)


def _combine(theta, ks):
    """(theta_1, theta_1 - theta_1^(2)) from the stages."""
    theta_1 = theta + sum(b * k for b, k in zip(_B, ks))
    return theta_1, sum((b - e) * k for b, e, k in zip(_B, _B_EMBEDDED, ks))


def refresh_interval(N: int) -> int:
    """How many accepted steps one W serves: N / 64, within [4, 32]. A new W costs ~2 N^2 p, a step ~16 N p
    and 4 gradients, so a large N wants W kept longer; a W kept too long loses accuracy at the same rtol
    (measured: on the digits MLP, N = 64, every 4 steps 2e-8 off Phi, every 16 3e-7; on the two-layer net
    at N = 1,024 every 16 steps agrees with every 4 to 1e-10 in tr H in 41% of the time).

    **Arguments:** N, the number of constraints.

    **Returns:** the interval, a Python int."""
    return min(max(N // 64, 4), 32)


def settle(problem, flat, unravel, at_rest, rtol, max_time, max_steps, mode="dense"):
    """Gradient flow from `flat` until `at_rest(theta, -grad L(theta))` (`flows.limit_map`'s: a small RMS
    gradient, or the residuals at round-off): adaptive ROS34PW2 steps, each local error at most `rtol`
    (1 + |theta|) in RMS, within `max_time` and `max_steps` (steps tried).

    W is refreshed after a rejected step and after `refresh_interval(N)` accepted ones. `mode="dense"`
    forms J and K's eigh (`gauss_newton_w`, `step`); `"matrix_free"` never forms J (`matrix_free_w`,
    `step_matrix_free`, its conjugate gradients to `rtol`: on the digits MLP 1e-10 gave the same landing
    in 1.2x the time; a step whose solve fails is rejected, and a smaller one conditions I + c K better).
    Traceable (a `lax.while_loop`): `flows.limit_map` reads `settled` and raises.

    **Arguments:** the `problem`, the flat start `flat`, `unravel`, `at_rest`, `rtol`, `max_time`,
    `max_steps`, `mode`.

    **Returns:** (theta, settled, steps tried, steps accepted)."""
    refresh = refresh_interval(problem.y.size)
    dtype = flat.dtype
    if mode == "dense":
        new_w, take = gauss_newton_w, step
    else:
        new_w = matrix_free_w
        take = lambda P, grad, w, theta, f, h: step_matrix_free(P, grad, w, theta, f, h, unravel, rtol)  # noqa: E731
    grad = jax.grad(lambda v: problem.loss(unravel(v)))
    rms = lambda x: jnp.sqrt(jnp.mean(x**2))  # noqa: E731

    tiny = jnp.finfo(dtype).tiny
    f0 = -grad(flat)
    h0 = jnp.minimum(0.01 * (1 + rms(flat)) / jnp.maximum(rms(f0), tiny), max_time)

    def cond(state):
        *_, t, h, tried, _, _, rest = state
        return ~rest & (tried < max_steps) & (t < max_time) & (h > 0)

    def body(state):
        theta, f, w, t, h, tried, accepted, age, rest = state
        new, err, solved = take(problem, grad, w, theta, f, h)
        scale = rtol * (1 + jnp.maximum(jnp.abs(theta), jnp.abs(new)))
        e = jnp.where(solved, rms(err / scale), jnp.inf)
        ok = e <= 1  # False for a non-finite error or a failed solve: the step shrinks
        factor = jnp.clip(0.9 * e ** (-1 / _ORDER), 0.2, 5.0)
        h_next = h * jnp.where(jnp.isfinite(factor), factor, 0.2).astype(dtype)
        theta, t = jnp.where(ok, new, theta), jnp.where(ok, t + h, t)

        def moved():  # -grad L and the rest rule at the accepted point, once
            f_new = -grad(theta)
            return f_new, at_rest(theta, f_new)

        f, rest = lax.cond(ok, moved, lambda: (f, rest))
        # a new W after `refresh` accepted steps, or after a rejection by a W from an earlier point
        stale = jnp.where(ok, age + 1 >= refresh, age > 0)
        w = lax.cond(stale, lambda: new_w(problem, theta, unravel), lambda: w)
        age = jnp.where(stale, 0, age + ok.astype(age.dtype))
        h_next = jnp.minimum(h_next, max_time)
        return theta, f, w, t, h_next, tried + 1, accepted + ok.astype(accepted.dtype), age, rest

    zero = jnp.zeros((), dtype)
    count = jnp.zeros((), jnp.int32)
    w0 = new_w(problem, flat, unravel)
    init = (flat, f0, w0, zero, h0, count, count, count, at_rest(flat, f0))
    theta, *_, tried, accepted, _, rest = lax.while_loop(cond, body, init)
    return theta, rest, tried, accepted
