"""float32, the dtype a user gets (`jax_enable_x64` off), against float64 on the same problem and key.

The problem is built once in float64 and cast; the float32 run is made with x64 switched off, as a user
makes it. The flows draw their noise in float32 whatever the dtype (`flows/_brownian.py`), so the float64 run
is a path-by-path reference and every tolerance is a multiple of float32's eps = 1.19e-7:
- `PATH` = 100 eps for parameters along GD, SGD, label-noise SGD, gradient flow, both SDEs, Phi, the slow
  flow and the central flow: these runs contract towards a minimum or the manifold, so rounding does not
  compound (measured 2-11 eps at these horizons);
- `SECOND` = 1e3 eps for tr H, a sum of p second derivatives each rounded at eps times its largest term
  (measured 63 eps).
A float32 run that drifted, promoted itself to float64, or lost float32's tolerances would fail.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import features, hessian
from flows import (
    central_flow,
    gd,
    gradient_flow,
    label_noise_sde,
    label_noise_sgd,
    limit_map,
    riemannian_flow,
    sgd,
    sgd_sde,
)
from models import Problem, QuadraticParam, TwoLayerNet, data
from tests.helpers import float32, two_layer

EPS = float(np.finfo(np.float32).eps)
PATH, SECOND = 100 * EPS, 1e3 * EPS
KEY = jax.random.key(0)


def in_both(fn, problem):
    """fn(problem) in float64, and fn(problem cast to float32) with x64 off."""
    reference = fn(problem)
    with jax.enable_x64(False):
        got = fn(float32(problem))
        leaves = jax.tree.leaves(got)
        assert all(x.dtype == jnp.float32 for x in leaves), [x.dtype for x in leaves]
    return np.asarray(reference), np.asarray(got, np.float64)


def assert_close(reference, got, rtol):
    err = np.max(np.abs(reference - got)) / np.max(np.abs(reference))
    assert err <= rtol, f"relative error {err:.3g} = {err / EPS:.1f} eps > {rtol / EPS:.0f} eps"


def final(P, run):
    return P.ravel(run.final)[0]


FLOWS = {
    "gd": lambda P: final(P, gd(P, P.params, steps=100, eta=0.1, save_every=100)),
    "sgd": lambda P: final(P, sgd(P, P.params, steps=100, eta=0.1, batch_size=2, key=KEY, save_every=100)),
    "label_noise_sgd": lambda P: final(
        P, label_noise_sgd(P, P.params, steps=100, eta=0.1, sigma=0.3, key=KEY, save_every=100)
    ),
    "gradient_flow": lambda P: final(P, gradient_flow(P, P.params, t1=10.0, ts=[10.0])),
    "label_noise_sde": lambda P: final(
        P, label_noise_sde(P, P.params, t1=10.0, eta=0.1, sigma=0.3, key=KEY, substeps=4, ts=[0.0, 10.0])
    ),
    "sgd_sde": lambda P: final(
        P, sgd_sde(P, P.params, t1=10.0, eta=0.1, batch_size=2, key=KEY, substeps=4, ts=[0.0, 10.0])
    ),
    "limit_map": lambda P: P.ravel(limit_map(P, P.params))[0],
    "riemannian_flow": lambda P: final(P, riemannian_flow(P, P.params, t1=1.0, ts=[0.0, 1.0])),
    "central_flow": lambda P: final(P, central_flow(P, P.params, eta=0.05, t1=1.0, num_eigs=2, num_saves=2)),
}


@pytest.mark.parametrize("name", FLOWS)
def test_float32_flow_follows_float64_within_100_eps(name):
    assert_close(*in_both(FLOWS[name], two_layer()), PATH)


def test_float32_hessian_metrics_follow_float64():
    P = two_layer()
    assert_close(*in_both(lambda P: hessian.trace(P, P.params), P), SECOND)
    top = lambda P: hessian.top_eigenvalues(P, P.params, 3, key=jax.random.key(2))  # noqa: E731
    assert_close(*in_both(top, P), SECOND)
    assert_close(*in_both(lambda P: P.gauss_newton_trace(P.params), P), PATH)


def test_float32_phi_settles_where_residuals_reach_the_labels_round_off():
    """bench_slow_flow's quadratic (n = 20, d = 40, labels up to 2.4), 1% off the manifold: in float32 the
    RMS gradient rounds above Phi's tol, so Phi stops where max|r| reaches 10 eps (1 + max|y|). It had
    read a traced y as unit scale (10 eps) and ran to max_steps without settling; it lands at Phi (the
    float64 landing to PATH)."""
    X = data.gaussian(jax.random.key(0), 20, 40)
    P = Problem(QuadraticParam(40, init_scale=1.0), X, X[:, 0] - 0.5 * X[:, 1])
    with jax.enable_x64(False):
        P32 = float32(P)
        off = jax.tree.map(lambda x: 1.01 * x, limit_map(P32, P32.params))
        got = P32.ravel(limit_map(P32, off))[0]
    reference = P.ravel(limit_map(P, jax.tree.map(lambda x: x.astype(jnp.float64), off)))[0]
    assert_close(np.asarray(reference), np.asarray(got, np.float64), PATH)


def test_float32_minimum_of_tr_h_is_computed_in_float64():
    """SLSQP with a 1e-9 feasibility test failed on float32 arithmetic ("no feasible minimiser")."""
    kx, ky, kn = jax.random.split(jax.random.key(0), 3)
    X = jax.random.uniform(kx, (3, 3))
    y = jax.random.uniform(ky, (3,), minval=0.5, maxval=1.0)
    P = Problem(TwoLayerNet(3, 10, key=kn, activation="cubic", train_outer=False, outer="ones"), X, y)
    reference = features.min_trace_fixed_outer(P)
    with jax.enable_x64(False):
        got = features.min_trace_fixed_outer(float32(P))
    assert got == pytest.approx(reference, rel=PATH)


@pytest.mark.slow  # 40 s; scripts/benchmarks/bench_slow_flow.py runs it at N = 1,024, p = 32,768
def test_float32_slow_flow_at_the_size_of_a_real_net_follows_float64():
    """The two-layer tanh net of the slow flow's growth study at N = 256, p = 8,192, from float64's Phi: the
    float32 flow's tr H follows float64's to 1e-5 relative, and its decrease over tau = 0.5 to 1% (the
    projection itself is held to float64 in tests/flows/test_geometry.py)."""
    from models import data

    kx, kt, kn = jax.random.split(jax.random.key(0), 3)
    X = data.gaussian(kx, 256, 32)
    y, _ = data.two_layer_teacher(kt, X, width=4, activation="tanh")
    P = Problem(TwoLayerNet(32, 256, key=kn, activation="tanh", train_outer=False), X, y)
    on = limit_map(P, P.params)
    ts = [0.0, 0.25, 0.5]
    reference = 4 * riemannian_flow(P, on, t1=0.5, ts=ts, save_params=False).stats["objective"]
    with jax.enable_x64(False):
        start = float32(on)
        P32 = float32(P)
        got = (
            4
            * riemannian_flow(P32, start, t1=0.5, ts=ts, start="retract", save_params=False).stats[
                "objective"
            ]
        )
    reference, got = np.asarray(reference), np.asarray(got, np.float64)
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    drop, drop32 = reference[0] - reference[-1], got[0] - got[-1]
    assert drop > 1e-3 * reference[0]  # the flow moved
    assert abs(drop32 / drop - 1) < 1e-2, (drop32, drop)
