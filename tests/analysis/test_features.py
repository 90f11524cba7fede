"""Feature-matrix metrics against dense numpy, and the rank-one collapse of Gatmiry et al. (2024): the slow
flow of tr H ends at the independently computed minimum of tr H, with rank-one features for sigma''' > 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import features, riemannian
from flows import limit_map, riemannian_flow
from models import Problem, TwoLayerNet
from tests.conftest import two_layer


def gatmiry(activation, m=10, n=3, d=3):
    """Fixed outer layer a_j = 1/m, inputs U[0, 1]^d, labels U[0.5, 1]: inside the theorem for cubic, sinh."""
    kx, ky, kn = jax.random.split(jax.random.key(0), 3)
    X = jax.random.uniform(kx, (n, d))
    y = jax.random.uniform(ky, (n,), minval=0.5, maxval=1.0)
    return Problem(TwoLayerNet(d, m, key=kn, activation=activation, train_outer=False, outer="ones"), X, y)


def test_feature_metrics_match_numpy():
    P = two_layer()
    Phi = np.asarray(P.params.W @ P.X.T)
    np.testing.assert_allclose(features.feature_matrix(P, P.params), Phi, rtol=1e-12)
    s = np.linalg.svd(Phi, compute_uv=False)
    np.testing.assert_allclose(features.singular_values(P, P.params), s, rtol=1e-10)
    np.testing.assert_allclose(features.stable_rank(P, P.params), np.sum(s**2) / s[0] ** 2, rtol=1e-10)
    rows = Phi / np.linalg.norm(Phi, axis=1, keepdims=True)
    np.testing.assert_allclose(features.alignment(P, P.params), rows @ rows.T, rtol=1e-10, atol=1e-12)


def test_min_trace_is_a_lower_bound_attained_by_equal_preactivations():
    """For cubic, every example's minimiser is z_j = sigma^{-1}(y_i) for all j (sum_j sigma(z_j)/m = y_i):
    tr H_min = (1/n) sum_i ||x_i||^2 sigma'(z_i)^2 / m. No point of the manifold is below it."""
    P = gatmiry("cubic")
    z = np.array(
        [
            np.roots([1 / 3, 0, 1, -yi]).real[np.abs(np.roots([1 / 3, 0, 1, -yi]).imag) < 1e-12][0]
            for yi in P.y
        ]
    )
    expect = np.mean(np.sum(np.asarray(P.X) ** 2, axis=1) * (1 + z**2) ** 2) / 10
    assert features.min_trace_fixed_outer(P) == pytest.approx(expect, rel=1e-8)
    assert float(P.gauss_newton_trace(limit_map(P, P.params))) > expect


@pytest.mark.parametrize("activation", ["cubic", "sinh"])
def test_slow_flow_ends_rank_one_at_the_minimum_of_tr_h(activation):
    P = gatmiry(activation)
    flow = riemannian_flow(P, limit_map(P, P.params), t1=1e6, ts=jnp.array([0.0, 1e6]), rtol=1e-10)
    s = features.singular_values(P, flow.final)
    assert s[1] / s[0] < 1e-2
    trace = 4 * float(flow.stats["objective"][-1])
    assert trace == pytest.approx(features.min_trace_fixed_outer(P), rel=1e-6)
    assert float(riemannian.min_eigenvalue(P, flow.final)) > 0  # locally geodesically convex there
    assert np.min(np.abs(features.alignment(P, flow.final))) > 1 - 1e-6


def test_tanh_does_not_collapse():
    P = gatmiry("tanh")
    flow = riemannian_flow(P, limit_map(P, P.params), t1=1e4, ts=jnp.array([0.0, 1e4]), rtol=1e-10)
    s = features.singular_values(P, flow.final)
    assert s[1] / s[0] > 0.1


def test_min_trace_refuses_models_outside_its_assumptions():
    with pytest.raises(ValueError, match="fixed outer layer"):
        features.min_trace_fixed_outer(two_layer())
    with pytest.raises(ValueError, match="n <= d"):
        features.min_trace_fixed_outer(gatmiry("cubic", n=5, d=3))
