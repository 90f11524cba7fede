"""Two-layer network f(x) = sum_j a_j sigma(w_j . x), no biases (append a constant input for one)."""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .activations import resolve

__all__ = ["TwoLayerNet"]


class TwoLayerNet(eqx.Module):
    """f(x) = a . sigma(W x), with W of shape (m, d) and a of shape (m,).

    **Arguments:**

    - `d`, `width`: input dimension and number of neurons m.
    - `key`: PRNG key for the initialisation.
    - `activation`: `"relu"`, `"tanh"`, `"cubic"` (z + z^3/3), `"sinh"`, `"softplus"`, `"identity"`, or a
      callable.
    - `train_outer`: whether `a` is trained (`False` freezes it, as in Gatmiry et al. 2024).
    - `init_scale`: lambda; W_jk ~ lambda N(0, 1/d).
    - `outer`: how `a` starts. `"gaussian"`: a_j ~ lambda N(0, 1/m). `"balanced"`: a_j = s_j ||w_j||,
      s_j = +-1 at random (the balanced small initialisation of Boursier & Flammarion 2024; balancedness
      |a_j| = ||w_j|| is conserved by gradient flow for ReLU). `"ones"`: a_j = 1/m. `"signs"`: a_j = +-1/m.
    """

    W: Float[Array, "m d"]
    a: Float[Array, " m"]
    activation: Callable = eqx.field(static=True)
    train_outer: bool = eqx.field(static=True)

    def __init__(
        self,
        d: int,
        width: int,
        *,
        key: PRNGKeyArray,
        activation: str | Callable = "relu",
        train_outer: bool = True,
        init_scale: float = 1.0,
        outer: Literal["gaussian", "balanced", "ones", "signs"] = "gaussian",
    ):
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        kw, ka = jax.random.split(key)
        self.W = init_scale * jax.random.normal(kw, (width, d)) / jnp.sqrt(d)
        signs = jnp.where(jax.random.bernoulli(ka, 0.5, (width,)), 1.0, -1.0)
        if outer == "gaussian":
            self.a = init_scale * jax.random.normal(ka, (width,)) / jnp.sqrt(width)
        elif outer == "balanced":
            self.a = signs * jnp.linalg.norm(self.W, axis=1)
        elif outer == "ones":
            self.a = jnp.full((width,), 1.0 / width)
        elif outer == "signs":
            self.a = signs / width
        else:
            raise ValueError(f"outer must be 'gaussian', 'balanced', 'ones' or 'signs', got {outer!r}")
        self.activation = resolve(activation)
        self.train_outer = train_outer

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return self.a @ self.activation(self.W @ x)

    def features(self, X: Float[Array, "n d"]) -> Float[Array, "m n"]:
        """The feature matrix: pre-activations w_j . x_i of every neuron on every input."""
        return self.W @ X.T

    def trainable(self):
        """Filter spec for `eqx.partition`: W always, a only if `train_outer`."""
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: (m.W, m.a), spec, (True, self.train_outer))
