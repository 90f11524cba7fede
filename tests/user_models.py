"""Models the library did not write, as a researcher would bring them: built from Equinox's own layers
(`eqx.nn.Conv1d`, `eqx.nn.Conv2d`, `eqx.nn.MultiheadAttention`, `eqx.nn.LayerNorm`), not from
`models.conv`'s im2col convolutions. Small, so that every flow and driver runs on them in seconds:
`tests/test_user_models.py` takes each through them."""

import equinox as eqx
import jax
import jax.numpy as jnp

from models import Problem, data

__all__ = ["ResNet1d", "ConvNet2d", "TinyViT", "problems"]


class _Block1d(eqx.Module):
    first: eqx.nn.Conv1d
    second: eqx.nn.Conv1d

    def __init__(self, width, key):
        k1, k2 = jax.random.split(key)
        self.first = eqx.nn.Conv1d(width, width, 3, padding=1, key=k1)
        self.second = eqx.nn.Conv1d(width, width, 3, padding=1, key=k2)

    def __call__(self, x):
        return x + 0.5 * self.second(jnp.tanh(self.first(jnp.tanh(x))))


class ResNet1d(eqx.Module):
    """A 1-D ResNet on MNIST-1D's (1, 40) signals: a strided stem, two residual blocks, a strided
    convolution, a global average pool and a linear head to 10 logits."""

    stem: eqx.nn.Conv1d
    blocks: tuple[_Block1d, ...]
    down: eqx.nn.Conv1d
    head: eqx.nn.Linear

    def __init__(self, width=4, *, key):
        keys = jax.random.split(key, 5)
        self.stem = eqx.nn.Conv1d(1, width, 5, stride=2, padding=2, key=keys[0])
        self.blocks = (_Block1d(width, keys[1]), _Block1d(width, keys[2]))
        self.down = eqx.nn.Conv1d(width, width, 3, stride=2, key=keys[3])
        self.head = eqx.nn.Linear(width, 10, key=keys[4])

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(jnp.tanh(self.down(x)), axis=1))


class ConvNet2d(eqx.Module):
    """A CNN of `eqx.nn.Conv2d` layers on 8 x 8 digits: a 3 x 3 convolution, a strided one with two
    groups, an average pool, a linear head to one output."""

    first: eqx.nn.Conv2d
    second: eqx.nn.Conv2d
    pool: eqx.nn.AvgPool2d
    head: eqx.nn.Linear

    def __init__(self, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.first = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
        self.second = eqx.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, key=k2)
        self.pool = eqx.nn.AvgPool2d(2, 2)
        self.head = eqx.nn.Linear(4 * 2 * 2, "scalar", key=k3)

    def __call__(self, x):
        x = jnp.tanh(self.second(jnp.tanh(self.first(x))))
        return self.head(self.pool(x).reshape(-1))


class TinyViT(eqx.Module):
    """A one-layer vision transformer on 8 x 8 digits: four 4 x 4 patches embedded by a linear map, a
    learned position embedding, pre-norm multi-head self-attention (`eqx.nn.MultiheadAttention`, two
    heads) and a pre-norm MLP, each with a residual, then the mean token to one output."""

    embed: eqx.nn.Linear
    position: jax.Array
    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP
    head: eqx.nn.Linear

    def __init__(self, dim=8, *, key):
        keys = jax.random.split(key, 5)
        self.embed = eqx.nn.Linear(16, dim, key=keys[0])
        self.position = 0.1 * jax.random.normal(keys[1], (4, dim))
        self.norm1, self.norm2 = eqx.nn.LayerNorm(dim), eqx.nn.LayerNorm(dim)
        self.attention = eqx.nn.MultiheadAttention(2, dim, key=keys[2])
        self.mlp = eqx.nn.MLP(dim, dim, 2 * dim, 1, activation=jax.nn.gelu, key=keys[3])
        self.head = eqx.nn.Linear(dim, "scalar", key=keys[4])

    def __call__(self, x):
        patches = x.reshape(2, 4, 2, 4).transpose(0, 2, 1, 3).reshape(4, 16)
        z = jax.vmap(self.embed)(patches) + self.position
        h = jax.vmap(self.norm1)(z)
        z = z + self.attention(h, h, h)
        z = z + jax.vmap(self.mlp)(jax.vmap(self.norm2)(z))
        return self.head(jnp.mean(z, axis=0))


def problems(n: int = 12) -> dict[str, Problem]:
    """Each model on its data, n examples: the 1-D ResNet on MNIST-1D (cross-entropy, 10 classes), the
    Conv2d CNN and the ViT on digits 0 and 1 (square loss on +-1 targets). In the default float dtype."""
    X1, y1 = data.mnist1d(n)
    X2, y2 = data.digits(classes=(0, 1), images=True)
    X2, y2 = X2[:n], y2[:n]
    return {
        "resnet1d": Problem(ResNet1d(key=jax.random.key(1)), X1, y1, loss="cross_entropy"),
        "conv2d": Problem(ConvNet2d(key=jax.random.key(2)), X2, y2),
        "vit": Problem(TinyViT(key=jax.random.key(3)), X2, y2),
    }
