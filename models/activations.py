"""Activations by name. `cubic` is z + z^3/3 (sigma''' = 2 > 0), as in Gatmiry et al. (2024)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["cubic", "ACTIVATIONS", "resolve"]


def cubic(z):
    """z + z^3 / 3 (sigma''' = 2 > 0, Gatmiry et al. 2024).

    **Arguments:** `z`, an array.

    **Returns:** z + z^3 / 3, elementwise."""
    return z + z**3 / 3


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "cubic": cubic,
    "sinh": jnp.sinh,
    "softplus": jax.nn.softplus,
    "identity": lambda z: z,
    "gelu": jax.nn.gelu,
}


def resolve(activation: str | Callable) -> Callable:
    """The activation named `activation`, or `activation` itself if callable.

    **Arguments:** `activation`, a key of `ACTIVATIONS` or a callable.

    **Returns:** the elementwise function.

    **Raises:** `ValueError` listing the names for an unknown one."""
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {activation!r}"
        ) from None
