"""Label-noise SGD on a two-layer tanh net (n=32, d=64, m=100, 2,000 steps, 16 seeds, float32, full batch):
the library's `label_noise_sgd` (vmap over keys) against a bare `lax.scan` written here, and PyTorch loops of
the same algorithm: the plain loop (one seed after another) and a batched one (seeds along a leading axis).
Targets: library <= 1.1x the bare scan, the plain PyTorch loop >= 12x the library.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import median_time, table

from flows import label_noise_sgd
from models import Problem, TwoLayerNet, data

N, D, M, STEPS, SEEDS, ETA, SIGMA = 32, 64, 100, 2000, 16, 0.05, 0.1


def setup():
    kx, kt, kn = jax.random.split(jax.random.key(0), 3)
    X = data.gaussian(kx, N, D)
    y = jnp.tanh(X @ jax.random.normal(kt, (D,)) / jnp.sqrt(D))
    net = TwoLayerNet(D, M, key=kn, activation="tanh")
    return Problem(net, X, y)


def library(problem, keys):
    run = jax.jit(
        jax.vmap(
            lambda k: label_noise_sgd(
                problem,
                problem.params,
                steps=STEPS,
                eta=ETA,
                sigma=SIGMA,
                key=k,
                save_every=STEPS,
                save_params=False,
            ).stats["loss"]
        )
    )
    return lambda: run(keys)


def bare_scan(problem, keys):
    X, y = problem.X, problem.y

    def loss(params, eps):
        W, a = params
        return 0.5 * jnp.mean((jnp.tanh(X @ W.T) @ a - y - eps) ** 2)

    def one(key):
        def step(params, k):
            eps = SIGMA * jax.random.normal(jax.random.split(jax.random.fold_in(key, k))[1], (N,))
            g = jax.grad(loss)(params, eps)
            return jax.tree.map(lambda p, gp: p - ETA * gp, params, g), None

        params, _ = jax.lax.scan(step, (problem.params.W, problem.params.a), jnp.arange(STEPS))
        return loss(params, 0.0)

    run = jax.jit(jax.vmap(one))
    return lambda: run(keys)


def torch_loops(problem):
    """Two PyTorch baselines: the 16 seeds batched along a leading axis, and the plain loop (one seed at a
    time), both autograd with an in-place update."""
    import torch

    X = torch.tensor(np.asarray(problem.X))
    y = torch.tensor(np.asarray(problem.y))
    W0 = torch.tensor(np.asarray(problem.params.W))
    a0 = torch.tensor(np.asarray(problem.params.a))
    gen = torch.Generator().manual_seed(0)

    def train(W, a, seeds):
        W, a = W.clone().requires_grad_(), a.clone().requires_grad_()
        for _ in range(STEPS):
            eps = SIGMA * torch.randn(*seeds, N, generator=gen)
            f = torch.tanh(X @ W.transpose(-1, -2)) @ a[..., None]
            loss = 0.5 * ((f[..., 0] - y - eps) ** 2).mean(dim=-1).sum()  # the sum keeps seeds independent
            gW, ga = torch.autograd.grad(loss, (W, a))
            with torch.no_grad():
                W -= ETA * gW
                a -= ETA * ga
        return W, a

    def batched():
        return train(W0.expand(SEEDS, M, D), a0.expand(SEEDS, M), (SEEDS,))

    def plain():
        return [train(W0, a0, ()) for _ in range(SEEDS)]

    return batched, plain


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    args = p.parse_args(argv)
    problem = setup()
    keys = jax.random.split(jax.random.key(1), SEEDS)
    rows = [
        ("sharpflow label_noise_sgd", median_time(library(problem, keys), repeats=args.repeats)),
        ("bare lax.scan", median_time(bare_scan(problem, keys), repeats=args.repeats)),
    ]
    if not args.no_torch:
        try:
            batched, plain = torch_loops(problem)
            rows.append(("PyTorch, seeds batched", median_time(batched, repeats=args.repeats)))
            rows.append(("PyTorch plain loop", median_time(plain, repeats=max(1, args.repeats // 2))))
        except ImportError:
            print("torch is not installed (pip install -e '.[bench]'); skipping the PyTorch baseline")
    out = table(
        f"label-noise SGD, n={N} d={D} m={M}, {STEPS} steps x {SEEDS} seeds, float32",
        rows,
        "sharpflow label_noise_sgd",
    )
    t = dict(rows)
    print(f"library / bare scan = {t['sharpflow label_noise_sgd'] / t['bare lax.scan']:.3f} (target <= 1.1)")
    for name, target in (("PyTorch plain loop", " (target >= 12)"), ("PyTorch, seeds batched", "")):
        if name in t:
            print(f"{name} / library = {t[name] / t['sharpflow label_noise_sgd']:.1f}{target}")
    return out


if __name__ == "__main__":
    main()
