"""Linear stability of SGD (Wu, Wang & Su 2022): the exact second-moment recursion against Monte Carlo SGD,
GD's closed form, the alignment ratio against dense and Gaussian closed forms, the bound as a theorem on
random instances, label noise's stationary loss, and the SDE's generator against simulated SDE paths."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from analysis import ensembles, stability
from flows import label_noise_sgd, limit_map, sgd, sgd_sde
from models import Linear, Problem, data
from tests.helpers import two_layer


def least_squares(n=8, d=20, seed=0):
    """Over-parameterised least squares and its min-norm interpolating minimum theta*."""
    kx, kb, km = jax.random.split(jax.random.key(seed), 3)
    X = data.gaussian(kx, n, d)
    y = X @ jax.random.normal(kb, (d,))
    P = Problem(Linear(d, key=km), X, y)
    star = jax.tree.map(lambda _: jnp.linalg.pinv(X) @ y, P.params)
    return P, star


def net_minimum(seed=0):
    """A two-layer tanh net at a global minimum (n < p), reached by the gradient-flow limit map."""
    P = two_layer(n=6, d=3, width=5, seed=seed)
    return P, limit_map(P, P.params)


def ensemble_sgd(P, start, *, eta, batch_size, steps, seeds, key, replace=True):
    keys = jax.random.split(key, seeds)
    run = lambda k: sgd(  # noqa: E731
        P, start, steps=steps, eta=eta, batch_size=batch_size, key=k, replace=replace, save_params=True
    )
    return ensembles.ensemble(run, keys, seeds_at_once=10_000)


@pytest.mark.parametrize("replace", [True, False])
def test_second_moment_recursion_matches_monte_carlo_sgd(replace):
    P, star = least_squares()
    w = star.w
    d0 = 0.1 * jax.random.normal(jax.random.key(5), w.shape)
    start = jax.tree.map(lambda _: w + d0, P.params)
    eta, B, steps = 0.1, 3, 5
    traj = ensemble_sgd(
        P, start, eta=eta, batch_size=B, steps=steps, seeds=40_000, key=jax.random.key(1), replace=replace
    )
    delta = np.asarray(traj.params.w) - np.asarray(w)  # (seeds, steps + 1, p)
    mc = np.einsum("skp,skq->kpq", delta, delta) / delta.shape[0]
    exact = np.asarray(
        stability.second_moments(
            P, star, jnp.outer(d0, d0), eta=eta, steps=steps, batch_size=B, replace=replace
        )
    )
    for k in range(1, steps + 1):
        err = np.linalg.norm(mc[k] - exact[k]) / np.linalg.norm(exact[k])
        assert err < 0.01, (k, err)  # Monte Carlo error ~0.2%
    # the noise term matters: GD's recursion (no noise) misses the loss by ~40%, so the test can fail
    noiseless = np.asarray(
        stability.second_moments(
            P, star, jnp.outer(d0, d0), eta=eta, steps=steps, batch_size=P.n, replace=False
        )
    )
    X = np.asarray(P.X)
    loss = lambda M: np.einsum("ip,pq,iq->", X, M, X)  # noqa: E731
    assert loss(mc[steps]) == pytest.approx(loss(exact[steps]), rel=0.01)
    assert loss(noiseless[steps]) < 0.7 * loss(mc[steps])


def test_mean_square_grows_at_rho_from_its_mode_above_the_threshold():
    """Started in the top eigenmode of T, E L_k = rho^k L_0 exactly; Monte Carlo SGD follows it within four
    standard errors. L_k is heavy-tailed (rare runs draw one example again and again), so the mean is resolved
    only over the first steps: at step 6 the standard error of 40,000 seeds ranges from 5% to 35% of the
    mean across key streams (a fixed 8% tolerance there passed on one stream by luck)."""
    P, star = least_squares()
    B = 4
    eta = 1.3 * stability.threshold(P, star, batch_size=B)
    rho, R = stability.mean_square_rate(P, star, eta=eta, batch_size=B, return_mode=True)
    assert rho > 1.3
    X = np.asarray(P.X)
    # delta_0 = X^+ R^{1/2} z, so that E r_0 r_0^T = R
    vals, vecs = np.linalg.eigh(R)
    root = vecs * np.sqrt(np.clip(vals, 0, None)) @ vecs.T
    seeds, steps = 40_000, 3
    z = np.random.default_rng(0).standard_normal((seeds, X.shape[0]))
    deltas = 1e-3 * z @ root @ np.linalg.pinv(X).T
    keys = jax.random.split(jax.random.key(2), seeds)

    def run(delta, k):
        start = jax.tree.map(lambda _: star.w + delta, P.params)
        return sgd(P, start, steps=steps, eta=eta, batch_size=B, key=k, save_params=False).stats["loss"]

    L = np.asarray(jax.jit(jax.vmap(run))(jnp.asarray(deltas), keys))
    ratio = L.mean(0) / L.mean(0)[0]
    se = L.std(0) / np.sqrt(seeds) / L.mean(0)[0]
    assert np.all(np.abs(ratio - rho ** np.arange(steps + 1)) <= 4 * se), (ratio, rho, se)
    assert np.all(se[1:] < 0.05 * ratio[1:])  # resolved: a rate 10% off would miss by 6 standard errors


def test_gd_closed_form_and_threshold():
    """B = n without replacement is GD: rho = max_i (1 - eta lambda_i(G))^2, threshold 2 / lambda_max."""
    P, star = least_squares()
    lam = np.linalg.eigvalsh(np.asarray(P.X @ P.X.T) / P.n)
    for eta in (0.05, 0.2, 0.4):
        rho = stability.mean_square_rate(P, star, eta=eta, batch_size=P.n, replace=False)
        assert rho == pytest.approx(np.max((1 - eta * lam) ** 2), rel=1e-10)
    th = stability.threshold(P, star, batch_size=P.n, replace=False, rtol=1e-8)
    assert th == pytest.approx(2 / lam.max(), rel=1e-6)
    assert stability.threshold(P, star, batch_size=P.n, replace=False, criterion="sde") == np.inf


@pytest.mark.parametrize("eta", [0.01, 0.03, 0.1])
def test_power_method_gives_one_minus_rho_at_small_eta(eta):
    """T's spectrum crowds at 1 for small eta (power iteration on T stopped 25% off in 1 - rho at
    eta = 0.03); through the abscissa of D + eta N, 1 - rho matches the dense eigenvalues to 1e-8, and the
    returned mode is T's eigenvector."""
    P, star = net_minimum()
    for B, replace in ((2, True), (3, False)):
        dense = stability.mean_square_rate(P, star, eta=eta, batch_size=B, replace=replace, method="dense")
        power, R = stability.mean_square_rate(
            P, star, eta=eta, batch_size=B, replace=replace, method="power", return_mode=True
        )
        assert 1 - power == pytest.approx(1 - dense, rel=1e-8)
        assert np.linalg.eigvalsh(R)[0] > -1e-10  # PSD
    with pytest.raises(eqx.EquinoxRuntimeError, match="did not converge"):
        stability.mean_square_rate(P, star, eta=eta, batch_size=2, method="power", num_iter=4)


def test_the_full_batch_is_gd_whatever_replace_says():
    """B = n (or None) is GD in every module, as in flows.sgd: the same rate with or without replacement,
    GD's threshold, and no SDE threshold."""
    P, star = net_minimum()
    gd = stability.mean_square_rate(P, star, eta=0.3, batch_size=P.n, replace=False)
    assert stability.mean_square_rate(P, star, eta=0.3, batch_size=P.n) == pytest.approx(gd, rel=1e-12)
    assert stability.mean_square_rate(P, star, eta=0.3) == pytest.approx(gd, rel=1e-12)
    _, lmax = stability.gauss_newton_norms(P, star)
    assert stability.threshold(P, star) == pytest.approx(2 / lmax, rel=1e-6)
    assert stability.threshold(P, star, criterion="sde") == np.inf
    assert stability.batch_covariance_factor(P.n, P.n, replace=True) == 0.0
    assert stability.wu_bound(0.1, P.n, mu=0.5, n=P.n) == np.inf


def test_threshold_refuses_an_eta_max_that_is_not_a_step_size():
    P, star = net_minimum()
    for bad in (-1.0, 0.0):
        with pytest.raises(ValueError, match="eta_max must be > 0"):
            stability.threshold(P, star, batch_size=2, eta_max=bad)


def test_dense_and_power_iteration_agree_on_a_net():
    P, star = net_minimum()
    for B, replace in ((1, True), (3, False)):
        dense = stability.mean_square_rate(P, star, eta=0.3, batch_size=B, replace=replace, method="dense")
        power = stability.mean_square_rate(P, star, eta=0.3, batch_size=B, replace=replace, method="power")
        assert power == pytest.approx(dense, rel=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wu_bound_holds_at_every_stable_minimum(seed):
    """Wu et al.'s argument as a theorem: rho >= eta^2 v_B mu* ||G||_F^2, so a stable minimum has
    ||H||_F <= 1 / (eta sqrt(v_B mu*)); checked on nets and least squares over eta and B."""
    for P, star in (net_minimum(seed), least_squares(seed=seed)):
        fro, lmax = stability.gauss_newton_norms(P, star)
        mu = stability.min_alignment(P, star)
        assert mu > 0
        for B in (1, 2, P.n // 2):
            for replace in (True, False):
                c = stability.batch_covariance_factor(B, P.n, replace)
                for eta in np.array([0.2, 0.6, 1.0]) * 2 / lmax:
                    rho = stability.mean_square_rate(P, star, eta=eta, batch_size=B, replace=replace)
                    assert rho >= eta**2 * c * mu * fro**2 * (1 - 1e-9)
                    if rho <= 1:
                        assert fro <= stability.wu_bound(eta, B, mu=mu, n=P.n, replace=replace)
                th = stability.threshold(P, star, batch_size=B, replace=replace)
                assert fro <= stability.wu_bound(th, B, mu=mu, n=P.n, replace=replace) * (1 + 1e-3)


def test_thresholds_order_mean_square_then_typical_run_then_sde():
    P, star = least_squares()
    key = jax.random.key(3)
    for B in (1, 4):
        ms = stability.threshold(P, star, batch_size=B, rtol=1e-3)
        lyap = stability.threshold(
            P, star, batch_size=B, criterion="lyapunov", key=key, steps=5000, rtol=1e-3
        )
        sde = stability.threshold(P, star, batch_size=B, criterion="sde", rtol=1e-3)
        assert ms < lyap < sde
        eta = 1.1 * ms  # just past the mean-square threshold
        rho = stability.mean_square_rate(P, star, eta=eta, batch_size=B)
        lyap_exp = stability.lyapunov_exponent(P, star, eta=eta, key=key, batch_size=B, steps=5000)
        assert lyap_exp <= 0.5 * np.log(rho)  # Jensen


@pytest.mark.parametrize("criterion", ["mean_square", "sde"])
def test_closed_form_thresholds_are_where_the_dense_operators_turn_unstable(criterion):
    """The closed forms 1 / rho(-D^{-1} M) against the dense eigenvalues of the q^2 x q^2 matrices of T
    (mean-square) and of the SDE's generator: the rate crosses 1 there (to 1e-4 relative), on a net with and
    without replacement and on least squares."""
    dense = {
        "mean_square": lambda P, star, **kw: stability.mean_square_rate(P, star, method="dense", **kw),
        "sde": stability.sde_rate,
    }[criterion]
    for (P, star), B, replace in (
        (net_minimum(), 2, True),
        (net_minimum(), 3, False),
        (least_squares(), 1, True),
    ):
        eta = stability.threshold(P, star, batch_size=B, replace=replace, criterion=criterion)
        assert np.isfinite(eta)
        below, above = (
            dense(P, star, eta=f * eta, batch_size=B, replace=replace) for f in (1 - 1e-4, 1 + 1e-4)
        )
        assert below < 1 < above
    if criterion == "mean_square":
        return
    P, star = net_minimum()  # with replacement P is exactly (1/B) (one example's covariance): eta_sde ~ B
    one, two = (stability.threshold(P, star, batch_size=B, criterion="sde") for B in (1, 2))
    assert two == pytest.approx(2 * one, rel=1e-8)


def test_alignment_matches_dense_covariance_on_a_net():
    P = two_layer(n=6, d=3, width=5)
    for params in (P.params,):
        g = np.asarray(P.per_example_grads(params))
        sigma1 = g.T @ g / P.n - np.outer(g.mean(0), g.mean(0))
        J = np.asarray(P.jacobian(params))
        G = J.T @ J / P.n
        expected = np.trace(sigma1 @ G) / (2 * float(P.loss(params)) * np.sum(G**2))
        assert float(stability.alignment(P, params)) == pytest.approx(expected, rel=1e-10)


def test_alignment_is_refused_at_a_zero_loss_point():
    """mu is 0/0 where r = 0: at an exact least-squares interpolant it was a ratio of round-off (1.154)."""
    X = data.gaussian(jax.random.key(0), 3, 5)
    P = Problem(Linear(5, key=jax.random.key(1)), X, X @ jnp.arange(5.0))
    exact = jax.tree.map(lambda w: jnp.linalg.lstsq(X, P.y)[0].reshape(w.shape), P.params)
    with pytest.raises(Exception, match="stability.alignment.*zero-loss point.*min_alignment"):
        stability.alignment(P, exact)
    assert np.isfinite(float(stability.alignment(P, P.params)))


def test_alignment_closed_form_for_gaussian_linear_regression():
    """x ~ N(0, S), linear model, residual r = x . delta: by Isserlis, as n -> infinity,
    mu = 1 + delta^T S^3 delta / (delta^T S delta ||S||_F^2)."""
    d, n = 4, 400_000
    S_root = np.diag([2.0, 1.0, 0.5, 0.25])
    S = S_root @ S_root
    X = np.random.default_rng(0).standard_normal((n, d)) @ S_root
    delta = np.array([1.0, -0.5, 2.0, 1.0])
    P = Problem(Linear(d, key=jax.random.key(0)), jnp.asarray(X), jnp.zeros(n))
    params = jax.tree.map(lambda _: jnp.asarray(delta), P.params)
    expected = 1 + delta @ S @ S @ S @ delta / (delta @ S @ delta * np.sum(S**2))
    assert float(stability.alignment(P, params)) == pytest.approx(expected, rel=0.02)
    # the N <= p branch (Gram matrix) on a small sample agrees with the p-space one
    P_small = Problem(Linear(d, key=jax.random.key(0)), jnp.asarray(X[:3]), jnp.zeros(3))
    K, r = np.asarray(P_small.X @ P_small.X.T), np.asarray(P_small.X) @ delta
    num = 3 * np.sum((K * r[None, :]) ** 2) - np.sum((K @ r) ** 2)
    assert float(stability.alignment(P_small, params)) == pytest.approx(num / (r @ r * np.sum(K**2)))


def test_label_noise_stationary_loss_matches_label_noise_sgd():
    P, star = least_squares(n=6, d=12)
    B, sigma = 3, 0.5
    eta = 0.5 * stability.threshold(P, star, batch_size=B)
    predicted = stability.label_noise_stationary_loss(P, star, eta=eta, sigma=sigma, batch_size=B)
    keys = jax.random.split(jax.random.key(4), 2000)
    run = lambda k: label_noise_sgd(  # noqa: E731
        P, star, steps=400, eta=eta, sigma=sigma, batch_size=B, key=k, save_every=20, save_params=False
    )
    L = np.asarray(ensembles.ensemble(run, keys).stats["loss"])[:, 10:]  # after 200 steps: stationary
    assert L.mean() == pytest.approx(predicted, rel=0.05)
    beyond = 1.05 * stability.threshold(P, star, batch_size=B)
    assert stability.label_noise_stationary_loss(P, star, eta=beyond, sigma=sigma, batch_size=B) == np.inf


def test_sde_generator_matches_simulated_sgd_sde():
    """E L(t) of the minibatch SDE at a minimum of least squares is closed form, expm(t A) on the range of K.
    Simulated sgd_sde paths (Euler, 16 substeps) agree within Monte Carlo error (~1%); discrete SGD, whose
    map has the extra eta^2 K R K / n^2, is 5% off by the end."""
    P, star = least_squares(n=6, d=12)
    B = 2
    eta = 0.3 * stability.threshold(P, star, batch_size=B)
    lin = stability._Linearised(P, star, B, True)
    A = lin.matrix(lin.generator(eta))
    q = lin.lam.shape[0]
    d0 = np.asarray(0.05 * jax.random.normal(jax.random.key(6), star.w.shape))
    r0 = lin.U.T @ (np.asarray(P.X) @ d0)
    steps = 8
    t = eta * np.arange(steps + 1)
    R0 = np.outer(r0, r0).ravel()
    closed = np.array([np.trace((scipy.linalg.expm(s * A) @ R0).reshape(q, q)) / (2 * P.n) for s in t])
    start = jax.tree.map(lambda _: star.w + jnp.asarray(d0), P.params)
    keys = jax.random.split(jax.random.key(7), 16_000)
    run = lambda k: sgd_sde(  # noqa: E731
        P, start, t1=float(t[-1]), eta=eta, batch_size=B, key=k, substeps=16, ts=t, save_params=False
    )
    L = np.asarray(ensembles.ensemble(run, keys, seeds_at_once=8000).stats["loss"]).mean(0)
    np.testing.assert_allclose(L, closed, rtol=0.03)
    run = lambda k: sgd(P, start, steps=steps, eta=eta, batch_size=B, key=k, save_params=False)  # noqa: E731
    L_sgd = np.asarray(ensembles.ensemble(run, keys, seeds_at_once=8000).stats["loss"]).mean(0)
    assert abs(L_sgd[-1] / closed[-1] - 1) > 0.035


def test_bad_input_is_refused():
    P, star = least_squares()
    with pytest.raises(ValueError, match="not a global minimum"):
        stability.mean_square_rate(P, P.params, eta=0.1, batch_size=2)
    with pytest.raises(ValueError, match="eta"):
        stability.mean_square_rate(P, star, eta=-1.0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        stability.mean_square_rate(P, star, eta=0.1, batch_size=P.n + 1)
    with pytest.raises((ValueError, TypeError), match="criterion"):  # TypeError: the tests' type checker
        stability.threshold(P, star, criterion="typical")
    with pytest.raises(ValueError, match="key"):
        stability.threshold(P, star, criterion="lyapunov")
    with pytest.raises(ValueError, match="cov0"):
        stability.second_moments(P, star, jnp.eye(3), eta=0.1, steps=2)
    with pytest.raises((ValueError, TypeError), match="method"):
        stability.mean_square_rate(P, star, eta=0.1, method="qr")


def test_every_minimum_sgd_finds_in_a_small_sweep_satisfies_the_bound():
    P = two_layer(n=6, d=3, width=5, seed=1)
    eta0 = 1 / stability.gauss_newton_norms(P, P.params)[1]
    found = 0
    for B in (1, 3, 6):
        for f in (0.25, 0.5, 1.0):
            eta = f * eta0
            tr = sgd(P, P.params, steps=4000, eta=eta, batch_size=B, key=jax.random.key(B), save_every=4000,
                     throw=False)  # fmt: skip
            if not float(tr.stats["loss"][-1]) < 1e-6 * float(jnp.mean(P.y**2)):
                continue
            found += 1
            fro, _ = stability.gauss_newton_norms(P, tr.final)
            mu = stability.min_alignment(P, tr.final)
            assert fro <= stability.wu_bound(eta, B, mu=mu)
    assert found >= 6


def test_second_moments_stay_symmetric_and_decay_at_rho_over_many_steps():
    """A stable minimum of a two-layer net (eta = 0.3, B = 2): 200 steps of the recursion keep M symmetric and
    tr(J M J^T) decays at the exact mean-square rate rho per step (round-off in the antisymmetric part of M
    once grew without bound)."""
    P, star = net_minimum()
    eta, B = 0.3, 2
    rho = stability.mean_square_rate(P, star, eta=eta, batch_size=B)
    assert rho < 1
    p = P.num_params
    Ms = np.asarray(stability.second_moments(P, star, jnp.eye(p) / p, eta=eta, steps=200, batch_size=B))
    J = np.asarray(P.jacobian(star))
    loss = np.einsum("ap,kpq,aq->k", J, Ms, J)
    assert np.all(loss > 0)
    np.testing.assert_allclose(loss[-1] / loss[-2], rho, rtol=1e-3)
    np.testing.assert_allclose(Ms[-1], np.swapaxes(Ms[-1], 0, 1), atol=1e-12 * np.abs(Ms[-1]).max())
