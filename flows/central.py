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

Each step of size h = eta / `substeps` in t: the top `num_eigs` eigenpairs of H (LOBPCG warm-started from the
previous step's; a dense eigendecomposition where p <= 5 num_eigs, below LOBPCG's reach), the third
derivatives t_ij = grad_theta (u_i^T H u_j) (nested JVPs under one VJP), X from `sdcp`, then one step of a
diffrax solver (default Tsit5) of d theta / dt = -grad [L + (1/2) <Sigma, H>] with Sigma frozen over the step,
so that before the edge the flow is gradient flow solved to Tsit5's order. Memory O(p k^2); cost per step
O(k) Hessian-vector products for the eigenpairs (more when LOBPCG has to iterate), k(k+1)/2 third-derivative
products and the solver's stages, each a gradient of L + (1/2) <Sigma, H> (k Hessian quadratic forms).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.sparse.linalg import lobpcg_standard
from jaxtyping import Array, Float, PyTree

from models import Problem, checks
from models.problem import check_start

from .gradient import save_times
from .trajectory import Trajectory, default_metrics, evaluate


def sdcp(
    A: Float[Array, "k k"], B: Float[Array, "k k k k"], *, rtol=None, max_iter: int = 10_000
) -> Float[Array, "k k"]:
    """The semidefinite complementarity problem X >= 0, Y = A + B(X) >= 0, <X, Y> = 0, for a symmetric A and a
    positive semidefinite operator B(X)_ij = sum_kl B_ijkl X_kl on symmetric matrices.

    It is the optimality condition of the convex problem min_{X >= 0} (1/2) <X, B(X)> + <A, X>, solved by
    accelerated projected gradient (FISTA with adaptive restart; projection onto the PSD cone by one k x k
    eigendecomposition) until the step moves X by less than `rtol` (default sqrt(eps)/100) relative, or
    `max_iter`. X = 0 when A >= 0. jit- and vmap-able; cost O(k^6) for the step size, O(k^4) an
    iteration."""
    k = A.shape[0]
    dtype = A.dtype
    if k == 0:
        return jnp.zeros((0, 0), dtype)
    rtol = jnp.sqrt(jnp.finfo(dtype).eps) / 100 if rtol is None else rtol
    i, j = jnp.triu_indices(k)
    c = jnp.where(i == j, 1.0, jnp.sqrt(2.0)).astype(dtype)  # vec(M) = c * M[i, j] is an isometry

    def vec(M):
        return c * M[i, j]

    def mat(x):
        M = jnp.zeros((k, k), dtype).at[i, j].set(x / c)
        return M.at[j, i].set(x / c)

    def project(x):
        w, V = jnp.linalg.eigh(mat(x))
        return vec((V * jnp.maximum(w, 0)) @ V.T)

    a = vec(A)
    Q = c[:, None] * c[None, :] * ((B + B.transpose(1, 0, 2, 3)) / 2)[i, j][:, i, j]
    Q = (Q + Q.T) / 2
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(Q)[-1], jnp.finfo(dtype).tiny)

    def cond(state):
        _, _, _, moved, it = state
        return (moved > 0) & (it < max_iter)

    def body(state):
        x, y, s, _, it = state
        x_new = project(y - (Q @ y + a) / lipschitz)
        restart = jnp.dot(y - x_new, x_new - x) > 0
        s_new = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * s**2)) / 2)
        y_new = jnp.where(restart, x_new, x_new + ((s - 1) / s_new) * (x_new - x))
        moved = jnp.linalg.norm(x_new - x) > rtol * jnp.maximum(jnp.linalg.norm(x_new), jnp.finfo(dtype).tiny)
        return x_new, y_new, s_new.astype(dtype), moved, it + 1

    zero = jnp.zeros_like(a)
    x, *_ = lax.while_loop(cond, body, (zero, zero, jnp.ones((), dtype), jnp.asarray(True), 0))
    return jnp.where(jnp.linalg.eigvalsh(A)[0] >= 0, jnp.zeros((k, k), dtype), mat(x))


class _Edge(eqx.Module):
    """The quantities of the central flow at one point: the top eigenpairs and X."""

    eigenvalues: Array  # (k,) descending
    U: Array  # (p, k)
    X: Array  # (k, k)


def central_flow(
    problem: Problem,
    params0: PyTree,
    *,
    eta,
    t1,
    num_eigs: int = 3,
    substeps: int = 4,
    ts=None,
    num_saves: int = 101,
    solver: diffrax.AbstractSolver | None = None,
    metrics=None,
    save_params: bool = True,
) -> Trajectory:
    """The central flow of GD with step `eta` from `params0`, in gradient-flow time t = eta k, to `t1`.

    - `num_eigs`: the top eigenpairs of H tracked (at least the number that reach 2 / eta; those below the
      edge get X = 0 by complementarity).
    - `substeps`: steps of size h = eta / substeps per GD step (the look-ahead of `sdcp` is one step).
    - saved at `ts` (on the step grid; default `num_saves` points evenly in [0, t1], which must fall on it).
    - `solver`: a diffrax solver for each step with Sigma frozen (default `diffrax.Tsit5()`).

    Records `loss`, `predicted_loss` = L + (1/2) <Sigma, H> (GD's time-averaged loss), `eigenvalues` (the
    top num_eigs of H, descending, shape (T, num_eigs)), `edge_count` (the rank of X: eigenvalues held at
    the edge), `sigma_trace` = tr Sigma (GD's mean squared oscillation), and any `metrics`.

    eta may be traced (`jax.vmap` over step sizes); t1 and the save times must then lie on every eta's step
    grid. **Returns:** a `Trajectory` with `clock="t"`.
    """
    params0 = check_start(problem, params0)
    eta = checks.positive("eta", eta)
    t1 = checks.positive("t1", t1)
    substeps = checks.positive_int("substeps", substeps)
    num_eigs = checks.positive_int("num_eigs", num_eigs)
    if num_eigs > problem.num_params:
        raise ValueError(f"num_eigs = {num_eigs} exceeds the number of parameters, {problem.num_params}")
    times = save_times(t1, ts, None, num_saves)
    index = times * substeps / eta
    if checks.is_concrete(index):
        off = jnp.abs(index - jnp.round(index)) > 1e-6 * jnp.maximum(1.0, jnp.abs(index))
        if bool(jnp.any(off)):
            raise ValueError(
                f"save times must lie on the step grid t = j eta / substeps (eta = {float(eta)})"
            )
    return _solve(
        problem,
        params0,
        eta,
        jnp.round(index).astype(jnp.int32),
        num_eigs,
        substeps,
        solver or diffrax.Tsit5(),
        default_metrics(metrics),
        save_params,
    )


@eqx.filter_jit
def _solve(problem, params0, eta, index, num_eigs, substeps, solver, metrics, save_params):
    flat0, unravel = problem.ravel(params0)
    dtype = flat0.dtype
    eta = jnp.asarray(eta, dtype)
    h = eta / substeps
    p = flat0.size

    def loss(w):
        return problem.loss(unravel(w))

    def quad(w, u, v):
        """u^T H(w) v."""
        return jax.jvp(lambda x: jax.jvp(loss, (x,), (u,))[1], (w,), (v,))[1]

    def edge(w, U0) -> _Edge:
        lam, U = _top_eigenpairs(lambda v: _hvp(loss, w, v), w, U0)
        g = jax.grad(loss)(w)
        T = jax.vmap(lambda u: jax.vmap(lambda v: jax.grad(quad)(w, u, v))(U.T))(U.T)  # (k, k, p)
        A = jnp.diag(2 / eta - lam) + h * jnp.einsum("ijp,p->ij", T, g)
        B = (h / 2) * jnp.einsum("ijp,klp->ijkl", T, T)
        return _Edge(lam, U, sdcp(A, B))

    def field(t, w, args):
        U, X = args
        return -jax.grad(lambda x: loss(x) + 0.5 * jnp.einsum("ij,ij->", X, _quad_matrix(quad, x, U)))(w)

    term = diffrax.ODETerm(field)

    def step(w, U):
        e = edge(w, U)
        args = (e.U, e.X)
        zero = jnp.zeros((), dtype)
        state = solver.init(term, zero, h, w, args)
        w_next, *_ = solver.step(term, zero, h, w, args, state, made_jump=True)
        return w_next, e

    def record(w, e):
        params = unravel(w)
        stats = evaluate(problem, params, metrics)
        sigma_h = 0.5 * jnp.sum(jnp.diag(e.X) * e.eigenvalues)
        x_eigs = jnp.linalg.eigvalsh(e.X)
        stats |= {
            "predicted_loss": stats["loss"] + sigma_h,
            "eigenvalues": e.eigenvalues,
            "edge_count": jnp.sum(x_eigs > jnp.sqrt(jnp.finfo(dtype).eps) * jnp.maximum(x_eigs[-1], 0)),
            "sigma_trace": jnp.trace(e.X),
        }
        return (params if save_params else None), stats

    U0 = _initial_vectors(p, num_eigs, dtype)

    def advance(carry, target):
        w, U, j = carry
        w, U, j = lax.while_loop(
            lambda c: c[2] < target, lambda c: (*_take(step(c[0], c[1])), c[2] + 1), (w, U, j)
        )
        e = edge(w, U)
        return (w, e.U, j), record(w, e)

    _, (params, stats) = lax.scan(advance, (flat0, U0, jnp.zeros((), jnp.int32)), index)
    return Trajectory(ts=index.astype(dtype) * h, params=params, stats=stats, clock="t")


def _take(result):
    w, e = result
    return w, e.U


def _hvp(loss, w, v):
    return jax.jvp(jax.grad(loss), (w,), (v,))[1]


def _quad_matrix(quad, w, U):
    """U^T H(w) U, (k, k), by k^2 nested JVPs (k = U.shape[1])."""
    return jax.vmap(lambda u: jax.vmap(lambda v: quad(w, u, v))(U.T))(U.T)


def _initial_vectors(p, k, dtype):
    """A fixed generic start for the eigensolver (the flow is deterministic)."""
    return jax.random.normal(jax.random.key(0), (p, k), jnp.float32).astype(dtype)


def _top_eigenpairs(hvp, w, U0):
    """The top k = U0.shape[1] eigenpairs of H (descending), LOBPCG from U0; dense where p <= 5 k."""
    p, k = U0.shape
    if p <= 5 * k:
        lam, V = jnp.linalg.eigh(jax.vmap(hvp)(jnp.eye(p, dtype=w.dtype)))
        return lam[::-1][:k], V[:, ::-1][:, :k]
    eps = jnp.finfo(w.dtype).eps
    lam, U, _ = lobpcg_standard(jax.vmap(hvp, 1, 1), U0, m=200, tol=jnp.sqrt(eps) / (10 * p))
    return lam, U
