"""Stationarity and convexity diagnostics of an objective F on the zero-loss manifold Gamma = {r = 0}.

    grad_Gamma F = P_T grad F
    Hess_Gamma F[v] = P_T (grad^2 F - sum_i lambda_i grad^2 r_i) v   for v in T_theta Gamma,

with Lagrange multipliers lambda = (J^T)^+ grad F (Absil, Mahony & Sepulchre 2008, Sec. 5.5): the
Hessian of the Lagrangian F - lambda . r, whose second term is the curvature of Gamma (its second
fundamental form) acting on grad F's normal part. On the orthonormal basis Z of T_theta Gamma (the null
space of J, from an SVD) it is the symmetric (p - rank J) matrix Z^T grad^2 (F - lambda . r) Z; its smallest
eigenvalue > 0 at a stationary point means F is locally geodesically convex there.

`tangent_basis` and `hessian` are that basis (p x q) and that matrix (q x q), dense by definition: small p.
`grad_norm` and `min_eigenvalue` scale (`flows/_geometry.py`): the smallest eigenvalue by Lanczos on
M = P_T grad^2 (F - lambda . r) P_T + c (I - P_T), c above the top of its tangent spectrum, whose smallest
eigenvalue is the Riemannian Hessian's (memory O(N + p) per product, plus the Lanczos basis, iterations * p).
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from flows import Objective, label_noise_objective, riemannian_grad
from flows import _geometry as geometry
from flows import _numerics as numerics
from models import Problem

from .hessian import lanczos

__all__ = ["grad_norm", "tangent_basis", "hessian", "min_eigenvalue"]


@eqx.filter_jit
def grad_norm(problem: Problem, params: PyTree, objective: Objective | None = None) -> Float[Array, ""]:
    """||P_T grad F||: zero exactly at the stationary points of F on the manifold.

    **Arguments:** `problem`, `params` (a point on the manifold), `objective` (default
    `flows.label_noise_objective`).

    **Returns:** the norm, a scalar.

    **Raises:** `ValueError` for a problem without residuals (cross-entropy: no zero-loss manifold)."""
    return jnp.linalg.norm(riemannian_grad(problem, params, objective))


def tangent_basis(problem: Problem, params: PyTree) -> Float[Array, "p q"]:
    """An orthonormal basis of T_theta Gamma = null(J) as columns, q = p - rank J (dense SVD; small p:
    memory p^2).

    **Arguments:** `problem`, `params`.

    **Returns:** the basis (p, q).

    **Raises:** `ValueError` for a problem without residuals (cross-entropy: no zero-loss manifold)."""
    J = problem.jacobian(params)
    _, s, Vt = jnp.linalg.svd(J, full_matrices=True)
    rank = numerics.numerical_rank(s, J.shape)
    return Vt[rank:].T


def hessian(problem: Problem, params: PyTree, objective: Objective | None = None) -> Float[Array, "q q"]:
    """The Riemannian Hessian of F on the tangent basis `tangent_basis` (dense; small p: memory p^2).

    **Arguments:** `problem`, `params` (a point on the manifold), `objective` (default
    `flows.label_noise_objective`).

    **Returns:** the Hessian (q, q), symmetric.

    **Raises:** `ValueError` for a problem without residuals (cross-entropy: no zero-loss manifold)."""
    return _hessian_on(problem, params, tangent_basis(problem, params), objective or label_noise_objective)


@eqx.filter_jit
def _hessian_on(problem, params, Z, objective):
    """Z^T grad^2 (F - lambda . r) Z, compiled once per shape of the basis Z."""
    flat, unravel = problem.ravel(params)

    def F(v):
        return objective(problem, unravel(v))

    J = problem.jacobian(params)
    lam = jnp.linalg.lstsq(J.T, jax.grad(F)(flat))[0]

    def lagrangian(v):
        return F(v) - lam @ problem.residuals(unravel(v)).reshape(-1)

    HZ = jax.vmap(lambda z: jax.jvp(jax.grad(lagrangian), (flat,), (z,))[1], in_axes=1, out_axes=1)(Z)
    M = Z.T @ HZ
    return (M + M.T) / 2


def min_eigenvalue(
    problem: Problem,
    params: PyTree,
    objective: Objective | None = None,
    *,
    mode: Literal["dense", "matrix_free"] | None = None,
    num_iter: int = 200,
) -> Float[Array, ""]:
    """The smallest eigenvalue of the Riemannian Hessian: > 0 means locally geodesically convex.

    `mode="dense"`: the eigenvalues of `hessian` (memory p^2). `"matrix_free"`: Lanczos (`num_iter` steps, at
    most p) on M = P_T grad^2 (F - lambda . r) P_T + c (I - P_T), each product one solve with K and one
    Hessian-vector product of the Lagrangian (flows/_geometry.py). Default: dense for p <= 2,000.

    **Arguments:** `problem`, `params` (a point on the manifold), `objective`, `mode`, `num_iter`.

    **Returns:** the smallest eigenvalue, a scalar.

    **Raises:** `ValueError` for a bad `mode` or a problem without residuals; `equinox.EquinoxRuntimeError`
    when Lanczos has not converged (`analysis.hessian.lanczos`)."""
    objective = objective or label_noise_objective
    mode = mode or ("dense" if problem.num_params <= 2000 else "matrix_free")
    if mode == "dense":
        return jnp.linalg.eigvalsh(hessian(problem, params, objective))[0]
    if mode != "matrix_free":
        raise ValueError(f"mode must be 'dense' or 'matrix_free', got {mode!r}")
    flat, _ = problem.ravel(params)
    iters = min(num_iter, flat.shape[0])
    key = jax.random.key(0)
    M = _projected_lagrangian(problem, params, objective, numerics.mode_for(problem, "auto", flat.dtype))
    top = lanczos(lambda v: M(v, 0.0), flat.shape[0], 1, key=key, num_iter=iters, dtype=flat.dtype)[0]
    c = jnp.abs(top) + 1.0
    return -lanczos(lambda v: -M(v, c), flat.shape[0], 1, key=key, num_iter=iters, dtype=flat.dtype)[0]


def _projected_lagrangian(problem, params, objective, mode):
    """(v, c) -> P_T grad^2 (F - lambda . r) P_T v + c (v - P_T v), lambda = K^+ J grad F."""
    flat, unravel = problem.ravel(params)
    point = geometry.Point(problem, flat, unravel, mode)

    def F(v):
        return objective(problem, unravel(v))

    lam = jax.lax.stop_gradient(point.multipliers(jax.grad(F)(flat)))

    def lagrangian(v):
        return F(v) - lam @ problem.residuals(unravel(v)).reshape(-1)

    _, hvp = jax.linearize(jax.grad(lagrangian), flat)

    def M(v, c):
        pv = point.project(v)
        return point.project(hvp(pv)) + c * (v - pv)

    return M
