"""Activations by name. `cubic` is z + z^3/3 (sigma''' = 2 > 0), as in Gatmiry et al. (2024); `relu` is
z 1[z > 0], `jax.nn.relu`'s values and derivatives without its custom JVP (see `relu`)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["cubic", "relu", "ACTIVATIONS", "resolve"]


def cubic(z):
    """z + z^3 / 3 (sigma''' = 2 > 0, Gatmiry et al. 2024).

    **Arguments:** `z`, an array.

    **Returns:** z + z^3 / 3, elementwise."""
    return z + z**3 / 3


def relu(z):
    """max(z, 0) as z 1[z > 0]: derivative 1[z > 0] (0 at z = 0, as `jax.nn.relu`), every higher one 0.

    `jax.nn.relu` gets the same derivative from a custom JVP rule, and under `jax.vmap` over examples
    (how `Problem` evaluates a model) that rule's batching puts the examples on the other axis of the
    tangents: the compiled gradient of a two-layer ReLU net then transposes an n x m array twice a step,
    and GD there took 1.8-3.5x as long as with this product (`scripts/benchmarks/bench_networks.py`).
    A non-finite pre-activation gives NaN at -inf (0 from `jax.nn.relu`): the run has diverged there,
    which the flows report.

    **Arguments:** `z`, an array.

    **Returns:** z where z > 0, else 0, elementwise."""
    return z * (z > 0).astype(z.dtype)


ACTIVATIONS: dict[str, Callable] = {
    "relu": relu,
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
