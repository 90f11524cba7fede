"""Models linear in their inputs: linear regression, random features, the quadratic parametrisation."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .activations import resolve

__all__ = ["Linear", "RandomFeatures", "QuadraticParam"]


class Linear(eqx.Module):
    """f(x) = w . x; with `outputs=k`, f(x) = W x with W of shape (k, d). Starts at `init_scale` N(0, 1/d)."""

    w: Float[Array, " *k d"]

    def __init__(self, d: int, *, key: PRNGKeyArray, outputs: int | None = None, init_scale: float = 1.0):
        shape = (d,) if outputs is None else (outputs, d)
        self.w = init_scale * jax.random.normal(key, shape) / jnp.sqrt(d)

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, " *k"]:
        return self.w @ x


class RandomFeatures(eqx.Module):
    """f(x) = a . sigma(V x) / sqrt(m) with fixed random V (m, d), V_jk ~ N(0, 1/d); only `a` is trained."""

    V: Float[Array, "m d"]
    a: Float[Array, " m"]
    activation: Callable = eqx.field(static=True)

    def __init__(self, d: int, width: int, *, key: PRNGKeyArray, activation: str | Callable = "relu"):
        kv, ka = jax.random.split(key)
        self.V = jax.random.normal(kv, (width, d)) / jnp.sqrt(d)
        self.a = jax.random.normal(ka, (width,)) / jnp.sqrt(width)
        self.activation = resolve(activation)

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return self.a @ self.activation(self.V @ x) / jnp.sqrt(self.a.shape[0])

    def trainable(self):
        """The filter spec that trains the outer weights `a` only (the random features stay fixed)."""
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.a, spec, True)


class QuadraticParam(eqx.Module):
    """The diagonal network f(x) = (u*u - v*v) . x; both u and v start at `init_scale` (alpha) times ones.

    Small alpha biases gradient flow towards sparse interpolators; label noise drives toward sparsity too.
    """

    u: Float[Array, " d"]
    v: Float[Array, " d"]

    def __init__(self, d: int, *, init_scale: float = 1.0):
        self.u = jnp.full((d,), init_scale)
        self.v = jnp.full((d,), init_scale)

    @property
    def weights(self) -> Float[Array, " d"]:
        """w = u * u - v * v, the linear predictor the parametrisation represents."""
        return self.u * self.u - self.v * self.v

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        return self.weights @ x
