"""A multilayer perceptron: `eqx.nn.MLP` with named activations and a scalar or vector output."""

from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from .activations import resolve

__all__ = ["MLP"]


class MLP(eqx.Module):
    """f(x) = W_{depth+1} s(... s(W_1 x + b_1) ...) + b_{depth+1}: `depth` hidden layers of `width` units with
    activation s (a name of `models.activations` or a callable), one output (`outputs=1`, a scalar) or a
    vector of `outputs`. Parameters as `eqx.nn.MLP` initialises them."""

    mlp: eqx.nn.MLP

    def __init__(
        self,
        d: int,
        width: int,
        depth: int = 2,
        *,
        outputs: int = 1,
        activation: str | Callable = "tanh",
        key: PRNGKeyArray,
    ):
        size = "scalar" if outputs == 1 else outputs
        self.mlp = eqx.nn.MLP(d, size, width, depth, activation=resolve(activation), key=key)

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, "*k"]:
        return self.mlp(x)
