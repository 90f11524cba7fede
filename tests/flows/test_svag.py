"""SVAG (Li, Malladi & Arora 2021) against SGD and the SDE it converges to, and label noise on a batch drawn
apart from the gradient batch (the full-batch gradient plus label noise on one random example)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import flows
from analysis import compare
from flows import label_noise_sgd, sgd, svag, timescale
from models import Problem, QuadraticParam, data
from tests.helpers import linear_regression, noise, tree_allclose, two_layer


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_svag_at_l_1_is_sgd_bit_for_bit(sigma, key):
    P = two_layer(n=8)
    kw = dict(steps=30, eta=0.1, batch_size=3, key=key, save_every=10)
    a = svag(P, P.params, l=1, sigma=sigma, **kw)
    b = sgd(P, P.params, **kw) if sigma is None else label_noise_sgd(P, P.params, sigma=sigma, **kw)
    assert tree_allclose(a, b, rtol=0, atol=0)


def test_one_svag_step_has_the_drift_and_covariance_of_the_sgd_sde_per_unit_time():
    """Per unit of t = k eta / l, one step's mean is -grad L and its covariance eta Sigma_B, Sigma_B =
    (1/B) [(1/n) sum g_i g_i^T - gbar gbar^T] (dense, from per-example gradients): 40,000 steps from one
    point,
    mean within 5 standard errors, covariance within 5% (its Monte Carlo error is ~1%)."""
    P = two_layer(n=8)
    eta, B, ell, N = 0.2, 3, 4, 40_000
    h = eta / ell
    theta0, _ = P.ravel(P.params)
    keys = jax.random.split(jax.random.key(1), N)
    step = jax.vmap(
        lambda k: P.ravel(svag(P, P.params, steps=1, eta=eta, batch_size=B, l=ell, key=k).final)[0]
    )
    rate = (step(keys) - theta0[None, :]) / h
    grad, _ = P.ravel(P.grad(P.params))
    se = rate.std(0) / np.sqrt(N)
    assert np.all(np.abs(rate.mean(0) + grad) < 5 * se + 1e-12)
    G = P.per_example_grads(P.params)
    expect = eta * (G.T @ G / P.n - jnp.outer(G.mean(0), G.mean(0))) / B
    emp = np.cov(np.asarray(rate).T) * h  # Cov[step] / h = (eta^2 / l) Sigma_B / (eta / l) = eta Sigma_B
    assert np.linalg.norm(emp - expect) < 0.05 * np.linalg.norm(expect)


def test_svag_converges_to_the_ou_sde_like_1_over_l():
    """Label noise on linear regression is OU. SVAG's stationary covariance solves S = A S A^T + (eta^2/l) D,
    A = I - (eta/l) H, D the covariance of one label-noise gradient; the SDE's solves H S + S H = eta D.
    SVAG simulated at l = 1, 2, 4 (400 paths of 2,000 l steps each, sampled every 4 l steps once
    stationary): each matches its own equation to ~0.5%, and the simulated gap to the SDE's covariance
    (27%, 11%, 5.2% at eta = 0.4) falls like 1/l (slope ~1.1 from l = 2 to 4; the closed forms' own gaps
    behave alike)."""
    P = linear_regression()
    H = np.asarray(P.X.T @ P.X / P.n)
    w_star = jnp.linalg.solve(P.X.T @ P.X, P.X.T @ P.y)
    eta, sigma, seeds, T = 0.4, 1.0, 400, 2000
    D = sigma**2 * H / P.n  # sigma^2 X^T X / n^2
    sde = scipy.linalg.solve_continuous_lyapunov(H, eta * D)
    start = eqx.tree_at(lambda m: m.w, P.params, w_star)
    rel = lambda A: np.linalg.norm(A) / np.linalg.norm(sde)  # noqa: E731
    gaps = []
    for ell in (1, 2, 4):
        own = scipy.linalg.solve_discrete_lyapunov(np.eye(4) - eta / ell * H, eta**2 / ell * D)
        paths = jax.vmap(
            lambda k, ell=ell: (
                svag(
                    P,
                    start,
                    steps=T * ell,
                    eta=eta,
                    batch_size=P.n,
                    l=ell,
                    sigma=sigma,
                    key=k,
                    save_every=4 * ell,
                ).params.w
            )  # fmt: skip
        )(jax.random.split(jax.random.key(3), seeds))
        x = np.asarray(paths)[:, 50:].reshape(-1, 4) - np.asarray(w_star)  # after 200 l steps: stationary
        S = x.T @ x / x.shape[0]
        assert rel(S - own) < 0.015, ell
        gaps.append(rel(S - sde))
    assert gaps[0] > gaps[1] > gaps[2]
    assert 0.9 < np.log2(gaps[1] / gaps[2]) < 1.3, gaps


def test_label_noise_on_one_example_apart_has_the_stated_covariance_and_sde_factor():
    """Full-batch gradient plus label noise on one random example: one step deviates from GD by
    (eta / n) eps_j grad f_j, covariance eta^2 sigma^2 B_eps J^T J / (B^2 n) with B = n, B_eps = 1; the SDE's
    factor (sigma taken as sigma sqrt(B_eps / B)) has the same covariance per unit of time."""
    P = linear_regression(n=6, d=3)
    eta, sigma, N = 0.2, 0.3, 40_000
    keys = jax.random.split(jax.random.key(2), N)
    one = jax.vmap(
        lambda k: P.ravel(
            label_noise_sgd(P, P.params, steps=1, eta=eta, sigma=sigma, noise_batch_size=1, key=k).final
        )[0]
    )(keys)
    from flows import gd

    dev = one - P.ravel(gd(P, P.params, steps=1, eta=eta).final)[0][None, :]
    J = np.asarray(P.jacobian(P.params))
    expect = eta**2 * sigma**2 * J.T @ J / (P.n**2 * P.n)
    C = np.asarray(dev.T @ dev / N)
    se = np.sqrt(np.var(np.asarray(dev)[:, :, None] * np.asarray(dev)[:, None, :], axis=0) / N)
    assert np.all(np.abs(C - expect) < 5 * se)
    factor = flows.StepNoise(batch_size=P.n, sigma=sigma, noise_batch_size=1).factor_args  # its own factor
    cols = jax.vmap(lambda e: P.ravel(noise.diffusion(P, P.params, e, eta=eta, **factor))[0])(jnp.eye(P.n))
    np.testing.assert_allclose(cols.T @ cols * eta, expect, rtol=1e-10)  # factor covariance times one step
    with pytest.raises(ValueError, match="noise_batch_size = 1 places label noise, but sigma is None"):
        flows.StepNoise(batch_size=P.n, noise_batch_size=1)
    assert timescale.slow_time(1, eta, sigma, P.n, 1) == pytest.approx(eta**2 * sigma**2 / P.n**2)


@pytest.mark.slow  # 36,000 steps x 16 seeds, Phi-mapped
def test_label_noise_on_one_example_follows_the_slow_flow_in_its_own_tau():
    """tau = eta^2 sigma^2 k / n^2 for the full-batch gradient with label noise on one example: tr H of
    label-noise GD mapped by Phi stays within a few percent of the slow flow at that tau (quadratic
    parametrisation, the setting of the published sparse-regression study; eta tr H ~ 0.2)."""
    X = data.gaussian(jax.random.key(0), 3, 5)
    P = Problem(QuadraticParam(5, init_scale=1.0), X, X[:, 0])
    r = compare.label_noise_slow_clock(
        P, P.params, etas=[0.005], sigma=1.0, tau1=0.1, num_saves=2, key=jax.random.key(1), seeds=16,
        noise_batch_size=1,
    )  # fmt: skip
    flow = r["eta"]["0.005"]["trace_H"]["flow"]
    assert float(flow[0] - flow[-1]) > 0.05 * float(flow[0])  # the flow moved
    assert float(r["eta"]["0.005"]["trace_H"]["weak_error"]) < 0.03 * float(flow[0])
