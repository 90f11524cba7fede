"""The linear algebra of the zero-loss manifold at one point, in two modes, neither forming a p x p array.

At theta, with r (N,) the residuals, J = d r / d theta (N, p) and K = J J^T (N, N) the Gram matrix,

    P_T v = v - J^T K^+ J v        the projection onto the tangent space T_theta Gamma = null(J)
    J^+ b = J^T K^+ b               the minimum-norm solution of J d = b, for b in range(J)

and, for the label-noise objective, the exact gradient of the Gauss-Newton trace from per-example terms,

    tr G = (1/n) sum_a ||grad f_a||^2,   grad tr G = (2/n) sum_a grad^2 f_a grad f_a,

a = (example, output) over the N = n k scalar outputs.

Both modes solve with (K + mu I)^{-1} in place of K^+: K^+ to a relative mu / sigma^2 on the directions
whose singular value sigma of J is well above sqrt(mu), and those far below it (near rank loss, e.g. two
inputs 1e-9 apart, or the sparse optima of the quadratic parametrisation) dropped, so that neither mode
returns NaN there. mu = `rcond(N, dtype, mode)` max_a ||grad f_a||^2 (flows/_numerics.py) sits above the
rounding error of the mode's own arithmetic (the rank rule), which differs between the modes:

- `"dense"`: J formed once per point, row by row from per-example gradients (memory N p; cost N gradient
  evaluations; grad tr G comes out of the same pass, reverse over reverse per example); R of the Householder
  QR of [J^T; sqrt(mu) I] (2 N^2 (p + N); memory N (p + N) more), so that R^T R = K + mu I without forming
  K; then (K + mu I)^{-1} b = R^{-1} R^{-T} b by two triangular solves (2 N^2 each), so that
  P_T v = v - J^T R^{-1} R^{-T} J v costs 2 N p + 2 N^2 a vector (the seminormal equations). J's singular
  values are resolved to ~ eps sigma_max and a tangent projection loses ~ cond(J) eps (0.3-1.6 cond(J) eps
  measured at cond(J) = 300 in float32; 0.3-1.5 with Q_1 = J^T R^{-1} formed, which costs N^2 p more a
  point and made an evaluation of the quadratic's field 1.6-1.9x slower), where the normal equations (K
  formed) lose cond(J)^2 eps: in float32 they refused a two-layer net at N = 1,024, and with the cut-off
  they need there (10 N eps) put tangent projections 1% off on a J with cond(J) = 35 (QR: 2e-6).
  mu = (100 sqrt(N) eps)^2 max_a ||grad f_a||^2.
- `"matrix_free"`: K u is one JVP and one VJP of the residuals (the primal pass linearised once: memory
  O(p + N + one batch of activations), never N p); (K + mu I)^{-1} b by conjugate gradients (`shifted_solve`,
  Jacobi preconditioner diag K_aa = ||grad f_a||^2, which the trace pass yields for free); a solve that
  misses its tolerance is recorded (`Point.solved`) and the flows report it (`INNER_SOLVER_FAILED`, never
  DIVERGED); grad tr G streamed over examples in chunks of `chunk` (the problem's `Problem.chunk` by
  default, else 256; memory chunk * p). Products with K
  carry errors ~ eps lambda_max(K), so K's eigenvalues (sigma^2) are resolved to ~ N eps max ||grad f_a||^2
  and mu = 10 N eps max_a ||grad f_a||^2: the squared cut-off of the dense mode is far below this one.

Where every singular value of J is well above both cut-offs the modes agree (to the solves' tolerance);
where J has lost rank exactly, both drop the lost directions; in between (sigma between the two cut-offs)
the dense mode keeps directions the matrix-free mode cannot resolve.
"""

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float

from models.problem import chunked

from ._numerics import CG_RTOL, rcond

__all__ = ["one_at_a_time", "singular_values", "Point", "shifted_solve", "squared_gradient_norms"]


def one_at_a_time(fn: Callable) -> Callable:
    """`fn` (one array in, a tuple of arrays out) whose batched form under `jax.vmap` runs the batch one
    matrix at a time (`lax.map`). jaxlib's batched LAPACK kernels split a batch over the thread pool they
    run on and wait for it: a vmapped QR or SVD inside a vmapped while loop (160 Gauss-Newton retractions)
    deadlocked XLA's CPU runtime, every thread idle.

    **Arguments:** `fn`, one array in, a tuple of arrays out.

    **Returns:** `fn` with that batching rule (the same values)."""

    @custom_vmap
    def single(a):
        return tuple(fn(a))

    @single.def_vmap
    def _(axis_size, in_batched, a):
        out = lax.map(single, a)
        return out, tuple(True for _ in out)

    return single


_qr_r = one_at_a_time(lambda a: (jnp.linalg.qr(a, mode="r"),))  # R alone (no Q formed)
_svd_values = one_at_a_time(lambda a: (jnp.linalg.svd(a, compute_uv=False),))


def singular_values(a: Float[Array, "m n"]) -> Float[Array, " k"]:
    """The singular values of `a`, largest first; under `jax.vmap` one matrix at a time (`one_at_a_time`).

    **Arguments:** `a`, a matrix.

    **Returns:** its min(m, n) singular values."""
    return _svd_values(a)[0]


class Point:
    """The geometry at one point `flat` (flattened parameters): `r`, `J v`, `J^T u`, `K^+ b`, and (when
    asked for) grad tr G and the per-output squared gradient norms ||grad f_a||^2.

    Built inside a traced function (a flow's vector field, a retraction step): its methods are closures over
    that trace, not a pytree to carry across it.
    """

    def __init__(
        self,
        problem,
        flat: Float[Array, " p"],
        unravel: Callable,
        mode: Literal["dense", "matrix_free"],
        *,
        trace_grad: bool = False,
        chunk: int | None = None,
        cg_rtol: float | None = None,
    ):
        problem.require_square("the zero-loss manifold's geometry")
        if problem.y.size > flat.shape[0]:
            raise ValueError(
                f"N = {problem.y.size} constraints r_i = 0 on p = {flat.shape[0]} parameters: J J^T (N x N) "
                "has rank at most p < N at every point, so no start helps: N > p equations define no "
                "manifold of dimension p - N. Use fewer examples (or outputs) or a wider model"
            )
        self.mode = mode
        dtype = flat.dtype
        self.N = problem.y.size
        residual = lambda v: problem.residuals(unravel(v)).reshape(-1)  # noqa: E731
        if mode == "dense":
            self.r = residual(flat)
            self.J, self.sq, self.trace_grad = _rows(problem, flat, unravel, trace_grad)
        else:
            self.r, self._jvp = jax.linearize(residual, flat)
            self._vjp = jax.linear_transpose(self._jvp, flat)
            self.sq, self.trace_grad = _streamed(problem, flat, unravel, chunk, trace_grad)
            self._cg_rtol = CG_RTOL[jnp.dtype(dtype).name] if cg_rtol is None else cg_rtol
        # the rank rule (module docstring): K's eigenvalues far below mu count as zero, through
        # (K + mu I)^{-1}, which is K^+ to a relative mu / sigma^2 elsewhere
        self.mu = rcond(self.N, dtype, mode) * jnp.maximum(jnp.max(self.sq), jnp.finfo(dtype).tiny)
        if mode == "dense":
            # R of the Householder QR of [J^T; sqrt(mu) I], so that R^T R = K + mu I
            stacked = jnp.concatenate([self.J.T, jnp.sqrt(self.mu) * jnp.eye(self.N, dtype=dtype)])
            self._R = _qr_r(stacked)[0]
        self.solved = jnp.asarray(True)  # False once a conjugate-gradient solve has failed

    def singular_values(self) -> Float[Array, " N"]:
        """J's singular values, largest first, from R (dense mode): R^T R = K + mu I, so sigma_i =
        sqrt(s_i(R)^2 - mu), an SVD of R (N^3) and not of J (N^2 p); resolved to ~ eps sigma_max, as J's
        own."""
        if self.mode != "dense":
            raise ValueError("singular_values needs the dense mode (the matrix-free mode never forms J)")
        s = singular_values(self._R)
        return jnp.sqrt(jnp.maximum(s**2 - self.mu, 0))

    def jv(self, v: Float[Array, " p"]) -> Float[Array, " N"]:
        """J v (a Jacobian-vector product in matrix-free mode)."""
        return self.J @ v if self.mode == "dense" else self._jvp(v)

    def jtu(self, u: Float[Array, " N"]) -> Float[Array, " p"]:
        """J^T u (a vector-Jacobian product in matrix-free mode)."""
        return u @ self.J if self.mode == "dense" else self._vjp(u)[0]

    def solve(self, b: Float[Array, " N"]) -> Float[Array, " N"]:
        """(K + mu I)^{-1} b: K^+ b for b in range(K), with K's eigenvalues far below mu dropped (the rank
        rule above; at a point where J loses rank, the pseudo-inverse of the rank kept). Dense: R^{-1} R^{-T}
        b, two triangular solves. Matrix-free: conjugate gradients (Jacobi preconditioner); a solve that does
        not reach its tolerance sets `solved` to False (the flows report it as `INNER_SOLVER_FAILED`)."""
        if self.mode == "dense":
            return solve_triangular(self._R, solve_triangular(self._R, b, trans="T"))
        x, solved = shifted_solve(self.jv, self.jtu, self.sq, self.mu, b, self._cg_rtol)
        self.solved = self.solved & solved
        return x

    def multipliers(self, v: Float[Array, " p"]) -> Float[Array, " N"]:
        """K^+ J v, the least-squares solution lambda of J^T lambda = v (the Lagrange multipliers of a
        gradient v)."""
        return self.solve(self.jv(v))

    def min_norm(self, b: Float[Array, " N"]) -> Float[Array, " p"]:
        """J^+ b = J^T K^+ b."""
        return self.jtu(self.solve(b))

    def project(self, v: Float[Array, " p"], b: Float[Array, " N"] | None = None) -> Float[Array, " p"]:
        """P_T v + J^+ b = v - J^+ (J v - b), the point of {w : J w = b} nearest v (b = 0 by default: the
        tangent projection). One solve."""
        Jv = self.jv(v)
        return v - self.min_norm(Jv if b is None else Jv - b)


def shifted_solve(jv: Callable, jtu: Callable, sq, shift, b, rtol) -> tuple:
    """(K + shift I)^{-1} b with K = J J^T given by its products, J v = `jv(v)` and J^T u = `jtu(u)`:
    conjugate gradients preconditioned by diag(K) + shift (`sq`, the per-output ||grad f_a||^2), until the
    residual falls below `rtol` ||b||, at most 10 N + 100 iterations. Cost: one JVP and one VJP an iteration,
    ~sqrt of the condition number of (K + shift I) iterations; memory O(N + p).

    Written out rather than lineax's CG, whose breakdown guard (a step alpha above 1 / (100 N eps), taken for
    a singular operator) fires on exactly the systems the rank rule makes: near rank loss K has eigenvalues
    at the shift, mu = 10 N eps max ||grad f_a||^2 in the matrix-free mode (flows/_numerics.py), and the
    step along them is ~ 1 / mu: lineax returned NaN there (a two-layer net with two inputs 1e-7 apart).
    K + shift I is positive definite, so the only breakdown is a non-positive curvature p^T (K + shift I) p
    from rounding, which ends the solve as failed.

    **Arguments:** `jv`, `jtu`, `sq` (N,), `shift` > 0, `b` (N,), `rtol`.

    **Returns:** (x, whether the residual reached `rtol` ||b|| with a finite x)."""

    def matvec(u):
        return jv(jtu(u)) + shift * u

    inverse_diagonal = 1.0 / (sq + shift)
    target = (rtol * jnp.linalg.norm(b)) ** 2
    max_steps = 10 * b.size + 100

    def unfinished(state):
        _, r, _, _, step, broken = state
        return (jnp.sum(r**2) > target) & (step < max_steps) & ~broken

    def step_(state):
        x, r, p, gamma, step, _ = state
        Ap = matvec(p)
        curvature = p @ Ap
        broken = ~(curvature > 0)  # rounding on a positive-definite system, or NaN
        alpha = jnp.where(broken, 0.0, gamma / jnp.where(broken, 1.0, curvature))
        x, r = x + alpha * p, r - alpha * Ap
        z = inverse_diagonal * r
        gamma_next = z @ r
        p = z + jnp.where(gamma > 0, gamma_next / jnp.where(gamma > 0, gamma, 1.0), 0.0) * p
        return x, r, p, gamma_next, step + 1, broken

    z0 = inverse_diagonal * b
    state = (jnp.zeros_like(b), b, z0, z0 @ b, jnp.asarray(0), jnp.asarray(False))
    x, r, _, _, _, broken = lax.while_loop(unfinished, step_, state)
    residual = jnp.linalg.norm(b - matvec(x))  # the true residual, not the recurrence's
    solved = ~broken & (residual**2 <= 4 * target) & jnp.all(jnp.isfinite(x))
    return x, solved


def squared_gradient_norms(problem, flat: Float[Array, " p"], unravel: Callable) -> Float[Array, " N"]:
    """||grad f_a||^2 for every output a (diag K), matrix-free: the problem's `chunk` examples' gradients at
    a time, 256 when it sets none (memory that times p, cost N per-example gradients).

    **Arguments:** the `problem`, the flat parameters `flat`, `unravel`.

    **Returns:** the (N,) array."""
    return _streamed(problem, flat, unravel, None, False)[0]


def _example_terms(problem, unravel, trace_grad: bool):
    """Per example x: (J_x (k, p), ||J_x||_F^2 per output (k,), grad ||J_x||_F^2 (p,) or None)."""

    def terms(v, x):
        if not trace_grad:
            Jx = problem.example_jacobian(v, unravel, x)
            return Jx, jnp.sum(Jx**2, axis=1), None

        def total(w):
            Jx = problem.example_jacobian(w, unravel, x)
            return jnp.sum(Jx**2), Jx

        g, Jx = jax.grad(total, has_aux=True)(v)
        return Jx, jnp.sum(Jx**2, axis=1), g

    return terms


def _rows(problem, flat, unravel, trace_grad):
    """Dense: J (N, p), ||grad f_a||^2 (N,), grad tr G (p,) or None, in one vmap over the examples."""
    Jx, sq, g = jax.vmap(_example_terms(problem, unravel, trace_grad), (None, 0))(flat, problem.X)
    J = Jx.reshape(-1, flat.shape[0])
    return J, sq.reshape(-1), None if g is None else jnp.sum(g, axis=0) / problem.n


_STREAM_CHUNK = 256  # examples a streamed pass takes at once where neither the call nor the problem says


def _streamed(problem, flat, unravel, chunk, trace_grad):
    """Matrix-free: ||grad f_a||^2 (N,) and grad tr G (p,) or None, `chunk` examples at a time (None: the
    problem's `chunk`, else `_STREAM_CHUNK`; memory chunk * p): a scan over chunks, the last one padded and
    masked."""
    n = problem.n
    chunk = chunk or problem.chunk or _STREAM_CHUNK
    chunk = max(1, min(chunk, n))
    X, mask = chunked(problem.X, chunk, flat.dtype)
    count = mask.shape[0]
    terms = _example_terms(problem, unravel, trace_grad)

    def body(total, xs):
        x, m = xs
        _, sq, g = jax.vmap(terms, (None, 0))(flat, x)
        if g is not None:
            total = total + m @ g
        return total, sq

    total, sq = lax.scan(body, jnp.zeros_like(flat), (X, mask))
    sq = sq.reshape(count * chunk, -1)[:n].reshape(-1)
    return sq, (total / n if trace_grad else None)
