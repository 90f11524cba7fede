import jax
import numpy as np
import pytest

from analysis import compare, hessian
from flows import limit_map
from models import Problem, QuadraticParam, data


def test_mean_band_is_the_normal_confidence_interval():
    x = np.random.default_rng(0).normal(size=(400, 3))
    mean, half = compare.mean_band(x)
    np.testing.assert_allclose(half, 1.959963984540054 * x.std(0, ddof=1) / 20, rtol=1e-12)
    np.testing.assert_allclose(mean, x.mean(0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        compare.mean_band(x[:1])
    assert compare.order([0.1, 0.05, 0.025], [4.0, 2.0, 1.0]) == pytest.approx(1.0)


def test_label_noise_sgd_follows_the_slow_flow_in_tau_ever_closer_as_eta_shrinks():
    """tr H of label-noise GD mapped by Phi vs the Riemannian flow, in tau = eta^2 sigma^2 k / n, on the
    quadratic parametrisation: the weak error falls with eta (first order in theory) and is a few
    percent at eta = 0.01, well above the 16-seed standard error, so the trend is not noise."""
    X = data.gaussian(jax.random.key(0), 3, 5)
    P = Problem(QuadraticParam(5, init_scale=1.0), X, X[:, 0])
    etas = [0.02, 0.01]
    r = compare.label_noise_slow_clock(
        P, P.params, etas=etas, sigma=1.0, tau1=0.3, num_saves=3, key=jax.random.key(1), seeds=16
    )
    scale = float(r["flow_0.01"][0])
    e1, e2 = float(r["weak_error_0.02"]), float(r["weak_error_0.01"])
    assert e2 < 0.75 * e1
    assert e2 / scale < 0.05 and e1 / scale < 0.1
    assert 0.5 < float(r["order"]) < 1.5
    assert e1 > 2 * float(r["sgd_band_0.02"].max()) / 1.96  # the error is resolved by the sample
    np.testing.assert_allclose(r["tau_0.01"][-1], 0.3, rtol=1e-3)
    start = limit_map(P, P.params)  # the default observable is tr H, evaluated exactly
    np.testing.assert_allclose(r["flow_0.01"][0], hessian.trace(P, start), rtol=1e-8)
    np.testing.assert_allclose(r["sgd_mean_0.01"][0], hessian.trace(P, start), rtol=1e-8)
