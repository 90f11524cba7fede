"""The linear algebra of the zero-loss manifold at one point, in two modes, neither forming a p x p array.

At theta, with r (N,) the residuals, J = d r / d theta (N, p) and K = J J^T (N, N) the Gram matrix,

    P_T v = v - J^T K^+ J v        the projection onto the tangent space T_theta Gamma = null(J)
    J^+ b = J^T K^+ b               the minimum-norm solution of J d = b, for b in range(J)

and, for the label-noise objective, the exact gradient of the Gauss-Newton trace from per-example terms,

    tr G = (1/n) sum_a ||grad f_a||^2,   grad tr G = (2/n) sum_a grad^2 f_a grad f_a,

a = (example, output) over the N = n k scalar outputs.

Modes (`mode_for` picks one; a flow can be told which):

- `"dense"`: J formed once per point, row by row from per-example gradients (memory N p; cost N gradient
  evaluations; grad tr G comes out of the same pass, reverse over reverse per example), K = J J^T (N^2 p),
  factorised once by Cholesky (N^3 / 3). Near rank loss (a pivot below `rcond` times the largest diagonal
  entry of K, e.g. at the sparse optima of the quadratic parametrisation) the solve falls back to the
  pseudo-inverse from an eigendecomposition of K, eigenvalues below `rcond` times the largest dropped.
  Accuracy: a solve with K loses cond(J)^2 eps; float32 needs cond(J) well below 1e3.
- `"matrix_free"`: K u is one JVP and one VJP of the residuals (the primal pass linearised once: memory
  O(p + N + one batch of activations), never N p); K^+ b by conjugate gradients (lineax CG, Jacobi
  preconditioner diag K_aa = ||grad f_a||^2, which the trace pass yields for free); grad tr G streamed over
  examples in chunks of `chunk` (memory chunk * p).
"""

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import lineax as lx
from jax import lax
from jaxtyping import Array, Float

Mode = Literal["auto", "dense", "matrix_free"]
DENSE_BUDGET = 2**30  # bytes: the dense mode is chosen while J (N, p) fits in this


def mode_for(problem, mode: Mode = "auto", dtype=None) -> Literal["dense", "matrix_free"]:
    """`mode` as given, or for `"auto"`: `"dense"` while J (N x p entries of `dtype`) takes at most
    `DENSE_BUDGET` bytes, else `"matrix_free"`."""
    if mode not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"mode must be 'auto', 'dense' or 'matrix_free', got {mode!r}")
    if mode != "auto":
        return mode
    itemsize = jnp.dtype(dtype or problem.y.dtype).itemsize
    return "dense" if problem.y.size * problem.num_params * itemsize <= DENSE_BUDGET else "matrix_free"


def rcond(N: int, dtype) -> float:
    """The relative cut-off below which an eigenvalue of K (a squared singular value of J) counts as zero:
    10 N eps, the rounding error of K's eigenvalues relative to the largest."""
    return 10 * max(N, 1) * float(jnp.finfo(dtype).eps)


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
        chunk: int = 256,
        cg_rtol: float | None = None,
    ):
        self.mode = mode
        dtype = flat.dtype
        self.N = problem.y.size
        self.rcond = rcond(self.N, dtype)
        residual = lambda v: problem.residuals(unravel(v)).reshape(-1)  # noqa: E731
        if mode == "dense":
            self.r = residual(flat)
            self.J, self.sq, self.trace_grad = _rows(problem, flat, unravel, trace_grad)
            J = self.J
            self._K = J @ J.T
            self._L = jnp.linalg.cholesky(self._K)
            pivots = jnp.diagonal(self._L) ** 2
            self._chol_ok = jnp.all(jnp.isfinite(self._L)) & (
                jnp.min(pivots) > self.rcond * jnp.max(jnp.diagonal(self._K))
            )
        else:
            self.r, self._jvp = jax.linearize(residual, flat)
            self._vjp = jax.linear_transpose(self._jvp, flat)
            self.sq, self.trace_grad = _streamed(problem, flat, unravel, chunk, trace_grad)
            self._cg_rtol = cg_rtol if cg_rtol is not None else (1e-10 if dtype == jnp.float64 else 1e-5)

    def jv(self, v: Float[Array, " p"]) -> Float[Array, " N"]:
        return self.J @ v if self.mode == "dense" else self._jvp(v)

    def jtu(self, u: Float[Array, " N"]) -> Float[Array, " p"]:
        return u @ self.J if self.mode == "dense" else self._vjp(u)[0]

    def solve(self, b: Float[Array, " N"]) -> Float[Array, " N"]:
        """K^+ b (for b in range(K): the least-squares solution of minimum norm)."""
        if self.mode == "dense":
            return lax.cond(self._chol_ok, self._cholesky_solve, self._eigh_solve, b)
        K = lx.FunctionLinearOperator(
            lambda u: self.jv(self.jtu(u)),
            jax.ShapeDtypeStruct(b.shape, b.dtype),
            lx.positive_semidefinite_tag,
        )
        diag = jnp.where(self.sq > 0, self.sq, 1.0)
        precond = lx.DiagonalLinearOperator(1.0 / diag)
        precond = lx.TaggedLinearOperator(precond, lx.positive_semidefinite_tag)
        solver = lx.CG(rtol=self._cg_rtol, atol=0.0, max_steps=10 * self.N + 100)
        return lx.linear_solve(K, b, solver, options={"preconditioner": precond}, throw=False).value

    def _cholesky_solve(self, b):
        return jax.scipy.linalg.cho_solve((self._L, True), b)

    def _eigh_solve(self, b):
        lam, U = jnp.linalg.eigh(self._K)
        keep = lam > self.rcond * lam[-1]
        inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
        return U @ (inv * (U.T @ b))

    def min_norm(self, b: Float[Array, " N"]) -> Float[Array, " p"]:
        """J^+ b = J^T K^+ b."""
        return self.jtu(self.solve(b))

    def project(self, v: Float[Array, " p"]) -> Float[Array, " p"]:
        """P_T v = v - J^T K^+ J v."""
        return v - self.min_norm(self.jv(v))


def _example_terms(problem, unravel, trace_grad: bool):
    """Per example x: (J_x (k, p), ||J_x||_F^2 per output (k,), grad ||J_x||_F^2 (p,) or None)."""
    f = lambda v, x: jnp.reshape(problem.model(unravel(v))(x), (-1,))  # noqa: E731  (k,) outputs of one input

    def rows(v, x):
        return jax.jacrev(f)(v, x)  # (k, p): k reverse passes of one example

    def terms(v, x):
        if not trace_grad:
            Jx = rows(v, x)
            return Jx, jnp.sum(Jx**2, axis=1), None

        def total(w):
            Jx = rows(w, x)
            return jnp.sum(Jx**2), Jx

        g, Jx = jax.grad(total, has_aux=True)(v)
        return Jx, jnp.sum(Jx**2, axis=1), g

    return terms


def _rows(problem, flat, unravel, trace_grad):
    """Dense: J (N, p), ||grad f_a||^2 (N,), grad tr G (p,) or None, in one vmap over the examples."""
    Jx, sq, g = jax.vmap(_example_terms(problem, unravel, trace_grad), (None, 0))(flat, problem.X)
    J = Jx.reshape(-1, flat.shape[0])
    return J, sq.reshape(-1), None if g is None else jnp.sum(g, axis=0) / problem.n


def _streamed(problem, flat, unravel, chunk, trace_grad):
    """Matrix-free: ||grad f_a||^2 (N,) and grad tr G (p,) or None, `chunk` examples at a time (memory
    chunk * p): a scan over chunks, the last one padded and masked."""
    n = problem.n
    chunk = max(1, min(chunk, n))
    count = -(-n // chunk)
    pad = count * chunk - n
    X = jnp.concatenate([problem.X, jnp.repeat(problem.X[-1:], pad, axis=0)])
    X = X.reshape(count, chunk, *problem.X.shape[1:])
    mask = (jnp.arange(count * chunk) < n).reshape(count, chunk).astype(flat.dtype)
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
