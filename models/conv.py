"""Convolutional networks on images (c, h, w): a CNN (convolutions, pooling, a dense head) and a ResNet
without batch normalisation.

Neither normalises over the batch: the Hessian of a batch-normalised net depends on which examples share a
batch, and every quantity here is a function of one example at a time (`models.Problem`). The ResNet keeps
its residual branches tame by scaling them by 1 / sqrt(number of blocks) instead (SkipInit / Fixup in
spirit, with a fixed scale).

Both are built from `equinox.nn.Conv2d`, as a user's own network is. On the CPU `models.Problem` applies
every `equinox.nn.Conv` layer of any model as matrix products (`unfold`, `conv`), the numbers the layer's
own to rounding: XLA's CPU convolutions run up to 45x slower inside a loop body than outside
(jax-ml/jax#12868), and every flow, chunked loss and Lanczos iteration is a loop (docs/benchmarks.md).
"""

import itertools
import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .activations import resolve

__all__ = ["conv", "unfold", "CNN", "ResNet"]


def conv(layer: eqx.nn.Conv, x: Float[Array, "c ..."]) -> Float[Array, "o ..."]:
    """`layer(x)` for an `equinox.nn.Conv` of any number of spatial dimensions (`Conv1d/2d/3d`), its stride,
    padding (numbers or "SAME" / "SAME_LOWER" / "VALID", any `padding_mode`), dilation and groups, as
    matrix products: y = sum_a W_a (g, o/g, c/g) @ x_a (g, c/g, P) over the K = prod(kernel) offsets a of the
    kernel, x_a the padded input's strided slice at offset a and P the output's positions. Memory that of
    the input and the output; cost that of the convolution. (Stacking the K slices into one im2col matrix
    for a single product moves K times the input through memory: 1.1-1.4x slower on this CPU.)

    **Arguments:** an `equinox.nn.Conv` `layer` and one input `x` (c, *spatial).

    **Returns:** the layer's output (o, *spatial2), bias included."""
    w = layer.weight
    o, cg, *kernel = w.shape
    g = layer.groups
    if layer.padding_mode != "ZEROS":
        x = layer._nonzero_pad(x)  # Equinox's own padding for the other modes, then none
        pad = [(0, 0)] * len(kernel)
    elif isinstance(layer.padding, str):
        reach = [d * (k - 1) + 1 for k, d in zip(kernel, layer.dilation)]
        pad = lax.padtype_to_pads(x.shape[1:], reach, layer.stride, layer.padding)
    else:
        pad = layer.padding
    x = jnp.pad(x, ((0, 0), *pad))
    out = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, d, s in zip(x.shape[1:], kernel, layer.dilation, layer.stride)
    ]
    w = w.reshape(g, o // g, cg, math.prod(kernel))
    y = jnp.zeros((g, o // g, math.prod(out)), jnp.result_type(w, x))
    for a, at in enumerate(itertools.product(*map(range, kernel))):
        window = tuple(
            slice(i * d, i * d + (m - 1) * s + 1, s)
            for i, d, m, s in zip(at, layer.dilation, out, layer.stride)
        )
        y = y + jnp.einsum("goc,gcp->gop", w[..., a], x[(slice(None), *window)].reshape(g, cg, -1))
    y = y.reshape(o, *out)
    return y if layer.bias is None else y + layer.bias


_CONVS = (eqx.nn.Conv, eqx.nn.Conv1d, eqx.nn.Conv2d, eqx.nn.Conv3d)


class _Unfolded(eqx.Module):
    """An `equinox.nn.Conv` applied by `conv`; its fields (weight, stride, ...) read through."""

    layer: eqx.nn.Conv

    def __call__(self, x, *, key=None):
        return conv(self.layer, x)

    def __getattr__(self, name):
        if name == "layer":  # not yet set (while the module is built)
            raise AttributeError(name)
        return getattr(self.layer, name)


def unfold(model: PyTree) -> PyTree:
    """`model` with each `equinox.nn.Conv` / `Conv1d` / `Conv2d` / `Conv3d` in it (not a subclass, whose call
    may differ) applied by `conv`, as matrix products: the same numbers to rounding, and on the CPU at the
    rate of a matrix product inside loops too, where XLA's own convolution is up to 45x slower
    (jax-ml/jax#12868; outside a loop it can be faster, 1.7x on a thin ResNet: docs/benchmarks.md).
    `models.Problem` applies it to every model on the CPU; on a GPU XLA's convolutions (cuDNN) are kept.
    Parameters and their gradients are the model's own.

    **Arguments:** any pytree `model`.

    **Returns:** the same pytree, its convolutions wrapped."""

    def is_conv(m):
        return type(m) in _CONVS

    return jax.tree.map(lambda m: _Unfolded(m) if is_conv(m) else m, model, is_leaf=is_conv)


def _pool(x: Float[Array, "c h w"]) -> Float[Array, "c h/2 w/2"]:
    """2 x 2 average pooling, stride 2 (odd sizes drop their last row / column)."""
    c, h, w = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


class CNN(eqx.Module):
    """f(x) = W flatten(P(s(C_L ... P(s(C_1 x))))) + b: 3 x 3 convolutions C_l ('SAME' padding, with bias)
    of `channels[l]` channels, each followed by the activation s and, while the image is at least 2 x 2, a
    2 x 2 average pool P; then a dense layer to `outputs` (a scalar for `outputs=1`). The "CNN" of the
    edge-of-stability and central-flow experiments (Cohen et al. 2021, 2024), sized by `channels`.

    Parameters: sum_l (9 c_{l-1} c_l + c_l) convolution weights and biases (c_0 the input channels), then
    (c_L h_L w_L + 1) k for the head (h_L, w_L the pooled size, k the outputs). Init: Equinox's default,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every weight and bias.
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.Linear
    pools: tuple[bool, ...] = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        channels: Sequence[int] = (16, 32),
        *,
        outputs: int = 1,
        activation: str | Callable = "relu",
        key: PRNGKeyArray,
    ):
        c, h, w = in_shape
        keys = jax.random.split(key, len(channels) + 1)
        convs, pools = [], []
        for out, k in zip(channels, keys[:-1]):
            convs.append(eqx.nn.Conv2d(c, out, 3, padding="SAME", key=k))
            pools.append(h >= 2 and w >= 2)
            if pools[-1]:
                h, w = h // 2, w // 2
            c = out
        self.convs, self.pools = tuple(convs), tuple(pools)
        self.head = eqx.nn.Linear(c * h * w, "scalar" if outputs == 1 else outputs, key=keys[-1])
        self.activation = resolve(activation)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " *k"]:
        for layer, pool in zip(self.convs, self.pools):
            x = self.activation(layer(x))
            if pool:
                x = _pool(x)
        return self.head(x.reshape(-1))


class _Block(eqx.Module):
    """x + alpha C_2(s(C_1(s(x)))): a pre-activation residual block of two 3 x 3 convolutions."""

    first: eqx.nn.Conv2d
    second: eqx.nn.Conv2d

    def __init__(self, width: int, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.first = eqx.nn.Conv2d(width, width, 3, padding="SAME", key=k1)
        self.second = eqx.nn.Conv2d(width, width, 3, padding="SAME", key=k2)

    def __call__(self, x, activation, alpha):
        return x + alpha * self.second(activation(self.first(activation(x))))


class ResNet(eqx.Module):
    """A ResNet without normalisation: a 3 x 3 stem convolution to `widths[0]` channels; for each stage s,
    `blocks` residual blocks x + alpha C_2(s(C_1(s(x)))) at `widths[s]` channels (alpha = 1 / sqrt(total
    blocks), fixed), and between stages a 2 x 2 average pool and a 1 x 1 convolution to the next width; then
    the activation, a global average pool and a dense head to `outputs`. (PreResNet-style, as in Li, Malladi
    & Arora 2021, with the batch normalisation left out: the module docstring says why.)

    Parameters: 9 c_0 w_0 + w_0 (stem), per block 2 (9 w^2 + w), per stage change w_s w_{s+1} + w_{s+1},
    head (w_last + 1) k. Init: Equinox's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    stem: eqx.nn.Conv2d
    stages: tuple[tuple[_Block, ...], ...]
    transitions: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.Linear
    alpha: float = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (16, 32),
        blocks: int = 2,
        *,
        outputs: int = 1,
        activation: str | Callable = "relu",
        key: PRNGKeyArray,
    ):
        keys = iter(jax.random.split(key, 2 + len(widths) * (blocks + 1)))
        self.stem = eqx.nn.Conv2d(in_channels, widths[0], 3, padding="SAME", key=next(keys))
        self.stages = tuple(tuple(_Block(w, next(keys)) for _ in range(blocks)) for w in widths)
        self.transitions = tuple(
            eqx.nn.Conv2d(a, b, 1, key=next(keys)) for a, b in zip(widths[:-1], widths[1:])
        )
        self.head = eqx.nn.Linear(widths[-1], "scalar" if outputs == 1 else outputs, key=next(keys))
        self.alpha = 1.0 / (len(widths) * blocks) ** 0.5
        self.activation = resolve(activation)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " *k"]:
        x = self.stem(x)
        for s, stage in enumerate(self.stages):
            if s > 0:
                x = self.transitions[s - 1](_pool(x) if min(x.shape[1:]) >= 2 else x)
            for block in stage:
                x = block(x, self.activation, self.alpha)
        return self.head(jnp.mean(self.activation(x), axis=(1, 2)))
