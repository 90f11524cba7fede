"""The `chunk` of `models.Problem` on the CPU: a full-batch gradient and a Hessian-vector product with the
examples all at once (`chunk=None`) and `chunk` at a time (a rematerialised scan), the recommendation in
`Problem`'s docstring.

The networks and CIFAR-shaped random inputs of bench_torch.py (`models.CNN` (32, 64, 128) and
`models.ResNet` (16, 32) x 2, tanh, 10 classes), cross-entropy, float32; `Problem.grad` and
`analysis.hessian.hvp`, medians of interleaved repeats in one process, each compiled first. Printed:
seconds and the ratio to `chunk=None` for each chunk.
"""

import argparse

import jax
import jax.numpy as jnp
from bench_common import median_times, table
from bench_torch import data, nets

from analysis import hessian
from models import Problem

CHUNKS = (None, 32, 64, 128, 256)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=512)
    args = p.parse_args(argv)
    X, y = data(args.n)
    out = []
    for name, model in nets().items():
        calls = {}
        for chunk in CHUNKS:
            P = Problem(model, X, y, loss="cross_entropy", chunk=chunk)
            flat = P.ravel(P.params)[0]
            v = jnp.ones_like(flat) / flat.size**0.5
            gradient = jax.jit(lambda w, P=P: P.grad(w))
            calls[f"gradient, chunk={chunk}"] = lambda gradient=gradient, P=P: gradient(P.params)
            calls[f"HVP, chunk={chunk}"] = lambda P=P, v=v: hessian.hvp(P, P.params, v)
        t = median_times(calls, repeats=args.repeats)
        for what in ("gradient", "HVP"):
            rows = [(f"{what}, chunk={c}", t[f"{what}, chunk={c}"]) for c in CHUNKS]
            out += table(f"{name}, n = {args.n}: {what}", rows, f"{what}, chunk=None")
    return out


if __name__ == "__main__":
    main()
