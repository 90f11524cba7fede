"""Bad data and bad parameters raise, eagerly and under `jax.jit`, `equinox.filter_jit` and `jax.vmap`,
naming what is wrong; nothing comes back as a NaN result. (Each case returned NaN, or blamed eta, before.)"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import hessian
from flows import DIVERGED, gd
from models import MLP, Problem, data
from tests.helpers import two_layer

X, LABELS = data.digits(labels=True)
X, LABELS = X[:24], LABELS[:24]
TARGETS = X[:, 0]
NET = MLP(64, 6, 1, outputs=10, key=jax.random.key(0))
SCALAR_NET = MLP(64, 6, 1, key=jax.random.key(0))

# how each wrapper reports a traced error: filter_jit and vmap raise equinox's error with the message,
# a bare jax.jit its callback error with the message last
WRAPPERS = {
    "jax.jit": lambda f: jax.jit(f),
    "eqx.filter_jit": lambda f: eqx.filter_jit(f),
    "jax.vmap": lambda f: lambda a: jax.vmap(f)(a[None])[0],
}


def entropy_loss(y):
    P = Problem(NET, X, y, loss="cross_entropy")
    return P.loss(P.params)


def square_loss(X_, y=TARGETS):
    P = Problem(SCALAR_NET, X_, y)
    return P.loss(P.params)


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_a_cross_entropy_problem_is_built_inside_jit(wrap):
    """Labels closed over or passed in, inside any transformation (closed over, np.min(y) had raised
    ConcretizationTypeError)."""
    eager = entropy_loss(LABELS)
    closed = WRAPPERS[wrap](lambda _: entropy_loss(LABELS))(jnp.zeros(()))
    passed = WRAPPERS[wrap](entropy_loss)(LABELS)
    np.testing.assert_allclose([closed, passed], [eager, eager], rtol=1e-12)


def descend(P):
    return gd(P, P.params, steps=2, eta=0.1).stats["loss"]


@pytest.mark.parametrize("wrap", [None, *WRAPPERS])
def test_bad_data_is_named_under_every_transformation(wrap):
    """Labels out of 0..k-1 (a NaN loss before), NaN in X or in y (a NaN loss, then gd's 'reduce eta')."""
    bad_labels = LABELS.at[3].set(12)
    bad_X = X.at[2, 5].set(jnp.nan)
    bad_y = TARGETS.at[0].set(jnp.inf)
    cases = [
        (entropy_loss, bad_labels, r"y must hold labels in 0\.\.9"),
        (square_loss, bad_X, "X contains non-finite values"),
        (lambda y: square_loss(X, y), bad_y, "y contains non-finite values"),
        (lambda X_: descend(Problem(SCALAR_NET, X_, TARGETS)), bad_X, "X contains non-finite values"),
    ]
    for fn, arg, message in cases:
        error = ValueError if wrap is None else Exception
        with pytest.raises(error, match=message):
            jax.block_until_ready((fn if wrap is None else WRAPPERS[wrap](fn))(arg))


@pytest.mark.parametrize("wrap", [None, *WRAPPERS])
def test_the_hessian_functions_refuse_non_finite_parameters(wrap):
    """lambda_max, the exact and stochastic traces, SLQ and ||H||_F refuse NaN parameters (they returned
    NaN); the Lanczos check refuses a NaN Ritz value."""
    P = Problem(SCALAR_NET, X, TARGETS)
    flat, unravel = P.ravel(P.params)
    key = jax.random.key(1)
    calls = {
        "lambda_max": lambda p: hessian.lambda_max(P, p),
        "trace": lambda p: hessian.trace(P, p),
        "trace_hutchinson": lambda p: hessian.trace_hutchinson(P, p, key, 4)[0],
        "trace_xtrace": lambda p: hessian.trace_xtrace(P, p, key, 4)[0],
        "spectral_density": lambda p: hessian.spectral_density(P, p, key, num_probes=2, num_steps=4).nodes,
        "frobenius_norm_hutchinson": lambda p: hessian.frobenius_norm_hutchinson(P, p, key, 4)[0],
        "TraceProbe": lambda p: hessian.TraceProbe(key)(P, p),
    }
    bad = flat.at[7].set(jnp.nan)
    for name, call in calls.items():
        fn = lambda v, call=call: call(unravel(v))  # noqa: E731
        error = ValueError if wrap is None else Exception
        with pytest.raises(error, match="(params contains non-finite|is not finite)"):
            jax.block_until_ready((fn if wrap is None else WRAPPERS[wrap](fn))(bad))
        assert np.all(np.isfinite(fn(flat))), name  # the same call on finite parameters is fine
    with pytest.raises(ValueError, match="lanczos: the Ritz values or their residuals is not finite"):
        hessian.lanczos(lambda v: v * jnp.nan, 5, 1, key=key)


def test_a_diverging_flow_reports_its_divergence_not_its_metrics_nan():
    """A flow whose loss overflows reports DIVERGED at its step even with a Lanczos metric (the metric's
    own finiteness check stands down inside the flow)."""
    P = two_layer(activation="cubic")  # GD at eta = 5 overflows within 10 steps
    metrics = {"sharpness": hessian.lambda_max}
    run = gd(P, P.params, steps=20, eta=5.0, metrics=metrics, throw=False)
    assert int(run.result) == DIVERGED and np.isnan(run.stats["sharpness"][-1])
    with pytest.raises(eqx.EquinoxRuntimeError, match="gd diverged: the loss became non-finite at step"):
        gd(P, P.params, steps=20, eta=5.0, metrics=metrics)
