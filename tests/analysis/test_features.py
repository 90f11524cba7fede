"""Feature-matrix metrics against dense numpy, and the rank-one collapse of Gatmiry et al. (2024): the slow
flow of tr H ends at the independently computed minimum of tr H, with rank-one features for sigma''' > 0."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import features, riemannian
from flows import label_noise_objective, limit_map, riemannian_flow
from models import Problem, TwoLayerNet
from tests.helpers import two_layer


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
    np.testing.assert_allclose(features.feature_cosines(P, P.params), rows @ rows.T, rtol=1e-10, atol=1e-12)


def test_alignment_of_a_zero_neuron_is_zero_not_nan():
    P = two_layer()
    params = eqx.tree_at(lambda net: net.W, P.params, P.params.W.at[2].set(0.0))
    A = np.asarray(features.feature_cosines(P, params))
    assert np.all(np.isfinite(A)) and np.all(A[2] == 0) and np.all(A[:, 2] == 0)
    np.testing.assert_allclose(np.delete(np.diag(A), 2), 1.0, rtol=1e-12)


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


@pytest.mark.slow  # a long-horizon paper claim (make test-all, with the rank_one_features smoke figure)
@pytest.mark.parametrize("activation", ["cubic", "sinh"])
def test_slow_flow_ends_rank_one_at_the_minimum_of_tr_h(activation):
    P = gatmiry(activation)
    flow = riemannian_flow(P, limit_map(P, P.params), t1=1e6, ts=jnp.array([0.0, 1e6]), rtol=1e-10)
    s = features.singular_values(P, flow.final)
    assert s[1] / s[0] < 1e-2
    trace = 4 * float(flow.stats["objective"][-1])
    assert trace == pytest.approx(features.min_trace_fixed_outer(P), rel=1e-6)
    assert float(riemannian.min_eigenvalue(P, flow.final)) > 0  # locally geodesically convex there
    assert np.min(np.abs(features.feature_cosines(P, flow.final))) > 1 - 1e-6
    # At this stationary point any curve c on Gamma with c'(0) = v has (F o c)''(0) = v^T Hess_Gamma F v.
    # c(s) = Phi(theta + s v) is one: the smallest and largest eigenvalues against second differences.
    eigs, vecs = np.linalg.eigh(riemannian.hessian(P, flow.final))
    basis = riemannian.tangent_basis(P, flow.final)
    flat, unravel = P.ravel(flow.final)

    def F(v):
        return float(label_noise_objective(P, limit_map(P, unravel(v))))

    for k in (0, -1):
        v, s = basis @ vecs[:, k], 0.03
        second = (F(flat + s * v) - 2 * F(flat) + F(flat - s * v)) / s**2
        assert second == pytest.approx(eigs[k], rel=1e-3)


@pytest.mark.slow  # a paper claim over long flows (make test-all)
def test_tr_h_is_geodesically_convex_near_stationary_points_for_cubic_and_not_for_tanh():
    """Gatmiry et al.'s local geodesic convexity at approximate stationary points, observed along the flow:
    for cubic the Riemannian Hessian of F = tr H / 4 is indefinite at the start and positive definite at
    every point with ||grad_Gamma F|| < 2e-3; for tanh it stays indefinite at such points."""
    taus = jnp.array([0.0, 20.0, 1e3, 1e4])

    def along(activation):
        P = gatmiry(activation)
        flow = riemannian_flow(P, limit_map(P, P.params), t1=taus[-1], ts=taus, rtol=1e-10)
        points = [jax.tree.map(lambda x: x[k], flow.params) for k in range(len(taus))]
        grads = np.array([float(riemannian.grad_norm(P, p)) for p in points])
        return grads, np.array([float(riemannian.min_eigenvalue(P, p)) for p in points])

    grads, eigs = along("cubic")
    assert eigs[0] < 0 and grads[0] > 2e-3
    assert np.sum(grads < 2e-3) >= 2 and np.all(eigs[grads < 2e-3] > 0)
    grads, eigs = along("tanh")
    assert np.sum(grads < 2e-3) >= 2 and np.all(eigs[grads < 2e-3] < 0)


def test_tanh_does_not_collapse():
    """The flow of tr H with tanh runs to near stationarity (tr H falls, ||grad|| falls fourfold) and
    ends full rank: a flow that did not move would fail the first two."""
    P = gatmiry("tanh")
    flow = riemannian_flow(P, limit_map(P, P.params), t1=1e4, ts=jnp.array([0.0, 1e4]), rtol=1e-10)
    objective, grad = np.asarray(flow.stats["objective"]), np.asarray(flow.stats["grad_norm"])
    assert objective[-1] < 0.99 * objective[0]
    assert grad[-1] < 0.25 * grad[0]
    s = features.singular_values(P, flow.final)
    assert s[1] / s[0] > 0.1


def test_min_trace_refuses_models_outside_its_assumptions():
    with pytest.raises(ValueError, match="fixed outer layer"):
        features.min_trace_fixed_outer(two_layer())
    with pytest.raises(ValueError, match="n <= d"):
        features.min_trace_fixed_outer(gatmiry("cubic", n=5, d=3))


def relu_alignment_problem(scale, n=20, m=30):
    """d = 2, linear teacher y = beta . x, balanced initialisation of scale lambda (Boursier & Flammarion)."""
    kx, kn = jax.random.split(jax.random.key(0))
    X = jax.random.normal(kx, (n, 2))
    net = TwoLayerNet(2, m, key=kn, activation="relu", init_scale=scale, outer="balanced")
    return Problem(net, X, X @ jnp.array([1.0, 0.5]))


def test_extremal_directions_match_a_grid_search_on_the_circle():
    P = relu_alignment_problem(1e-6)
    plus, minus = features.extremal_directions(P.X, P.y)
    theta = np.linspace(0, 2 * np.pi, 36_000, endpoint=False)
    U = np.stack([np.cos(theta), np.sin(theta)], 1)
    G = np.maximum(U @ np.asarray(P.X).T, 0) @ np.asarray(P.y) / P.n
    is_max = (G > np.roll(G, 1)) & (G >= np.roll(G, -1)) & (G > 0)
    is_min = (G < np.roll(G, 1)) & (G <= np.roll(G, -1)) & (G < 0)
    for found, grid in ((plus, U[is_max]), (minus, U[is_min])):
        assert len(found) == len(grid) >= 1
        assert features.angles_to(found, grid).max() < 0.05


def test_neurons_end_early_alignment_at_the_predicted_directions():
    """Small initialisation, small-step GD (gradient flow up to O(eta)): when the loss first moves, every
    active neuron lies within 3 degrees of the extremal direction of its sign, and there are two directions;
    from a large initialisation they do not align."""
    from flows import gd

    t_end = None
    for scale, aligned in ((1e-6, True), (1.0, False)):
        P = relu_alignment_problem(scale)
        traj = gd(P, P.params, steps=600, eta=0.05, save_every=10)
        if aligned:  # the large initialisation is read at the same time
            t_end = features.alignment_end(traj.ts, traj.stats["loss"])
            assert 5 < t_end < 30
        params = traj.at(int(np.searchsorted(np.asarray(traj.ts), t_end)))
        U, norms = (np.asarray(v) for v in features.neuron_directions(P, params))
        a = np.asarray(params.a)
        plus, minus = features.extremal_directions(P.X, P.y)
        active = norms >= 1e-3 * norms.max()  # the two groups grow at different rates |G(u*)|
        angle = np.where(a > 0, features.angles_to(U, plus), features.angles_to(U, minus))
        if aligned:
            assert np.all(angle[active] < 3.0), angle[active]
            assert features.count_directions(P, params, tol_deg=5.0, min_norm=1e-3) == 2
        else:
            assert np.median(angle[active]) > 10.0


def test_distance_to_ols_is_zero_for_the_linear_relu_pair_and_closed_form_otherwise():
    """relu(b . x) - relu(-b . x) = b . x: the pair W = (b, -b), a = (1, -1) *is* the linear predictor b."""
    kx, ky, ke = jax.random.split(jax.random.key(3), 3)
    X, X_eval = jax.random.normal(kx, (30, 3)), jax.random.normal(ke, (500, 3))
    y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(ky, (30,))
    P = Problem(TwoLayerNet(3, 2, key=kx, activation="relu"), X, y)
    b = features.ols(X, y)
    np.testing.assert_allclose(b, np.linalg.lstsq(np.asarray(X), np.asarray(y), rcond=None)[0], rtol=1e-10)
    for c in (b, b + jnp.array([0.1, 0.0, -0.2])):
        params = eqx.tree_at(lambda m: (m.W, m.a), P.params, (jnp.stack([c, -c]), jnp.array([1.0, -1.0])))
        expected = np.sqrt(np.mean((np.asarray(X_eval) @ np.asarray(c - b)) ** 2))
        assert abs(float(features.distance_to_ols(P, params, X_eval)) - expected) < 1e-12


@pytest.mark.slow  # paper size: 20,000 GD steps, 4 seeds at two n
def test_gradient_flow_interpolates_below_the_optimization_threshold_and_not_above():
    """Boursier & Flammarion (2024): ReLU net, width 50, balanced init lambda = 1e-6, noisy linear teacher in
    d = 4 (noise s = 0.5), GD with a small step to t = 1000. At n = 6 every seed interpolates (loss < 1e-8);
    at n = 100 none does: each stops near the noise level s^2 / 2 (1 - d / n) ~ 0.12, which OLS attains, and
    closer to the OLS predictor than the interpolating nets are."""
    from flows import gd

    d, X_eval = 4, jax.random.normal(jax.random.key(99), (2000, 4))

    def run(seed, n):
        kx, ke, kn = jax.random.split(jax.random.key(seed), 3)
        X = jax.random.normal(kx, (n, d))
        y = X @ (jnp.ones(d) / 2) + 0.5 * jax.random.normal(ke, (n,))
        P = Problem(TwoLayerNet(d, 50, key=kn, activation="relu", init_scale=1e-6, outer="balanced"), X, y)
        final = gd(P, P.params, steps=20_000, eta=0.05, save_every=20_000).final
        ols_loss = 0.5 * jnp.mean((X @ features.ols(X, y) - y) ** 2)
        return P.loss(final), ols_loss, features.distance_to_ols(P, final, X_eval)

    seeds = jnp.arange(4)
    below = [np.asarray(v) for v in jax.vmap(lambda s: run(s, 6))(seeds)]
    above = [np.asarray(v) for v in jax.vmap(lambda s: run(s, 100))(seeds)]
    assert np.all(below[0] < 1e-8), below[0]
    assert np.all(above[0] > 0.05) and np.all(above[0] > 0.7 * above[1]), (above[0], above[1])
    assert above[2].max() < below[2].min(), (above[2], below[2])
