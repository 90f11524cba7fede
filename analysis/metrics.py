"""Flow metrics beyond curvature (`analysis.hessian` holds those): what a network gets right.

A metric is `fn(problem, params) -> scalar` (`metrics={"accuracy": metrics.Accuracy(X_test, y_test)}`);
these are Equinox modules, so their data are pytree leaves: traced arguments under `jax.jit`, not constants
folded into the compiled program.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from models import Problem

__all__ = ["Accuracy"]


class Accuracy(eqx.Module):
    """The fraction of the examples (X, y) classified right by `problem`'s model: sign(f) against a +-1 target
    (y of shape (m,) in X's float dtype), argmax(f) against one-hot targets (m, k) or integer labels (m,).
    Cost one forward pass over X."""

    X: Array
    y: Array

    def __call__(self, problem: Problem, params: PyTree) -> Float[Array, ""]:
        f = problem.outputs(params, self.X)
        if jnp.issubdtype(self.y.dtype, jnp.integer):
            right = jnp.argmax(f, axis=1) == self.y
        elif self.y.ndim == 1:
            right = jnp.sign(f) == self.y
        else:
            right = jnp.argmax(f, axis=1) == jnp.argmax(self.y, axis=1)
        return jnp.mean(right.astype(f.dtype))
