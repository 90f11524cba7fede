"""Matrix factorisation / sensing: f(A) = <A, U V^T> with A given as a flattened (d1 * d2) input row."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["MatrixFactorization"]


class MatrixFactorization(eqx.Module):
    """f(A) = <A, U V^T>, U (d1, r), V (d2, r) entries ~ init_scale N(0, 1); `symmetric=True` ties V = U.

    Inputs are sensing matrices flattened row-major to length d1 * d2; with one-hot inputs this is matrix
    completion.
    """

    U: Float[Array, "d1 r"]
    V: Float[Array, "d2 r"] | None

    def __init__(self, d1: int, d2: int, rank: int, *, key: PRNGKeyArray, init_scale=1.0, symmetric=False):
        if symmetric and d1 != d2:
            raise ValueError(f"symmetric factorisation needs d1 == d2, got {d1} and {d2}")
        ku, kv = jax.random.split(key)
        self.U = init_scale * jax.random.normal(ku, (d1, rank))
        self.V = None if symmetric else init_scale * jax.random.normal(kv, (d2, rank))

    @property
    def matrix(self) -> Float[Array, "d1 d2"]:
        """The product U V^T (U U^T when symmetric)."""
        return self.U @ (self.U if self.V is None else self.V).T

    def __call__(self, x: Float[Array, " d1d2"]) -> Float[Array, ""]:
        return jnp.vdot(x, self.matrix.reshape(-1))
