"""A training problem: an Equinox model, data and a loss (docs/conventions.md).

    f_theta(x)  the model's output on one input x (any shape: a vector, an image (c, h, w), a sequence)
                 a scalar, or a vector of k outputs (k logits for cross-entropy)
    square loss (the default):
        r_i = f_theta(x_i) - y_i                      residuals (n,) or (n, k)
        L(theta) = (1 / (2n)) sum_i ||r_i||^2          normalised by the number of examples n
        H = (1/n) J^T J + (1/n) sum_i r_i . grad^2 f_i (Gauss-Newton part + residual part)
    cross-entropy (`loss="cross_entropy"`, integer labels y_i in 0..k-1):
        L(theta) = (1/n) sum_i [logsumexp(f_i) - f_{i, y_i}]   the mean softmax cross-entropy (optax's)
    either way: l_i the loss of example i, L = (1/n) sum_i l_i, grad L = (1/n) sum_i g_i, g_i = J_i^T q_i
    with q_i = d l_i / d f_i (the residual r_i for square loss, softmax(f_i) - e_{y_i} for cross-entropy).

Parameters `theta` are the *trainable* part of the model (a pytree, see `eqx.partition`); the rest of the
model (activation, frozen layers) is held in `Problem.static`. Linear algebra sees them flattened with
`jax.flatten_util.ravel_pytree`, in the order `Problem.ravel` gives.

**Physical batches.** With `chunk` set, every full-batch quantity that goes through `loss`, `outputs` or
the per-example terms (the loss, its gradient, Hessian-vector products and so Lanczos and the traces, the
per-example gradients, J) is computed over `chunk` examples at a time: a scan whose steps are
rematerialised on the backward pass (`jax.checkpoint`), so activation memory is O(chunk x activations + p)
instead of O(n x activations), at the cost of one more forward pass for a gradient. The numbers are the
unchunked ones to rounding. On a CPU it is also faster for convolutional networks, whose working set then
fits the caches: **`chunk=64` is the recommendation there** (at n = 512, CIFAR-shaped inputs, against
`chunk=None`: the gradient 0.76x and the HVP 0.79x the time on `models.CNN` (32, 64, 128), 0.66x and 0.61x
on `models.ResNet` (16, 32); 32 to 128 are within 5% of it; scripts/benchmarks/bench_chunk.py). On a GPU
leave it None unless memory runs out.
"""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from . import checks
from .conv import unfold

__all__ = ["Loss", "Problem", "chunked", "check_start"]

Loss = Literal["square", "cross_entropy"]


class Problem(eqx.Module):
    """Model + data + loss.

    **Arguments:**

    - `model`: an Equinox module whose `__call__` maps one input `X[0]` (any shape) to a scalar or a `(k,)`
      vector.
    - `X`: inputs, shape `(n, ...)`: vectors `(n, d)`, images `(n, c, h, w)` as `eqx.nn.Conv2d` takes them,
      sequences.
    - `y`: targets. Square loss: floats of shape `(n,)` for a scalar model or `(n, k)` for a vector one, in
      X's dtype. Cross-entropy: integer class labels of shape `(n,)` in 0..k-1, k the model's outputs.
    - `loss`: `"square"` (default) or `"cross_entropy"` (module docstring).
    - `chunk`: compute full-batch quantities `chunk` examples at a time (module docstring; 64 is the
      recommendation on a CPU for convolutional networks); None: all at once.
    - `trainable`: an `eqx.partition` filter spec selecting the trained leaves. Defaults to the model's own
      `trainable()` method where it has one (e.g. a two-layer net with a fixed outer layer), else every
      floating-point array.

    `Problem.params` holds the trainable parameters of `model`: the usual starting point of a flow. Each
    argument is checked (shapes, dtypes, finiteness, labels in range, the model's output against y) and a
    bad one raises `ValueError` naming it; values known only inside a `jax.jit` / `jax.vmap` (finiteness of
    X and y, labels in range) are checked there by `eqx.error_if`, with the same words.
    """

    params: PyTree
    static: PyTree
    X: Float[Array, "n ..."]
    y: Array
    loss_name: str = eqx.field(static=True, default="square")
    chunk: int | None = eqx.field(static=True, default=None)

    def __init__(
        self, model: eqx.Module, X, y, *, loss: Loss = "square", chunk: int | None = None, trainable=None
    ):
        X, y = jnp.asarray(X), jnp.asarray(y)
        if loss not in ("square", "cross_entropy"):
            raise ValueError(f"loss must be 'square' or 'cross_entropy', got {loss!r}")
        if X.ndim < 2 or X.shape[0] == 0:
            raise ValueError(f"X must have shape (n, ...) with n >= 1 examples, got {X.shape}")
        if not jnp.issubdtype(X.dtype, jnp.floating):
            raise ValueError(f"X must hold floating-point inputs, got dtype {X.dtype}")
        n = X.shape[0]
        if loss == "square":
            if y.ndim not in (1, 2) or y.shape[0] != n:
                raise ValueError(f"y must have shape (n,) or (n, k) with n = X.shape[0] = {n}, got {y.shape}")
            if y.dtype != X.dtype:
                raise ValueError(
                    f"y has dtype {y.dtype} where X has {X.dtype}: cast one to the other (mixed precision "
                    "would run silently in the wider one)"
                )
        elif y.shape != (n,) or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                f"y must be integer class labels of shape (n,) = ({n},) for cross_entropy, "
                f"got {y.dtype}{list(y.shape)}"
            )
        X = checks.finite_tree("X", X)  # eagerly, or under eqx.error_if when traced
        if loss == "square":
            y = checks.finite_tree("y", y)
        try:
            out = eqx.filter_eval_shape(model, X[0])
        except Exception as e:  # the model cannot take one example of X
            raise ValueError(f"model cannot be called on one input of shape {X[0].shape}: {e}") from e
        if not hasattr(out, "shape") or out.ndim > 1:
            raise ValueError(f"model must map one input to a scalar or a vector, got output {out}")
        if loss == "square" and out.shape != y.shape[1:]:
            raise ValueError(
                f"model output shape {out.shape} does not match y's per-example shape {y.shape[1:]}"
            )
        if loss == "cross_entropy":
            if out.ndim != 1:
                raise ValueError(
                    f"cross_entropy needs a vector of k logits per example, the model gives {out.shape}"
                )
            y = _labels_in_range(y, out.shape[0])
        if trainable is None:
            trainable = model.trainable() if hasattr(model, "trainable") else eqx.is_inexact_array
        self.params, self.static = eqx.partition(model, trainable)
        self.X, self.y = X, y
        self.loss_name = loss
        self.chunk = None if chunk is None else checks.positive_int("chunk", chunk)
        if self.num_params == 0:
            raise ValueError("model has no trainable parameters")
        dtypes = {jnp.result_type(leaf) for leaf in jax.tree.leaves(self.params)}
        if dtypes != {X.dtype}:
            raise ValueError(
                f"the model's parameters have dtype {', '.join(sorted(map(str, dtypes)))} where X has "
                f"{X.dtype}: cast one to the other"
            )

    # -- sizes and plumbing ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """The number of examples."""
        return self.X.shape[0]

    @property
    def num_params(self) -> int:
        """p, the number of trainable parameters."""
        return sum(leaf.size for leaf in jax.tree.leaves(self.params))

    def model(self, params: PyTree) -> eqx.Module:
        """The full model at `params`."""
        return eqx.combine(params, self.static)

    def network(self, params: PyTree) -> eqx.Module:
        """The model at `params` as every forward pass here applies it: on the CPU its `equinox.nn.Conv`
        layers as matrix products (`models.unfold`: the same numbers, at a matrix product's rate inside
        loops); elsewhere the model itself."""
        model = self.model(params)
        return unfold(model) if jax.default_backend() == "cpu" else model

    def params_of(self, model: eqx.Module) -> PyTree:
        """The trainable part of another instance of the same model (e.g. a fresh initialisation)."""
        params, _ = eqx.partition(model, jax.tree.map(lambda x: x is not None, self.params, is_leaf=_none))
        checks.same_structure("model's parameters", params, self.params, "the problem's parameters")
        return params

    def ravel(self, params: PyTree) -> tuple[Float[Array, " p"], Callable[[Array], PyTree]]:
        """`(theta_flat, unravel)`: the one flattening used by all linear algebra."""
        return ravel_pytree(params)

    def require_square(self, what: str) -> None:
        """Raise `ValueError` unless the loss is square loss: `what` rests on residuals that vanish on the
        zero-loss manifold, or on the Gauss-Newton identities."""
        if self.loss_name != "square":
            raise ValueError(
                f"{what} needs the square loss (it rests on residuals r = f - y, zero on the zero-loss "
                f"manifold, and the Gauss-Newton identities); this problem's loss is {self.loss_name}"
            )

    # -- the loss and its pieces -------------------------------------------------------------------------
    def outputs(self, params: PyTree, X=None) -> Array:
        """f(x_i) for the rows of X (default the problem's inputs), `chunk` at a time when set."""
        X = self.X if X is None else X
        f = self.network(params)
        if self.chunk is None or self.chunk >= X.shape[0]:
            return jax.vmap(f)(X)
        return lax.map(f, X, batch_size=self.chunk)

    def residuals(self, params: PyTree, X=None, y=None) -> Array:
        """r_i = f(x_i) - y_i on (X, y), by default the problem's data (square loss only)."""
        self.require_square("residuals")
        return self.outputs(params, X) - (self.y if y is None else y)

    def example_losses(self, params: PyTree, X=None, y=None) -> Float[Array, " b"]:
        """l_i for the rows of (X, y): (1/2) ||r_i||^2, or the softmax cross-entropy of the logits."""
        out = self.outputs(params, X)
        return self.losses_of_outputs(out, self.y if y is None else y)

    def losses_of_outputs(self, out, y) -> Float[Array, " b"]:
        """l_i from the outputs f_i and targets y_i."""
        if self.loss_name == "cross_entropy":
            return optax.softmax_cross_entropy_with_integer_labels(out, y)
        r = out - y
        return 0.5 * jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1)

    def output_grads(self, out, y=None) -> Array:
        """q_i = d l_i / d f_i at outputs `out`: r_i for square loss, softmax(f_i) - e_{y_i} for
        cross-entropy.
        g_i = J_i^T q_i; the fused SDE step and the minibatch noise factor take their VJP."""
        y = self.y if y is None else y
        if self.loss_name == "cross_entropy":
            return jax.nn.softmax(out, axis=-1) - jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)
        return out - y

    def loss(self, params: PyTree, X=None, y=None) -> Float[Array, ""]:
        """L = (1/b) sum_i l_i over the b rows of (X, y), by default the problem's data; `chunk` examples at
        a time when set (module docstring)."""
        X = self.X if X is None else X
        y = self.y if y is None else y
        b = X.shape[0]
        if self.chunk is None or self.chunk >= b:
            return jnp.mean(self.example_losses(params, X, y))
        (Xc, yc), wc = chunked((X, y), self.chunk, X.dtype)
        f = self.network(params)

        @jax.checkpoint
        def part(xs, ys, ws):
            return jnp.sum(ws * self.losses_of_outputs(jax.vmap(f)(xs), ys))

        total, _ = lax.scan(lambda acc, c: (acc + part(*c), None), jnp.zeros((), X.dtype), (Xc, yc, wc))
        return total / b

    def grad(self, params: PyTree) -> PyTree:
        """grad L at `params`, a pytree like them (chunked as `loss`)."""
        return jax.grad(self.loss)(params)

    def jacobian(self, params: PyTree) -> Float[Array, "N p"]:
        """J = d f / d theta, shape (N, p) with N = n * k rows (one per scalar output, example-major; for
        square loss also d r / d theta), row by row: per example, reverse mode over its k outputs (forward
        mode over the p parameters when k > p). Memory N p, cost N gradient evaluations of one example; never
        the N x N (or p x p) basis that differentiating the batched outputs would push through every
        example."""
        rows, p = self._jacobian_rows(params)
        return self._per_example(rows, self.X).reshape(-1, p)

    def gauss_newton_trace(self, params: PyTree) -> Float[Array, ""]:
        """tr G = (1/n) ||J||_F^2 = (1/n) sum_i ||grad f_i||^2, the trace of H on the zero-loss manifold
        (square loss). Cost N gradient evaluations of one example; memory k p per example in flight (chunk k p
        with `chunk` set, n k p without): J itself is never stored."""
        self.require_square("gauss_newton_trace")
        rows, _ = self._jacobian_rows(params)
        return jnp.sum(self._per_example(lambda x: jnp.sum(rows(x) ** 2), self.X)) / self.n

    def per_example_grads(self, params: PyTree) -> Float[Array, "n p"]:
        """g_i = grad l_i, shape (n, p); grad L is their mean. Memory n p."""
        flat, unravel = self.ravel(params)

        def g(xy):
            x, y = xy
            return jax.grad(lambda v: self.losses_of_outputs(self.network(unravel(v))(x)[None], y[None])[0])(
                flat
            )

        return self._per_example(g, (self.X, self.y))

    def example_jacobian(self, flat: Float[Array, " p"], unravel: Callable, x) -> Float[Array, "k p"]:
        """J's k rows of one input x, d f(x) / d theta at the flat parameters `flat` (`unravel` from
        `ravel`): reverse mode over the k outputs, forward mode over the p parameters when k > p. The one
        place J's rows are built (`jacobian`, `gauss_newton_trace`, the manifold's geometry, which also
        differentiates them in `flat`)."""
        f = lambda w: jnp.reshape(self.network(unravel(w))(x), (-1,))  # noqa: E731
        k = jax.eval_shape(f, flat).shape[0]
        return (jax.jacrev if k <= flat.shape[0] else jax.jacfwd)(f)(flat)

    def _jacobian_rows(self, params):
        """(x -> J's rows of x, (k, p); p) at `params`."""
        flat, unravel = self.ravel(params)
        return (lambda x: self.example_jacobian(flat, unravel, x)), flat.shape[0]

    def _per_example(self, fn, xs):
        """fn over the examples (a pytree with a leading example axis), `chunk` at a time when set."""
        if self.chunk is None or self.chunk >= self.n:
            return jax.vmap(fn)(xs)
        return lax.map(fn, xs, batch_size=self.chunk)


def _labels_in_range(y, k: int):
    """Class labels `y` in 0..k-1: checked on the host when concrete (a closed-over array inside a `jit`
    included), else under `eqx.error_if`.

    **Raises:** `ValueError` naming `y` and the range found."""
    what = f"y must hold labels in 0..{k - 1} (the model's {k} logits)"
    if checks.is_concrete(y):
        lo, hi = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
        if lo < 0 or hi >= k:
            raise ValueError(f"{what}, got {lo}..{hi}")
        return y
    return eqx.error_if(y, jnp.any((y < 0) | (y >= k)), what)


def chunked(examples: PyTree, chunk: int, dtype) -> tuple[PyTree, Array]:
    """`examples` (arrays with a leading example axis of b) reshaped to (count, chunk, ...), the last chunk
    padded with copies of the last example, and weights (count, chunk) of `dtype`: 1, and 0 on the padding.
    The one way physical batches are cut (the problem's loss, the geometry's streamed terms).

    **Arguments:** `examples` (a pytree of arrays with a leading axis of b), `chunk`, the weights' `dtype`.

    **Returns:** (the chunked examples, the weights)."""
    b = jax.tree.leaves(examples)[0].shape[0]
    count = -(-b // chunk)
    pad = count * chunk - b

    def split(a):
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        return a.reshape(count, chunk, *a.shape[1:])

    weights = (jnp.arange(count * chunk) < b).astype(dtype).reshape(count, chunk)
    return jax.tree.map(split, examples), weights


def check_start(problem: Problem, params0: PyTree) -> PyTree:
    """The argument checks every flow opens with: `problem` is a `Problem` and `params0` has the structure,
    shapes and dtypes of `problem.params` and is finite.

    **Arguments:** `problem`, `params0`.

    **Returns:** `params0` (under `eqx.error_if` when traced).

    **Raises:** `TypeError` for a problem that is not a `Problem`; `ValueError` naming `params0` for another
    structure, shape or dtype, or non-finite values."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a models.Problem, got {type(problem).__name__}")
    checks.same_structure("params0", params0, problem.params, "problem.params")
    return checks.finite_tree("params0", params0)


def _none(x) -> bool:
    return x is None
