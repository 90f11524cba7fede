"""Every flow under `jax.jit` with every argument form its docstring allows: `ts` as a list, a NumPy array or
a JAX array (captured or traced), step sizes and end times as Python floats or 0-d arrays (concrete or
traced). Each form gives the eager result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows import gd, gradient_flow, label_noise_sde, label_noise_sgd, riemannian_flow, sgd, sgd_sde
from tests.helpers import tree_allclose, two_layer

P = two_layer(n=6, d=3, width=5)
KEY = jax.random.key(0)
TIMES = [0.0, 0.2, 0.4]


def sde(eta, t1, ts):
    return label_noise_sde(P, P.params, t1=t1, eta=eta, sigma=0.5, key=KEY, ts=ts, substeps=1).stats["loss"]


def minibatch_sde(eta, t1, ts):
    return sgd_sde(P, P.params, t1=t1, eta=eta, batch_size=2, key=KEY, ts=ts, substeps=1).stats["loss"]


def flow(eta, t1, ts):
    del eta
    return gradient_flow(P, P.params, t1=t1, ts=ts).stats["loss"]


def slow(eta, t1, ts):
    del eta
    return riemannian_flow(P, P.params, t1=t1, ts=ts).stats["objective"]


def discrete(run):
    def fn(eta, t1, ts):
        del t1, ts
        noise = {"gd": {}, "sgd": dict(batch_size=2, key=KEY), "label": dict(sigma=0.5, key=KEY)}[run]
        step = {"gd": gd, "sgd": sgd, "label": label_noise_sgd}[run]
        return step(P, P.params, steps=4, eta=eta, save_every=2, **noise).stats["loss"]

    return fn


FLOWS = {
    "label_noise_sde": sde,
    "sgd_sde": minibatch_sde,
    "gradient_flow": flow,
    "riemannian_flow": slow,
    "gd": discrete("gd"),
    "sgd": discrete("sgd"),
    "label_noise_sgd": discrete("label"),
}
FORMS = {
    "list": lambda ts: list(ts),
    "numpy": np.asarray,
    "jax": jnp.asarray,
}


SLOW = {"riemannian_flow"}  # compiles the most; run by make test-all


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FLOWS])
def test_every_argument_form_under_jit_gives_the_eager_result(name):
    fn = FLOWS[name]
    eager = fn(0.1, 0.4, TIMES)
    for form in FORMS.values():
        ts = form(TIMES)
        assert tree_allclose(jax.jit(lambda: fn(0.1, 0.4, ts))(), eager, rtol=1e-10)  # captured
        assert tree_allclose(fn(jnp.asarray(0.1), jnp.asarray(0.4), ts), eager, rtol=1e-10)  # 0-d arrays
    traced = jax.jit(fn)(0.1, 0.4, jnp.asarray(TIMES))  # eta, t1 and ts all traced
    assert tree_allclose(traced, eager, rtol=1e-10)


@pytest.mark.parametrize("name", ["sgd", "gradient_flow"])
def test_a_jit_closing_over_a_problem_does_not_constant_fold_its_data(name):
    """The data and parameters a `jax.jit` closes over enter the compiled program once, as given: XLA folded
    the forward pass over the whole data set into new constants while compiling (28 s for an SGD ensemble
    of an MLP on n = 1,024), which `compiled` (flows/_trajectory.py) at each flow's entry prevents. Read
    from the compiled program: its array constants hold no more numbers than the problem's own arrays and a
    solver's coefficients (Tsit5's tableau, 68)."""
    import re

    import equinox as eqx

    from models import Problem

    X = jax.random.normal(jax.random.key(0), (256, 16))
    P = Problem(eqx.nn.MLP(16, 1, 32, 1, key=jax.random.key(1)), X, jnp.tanh(X[:, :1]))
    runs = {
        "sgd": lambda k: sgd(P, P.params, steps=20, eta=0.05, batch_size=8, key=k, save_every=10).stats,
        "gradient_flow": lambda k: gradient_flow(P, P.params, t1=1.0, ts=[0.0, 1.0]).stats,
    }
    keys = jax.random.split(jax.random.key(2), 4)
    text = jax.jit(jax.vmap(runs[name])).lower(keys).compile().as_text()
    shapes = re.findall(r"= f(?:32|64)\[([\d,]+)\]\{[\d,]*\} constant\(", text)
    held = sum(int(np.prod([int(d) for d in s.split(",")])) for s in shapes)
    own = sum(x.size for x in jax.tree.leaves(eqx.filter(P, eqx.is_array)))
    assert own <= held <= own + 128, (held, own, shapes)
