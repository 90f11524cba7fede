"""Riemannian gradient and Hessian against the closed forms on the unit sphere."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from analysis import riemannian
from models import Problem


class Squares(eqx.Module):
    """f(x) = x . (theta * theta); with one example x = 1, y = 1 the zero-loss set is the unit sphere."""

    theta: jax.Array

    def __call__(self, x):
        return x @ self.theta**2


def test_sphere_closed_forms():
    """F = theta^T A theta on S^{d-1}: grad = 2 A theta - 2 (theta^T A theta) theta and
    Hess[v] = P (2 A v) - 2 (theta^T A theta) v, whose eigenvalues at the bottom eigenvector u_1 of A are
    2 (lambda_i - lambda_1), i >= 2."""
    d = 5
    k1, k2 = jax.random.split(jax.random.key(0))
    B = jax.random.normal(k1, (d, d))
    A = (B + B.T) / 2
    theta = jax.random.normal(k2, (d,))
    theta = theta / jnp.linalg.norm(theta)
    P = Problem(Squares(theta), jnp.ones((1, d)), jnp.ones(1))

    def F(prob, p):
        return p.theta @ A @ p.theta

    params = P.params
    grad = riemannian.riemannian_grad(P, params, F)
    q = theta @ A @ theta
    np.testing.assert_allclose(grad, 2 * A @ theta - 2 * q * theta, atol=1e-12)

    Z = riemannian.tangent_basis(P, params)
    assert Z.shape == (d, d - 1)
    proj = jnp.eye(d) - jnp.outer(theta, theta)
    closed = Z.T @ (proj @ (2 * A) - 2 * q * jnp.eye(d)) @ Z
    np.testing.assert_allclose(riemannian.hessian(P, params, F), (closed + closed.T) / 2, atol=1e-10)

    lam, U = jnp.linalg.eigh(A)
    at_min = Problem(Squares(U[:, 0]), jnp.ones((1, d)), jnp.ones(1)).params
    np.testing.assert_allclose(riemannian.grad_norm(P, at_min, F), 0.0, atol=1e-12)
    np.testing.assert_allclose(
        jnp.linalg.eigvalsh(riemannian.hessian(P, at_min, F)), 2 * (lam[1:] - lam[0]), atol=1e-10
    )
    assert riemannian.min_eigenvalue(P, at_min, F) > 0
