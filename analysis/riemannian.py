"""Stationarity and convexity diagnostics of an objective F on the zero-loss manifold Gamma = {r = 0}.

    grad_Gamma F = P_T grad F
    Hess_Gamma F[v] = P_T (grad^2 F - sum_i lambda_i grad^2 r_i) v   for v in T_theta Gamma,

with Lagrange multipliers lambda = (J^T)^+ grad F (Absil, Mahony & Sepulchre 2008, Sec. 5.5): the
Hessian of the Lagrangian F - lambda . r, whose second term is the curvature of Gamma (its second
fundamental form) acting on grad F's normal part. On the orthonormal basis Z of T_theta Gamma (the null
space of J, from an SVD) it is the symmetric (p - rank J) matrix Z^T grad^2 (F - lambda . r) Z; its smallest
eigenvalue > 0 at a stationary point means F is locally geodesically convex there.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from flows.manifold import Objective, label_noise_objective, riemannian_grad
from models import Problem

__all__ = ["grad_norm", "hessian", "min_eigenvalue", "riemannian_grad", "tangent_basis"]


@eqx.filter_jit
def grad_norm(problem: Problem, params: PyTree, objective: Objective | None = None) -> Float[Array, ""]:
    """||P_T grad F||: zero exactly at the stationary points of F on the manifold."""
    return jnp.linalg.norm(riemannian_grad(problem, params, objective))


def tangent_basis(problem: Problem, params: PyTree) -> Float[Array, "p q"]:
    """An orthonormal basis of T_theta Gamma = null(J) as columns, q = p - rank J (dense SVD; small p)."""
    J = problem.jacobian(params)
    _, s, Vt = jnp.linalg.svd(J, full_matrices=True)
    rank = int(jnp.sum(s > s[0] * max(J.shape) * jnp.finfo(s.dtype).eps))
    return Vt[rank:].T


def hessian(problem: Problem, params: PyTree, objective: Objective | None = None) -> Float[Array, "q q"]:
    """The Riemannian Hessian of F on the tangent basis `tangent_basis` (dense; small p)."""
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


def min_eigenvalue(problem: Problem, params: PyTree, objective: Objective | None = None) -> Float[Array, ""]:
    """The smallest eigenvalue of the Riemannian Hessian: > 0 means locally geodesically convex."""
    return jnp.linalg.eigvalsh(hessian(problem, params, objective))[0]
