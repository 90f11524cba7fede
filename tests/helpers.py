"""The tests' documented helpers, imported as `tests.helpers`: small shared problems, a pytree comparison
and a float32 cast, and the flows' private modules whose internals are tested on their own (the Brownian
draws, the manifold's linear algebra and its numerical rules, the noise factors, the stiff Rosenbrock-W
steps): tests import public names
and these, never a private module themselves. (The float64 switch and the key fixture are in conftest.py.)"""

import equinox as eqx
import jax
import jax.numpy as jnp

from flows import _brownian as brownian
from flows import _geometry as geometry
from flows import _noise as noise
from flows import _numerics as numerics
from flows import _rosenbrock as rosenbrock
from models import Linear, Problem, TwoLayerNet, data

__all__ = [
    "brownian",
    "geometry",
    "noise",
    "numerics",
    "rosenbrock",
    "tree_allclose",
    "linear_regression",
    "two_layer",
    "float32",
    "largest_intermediate",
]


def tree_allclose(x, y, *, rtol=1e-10, atol=1e-12) -> bool:
    return bool(eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol))


def linear_regression(n=12, d=4, seed=0) -> Problem:
    """y = X beta + noise, n > d: a unique minimiser and H = X^T X / n positive definite."""
    kx, kb, kn, km = jax.random.split(jax.random.key(seed), 4)
    X = data.gaussian(kx, n, d)
    y = X @ jax.random.normal(kb, (d,)) + 0.1 * jax.random.normal(kn, (n,))
    return Problem(Linear(d, key=km), X, y)


def two_layer(n=6, d=3, width=5, activation="tanh", seed=0, train_outer=True) -> Problem:
    """A small two-layer net off the zero-loss manifold (residuals non-zero)."""
    kx, kn = jax.random.split(jax.random.key(seed))
    X = data.gaussian(kx, n, d)
    y = jnp.sin(X[:, 0]) + X[:, 1] ** 2
    net = TwoLayerNet(d, width, key=kn, activation=activation, train_outer=train_outer)
    return Problem(net, X, y)


def float32(tree):
    """Every floating-point array of `tree` (a Problem, parameters, ...) cast to float32."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, tree)


def largest_intermediate(jaxpr) -> int:
    """The most numbers any one value of a jaxpr holds, its sub-jaxprs (loops, conditionals, solves)
    included: what a program allocates at once for one array, read without running it."""
    import math

    from jax.extend import core

    sizes = [0]
    for eqn in jaxpr.eqns:
        sizes += [math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if isinstance(sub, core.ClosedJaxpr):
                    sizes.append(largest_intermediate(sub.jaxpr))
                elif isinstance(sub, core.Jaxpr):
                    sizes.append(largest_intermediate(sub))
    return max(sizes)
