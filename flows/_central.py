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

**RMSProp** (`rmsprop=RMSProp(decay, eps, initial_scale)`, the central flow of `optax.rmsprop(eta, ...)`:
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

__all__ = ["PAST_EDGE", "RMSProp", "sdcp", "central_flow"]

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
        x, _, _, moved, it = state
        return moved & (it < max_iter) & jnp.all(jnp.isfinite(x))

    def body(state):
        x, y, s, _, it = state
        x_new = project(y - (Q @ y + a) / lipschitz)
        restart = jnp.dot(y - x_new, x_new - x) > 0
        s_new = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * s**2)) / 2)
        y_new = jnp.where(restart, x_new, x_new + ((s - 1) / s_new) * (x_new - x))
        moved = jnp.linalg.norm(x_new - x) > rtol * jnp.maximum(jnp.linalg.norm(x_new), jnp.finfo(dtype).tiny)
        return x_new, y_new, s_new.astype(dtype), moved, it + 1

    zero = jnp.zeros_like(a)
    x, _, _, moved, _ = lax.while_loop(cond, body, (zero, zero, jnp.ones((), dtype), jnp.asarray(True), 0))
    held = jnp.linalg.eigvalsh(A)[0] >= 0
    X = jnp.where(held, jnp.zeros((k, k), dtype), mat(x))
    size = jnp.linalg.norm(x)
    Y = A + mat(Q @ vec(X))
    slack = jnp.sqrt(rtol) * (jnp.max(jnp.abs(A)) + lipschitz * size)
    solved = (jnp.linalg.eigvalsh(Y)[0] >= -slack) & (jnp.abs(jnp.sum(X * Y)) <= slack * jnp.maximum(1, size))
    code = jnp.where(
        ~jnp.isfinite(size), UNBOUNDED, jnp.where(~moved & solved, SUCCESSFUL, INNER_SOLVER_FAILED)
    )
    return X, jnp.where(held, SUCCESSFUL, code).astype(jnp.int32)


class RMSProp(eqx.Module):
    """RMSProp as `optax.rmsprop(eta, decay=decay, eps=eps, initial_scale=initial_scale)` runs it (eps inside
    the square root, no momentum, no centring, no bias correction): nu_0 = initial_scale,
    nu_{k+1} = decay nu_k + (1 - decay) g_k^2, theta_{k+1} = theta_k - eta g_k / sqrt(nu_{k+1} + eps).
    `central_flow(..., rmsprop=RMSProp(...))` is its central flow (module docstring). Checked when built:
    0 < decay < 1, eps > 0, initial_scale >= 0."""

    decay: Array = eqx.field(converter=lambda v: checks.unit_interval("decay", v))
    eps: Array = eqx.field(converter=lambda v: checks.positive("eps", v))
    initial_scale: Array = eqx.field(converter=lambda v: checks.non_negative("initial_scale", v), default=0.0)


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
    rmsprop: RMSProp | None = None,
    ts=None,
    save_every=None,
    num_saves: int = 101,
    save_params: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    metrics=None,
    throw: bool = True,
) -> Trajectory:
    """The central flow of GD with step `eta` from `params0`, in gradient-flow time t = eta k, to `t1`
    (of RMSProp with `rmsprop`: module docstring).

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
    - `rmsprop`: an `RMSProp`, or None (GD); `metrics`, `throw` as for `gradient_flow`.

    Records `loss`, `predicted_loss` = L + (1/2) <Sigma, H> (GD's time-averaged loss), `eigenvalues` (the
    top num_eigs of H, descending, shape (T, num_eigs)), `eigen_residual` (||H u_i - lambda_i u_i|| of
    those eigenpairs, (T, num_eigs): the eigenpairs are tracked, not solved to a tolerance, and H has an
    eigenvalue within the residual of each), `edge_count` (the rank of X: eigenvalues held at the edge),
    `edge_saturated` (edge_count == num_eigs: more eigenvalues may have reached the edge untracked; raise
    num_eigs), `past_edge` (how many tracked eigenvalues have eta lambda > 2 (1 + `PAST_EDGE`): at t = 0, a
    start already past the edge, which GD leaves by a transient the flow does not describe), `sigma_trace`
    = tr Sigma (GD's mean squared oscillation), and any `metrics`. With `rmsprop` (an `RMSProp`):
    `eigenvalues` and `eigen_residual` are the preconditioned Hessian's D^{1/2} H D^{1/2}, the edge is at
    eta lambda = 2 on it, and `nu` (T, p) records RMSProp's second-moment estimate (flattened as
    `problem.ravel`).

    eta may be traced (`jax.vmap` over step sizes); t1 and the save times must then lie on every eta's step
    grid. The result (`flows/_trajectory.py`): `DIVERGED` when the loss becomes non-finite; `UNBOUNDED` when
    the complementarity problem has no solution, so no oscillation holds GD at the edge (e.g. least squares
    past 2 / eta: GD diverges); `INNER_SOLVER_FAILED` when `sdcp` does not converge.

    **Returns:** a `Trajectory` with `clock="t"`.

    **Raises:** `ValueError` naming a bad argument (`t1` or a save time off the step grid, `num_eigs` above
    p, an `rmsprop` that is not an `RMSProp`); with `throw=True`, `equinox.EquinoxRuntimeError` for each
    failed result above.
    """
    params0 = check_start(problem, params0)
    eta = checks.positive("eta", eta)
    t1 = checks.positive("t1", t1)
    substeps = checks.positive_int("substeps", substeps)
    num_eigs = checks.positive_int("num_eigs", num_eigs)
    if num_eigs > problem.num_params:
        raise ValueError(f"num_eigs = {num_eigs} exceeds the number of parameters, {problem.num_params}")
    if rmsprop is not None and not isinstance(rmsprop, RMSProp):
        raise ValueError(f"rmsprop must be a flows.RMSProp or None, got {type(rmsprop).__name__}")
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
        rmsprop,
    )
    return finish("central_flow", traj, throw)


@compiled
def _solve(problem, params0, eta, index, num_eigs, substeps, solve: Solve, metrics, save_params, rmsprop):
    flat0, unravel = problem.ravel(params0)
    solver = solve.solver
    euler = isinstance(solver, diffrax.Euler)
    dtype = flat0.dtype
    eta = jnp.asarray(eta, dtype)
    h = eta / substeps
    p = flat0.size
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

    def edge(w, nu, U0, iterations=1) -> _Edge:
        """GD (nu None): the top eigenpairs of H, and X. RMSProp: those of S = D^(1/2) H D^(1/2), and
        U = D^(1/2) V."""
        g, hvp = jax.linearize(jax.grad(loss), w)  # the gradient comes with the products' linearisation
        if nu is None:
            lam, U, residual = _top_eigenpairs(hvp, U0, iterations)
            V = U
        else:
            d = lax.rsqrt(nu + eps)
            root = jnp.sqrt(d)
            lam, V, residual = _top_eigenpairs(lambda v: root * hvp(root * v), U0, iterations)
            U = root[:, None] * V
        rows = jax.vmap(lambda u, v: jax.grad(quad)(w, u, v))(U.T[upper[0]], U.T[upper[1]])  # t_ij, i <= j
        T = jnp.zeros((k, k, p), dtype).at[upper].set(rows).at[upper[1], upper[0]].set(rows)
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

    def step(w, nu, e):
        mu, Q = jnp.linalg.eigh(e.X)
        V = e.U @ (Q * jnp.sqrt(jnp.maximum(mu, 0))[None, :])
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

    def record(w, nu, e):
        params = unravel(w)
        stats = evaluate(problem, params, metrics)
        x_eigs = jnp.linalg.eigvalsh(e.X)
        edge_count = jnp.sum(x_eigs > numerics.edge_cutoff(dtype) * jnp.maximum(x_eigs[-1], 0))
        stats |= {
            "predicted_loss": stats["loss"] + 0.5 * jnp.sum(jnp.diag(e.X) * e.eigenvalues),
            "eigenvalues": e.eigenvalues,
            "eigen_residual": e.residual,
            "edge_count": edge_count,
            "edge_saturated": edge_count == k,
            "past_edge": jnp.sum(eta * e.eigenvalues > 2 * (1 + PAST_EDGE)),
            "sigma_trace": jnp.trace(e.X) if nu is None else jnp.sum((e.U @ e.X) * e.U),
        }
        if nu is not None:
            stats["nu"] = nu
        return (params if save_params else None), stats

    # One loop, each quantity traced once: at a save index the point is recorded (eigenpairs refreshed by
    # _REFRESH Rayleigh-Ritz steps, _COLD at the very first), and the flow steps from it with the same edge
    # quantities (computed once a point), unless the next save is at the same index or none is left.
    saves = index.shape[0]
    U0 = _initial_vectors(p, k, dtype)
    nu0 = None if rmsprop is None else jnp.full(p, rmsprop.initial_scale, dtype)
    out = jax.tree.map(
        lambda x: jnp.zeros((saves, *x.shape), x.dtype),
        jax.eval_shape(lambda: record(flat0, nu0, edge(flat0, nu0, U0))),
    )

    def body(state):
        w, nu, U, j, s, out, result = state
        at_save = (s < saves) & (index[jnp.minimum(s, saves - 1)] == j)
        iterations = jnp.where(j + s == 0, _COLD, jnp.where(at_save, _REFRESH, 1))
        e = edge(w, nu, U, iterations)
        result = jnp.where(result == SUCCESSFUL, e.result, result)  # the first failure of sdcp

        def save(out):
            return jax.tree.map(lambda buf, x: buf.at[s].set(x), out, record(w, nu, e))

        out = lax.cond(at_save, save, lambda out: out, out)
        s = s + at_save.astype(s.dtype)
        more = (s < saves) & (index[jnp.minimum(s, saves - 1)] != j)
        w, nu, j = lax.cond(more, lambda: (*step(w, nu, e), j + 1), lambda: (w, nu, j))
        return w, nu, e.start, j, s, out, result

    zero = jnp.zeros((), jnp.int32)
    init = (flat0, nu0, U0, zero, zero, out, jnp.asarray(SUCCESSFUL))
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
