"""Every Hessian metric against jax.hessian + numpy.linalg.eigvalsh on small two-layer problems."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import hessian
from tests.helpers import float32, two_layer


@pytest.fixture(params=["tanh", "cubic"])
def problem(request):
    return two_layer(n=7, d=3, width=6, activation=request.param)


def _dense(P):
    flat, unravel = P.ravel(P.params)
    return np.asarray(jax.hessian(lambda v: P.loss(unravel(v)))(flat))


def test_dense_hvp_and_spectrum(problem):
    H = _dense(problem)
    np.testing.assert_allclose(hessian.dense(problem, problem.params), H, rtol=1e-10, atol=1e-12)
    v = jax.random.normal(jax.random.key(1), (H.shape[0],))
    np.testing.assert_allclose(hessian.hvp(problem, problem.params, v), H @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hessian.spectrum(problem, problem.params), np.linalg.eigvalsh(H), atol=1e-10)


def test_exact_trace_and_the_gauss_newton_residual_split(problem):
    H = _dense(problem)
    J = np.asarray(problem.jacobian(problem.params))
    G = J.T @ J / problem.n
    assert abs(float(problem.loss(problem.params))) > 1e-3  # off the manifold: the residual part matters
    np.testing.assert_allclose(hessian.gauss_newton(problem, problem.params), G, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(problem.gauss_newton_trace(problem.params), np.trace(G), rtol=1e-10)
    np.testing.assert_allclose(
        hessian.trace_residual(problem, problem.params), np.trace(H - G), rtol=1e-8, atol=1e-12
    )
    np.testing.assert_allclose(hessian.trace(problem, problem.params), np.trace(H), rtol=1e-10)


def test_lanczos_top_eigenvalues_to_1e_6(problem):
    evals = np.linalg.eigvalsh(_dense(problem))[::-1]
    top, vecs = hessian.top_eigenvalues(
        problem, problem.params, 3, key=jax.random.key(0), return_vectors=True
    )
    np.testing.assert_allclose(top, evals[:3], rtol=1e-6)
    H = _dense(problem)
    np.testing.assert_allclose(H @ vecs, vecs * top[None, :], atol=1e-6 * evals[0])


def test_lanczos_with_few_iterations_still_finds_the_top_eigenvalue():
    P = two_layer(n=10, d=6, width=12)  # p = 84
    evals = np.linalg.eigvalsh(_dense(P))
    top = hessian.top_eigenvalues(P, P.params, key=jax.random.key(2), num_iter=40)
    np.testing.assert_allclose(top, evals[-1:], rtol=1e-6)


def test_lanczos_that_has_not_converged_raises():
    """Three steps on a spectrum of 200 eigenvalues in [1, 2]: the Ritz residual |beta_m s_m| is far above
    1e-3 lambda_1, and the unconverged value is not returned; the same operator with 200 steps is exact."""
    d = jnp.linspace(1.0, 2.0, 200)
    with pytest.raises(eqx.EquinoxRuntimeError, match="did not converge"):
        hessian.lanczos(lambda v: d * v, 200, 1, key=jax.random.key(0), num_iter=3, dtype=jnp.float64)
    top = hessian.lanczos(lambda v: d * v, 200, 1, key=jax.random.key(0), num_iter=200, dtype=jnp.float64)
    np.testing.assert_allclose(top, [2.0], rtol=1e-10)


def test_lanczos_survives_an_invariant_subspace():
    """A diagonal operator with repeated eigenvalues: Krylov breaks down after 3 steps and must restart."""
    d = jnp.array([5.0, 5.0, 5.0, 3.0, 3.0, 1.0, 1.0, 1.0, -2.0, -2.0])
    top = hessian.lanczos(lambda v: d * v, 10, 5, key=jax.random.key(0), dtype=jnp.float64)
    np.testing.assert_allclose(top, [5.0, 5.0, 5.0, 3.0, 3.0], rtol=1e-10)


def test_frobenius_norm_exact_and_estimated(problem):
    H = _dense(problem)
    fro = np.linalg.norm(H, "fro")
    np.testing.assert_allclose(hessian.frobenius_norm(problem, problem.params), fro, rtol=1e-10)
    est, se = hessian.frobenius_norm_hutchinson(problem, problem.params, jax.random.key(3), num_samples=400)
    assert abs(est - fro) < 4 * se, (est, se, fro)


def test_hutchinson_trace_within_its_confidence_interval(problem):
    tr = np.trace(_dense(problem))
    est, se = hessian.trace_hutchinson(problem, problem.params, jax.random.key(4), num_samples=400)
    assert abs(est - tr) < 4 * se, (est, se, tr)
    assert se > 0


def test_trace_probe_is_unbiased_over_seeds_and_serves_as_a_per_seed_flow_metric():
    """One probe per key: over 2,000 keys the mean is tr H within 4 standard errors of the mean (the probes'
    spread, 2 (||H||_F^2 - sum H_jj^2) per probe, as the variance formula says); as a metric in an SGD
    ensemble, each seed's key gives its own probe, the same at every save."""
    from flows import sgd

    problem = two_layer(n=7, d=3, width=6, activation="tanh")
    H = _dense(problem)
    keys = jax.random.split(jax.random.key(5), 2000)
    q = np.asarray(jax.vmap(lambda k: hessian.TraceProbe(k)(problem, problem.params))(keys))
    assert abs(q.mean() - np.trace(H)) < 4 * q.std(ddof=1) / np.sqrt(q.size)
    np.testing.assert_allclose(q.var(ddof=1), 2 * (np.sum(H**2) - np.sum(np.diag(H) ** 2)), rtol=0.15)
    two = hessian.TraceProbe(keys[0], num_probes=2)(problem, problem.params)
    assert np.isfinite(float(two))

    def run(k):
        metrics = {"trace_H": hessian.TraceProbe(jax.random.fold_in(k, 1))}
        return sgd(
            problem, problem.params, steps=4, eta=0.01, batch_size=2, key=k, save_every=2, metrics=metrics
        )

    runs = jax.vmap(run)(keys[:3])
    first = [float(hessian.TraceProbe(jax.random.fold_in(k, 1))(problem, problem.params)) for k in keys[:3]]
    np.testing.assert_allclose(runs.stats["trace_H"][:, 0], first, rtol=1e-10)  # save 0 is the start
    assert len(set(np.round(first, 8))) == 3  # a probe per seed
    with pytest.raises(ValueError, match="num_probes"):
        hessian.TraceProbe(keys[0], num_probes=0)


def test_metrics_compile_and_vmap(problem):
    traces = jax.jit(
        jax.vmap(lambda s: hessian.trace(problem, jax.tree.map(lambda x: s * x, problem.params)))
    )(jnp.array([0.5, 1.0]))
    np.testing.assert_allclose(traces[1], np.trace(_dense(problem)), rtol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_lanczos_is_scale_free(dtype):
    """The breakdown test is relative to the operator's scale: diag(1e-5 linspace(-1, 3, 100)) has top
    eigenvalue 3e-5 in either dtype (an absolute test once gave 1.43e-5 in float32)."""
    d = (1e-5 * jnp.linspace(-1.0, 3.0, 100)).astype(dtype)
    top = hessian.lanczos(lambda v: d * v, 100, 2, key=jax.random.key(0), dtype=dtype, num_iter=100)
    np.testing.assert_allclose(top, [3e-5, d[-2]], rtol=1e-4 if dtype == jnp.float32 else 1e-10)


def test_trace_split_is_exact_in_gauss_newton_and_unbiased_in_the_residual_part(problem):
    tr = np.trace(_dense(problem))
    est, se = hessian.trace_split(problem, problem.params, jax.random.key(5), num_samples=400)
    assert 0 < se and abs(est - tr) < 4 * se, (est, se, tr)
    # at zero loss R = 0: the estimate is tr H exactly, with no error
    exact = eqx.tree_at(lambda P: P.y, problem, problem.outputs(problem.params))
    est, se = hessian.trace_split(exact, exact.params, jax.random.key(5), num_samples=4)
    np.testing.assert_allclose(est, np.trace(_dense(exact)), rtol=1e-12)
    assert se == 0


def test_xtrace_within_its_error_and_far_closer_than_hutchinson_near_zero_loss():
    """Near the zero-loss manifold H is G (rank <= n = 10) plus a small residual part: XTrace's deflation
    captures G, where Hutchinson keeps its variance (measured: mean errors 0.002 against 0.41)."""
    P = two_layer(n=10, d=6, width=12)  # p = 84
    noise = 0.01 * jax.random.normal(jax.random.key(9), (P.n,))
    P = eqx.tree_at(lambda P: P.y, P, P.outputs(P.params) + noise)
    tr = np.trace(_dense(P))
    xtrace = jax.jit(lambda k: hessian.trace_xtrace(P, P.params, k, num_samples=20))
    hutchinson = jax.jit(lambda k: hessian.trace_hutchinson(P, P.params, k, num_samples=40))  # equal cost
    errors = {"xtrace": [], "hutchinson": []}
    for seed in range(5):
        est, se = xtrace(jax.random.key(seed))
        assert abs(est - tr) < 4 * se, (est, se, tr)
        errors["xtrace"].append(abs(est - tr))
        errors["hutchinson"].append(abs(hutchinson(jax.random.key(seed))[0] - tr))
    assert np.mean(errors["xtrace"]) < 0.05 * np.mean(errors["hutchinson"]), errors
    with pytest.raises(ValueError, match="num_samples"):
        hessian.trace_xtrace(P, P.params, jax.random.key(0), num_samples=1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_lanczos_quadrature_is_gauss_quadrature_of_each_probe(dtype):
    """Per probe z, sum_j w_j theta_j^k = z^T A^k z / ||z||^2 for k <= 2m - 1 (m = 6 steps on p = 40)."""
    A = jax.random.normal(jax.random.key(0), (40, 40), dtype)
    A = (A + A.T) / 2
    Z = jax.random.normal(jax.random.key(1), (3, 40), dtype)
    slq = hessian.lanczos_quadrature(lambda v: A @ v, Z, 6)
    np.testing.assert_allclose(slq.weights.sum(axis=1), 1.0, rtol=1e-5 if dtype == jnp.float32 else 1e-12)
    A64, Z64 = np.asarray(A, np.float64), np.asarray(Z, np.float64)
    for k in range(12):
        exact = np.einsum("ip,pq,iq->i", Z64, np.linalg.matrix_power(A64, k), Z64) / np.sum(Z64**2, axis=1)
        got = np.sum(np.asarray(slq.weights, np.float64) * np.asarray(slq.nodes, np.float64) ** k, axis=1)
        scale = np.linalg.norm(A64, 2) ** k
        np.testing.assert_allclose(got, exact, atol=(1e-4 if dtype == jnp.float32 else 1e-11) * scale)


def test_spectral_density_against_eigvalsh():
    """On p = 84: the extreme nodes are H's extreme eigenvalues, the moments (1/p) tr H^k lie within their
    error, the smoothed density integrates to 1; under jit and vmap over keys."""
    P = two_layer(n=10, d=6, width=12)
    evals = np.linalg.eigvalsh(_dense(P))
    density = jax.jit(lambda k: hessian.spectral_density(P, P.params, k, num_probes=30, num_steps=30))
    slq = density(jax.random.key(0))
    np.testing.assert_allclose([slq.nodes.min(), slq.nodes.max()], evals[[0, -1]], rtol=1e-6)
    for k in (1, 2, 3):
        mean, se = slq.moment(k)
        exact = np.mean(evals**k)
        assert abs(mean - exact) < 4 * se, (k, mean, se, exact)
    width = 0.05 * (evals[-1] - evals[0])
    x = jnp.linspace(evals[0] - 10 * width, evals[-1] + 10 * width, 4001)
    np.testing.assert_allclose(jnp.trapezoid(slq.density(x, width), x), 1.0, rtol=1e-6)
    batched = jax.vmap(density)(jax.random.split(jax.random.key(1), 2))
    assert batched.nodes.shape == (2, 30, 30)
    np.testing.assert_allclose(batched.nodes.max(axis=(1, 2)), evals[-1], rtol=1e-6)


def test_params_of_another_problem_are_refused_as_the_flows_refuse_them(problem):
    other = two_layer(n=7, d=3, width=4)
    for metric in (hessian.trace, hessian.lambda_max, hessian.dense, hessian.gauss_newton):
        with pytest.raises(ValueError, match="params has (a leaf of shape|pytree structure)"):
            metric(problem, other.params)


def test_eager_calls_with_the_same_shapes_compile_once():
    """Every metric is compiled (`equinox.filter_jit`): a second eager call, with another key or another
    problem of the same structure and shapes, compiles nothing (an eager Lanczos recompiled at every call,
    0.94 s each on a p = 26,122 MLP)."""
    import logging

    P, Q = two_layer(seed=0), two_layer(seed=1)
    calls = [
        lambda P, k: hessian.top_eigenvalues(P, P.params, 2, key=k),
        lambda P, k: hessian.lambda_max(P, P.params),
        lambda P, k: hessian.trace_hutchinson(P, P.params, k, num_samples=4),
        lambda P, k: hessian.trace(P, P.params),
    ]
    for call in calls:
        jax.block_until_ready(call(P, jax.random.key(0)))
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            for call in calls:
                jax.block_until_ready(call(P, jax.random.key(1)))
                jax.block_until_ready(call(Q, jax.random.key(2)))
    finally:
        logging.getLogger("jax").removeHandler(handler)
    assert not [m for m in messages if "Compiling" in m], messages


def test_batch_sharpness_is_the_mean_top_eigenvalue_of_the_minibatch_hessians():
    """Against jax.hessian of each minibatch's loss, the batches drawn as flows.sgd draws them; B = n is the
    full batch, lambda_max(H), with replacement or without (as in flows.sgd); smaller batches are sharper on
    average (Jensen: E lambda_max(H_B) >= lambda_max(E H_B))."""
    from flows._brownian import batch_indices

    P = two_layer(n=7, d=3, width=6)
    flat, unravel = P.ravel(P.params)
    key = jax.random.key(5)
    got = hessian.batch_sharpness(P, P.params, 3, key=key, num_batches=4)
    tops = []
    for k in jax.random.split(key, 4):
        idx = batch_indices(jax.random.split(k)[0], P.n, 3, True)
        H = jax.hessian(lambda v: P.loss(unravel(v), P.X[idx], P.y[idx]))(flat)
        tops.append(np.linalg.eigvalsh(np.asarray(H))[-1])
    np.testing.assert_allclose(got, np.mean(tops), rtol=1e-6)
    for replace in (True, False):
        full = hessian.batch_sharpness(P, P.params, P.n, key=key, num_batches=2, replace=replace)
        np.testing.assert_allclose(full, np.linalg.eigvalsh(_dense(P))[-1], rtol=1e-6)
    assert float(got) > float(full)
    with jax.enable_x64(False):  # float32, as users run it: the same batches, the same mean to rounding
        low = hessian.batch_sharpness(float32(P), float32(P).params, 3, key=key, num_batches=4)
        assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, got, rtol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        hessian.batch_sharpness(P, P.params, P.n + 1, key=key)
