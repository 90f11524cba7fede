"""The `chunk` of `models.Problem` on the CPU: a full-batch gradient and a Hessian-vector product with the
examples all at once (`chunk=None`) and `chunk` at a time (a rematerialised scan), the recommendation in
`Problem`'s docstring.

CIFAR-shaped random inputs (3 x 32 x 32), cross-entropy over 10 classes, float32, `models.CNN((3, 32, 32),
(32, 64, 128))` and `models.ResNet(3, (16, 32), 2)`, medians of interleaved repeats in one process, each
compiled first. Printed: seconds and the ratio to `chunk=None` for each chunk.
"""

import argparse

import jax
import jax.numpy as jnp
from bench_common import median_times, table

from models import CNN, Problem, ResNet

CHUNKS = (None, 32, 64, 128, 256)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=512)
    args = p.parse_args(argv)
    X = jax.random.normal(jax.random.key(0), (args.n, 3, 32, 32), jnp.float32)
    y = jax.random.randint(jax.random.key(1), (args.n,), 0, 10)
    nets = {
        "CNN (32, 64, 128)": CNN(
            (3, 32, 32), (32, 64, 128), outputs=10, activation="tanh", key=jax.random.key(2)
        ),
        "ResNet ((16, 32) x 2)": ResNet(3, (16, 32), 2, outputs=10, activation="tanh", key=jax.random.key(2)),
    }
    out = []
    for name, model in nets.items():
        calls = {}
        for chunk in CHUNKS:
            P = Problem(model, X, y, loss="cross_entropy", chunk=chunk)
            flat, unravel = P.ravel(P.params)
            v = jnp.ones_like(flat) / flat.size**0.5
            loss = jax.jit(lambda w, P=P, unravel=unravel: jax.grad(lambda u: P.loss(unravel(u)))(w))
            hvp = jax.jit(lambda w, v, loss=loss: jax.jvp(loss, (w,), (v,))[1])
            calls[f"gradient, chunk={chunk}"] = lambda loss=loss, flat=flat: loss(flat)
            calls[f"HVP, chunk={chunk}"] = lambda hvp=hvp, flat=flat, v=v: hvp(flat, v)
        t = median_times(calls, repeats=args.repeats)
        for what in ("gradient", "HVP"):
            rows = [(f"{what}, chunk={c}", t[f"{what}, chunk={c}"]) for c in CHUNKS]
            out += table(f"{name}, n = {args.n}: {what}", rows, f"{what}, chunk=None")
    return out


if __name__ == "__main__":
    main()
