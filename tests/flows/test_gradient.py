import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import flows
from analysis import hessian
from flows import gradient_flow
from tests.helpers import linear_regression, two_layer


def test_gradient_flow_on_linear_regression_matches_expm():
    """theta(t) = theta* + expm(-t H) (theta_0 - theta*), H = X^T X / n."""
    P = linear_regression()
    H = np.asarray(P.X.T @ P.X / P.n)
    w_star = np.linalg.solve(H, np.asarray(P.X.T @ P.y / P.n))
    ts = jnp.linspace(0.0, 5.0, 11)
    traj = gradient_flow(P, P.params, t1=5.0, ts=ts, rtol=1e-11, atol=1e-13)
    for i, t in enumerate(np.asarray(ts)):
        expect = w_star + scipy.linalg.expm(-t * H) @ (np.asarray(P.params.w) - w_star)
        np.testing.assert_allclose(traj.params.w[i], expect, rtol=1e-8, atol=1e-10)


def test_metrics_on_the_fly_match_metrics_after():
    P = two_layer()
    traj = gradient_flow(P, P.params, t1=1.0, save_every=0.25, metrics={"trace": hessian.trace})
    np.testing.assert_allclose(traj.ts, jnp.linspace(0, 1, 5), rtol=1e-12)
    after = jax.vmap(lambda p: hessian.trace(P, p))(traj.params)
    np.testing.assert_allclose(traj.stats["trace"], after, rtol=1e-10)
    assert bool(jnp.all(jnp.diff(traj.stats["loss"]) <= 0))  # the loss decreases along the flow


def test_bad_input():
    P = two_layer()
    with pytest.raises(ValueError, match="t1 must be > 0"):
        gradient_flow(P, P.params, t1=-1.0)
    with pytest.raises(ValueError, match="ts must be"):
        gradient_flow(P, P.params, t1=1.0, ts=jnp.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="params0 contains non-finite"):
        gradient_flow(P, jax.tree.map(lambda x: x * jnp.inf, P.params), t1=1.0)
    for every in (0.4, 0.6):  # 1 / 0.4 saves stopped at 0.8; 1 / 0.6 failed inside diffrax
        with pytest.raises(ValueError, match="save_every"):
            gradient_flow(P, P.params, t1=1.0, save_every=every)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"gradient_flow ran out of steps \(max_steps\)"):
        gradient_flow(P, P.params, t1=100.0, max_steps=3)
    assert int(gradient_flow(P, P.params, t1=100.0, max_steps=3, throw=False).result) == flows.MAX_STEPS
    jitted = eqx.filter_jit(lambda t1: gradient_flow(P, P.params, t1=t1, ts=jnp.array([t1]), max_steps=3).ts)
    with pytest.raises(eqx.EquinoxRuntimeError, match="gradient_flow ran out of steps"):
        jax.block_until_ready(jitted(100.0))
