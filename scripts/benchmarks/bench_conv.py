"""Convolutions on the CPU: a user's `eqx.nn.Conv2d` network under `models.Problem` (its convolutions applied
as matrix products, `models.unfold`) against the same network left to XLA's convolution.

CIFAR-shaped random inputs (n = 256, 3 x 32 x 32), cross-entropy over 10 classes, float32, the full-batch
gradient, medians of interleaved repeats in one process, each compiled first:

- a CNN written by a user from `eqx.nn.Conv2d` (3 x 3 'SAME' convolutions of 32, 64, 128 channels, tanh,
  2 x 2 average pools, a dense head: the architecture and weights of `models.CNN((3, 32, 32), (32, 64,
  128))`), and the library's `models.ResNet(3, (16, 32), 2)`;
- each with `chunk=None` (one vmapped pass) and `chunk=128` (a loop of two chunks: the in-loop case every
  flow, Lanczos run and chunked loss is in), unfolded (the default on the CPU) and with XLA's convolution.

Target (issue 47): a user's Conv2d model within 1.2x of the same architecture built from the library's
layers, in and out of loops.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
from bench_common import median_times, table
from bench_torch import data, nets

import models.problem
from models import Problem


class UserCNN(eqx.Module):
    """A CNN as a user writes it: eqx.nn.Conv2d layers called directly, tanh, 2 x 2 average pools."""

    convs: tuple
    head: eqx.nn.Linear

    def __call__(self, x):
        for layer in self.convs:
            x = jnp.tanh(layer(x))
            c, h, w = x.shape
            x = x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return self.head(x.reshape(-1))


def gradient(P, unfolded):
    """P's gradient, compiled; with `unfolded=False` the model's convolutions left to XLA."""

    def grad(params):
        if unfolded:
            return P.grad(params)
        keep = models.problem.unfold
        models.problem.unfold = lambda model: model
        try:
            return P.grad(params)
        finally:
            models.problem.unfold = keep

    return jax.jit(grad)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    n = 256
    with jax.enable_x64(False):
        X, y = data(n)
        library = nets()
        cnn = library["CNN (32, 64, 128)"]
        networks = {
            "user Conv2d CNN (32, 64, 128)": UserCNN(cnn.convs, cnn.head),
            "ResNet ((16, 32) x 2)": library["ResNet ((16, 32) x 2)"],
        }
        out = []
        for name, net in networks.items():
            calls = {}
            for chunk in (None, 128):
                P = Problem(net, X, y, loss="cross_entropy", chunk=chunk)
                for unfolded in (True, False):
                    label = f"chunk={chunk}, {'matrix products' if unfolded else 'XLA convolution'}"
                    calls[label] = (gradient(P, unfolded), P.params)
            t = median_times(
                {k: (lambda f=f, w=w: f(w)) for k, (f, w) in calls.items()}, repeats=args.repeats
            )
            title = f"full-batch gradient, {name}, n={n}, CIFAR-shaped, float32"
            out += table(title, list(t.items()), "chunk=None, XLA convolution")
    return out


if __name__ == "__main__":
    main()
