"""A CNN at the scale of the papers' subsets, float32: the full-batch gradient and Hessian-vector product
(in physical batches), an SGD ensemble's throughput, a spectral density, and their growth in n and p.

The net: `models.CNN` on the first n = 1,000 digits as 8 x 8 x 1 images, channels (48, 96, 128), 10 logits,
cross-entropy (p = 154,058). In one process, medians:
1. Throughput against the machine's float32 matmul (a 1024 x 1024 product): the full-batch gradient, and an
   ensemble of 8 SGD runs (B = 32, 50 steps, vmap over seeds), each as (XLA's flop count / time) over the
   matmul's flops per second. (Today's MLP, p = 3e5: gradient 0.89, SGD ensemble 0.76-0.81.)
2. The chunked (`Problem(chunk=250)`) full-batch Hessian-vector product against the chunked gradient.
   Target <= 4 gradients.
3. The spectral density by stochastic Lanczos quadrature, 10 probes x 80 steps (`hessian.spectral_density`),
   one timed call after compilation. Target: minutes.
4. Growth: the gradient at n = 250 (one chunk), 500, 1,000 and at channels (24, 48, 64) (p = 39,018)
   against (48, 96, 128), as ratios to the full size.
5. The ReLU (`models.activations.relu`) against `jax.nn.relu`, whose custom JVP makes the vmapped gradient
   transpose its activations: the CNN's chunked gradient with each, and 20 GD steps of 10 two-layer ReLU
   nets at `optimization_threshold`'s paper size (n = 2,560, m = 200, d = 8) with each, the seeds by
   `lax.map` (one net's activations in cache at a time) and by `vmap`.
Where JAX sees a GPU, the same rows run there.
"""

import argparse
import time

import jax
import jax.numpy as jnp
from bench_common import median_times, table

from analysis import ensembles, hessian
from flows import gd, sgd
from models import CNN, Problem, TwoLayerNet, data

N, CHUNK, CHANNELS, SMALL = 1000, 250, (48, 96, 128), (24, 48, 64)
SEEDS, STEPS, BATCH = 8, 50, 32


def problem(n=N, channels=CHANNELS, chunk=CHUNK, activation="relu"):
    X, y = data.digits(images=True, labels=True)  # float32: the benchmark runs without jax_enable_x64
    net = CNN((1, 8, 8), channels, outputs=10, key=jax.random.key(0), activation=activation)
    return Problem(net, X[:n], y[:n], loss="cross_entropy", chunk=chunk)


def two_layer_gd(activation, over_seeds):
    """20 GD steps of 10 two-layer ReLU nets (n = 2,560, m = 200, d = 8, a linear teacher), the seeds
    by `over_seeds` (`jax.vmap` or `lax.map`): the final parameters."""

    def run(key):
        kx, kn = jax.random.split(key)
        X = jax.random.normal(kx, (2560, 8))
        net = TwoLayerNet(8, 200, key=kn, activation=activation, init_scale=1e-6, outer="balanced")
        P = Problem(net, X, X @ jnp.ones(8) / jnp.sqrt(8.0))
        return gd(P, P.params, steps=20, eta=0.02, save_every=20).final

    keys = jax.random.split(jax.random.key(6), 10)
    return jax.jit(lambda k: over_seeds(run, k)).lower(keys).compile(), keys


def flops(fn, *args) -> float:
    """XLA's flop count of `fn(*args)` compiled (a loop body counts once: count unchunked, unlooped)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def rows(repeats):
    P = problem()
    whole = problem(chunk=None)
    params = P.params
    flat, _ = P.ravel(params)
    v = jax.random.normal(jax.random.key(1), flat.shape, flat.dtype)
    a = jax.random.normal(jax.random.key(2), (1024, 1024), jnp.float32)
    keys = jax.random.split(jax.random.key(3), SEEDS)

    grad = jax.jit(lambda p: P.grad(p))
    grad_whole = jax.jit(lambda p: whole.grad(p))
    hvp = jax.jit(lambda u: hessian.hvp(P, params, u))
    matmul = jax.jit(lambda m: m @ m)

    def run(k):
        return sgd(whole, params, steps=STEPS, eta=0.05, batch_size=BATCH, key=k, save_every=STEPS)

    def ensemble(ks):
        return ensembles.ensemble(run, ks, mesh=False).stats["loss"]

    small_P = problem(channels=SMALL)
    quarter, half = problem(n=N // 4), problem(n=N // 2)
    grad_small = jax.jit(lambda p: small_P.grad(p))
    grad_quarter, grad_half = jax.jit(lambda p: quarter.grad(p)), jax.jit(lambda p: half.grad(p))
    custom = problem(activation=jax.nn.relu)
    grad_custom = jax.jit(lambda p: custom.grad(p))
    nets = {
        (name, over): two_layer_gd(activation, fn)
        for name, activation in (("relu", "relu"), ("jax.nn.relu", jax.nn.relu))
        for over, fn in (("lax.map", jax.lax.map), ("vmap", lambda f, k: jax.vmap(f)(k)))
    }
    t = median_times(
        {
            "matmul": lambda: matmul(a),
            "grad": lambda: grad(params),
            "grad_whole": lambda: grad_whole(params),
            "hvp": lambda: hvp(v),
            "ensemble": lambda: ensemble(keys),
            "grad_small": lambda: grad_small(small_P.params),
            "grad_quarter": lambda: grad_quarter(quarter.params),
            "grad_half": lambda: grad_half(half.params),
            "grad_custom": lambda: grad_custom(custom.params),
            **{key: (lambda f=f, k=k: f(k)) for key, (f, k) in nets.items()},
        },
        repeats=repeats,
    )
    matmul_rate = 2 * 1024**3 / t["matmul"]
    grad_flops = flops(lambda p: whole.grad(p), params)
    one = problem(n=BATCH, chunk=None)
    step_flops = flops(lambda p: one.grad(p), params)  # a minibatch gradient, the step's cost
    density = jax.jit(lambda k: hessian.spectral_density(P, params, k, num_probes=10, num_steps=80).nodes)
    jax.block_until_ready(density(jax.random.key(4)))
    start = time.perf_counter()
    jax.block_until_ready(density(jax.random.key(5)))
    slq = time.perf_counter() - start

    print(
        f"p = {P.num_params:,} (small: {small_P.num_params:,}), n = {N}, chunk = {CHUNK}, {jax.devices()[0]}"
    )
    print(f"matmul {matmul_rate / 1e9:.1f} GFLOP/s")
    for name in ("grad", "grad_whole"):
        print(f"full-batch gradient ({name}): {grad_flops / t[name] / matmul_rate:.2f} of matmul throughput")
    rate = SEEDS * STEPS * step_flops / t["ensemble"]
    print(f"SGD ensemble ({SEEDS} seeds x {STEPS} steps, B = {BATCH}): {rate / matmul_rate:.2f} of matmul")
    print(f"chunked HVP = {t['hvp'] / t['grad']:.2f} chunked gradients (target <= 4)")
    print(f"spectral density (10 probes x 80 steps): {slq:.1f} s")
    print(f"CNN gradient with jax.nn.relu: {t['grad_custom'] / t['grad']:.2f}x activations.relu's")
    for over in ("lax.map", "vmap"):
        ratio = t[("jax.nn.relu", over)] / t[("relu", over)]
        print(f"two-layer ReLU GD, seeds by {over}: jax.nn.relu {ratio:.2f}x activations.relu")
    return [
        ("chunked gradient, n = 1000", t["grad"]),
        ("unchunked gradient, n = 1000", t["grad_whole"]),
        ("chunked HVP, n = 1000", t["hvp"]),
        (f"SGD ensemble, {SEEDS} x {STEPS} steps", t["ensemble"]),
        ("gradient, n = 250 (one chunk)", t["grad_quarter"]),
        ("chunked gradient, n = 500", t["grad_half"]),
        (f"chunked gradient, channels {SMALL}", t["grad_small"]),
        ("SLQ density, 10 x 80 (one call)", slq),
        ("chunked gradient, jax.nn.relu", t["grad_custom"]),
        *((f"two-layer GD x 20, {name}, {over}", t[(name, over)]) for name, over in nets),
        ("matmul 1024^3", t["matmul"]),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    measured = rows(args.repeats)
    title = f"CNN on {N} digit images, float32, {jax.default_backend()}"
    return table(title, measured, baseline=measured[0][0])


if __name__ == "__main__":
    main()
