"""A small vision transformer on images (c, h, w)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .activations import resolve

__all__ = ["ViT"]


class _Layer(eqx.Module):
    """z + MHA(LN(z)), then z + MLP(LN(z)): a pre-norm transformer layer on (tokens, dim)."""

    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __init__(self, dim: int, heads: int, hidden: int, key: PRNGKeyArray):
        ka, ku, kd = jax.random.split(key, 3)
        self.norm1, self.norm2 = eqx.nn.LayerNorm(dim), eqx.nn.LayerNorm(dim)
        bias = dict(use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True)
        self.attention = eqx.nn.MultiheadAttention(heads, dim, **bias, key=ka)
        self.up, self.down = eqx.nn.Linear(dim, hidden, key=ku), eqx.nn.Linear(hidden, dim, key=kd)

    def __call__(self, z, activation):
        h = jax.vmap(self.norm1)(z)
        z = z + self.attention(h, h, h)
        h = jax.vmap(self.norm2)(z)
        return z + jax.vmap(lambda t: self.down(activation(self.up(t))))(h)


class ViT(eqx.Module):
    """f(x) = W LN(mean_t z_t) + b over the tokens z of `depth` pre-norm transformer layers (multi-head
    self-attention with `heads` heads, an MLP of `4 dim` hidden units with activation s), fed the
    non-overlapping `patch` x `patch` patches of the image embedded linearly to `dim` plus a learned position
    embedding. LayerNorm normalises each token of each example: nothing depends on the batch.

    Parameters: patch embedding (c patch^2 + 1) dim, positions T dim (T = (h / patch)(w / patch) tokens), per
    layer 4 (dim^2 + dim) attention + 2 (4 dim^2) + 5 dim MLP + 4 dim LayerNorm, final LayerNorm 2 dim,
    head (dim + 1) k. Init: Equinox's defaults (uniform 1/sqrt(fan_in)), positions N(0, 0.02^2).
    """

    embed: eqx.nn.Conv2d
    positions: Float[Array, "T dim"]
    layers: tuple[_Layer, ...]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        *,
        patch: int = 2,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        outputs: int = 1,
        activation: str | Callable = "gelu",
        key: PRNGKeyArray,
    ):
        c, h, w = in_shape
        if h % patch or w % patch:
            raise ValueError(f"patch = {patch} must divide the image size {h} x {w}")
        if dim % heads:
            raise ValueError(f"heads = {heads} must divide dim = {dim}")
        ke, kp, kh, *kl = jax.random.split(key, 3 + depth)
        self.embed = eqx.nn.Conv2d(c, dim, patch, stride=patch, key=ke)
        tokens = (h // patch) * (w // patch)
        self.positions = 0.02 * jax.random.normal(kp, (tokens, dim), self.embed.weight.dtype)
        self.layers = tuple(_Layer(dim, heads, 4 * dim, k) for k in kl)
        self.norm = eqx.nn.LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, "scalar" if outputs == 1 else outputs, key=kh)
        self.activation = resolve(activation)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " *k"]:
        z = self.embed(x)  # (dim, h / patch, w / patch); a matrix product under models.Problem on the CPU
        z = z.reshape(z.shape[0], -1).T + self.positions  # (tokens, dim)
        for layer in self.layers:
            z = layer(z, self.activation)
        return self.head(self.norm(jnp.mean(z, axis=0)))
