"""The central flow of gradient descent at the edge of stability (Cohen, Damian, Talwalkar, Kolter & Lee 2024,
"Understanding optimization in deep learning with central flows").

GD with step eta follows gradient flow while eta lambda_max(H) < 2. Once the sharpness reaches 2 / eta, GD
oscillates along the top eigenvectors and its time average follows, in gradient-flow time t = eta k,

    d theta / dt = -grad L(theta) - (1/2) grad_theta <Sigma, H(theta)>,

where Sigma = U X U^T (U: the top eigenvectors of H, X >= 0, k x k) is GD's oscillation covariance. X solves a
semidefinite complementarity problem that keeps the eigenvalues at the edge from crossing 2 / eta: with
A = 2 / eta - U^T H U and dA/dt affine in X along the flow,

    X >= 0,   Y = A + h dA/dt(X) >= 0,   <X, Y> = 0,

a k x k problem (`sdcp`) solved in JAX. The look-ahead h (one step of the flow, as in the reference code)
makes the edge attract: an eigenvalue above 2 / eta is pushed back at rate A / h. GD's time-averaged loss is
predicted as L + (1/2) <Sigma, H> = L + (1/2) sum_i X_ii lambda_i. Before the edge X = 0 and the flow is
gradient flow.

Each step of size h = eta / `substeps` in t: the gradient and the top `num_eigs` = k eigenpairs of H (one
block Rayleigh-Ritz step from the previous step's, ten at each save, a hundred from a cold start at the
first; the gradient comes with the linearisation the Hessian-vector products share), the third derivatives
t_ij = grad_theta (u_i^T H u_j) (nested JVPs under one VJP), X from `sdcp`, then an Euler step

    theta <- theta - h [grad L + (1/2) sum_ij X_ij t_ij],

assembled from those quantities: it is the step the look-ahead of `sdcp` assumes, as in the reference code.
Any other diffrax solver (`solver=diffrax.Heun()`) steps d theta / dt = -grad [L + (1/2) <Sigma, H>] with
Sigma = V V^T frozen over the step, each stage a gradient of L + (1/2) sum_m v_m^T H v_m (k more
third-derivative products a stage); before the edge the flow is then gradient flow to the solver's order.
Memory O(p k^2); cost a step (Euler): 2k Hessian-vector products and k(k+1)/2 third-derivative products,
about 10 gradients at k = 2 on a small CNN (p = 468) and 27 on a wider one (p = 10,084), Heun about twice
that (scripts/benchmarks/bench_edge.py).

**RMSProp** (`optimizer=RMSProp(decay, eps, initial_scale)`, the central flow of `optax.rmsprop(eta, ...)`:
nu_{k+1} = decay nu_k + (1 - decay) g_k^2, theta_{k+1} = theta_k - eta g_k / sqrt(nu_{k+1} + eps)) is GD
preconditioned by D = diag(d), d = 1 / sqrt(nu + eps). Its edge is on the preconditioned Hessian
S = D^{1/2} H D^{1/2} (eta lambda_max(S) = 2), Sigma = U X U^T with U = D^{1/2} V (V: S's top eigenvectors),
and the state (theta, nu) follows, in t = eta k,

    d theta / dt = -D [grad L + (1/2) grad <Sigma, H>],
    d nu / dt = (c / eta) [(grad L)^2 + diag(H Sigma H) - nu],   c = (1 - decay) / decay,

(Cohen, Damian et al. 2024, section 5): the squared gradient averages its oscillation H delta too, and c is
the rate of nu_{k+1}, the nu each step uses (nu_{k+1} - nu_k = c (g_k^2 - nu_{k+1})). In diag(H Sigma H) and
its X-dependence H U is taken at the edge, (2 / eta) D^{-1} U: exact for the directions held there, the
only ones with X != 0, and it keeps the complementarity operator symmetric and positive semidefinite. With
u_i fixed over a step, dA_ij/dt = (1 / eta) sum_m u_im u_jm d_m dnu_m/dt - t_ij . d theta / dt, affine in X
as for GD. Before the edge it is the preconditioned gradient flow of (theta, nu).

**Heavy-ball momentum and Adam** (`optimizer=Momentum(beta)`: `optax.sgd(eta, momentum=beta)`;
`optimizer=Adam(b1, b2, eps)`: `optax.adam`). Derived here as the RMSProp flow was (new: no published
central flow covers them). Write the first moment as the average m of the gradients (optax's trace times
1 - beta for heavy ball, Adam's m as it is) and b = beta or b1. In t = eta k the stable flow is

    d theta / dt = -s D m,   dm / dt = ((1 - b) / eta) (G - m),   d nu / dt = ((1 - b2) / eta) (g^2 + o - nu),

with s = 1 / (1 - beta) (heavy ball) or Adam's bias correction 1 / (1 - b1^(k+1)), D = I (heavy ball) or
diag(1 / (sqrt(nuhat) + eps)), nuhat = nu / (1 - b2^(k+1)), and at the edge G = grad L + (1/2) grad <Sigma, H>
(the averaged gradient at the oscillation's centre, as for GD) and o = diag(H Sigma H) (the squared
gradient's oscillation, as for RMSProp). Its edge: linearised with D frozen, along an eigenvector of
S = D^{1/2} H D^{1/2} with eigenvalue lambda the two-step recursion m_{k+1} = b m_k + (1 - b) lambda y_k,
y_{k+1} = y_k - eta s m_{k+1} has a period-2 solution exactly when eta s (1 - b) lambda = 2 (1 + b): the edge
2 (1 + beta) / eta for heavy ball and 2 (1 + b1) / (eta (1 - b1)) for Adam (38 / eta at b1 = 0.9, Cohen et
al. 2022; taken with m's bias correction settled, s = 1). On the edge's period-2 orbit heavy ball's iterates
are those of GD with step eta / (1 + beta). Each step of size h is a semi-implicit Euler step: the moments
first (m += ((1 - b) h / eta) (G - m), nu likewise), then theta -= h s D m with the new ones; at h = eta
and X = 0 it is the optimizer itself, step for step. X comes from the look-ahead of that step, as for GD: the
sharpness at the next point changes by -t_ij . (theta_+ - theta), where theta_+ - theta = -h s D m_+ and
m_+ is affine in X through G, and (Adam) by edge u_i^T diag(delta sqrt(nuhat)) u_j as D moves (H U =
edge D^{-1} U at the edge, as for RMSProp), where nu two steps ahead is affine in X through o, and
sqrt(nuhat) is linearised about the present nu (so an orbit is a fixed point of the flow exactly). S is
measured with the preconditioner of the last step (at t = 0, of the first). Cost a step: that of GD's flow
(2k Hessian-vector products, k(k+1)/2 third-derivative rows); memory O(p k^2).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int, PyTree

from models import Problem, checks
from models.problem import check_start

from . import _numerics as numerics
from . import timescale
from ._integrate import Saves, Solve
from ._trajectory import (
    INNER_SOLVER_FAILED,
    SUCCESSFUL,
    UNBOUNDED,
    Trajectory,
    compiled,
    default_metrics,
    diverged_where,
    evaluate,
    finish,
)

__all__ = ["PAST_EDGE", "Adam", "Momentum", "RMSProp", "sdcp", "central_flow"]

_COLD, _REFRESH = 100, 10  # Rayleigh-Ritz steps for the eigenpairs at the start and at each save
PAST_EDGE = 0.01  # eta lambda > 2 (1 + this): past the edge, not held at it (held ones sit within O(h))


def sdcp(
    A: Float[Array, "k k"], B: Float[Array, "k k k k"], *, rtol=None, max_iter: int = 10_000
) -> tuple[Float[Array, "k k"], Int[Array, ""]]:
    """The semidefinite complementarity problem X >= 0, Y = A + B(X) >= 0, <X, Y> = 0, for a symmetric A and a
    positive semidefinite operator B(X)_ij = sum_kl B_ijkl X_kl on symmetric matrices.

    It is the optimality condition of the convex problem min_{X >= 0} (1/2) <X, B(X)> + <A, X>, solved by
    accelerated projected gradient (FISTA with adaptive restart; projection onto the PSD cone by one k x k
    eigendecomposition) until the step moves X by less than `rtol` (default sqrt(eps)/100) relative, or
    `max_iter`. X = 0 when A >= 0. jit- and vmap-able; cost O(k^6) for the step size, O(k^4) an
    iteration.

    **Arguments:** `A` (k, k), `B` (k, k, k, k), `rtol`, `max_iter`.

    **Returns:** `(X, result)`, `result` a `flows.Result` code: `SUCCESSFUL` when the iteration settled
    (its last step moved X by at most `rtol` relative, or by at most sqrt(rtol) when `max_iter` stopped it)
    and X meets the complementarity conditions (Y >= 0 and <X, Y> = 0, to sqrt(rtol) of the problem's
    scale); `UNBOUNDED` when the iterates leave every bound (no solution exists: a direction D >= 0 with
    B(D) = 0 and <A, D> < 0, e.g. B = 0 and A not PSD, as on least squares past the edge); else
    `INNER_SOLVER_FAILED` (`max_iter` reached, or conditions unmet)."""
    k = A.shape[0]
    dtype = A.dtype
    if k == 0:
        return jnp.zeros((0, 0), dtype), jnp.asarray(SUCCESSFUL, jnp.int32)
    rtol = numerics.sdcp_rtol(dtype) if rtol is None else rtol
    i, j = jnp.triu_indices(k)
    c = jnp.where(i == j, 1.0, jnp.sqrt(2.0)).astype(dtype)  # vec(M) = c * M[i, j] is an isometry

    def vec(M):
        return c * M[i, j]

    def mat(x):
        M = jnp.zeros((k, k), dtype).at[i, j].set(x / c)
        return M.at[j, i].set(x / c)

    def project(x):
        w, V = jnp.linalg.eigh(mat(x))
        return vec((V * jnp.maximum(w, 0)[None, :]) @ V.T)

    a = vec(A)
    Q = c[:, None] * c[None, :] * ((B + B.transpose(1, 0, 2, 3)) / 2)[i, j][:, i, j]
    Q = (Q + Q.T) / 2
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(Q)[-1], jnp.finfo(dtype).tiny)

    def cond(state):
        x, _, _, move, it = state
        return (move > rtol) & (it < max_iter) & jnp.all(jnp.isfinite(x))

    def body(state):
        x, y, s, _, it = state
        x_new = project(y - (Q @ y + a) / lipschitz)
        restart = jnp.dot(y - x_new, x_new - x) > 0
        s_new = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * s**2)) / 2)
        y_new = jnp.where(restart, x_new, x_new + ((s - 1) / s_new) * (x_new - x))
        move = jnp.linalg.norm(x_new - x) / jnp.maximum(jnp.linalg.norm(x_new), jnp.finfo(dtype).tiny)
        return x_new, y_new, s_new.astype(dtype), move.astype(dtype), it + 1

    zero = jnp.zeros_like(a)
    x, _, _, move, _ = lax.while_loop(cond, body, (zero, zero, jnp.ones((), dtype), jnp.ones((), dtype), 0))
    held = jnp.linalg.eigvalsh(A)[0] >= 0
    X = jnp.where(held, jnp.zeros((k, k), dtype), mat(x))
    size = jnp.linalg.norm(x)
    Y = A + mat(Q @ vec(X))
    slack = jnp.sqrt(rtol) * (jnp.max(jnp.abs(A)) + lipschitz * size)
    solved = (jnp.linalg.eigvalsh(Y)[0] >= -slack) & (jnp.abs(jnp.sum(X * Y)) <= slack * jnp.maximum(1, size))
    # settled: the last step moved X by at most rtol; or, at max_iter, by at most sqrt(rtol) (float32 rounding
    # amplified by an ill-conditioned B keeps FISTA's iterates stirring at ~1e-4)
    code = jnp.where(
        ~jnp.isfinite(size),
        UNBOUNDED,
        jnp.where((move <= jnp.sqrt(rtol)) & solved, SUCCESSFUL, INNER_SOLVER_FAILED),
    )
    return X, jnp.where(held, SUCCESSFUL, code).astype(jnp.int32)


class RMSProp(eqx.Module):
    """RMSProp as `optax.rmsprop(eta, decay=decay, eps=eps, initial_scale=initial_scale)` runs it (eps inside
    the square root, no momentum, no centring, no bias correction): nu_0 = initial_scale,
    nu_{k+1} = decay nu_k + (1 - decay) g_k^2, theta_{k+1} = theta_k - eta g_k / sqrt(nu_{k+1} + eps).
    `central_flow(..., optimizer=RMSProp(...))` is its central flow (module docstring). Checked when built:
    0 < decay < 1, eps > 0, initial_scale >= 0."""

    decay: Array = eqx.field(converter=lambda v: checks.unit_interval("decay", v))
    eps: Array = eqx.field(converter=lambda v: checks.positive("eps", v))
    initial_scale: Array = eqx.field(converter=lambda v: checks.non_negative("initial_scale", v), default=0.0)


class Momentum(eqx.Module):
    """Heavy-ball momentum as `optax.sgd(eta, momentum=beta)` runs it: m_0 = 0, m_{k+1} = g_k + beta m_k,
    theta_{k+1} = theta_k - eta m_{k+1}. `central_flow(..., optimizer=Momentum(beta))` is its central flow
    (module docstring): its edge is at eta lambda_max(H) = 2 (1 + beta). Checked when built: 0 < beta < 1."""

    beta: Array = eqx.field(converter=lambda v: checks.unit_interval("beta", v))


class Adam(eqx.Module):
    """Adam as `optax.adam(eta, b1, b2, eps)` runs it (eps outside the square root, bias-corrected moments):
    m_0 = nu_0 = 0, m_{k+1} = b1 m_k + (1 - b1) g_k, nu_{k+1} = b2 nu_k + (1 - b2) g_k^2,
    theta_{k+1} = theta_k - eta mhat / (sqrt(nuhat) + eps) with mhat = m_{k+1} / (1 - b1^{k+1}) and
    nuhat = nu_{k+1} / (1 - b2^{k+1}). `central_flow(..., optimizer=Adam(...))` is its central flow (module
    docstring): its edge is at eta lambda_max(P^{-1} H) = 2 (1 + b1) / (1 - b1) (38 at b1 = 0.9; Cohen et al.
    2022), P = diag(sqrt(nuhat) + eps). Checked when built: 0 < b1, b2 < 1, eps > 0."""

    b1: Array = eqx.field(converter=lambda v: checks.unit_interval("b1", v), default=0.9)
    b2: Array = eqx.field(converter=lambda v: checks.unit_interval("b2", v), default=0.999)
    eps: Array = eqx.field(converter=lambda v: checks.positive("eps", v), default=1e-8)


class _Edge(eqx.Module):
    """The quantities of the central flow at one point: the top eigenpairs and X."""

    eigenvalues: Array  # (k,) descending: of H, or of the preconditioned S = D^(1/2) H D^(1/2)
    U: Array  # (p, k): Sigma = U X U^T
    X: Array  # (k, k)
    residual: Array  # (k,) ||S v_i - lambda_i v_i|| (S = H for GD)
    result: Array  # sdcp's code
    start: Array  # (p, k): the eigenvectors V of S (U for GD), where the next step's Rayleigh-Ritz starts
    gradient: Array  # (p,): grad L
    T: Array  # (k, k, p): t_ij = grad_theta (u_i^T H u_j)


def central_flow(
    problem: Problem,
    params0: PyTree,
    *,
    eta,
    t1,
    num_eigs: int = 3,
    substeps: int = 4,
    optimizer: "RMSProp | Momentum | Adam | None" = None,
    ts=None,
    save_every=None,
    num_saves: int = 101,
    save_params: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    metrics=None,
    throw: bool = True,
) -> Trajectory:
    """The central flow of GD with step `eta` from `params0`, in gradient-flow time t = eta k, to `t1`
    (of RMSProp, heavy-ball momentum or Adam with `optimizer`: module docstring).

    **Arguments:**

    - `eta > 0`, the GD step; `t1`, a whole number of steps eta / substeps.
    - `num_eigs`: the top eigenpairs of H tracked (at least the number that reach 2 / eta; those below the
      edge get X = 0 by complementarity).
    - `substeps`: steps of size h = eta / substeps per GD step (the look-ahead of `sdcp` is one step).
    - `ts`, `save_every`, `num_saves`, `save_params` (`flows.Saves`): saved on the step grid, as
      the SDEs are (the default `num_saves` points spread evenly over [0, t1], each rounded to the nearest
      step).
    - `solver`: `diffrax.Euler()` (default: the step the look-ahead assumes, built from the derivatives
      already taken, no further ones; before the edge gradient flow to O(h)) or another diffrax solver
      for each step with Sigma frozen (`diffrax.Heun()`: before the edge gradient flow to O(h^2), at about
      twice the cost a step).
    - `optimizer`: None (GD), an `RMSProp`, a `Momentum` (heavy ball) or an `Adam`: the flow of that
      optax optimizer at step `eta` (module docstring); `metrics`, `throw` as for `gradient_flow`. The
      flows of momentum and Adam take their own semi-implicit Euler step (`solver` None or Euler).

    Records `loss`, `predicted_loss` = L + (1/2) <Sigma, H> (GD's time-averaged loss), `eigenvalues` (the
    top num_eigs of H, descending, shape (T, num_eigs)), `eigen_residual` (||H u_i - lambda_i u_i|| of
    those eigenpairs, (T, num_eigs): the eigenpairs are tracked, not solved to a tolerance, and H has an
    eigenvalue within the residual of each), `edge_count` (the rank of X: eigenvalues held at the edge),
    `edge_saturated` (edge_count == num_eigs: more eigenvalues may have reached the edge untracked; raise
    num_eigs), `threshold` (the edge: 2 / eta for GD and RMSProp, 2 (1 + beta) / eta for momentum,
    2 (1 + b1) / (eta (1 - b1)) for Adam), `past_edge` (how many tracked eigenvalues exceed the threshold by
    more than a fraction `PAST_EDGE`: at t = 0, a start already past the edge, which the optimizer leaves by
    a transient the flow does not describe), `sigma_trace` = tr Sigma (the mean squared oscillation), and any
    `metrics`. With an `RMSProp` or an `Adam`: `eigenvalues` and `eigen_residual` are the preconditioned
    Hessian's D^{1/2} H D^{1/2}, the edge is on it, and `nu` (T, p) records the second-moment estimate
    (flattened as `problem.ravel`); with a `Momentum` or an `Adam`, `momentum` (T, p) the averaged gradient m
    (optax's trace times 1 - beta for momentum; Adam's m).

    eta may be traced (`jax.vmap` over step sizes); t1 and the save times must then lie on every eta's step
    grid. The result (`flows/_trajectory.py`): `DIVERGED` when the loss becomes non-finite; `UNBOUNDED` when
    the complementarity problem has no solution, so no oscillation holds GD at the edge (e.g. least squares
    past 2 / eta: GD diverges); `INNER_SOLVER_FAILED` when `sdcp` does not converge.

    **Returns:** a `Trajectory` with `clock="t"`.

    **Raises:** `ValueError` naming a bad argument (`t1` or a save time off the step grid, `num_eigs` above
    p, an `optimizer` of another type, a `solver` other than Euler for momentum or Adam); with
    `throw=True`, `equinox.EquinoxRuntimeError` for each failed result above.
    """
    params0 = check_start(problem, params0)
    eta = checks.positive("eta", eta)
    t1 = checks.positive("t1", t1)
    substeps = checks.positive_int("substeps", substeps)
    num_eigs = checks.positive_int("num_eigs", num_eigs)
    if num_eigs > problem.num_params:
        raise ValueError(f"num_eigs = {num_eigs} exceeds the number of parameters, {problem.num_params}")
    if optimizer is not None and not isinstance(optimizer, (RMSProp, Momentum, Adam)):
        raise ValueError(
            f"optimizer must be a flows.RMSProp, flows.Momentum, flows.Adam or None (GD), got "
            f"{type(optimizer).__name__}"
        )
    if isinstance(optimizer, (Momentum, Adam)) and not isinstance(solver, (diffrax.Euler, type(None))):
        raise ValueError(
            f"solver: the central flows of momentum and Adam take their own semi-implicit Euler step (the "
            f"optimizer itself at substeps = 1), got {type(solver).__name__}"
        )
    saves = Saves(ts, save_every, num_saves, save_params)
    solve = Solve(solver or diffrax.Euler())  # fixed steps h: no tolerances
    h = eta / substeps
    index = saves.grid_index(t1, h, timescale.steps_for_time(t1, h, name="t1"))
    traj = _solve(
        problem,
        params0,
        eta,
        index,
        num_eigs,
        substeps,
        solve,
        default_metrics(metrics),
        saves.params,
        optimizer,
    )
    return finish("central_flow", traj, throw)


@compiled
def _solve(problem, params0, eta, index, num_eigs, substeps, solve: Solve, metrics, save_params, optimizer):
    flat0, unravel = problem.ravel(params0)
    solver = solve.solver
    euler = isinstance(solver, diffrax.Euler)
    dtype = flat0.dtype
    eta = jnp.asarray(eta, dtype)
    h = eta / substeps
    p = flat0.size
    rmsprop = optimizer if isinstance(optimizer, RMSProp) else None
    if rmsprop is not None:
        rate = jnp.asarray((1 - rmsprop.decay) / rmsprop.decay, dtype)  # c
        eps = jnp.asarray(rmsprop.eps, dtype)

    def loss(w):
        return problem.loss(unravel(w))

    def quad(w, u, v):
        """u^T H(w) v."""
        return jax.jvp(lambda x: jax.jvp(loss, (x,), (u,))[1], (w,), (v,))[1]

    k = num_eigs
    upper = jnp.triu_indices(k)

    def third_derivatives(w, U):
        """t_ij = grad_theta (u_i^T H u_j), (k, k, p)."""
        rows = jax.vmap(lambda u, v: jax.grad(quad)(w, u, v))(U.T[upper[0]], U.T[upper[1]])  # i <= j
        return jnp.zeros((k, k, p), dtype).at[upper].set(rows).at[upper[1], upper[0]].set(rows)

    def preconditioned_eigenpairs(hvp, d, U0, iterations):
        """The top eigenpairs (lambda, V) of S = D^(1/2) H D^(1/2), U = D^(1/2) V, the residuals."""
        root = jnp.sqrt(d)
        lam, V, residual = _top_eigenpairs(lambda v: root * hvp(root * v), U0, iterations)
        return lam, V, root[:, None] * V, residual

    def gd_edge(w, nu, U0, iterations, j) -> _Edge:
        """GD (nu None): the top eigenpairs of H, and X. RMSProp: those of S = D^(1/2) H D^(1/2), and
        U = D^(1/2) V."""
        g, hvp = jax.linearize(jax.grad(loss), w)  # the gradient comes with the products' linearisation
        if nu is None:
            lam, U, residual = _top_eigenpairs(hvp, U0, iterations)
            V = U
        else:
            d = lax.rsqrt(nu + eps)
            lam, V, U, residual = preconditioned_eigenpairs(hvp, d, U0, iterations)
        T = third_derivatives(w, U)
        if nu is None:
            A = jnp.diag(2 / eta - lam) + h * jnp.einsum("ijp,p->ij", T, g)
            B = (h / 2) * jnp.einsum("ijp,klp->ijkl", T, T)
        else:
            UU = jnp.einsum("pi,pj->pij", U, U)
            nu_dot = (rate / eta) * (g**2 - nu)  # at X = 0
            A = jnp.diag(2 / eta - lam) + h * (
                jnp.einsum("pij,p->ij", UU, d * nu_dot) / eta + jnp.einsum("ijp,p->ij", T, d * g)
            )
            B = h * (
                (4 * rate / eta**4) * jnp.einsum("pij,pkl,p->ijkl", UU, UU, 1 / d)
                + 0.5 * jnp.einsum("ijp,klp,p->ijkl", T, T, d)
            )
        X, result = sdcp(A, B)
        return _Edge(lam, U, X, residual, result, V, g, T)

    def field(t, w, args):
        V = args  # Sigma = V V^T, frozen over the step
        return -jax.grad(lambda x: loss(x) + 0.5 * jnp.sum(jax.vmap(lambda v: quad(x, v, v))(V.T)))(w)

    def rmsprop_field(t, state, args):
        w, nu = state
        V, oscillation = args  # Sigma = V V^T and diag(H Sigma H), frozen over the step
        g = jax.grad(loss)(w)
        g_sigma = jax.grad(lambda x: 0.5 * jnp.sum(jax.vmap(lambda v: quad(x, v, v))(V.T)))(w)
        return -lax.rsqrt(nu + eps) * (g + g_sigma), (rate / eta) * (g**2 + oscillation - nu)

    term = diffrax.ODETerm(field if rmsprop is None else rmsprop_field)

    def root_sigma(e):
        """V with Sigma = V V^T."""
        mu, Q = jnp.linalg.eigh(e.X)
        return e.U @ (Q * jnp.sqrt(jnp.maximum(mu, 0))[None, :])

    def gd_step(w, nu, e, j):
        V = root_sigma(e)
        if euler:  # the field at w from the edge quantities: (1/2) grad <Sigma, H> = (1/2) sum_ij X_ij t_ij
            velocity = -(e.gradient + 0.5 * jnp.einsum("ij,ijp->p", e.X, e.T))
            if nu is None:
                return w + h * velocity, None
            oscillation = (2 / eta) ** 2 * (nu + eps) * jnp.sum(V**2, axis=1)  # diag(H Sigma H), as below
            nu_dot = (rate / eta) * (e.gradient**2 + oscillation - nu)
            return w + h * lax.rsqrt(nu + eps) * velocity, nu + h * nu_dot
        zero = jnp.zeros((), dtype)
        if nu is None:
            state = solver.init(term, zero, h, w, V)
            return solver.step(term, zero, h, w, V, state, made_jump=True)[0], None
        # diag(H Sigma H) with H U = (2 / eta) D^(-1) U, its value at the edge (module docstring)
        args = V, (2 / eta) ** 2 * (nu + eps) * jnp.sum(V**2, axis=1)
        state = solver.init(term, zero, h, (w, nu), args)
        return solver.step(term, zero, h, (w, nu), args, state, made_jump=True)[0]

    def gd_threshold(j):
        return 2 / eta

    if isinstance(optimizer, (Momentum, Adam)):
        adam = isinstance(optimizer, Adam)
        b1 = jnp.asarray(optimizer.b1 if adam else optimizer.beta, dtype)
        fast = (1 - b1) / substeps  # m's share a substep: m <- m + fast (G - m)
        if adam:
            b2 = jnp.asarray(optimizer.b2, dtype)
            slow = (1 - b2) / substeps  # nu's
            eps = jnp.asarray(optimizer.eps, dtype)

        def gain(j):
            """s: the step moves theta by -h s D m at t = j h (1 / (1 - beta); Adam's bias correction)."""
            return 1 / (1 - b1 ** (jnp.asarray(j + 1, dtype) / substeps)) if adam else 1 / (1 - b1)

        def threshold(j):
            """The edge: 2 (1 + beta) / eta (momentum); 2 (1 + b1) / (eta (1 - b1)) (Adam, taken with m's
            bias correction settled: its first ~1 / (1 - b1) steps are a transient held at no edge)."""
            return 2 * (1 + b1) / (eta * (1 - b1)) if adam else 2 * (1 + b1) / eta

        def correction(j):
            """nu's bias correction 1 / (1 - b2^(k + 1)) of the step from t = j h."""
            return 1 / (1 - b2 ** (jnp.asarray(j + 1, dtype) / substeps))

        def measured(state, g, j):
            """nuhat of the preconditioner D the edge is measured with: the last step's (at t = 0, the first
            step's at X = 0, nu_0 = 0 having none)."""
            nu = state[1]
            first = correction(0) * (nu + slow * (g**2 - nu))
            return jnp.where(j == 0, first, correction(jnp.maximum(j - 1, 0)) * nu)

        def edge(w, state, U0, iterations, j) -> _Edge:
            """The top eigenpairs of H (momentum) or of S = D^(1/2) H D^(1/2) (Adam, `measured`), and X from
            a look-ahead of one step (module docstring)."""
            m, nu = state
            g, hvp = jax.linearize(jax.grad(loss), w)
            m_ahead = m + fast * (g - m)  # at X = 0
            s, edge_at = gain(j), threshold(j)
            if adam:
                q = jnp.sqrt(measured(state, g, j))
                d = 1 / (q + eps)
                lam, V, U, residual = preconditioned_eigenpairs(hvp, d, U0, iterations)
            else:
                d = jnp.ones(p, dtype)
                lam, U, residual = _top_eigenpairs(hvp, U0, iterations)
                V = U
            T = third_derivatives(w, U)
            A = jnp.diag(edge_at - lam) + h * s * jnp.einsum("ijp,p->ij", T, d * m_ahead)
            B = (h * s * fast / 2) * jnp.einsum("ijp,klp,p->ijkl", T, T, d)
            if adam:
                # The next step's sqrt(nuhat), linearised about the present nu: its nu is
                # nu00 + slow (2 - slow) o(X) (two moves of nu with the oscillation o(X) = diag(H Sigma H)
                # = edge_at^2 D^-2 diag(U X U^T) held), and each unit of sqrt(nuhat) lowers S's sharpness
                # along u by edge_at u^2.
                UU = jnp.einsum("pi,pj->pij", U, U)
                nu0 = nu + slow * (g**2 - nu)
                nu00 = nu0 + slow * (g**2 - nu0)
                ref = jnp.sqrt(correction(j + 1) * nu)
                slope = correction(j + 1) / (2 * jnp.maximum(ref, eps))
                A = A + edge_at * jnp.einsum("pij,p->ij", UU, ref - q + slope * (nu00 - nu))
                weight = edge_at**3 * slow * (2 - slow) * slope / d**2
                B = B + jnp.einsum("pij,pkl,p->ijkl", UU, UU, weight)
            X, result = sdcp(A, B)
            return _Edge(lam, U, X, residual, result, V, g, T)

        def step(w, state, e, j):
            """The semi-implicit Euler step: the moments first, then theta with the new ones (substeps = 1:
            the optimizer itself)."""
            m, nu = state
            m = m + fast * (e.gradient + 0.5 * jnp.einsum("ij,ijp->p", e.X, e.T) - m)
            if not adam:
                return w - h * gain(j) * m, (m, None)
            # diag(H Sigma H), H U = edge_at D^-1 U at the edge (D as measured)
            d = 1 / (jnp.sqrt(measured(state, e.gradient, j)) + eps)
            oscillation = (threshold(j) / d) ** 2 * jnp.sum(root_sigma(e) ** 2, axis=1)
            nu = nu + slow * (e.gradient**2 + oscillation - nu)
            return w - h * gain(j) * m / (jnp.sqrt(correction(j) * nu) + eps), (m, nu)

    else:
        edge, step, threshold = gd_edge, gd_step, gd_threshold

    def record(w, state, e, j):
        params = unravel(w)
        stats = evaluate(problem, params, metrics)
        x_eigs = jnp.linalg.eigvalsh(e.X)
        edge_count = jnp.sum(x_eigs > numerics.edge_cutoff(dtype) * jnp.maximum(x_eigs[-1], 0))
        stats |= {
            "predicted_loss": stats["loss"] + 0.5 * jnp.sum(jnp.diag(e.X) * e.eigenvalues),
            "eigenvalues": e.eigenvalues,
            "eigen_residual": e.residual,
            "threshold": threshold(j) * jnp.ones((), dtype),
            "edge_count": edge_count,
            "edge_saturated": edge_count == k,
            "past_edge": jnp.sum(e.eigenvalues > threshold(j) * (1 + PAST_EDGE)),
            "sigma_trace": jnp.sum((e.U @ e.X) * e.U),
        }
        if isinstance(optimizer, (RMSProp, Adam)):
            stats["nu"] = state if rmsprop is not None else state[1]
        if isinstance(optimizer, (Momentum, Adam)):
            stats["momentum"] = state[0]
        return (params if save_params else None), stats

    # One loop, each quantity traced once: at a save index the point is recorded (eigenpairs refreshed by
    # _REFRESH Rayleigh-Ritz steps, _COLD at the very first), and the flow steps from it with the same edge
    # quantities (computed once a point), unless the next save is at the same index or none is left.
    saves = index.shape[0]
    U0 = _initial_vectors(p, k, dtype)
    if isinstance(optimizer, RMSProp):
        state0 = jnp.full(p, optimizer.initial_scale, dtype)
    elif isinstance(optimizer, (Momentum, Adam)):
        state0 = (jnp.zeros(p, dtype), jnp.zeros(p, dtype) if isinstance(optimizer, Adam) else None)
    else:
        state0 = None
    zero = jnp.zeros((), jnp.int32)
    out = jax.tree.map(
        lambda x: jnp.zeros((saves, *x.shape), x.dtype),
        jax.eval_shape(lambda: record(flat0, state0, edge(flat0, state0, U0, 1, zero), zero)),
    )

    def body(carry):
        w, state, U, j, s, out, result = carry
        at_save = (s < saves) & (index[jnp.minimum(s, saves - 1)] == j)
        iterations = jnp.where(j + s == 0, _COLD, jnp.where(at_save, _REFRESH, 1))
        e = edge(w, state, U, iterations, j)
        result = jnp.where(result == SUCCESSFUL, e.result, result)  # the first failure of sdcp

        def save(out):
            return jax.tree.map(lambda buf, x: buf.at[s].set(x), out, record(w, state, e, j))

        out = lax.cond(at_save, save, lambda out: out, out)
        s = s + at_save.astype(s.dtype)
        more = (s < saves) & (index[jnp.minimum(s, saves - 1)] != j)
        w, state, j = lax.cond(more, lambda: (*step(w, state, e, j), j + 1), lambda: (w, state, j))
        return w, state, e.start, j, s, out, result

    init = (flat0, state0, U0, zero, zero, out, jnp.asarray(SUCCESSFUL))
    *_, (params, stats), result = lax.while_loop(lambda c: c[4] < saves, body, init)
    result = diverged_where(result, stats["loss"])
    return Trajectory(ts=index.astype(dtype) * h, params=params, stats=stats, clock="t", result=result)


def _initial_vectors(p, k, dtype):
    """A fixed generic start for the eigensolver (the flow is deterministic)."""
    return jax.random.normal(jax.random.key(0), (p, k), jnp.float32).astype(dtype)


def _top_eigenpairs(hvp, U0, iterations):
    """The top k = U0.shape[1] eigenpairs of H (descending) by `iterations` block Rayleigh-Ritz steps from
    span U0: each takes the top k Ritz pairs of H on span[U, H U] (one QR of p x 2k, k Hessian-vector
    products: with Q R = [U, H U] and U orthonormal, the images of Q's first k columns are H U R_11^{-1}, and
    the Ritz vectors' images are combinations of H Q); k more for H U0 at the start.
    From the previous step's vectors one step tracks them (H moves by O(h)); from a cold start it is a block
    Krylov iteration. Dense where p <= 2k."""
    p, k = U0.shape
    if p <= 2 * k:
        lam, V = jnp.linalg.eigh(jax.vmap(hvp)(jnp.eye(p, dtype=U0.dtype)))
        return lam[::-1][:k], V[:, ::-1][:, :k], jnp.zeros(k, U0.dtype)
    H = jax.vmap(hvp, 1, 1)

    def refine(_, pair):
        U, HU = pair
        Q, R = jnp.linalg.qr(jnp.concatenate([U, HU], axis=1))
        HQ = jnp.concatenate([jax.scipy.linalg.solve_triangular(R[:k, :k], HU.T, trans=1).T, H(Q[:, k:])], 1)
        lam, V = jnp.linalg.eigh((Q.T @ HQ + HQ.T @ Q) / 2)
        V = V[:, ::-1][:, :k]
        return Q @ V, HQ @ V

    U = jnp.linalg.qr(U0)[0]
    U, HU = lax.fori_loop(0, iterations, refine, (U, H(U)))
    lam = jnp.einsum("pi,pi->i", U, HU)
    return lam, U, jnp.linalg.norm(HU - U * lam[None, :], axis=0)
