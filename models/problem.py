"""A training problem: an Equinox model, data and the square loss of docs/conventions.md.

    f_theta(x)  the model's output on one input (a scalar, or a vector of k outputs)
    r_i = f_theta(x_i) - y_i                      residuals (n,) or (n, k)
    L(theta) = (1 / (2n)) sum_i ||r_i||^2          the loss, normalised by the number of examples n
    grad L = (1/n) sum_i g_i,  g_i = J_i^T r_i     per-example gradients
    H = (1/n) J^T J + (1/n) sum_i r_i . grad^2 f_i (Gauss-Newton part + residual part)

Parameters `theta` are the *trainable* part of the model (a pytree, see `eqx.partition`); the rest of the
model (activation, frozen layers) is held in `Problem.static`. Linear algebra sees them flattened with
`jax.flatten_util.ravel_pytree`, in the order `Problem.ravel` gives.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from . import checks


class Problem(eqx.Module):
    """Model + data + square loss.

    **Arguments:**

    - `model`: an Equinox module whose `__call__` maps one input `(d,)` to a scalar or a `(k,)` vector.
    - `X`: inputs, shape `(n, d)`.
    - `y`: targets, shape `(n,)` for a scalar model or `(n, k)` for a vector one.
    - `trainable`: an `eqx.partition` filter spec selecting the trained leaves. Defaults to the model's own
      `trainable()` method where it has one (e.g. a two-layer net with a fixed outer layer), else every
      floating-point array.

    `Problem.params` holds the trainable parameters of `model`: the usual starting point of a flow.
    """

    params: PyTree
    static: PyTree
    X: Float[Array, "n d"]
    y: Float[Array, " n *k"]

    def __init__(self, model: eqx.Module, X, y, *, trainable=None):
        X, y = jnp.asarray(X), jnp.asarray(y)
        if X.ndim != 2:
            raise ValueError(f"X must have shape (n, d), got {X.shape}")
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"y must have shape (n,) or (n, k) with n = X.shape[0] = {X.shape[0]}, got {y.shape}"
            )
        if checks.is_concrete((X, y)):
            checks.finite_tree("X", X)
            checks.finite_tree("y", y)
        try:
            out = eqx.filter_eval_shape(model, X[0])
        except Exception as e:  # the model cannot take one row of X
            raise ValueError(f"model cannot be called on one input of shape {X[0].shape}: {e}") from e
        if not hasattr(out, "shape") or out.ndim > 1:
            raise ValueError(f"model must map one input to a scalar or a vector, got output {out}")
        if out.shape != y.shape[1:]:
            raise ValueError(
                f"model output shape {out.shape} does not match y's per-example shape {y.shape[1:]}"
            )
        if trainable is None:
            trainable = model.trainable() if hasattr(model, "trainable") else eqx.is_inexact_array
        self.params, self.static = eqx.partition(model, trainable)
        self.X, self.y = X, y
        if self.num_params == 0:
            raise ValueError("model has no trainable parameters")

    # -- sizes and plumbing ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def num_params(self) -> int:
        return sum(leaf.size for leaf in jax.tree.leaves(self.params))

    def model(self, params: PyTree) -> eqx.Module:
        """The full model at `params`."""
        return eqx.combine(params, self.static)

    def params_of(self, model: eqx.Module) -> PyTree:
        """The trainable part of another instance of the same model (e.g. a fresh initialisation)."""
        params, _ = eqx.partition(model, jax.tree.map(lambda x: x is not None, self.params, is_leaf=_none))
        checks.same_structure("model's parameters", params, self.params, "the problem's parameters")
        return params

    def ravel(self, params: PyTree) -> tuple[Float[Array, " p"], Callable[[Array], PyTree]]:
        """`(theta_flat, unravel)`: the one flattening used by all linear algebra."""
        return ravel_pytree(params)

    # -- the loss and its pieces -------------------------------------------------------------------------
    def outputs(self, params: PyTree, X: Float[Array, "b d"] | None = None) -> Float[Array, " b *k"]:
        X = self.X if X is None else X
        return jax.vmap(self.model(params))(X)

    def residuals(self, params: PyTree, X=None, y=None) -> Float[Array, " b *k"]:
        """r_i = f(x_i) - y_i on (X, y), by default the problem's data."""
        return self.outputs(params, X) - (self.y if y is None else y)

    def loss(self, params: PyTree, X=None, y=None) -> Float[Array, ""]:
        """L = (1 / (2b)) sum_i ||r_i||^2 over the b rows of (X, y), by default the problem's data."""
        r = self.residuals(params, X, y)
        return 0.5 * jnp.sum(r**2) / r.shape[0]

    def grad(self, params: PyTree) -> PyTree:
        return jax.grad(self.loss)(params)

    def jacobian(self, params: PyTree) -> Float[Array, "N p"]:
        """J = d r / d theta, shape (N, p) with N = n * k rows (one per scalar residual, example-major), row
        by row: per example, reverse mode over its k outputs (forward mode over the p parameters when k > p).
        Memory N p, cost N gradient evaluations of one example; never the N x N (or p x p) basis that
        differentiating the batched residuals would push through every example."""
        flat, unravel = self.ravel(params)

        def rows(v, x):
            f = lambda w: jnp.reshape(self.model(unravel(w))(x), (-1,))  # noqa: E731
            return (jax.jacrev if self.y[0].size <= flat.shape[0] else jax.jacfwd)(f)(v)

        return jax.vmap(rows, (None, 0))(flat, self.X).reshape(-1, flat.shape[0])

    def gauss_newton_trace(self, params: PyTree) -> Float[Array, ""]:
        """tr G = (1/n) ||J||_F^2 = (1/n) sum_i ||grad f_i||^2, the trace of H on the zero-loss manifold
        (memory N p, cost N gradient evaluations)."""
        return jnp.sum(self.jacobian(params) ** 2) / self.n

    def per_example_grads(self, params: PyTree) -> Float[Array, "n p"]:
        """g_i = J_i^T r_i, the gradient of (1/2)||r_i||^2, shape (n, p); grad L is their mean."""
        flat, unravel = self.ravel(params)

        def g(x, y):
            return jax.grad(lambda v: 0.5 * jnp.sum((self.model(unravel(v))(x) - y) ** 2))(flat)

        return jax.vmap(g)(self.X, self.y)


def check_start(problem: Problem, params0: PyTree) -> PyTree:
    """The argument checks every flow opens with: `problem` is a `Problem` and `params0` has the structure,
    shapes and dtypes of `problem.params` and is finite. Returns `params0` (under `eqx.error_if` when
    traced)."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a models.Problem, got {type(problem).__name__}")
    checks.same_structure("params0", params0, problem.params, "problem.params")
    return checks.finite_tree("params0", params0)


def _none(x) -> bool:
    return x is None
