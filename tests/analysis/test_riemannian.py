"""Riemannian gradient and Hessian against the closed forms on the unit sphere."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
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
    grad = flows.riemannian_grad(P, params, F)
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


@pytest.mark.slow  # make test-all
def test_matrix_free_min_eigenvalue_matches_the_dense_one():
    """Lanczos on the projected Lagrangian Hessian with the normal space shifted away: the sphere's closed
    form 2 (lambda_2 - lambda_1) at its minimiser, and a two-layer net on its manifold (p = 18) against the
    dense Riemannian Hessian."""
    d = 5
    B = jax.random.normal(jax.random.key(0), (d, d))
    A = (B + B.T) / 2
    lam, U = jnp.linalg.eigh(A)
    P = Problem(Squares(U[:, 0]), jnp.ones((1, d)), jnp.ones(1))

    def F(prob, p):
        return p.theta @ A @ p.theta

    free = riemannian.min_eigenvalue(P, P.params, F, mode="matrix_free")
    np.testing.assert_allclose(free, 2 * (lam[1] - lam[0]), rtol=1e-8)

    from flows import limit_map
    from tests.helpers import two_layer

    net = two_layer(n=4, d=3, width=6, activation="cubic", train_outer=False)
    on = limit_map(net, net.params)
    dense = riemannian.min_eigenvalue(net, on, mode="dense")
    np.testing.assert_allclose(riemannian.min_eigenvalue(net, on, mode="matrix_free"), dense, rtol=1e-6)
