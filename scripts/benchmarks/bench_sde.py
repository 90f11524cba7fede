"""The label-noise SDE at the cost of the label-noise GD it models.

A two-layer tanh net (n = 32, d = 16, width 32), label noise sigma = 0.5, eta = 0.01, float32: an ensemble
of 256 paths (`jax.jit(jax.vmap(...))` over keys), 1,000 steps each, through

- `label_noise_sgd` with the same steps and keys (the baseline);
- `label_noise_sde`, Euler at `substeps=1` (one forward pass and one VJP a step, drift and noise together:
  the cost of one Euler step, what the targets compare), and at its default `substeps=4` (the solve a user
  gets: four Euler steps a GD step, so ~4x);
- a bare `lax.scan` Euler-Maruyama written here: one forward pass and two VJPs a step (drift, then noise);
- the same SDE through diffrax (`MultiTerm(ODETerm, ControlTerm)` on the same `BrownianGrid`, two terms,
  each with its own pass) and on a `VirtualBrownianTree` (adaptive-capable path, a tree descent a step).

Targets: the SDE <= 1.1x label-noise GD and <= 0.9x the bare scan. Then the 10,000-path ensemble in groups
of 256 (`analysis.ensembles.ensemble(..., seeds_at_once=256)`): its cost per path-step against 256 paths
(target: flat) and its peak memory (bounded by the group). All compiled before timing; medians over
repeats, the rows compared interleaved (`bench_common.median_times`).
"""

import argparse
import resource

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from bench_common import median_time, median_times, table

from analysis import ensembles
from flows import BrownianGrid, label_noise_sde, label_noise_sgd
from flows._noise import diffusion, noise_parts  # the noise factor itself, timed against the flow
from models import Problem, TwoLayerNet, data

ETA, SIGMA, STEPS, PATHS, ENSEMBLE = 0.01, 0.5, 1000, 256, 10_000


def setup():
    X = data.gaussian(jax.random.key(0), 32, 16)
    net = TwoLayerNet(16, 32, key=jax.random.key(1), activation="tanh")
    return Problem(net, X, jnp.sin(X[:, 0]))


def sde_loss(P, key, substeps=1):
    ts = jnp.array([0.0, ETA * STEPS])
    run = label_noise_sde(
        P, P.params, t1=ETA * STEPS, eta=ETA, sigma=SIGMA, key=key, ts=ts, substeps=substeps
    )
    return run.stats["loss"]


def sgd_loss(P, key):
    run = label_noise_sgd(
        P, P.params, steps=STEPS, eta=ETA, sigma=SIGMA, key=key, save_every=STEPS, save_params=False
    )
    return run.stats["loss"]


@eqx.filter_jit
def diffrax_path(P, keys, kind):
    hyper = dict(eta=ETA, sigma=SIGMA, batch_size=P.n)
    shape = jax.ShapeDtypeStruct((P.n,), P.y.dtype)

    def run(key):
        if kind == "grid":
            path = BrownianGrid(key, ETA, noise_parts(P, SIGMA, P.n), dtype=P.y.dtype)
        else:
            path = diffrax.VirtualBrownianTree(0.0, ETA * STEPS, tol=ETA / 2, shape=shape, key=key)
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, p, a: jax.tree.map(jnp.negative, P.grad(p))),
            diffrax.ControlTerm(
                lambda t, p, a: lx.FunctionLinearOperator(lambda w: diffusion(P, p, w, **hyper), shape), path
            ),
        )
        sol = diffrax.diffeqsolve(
            terms,
            diffrax.Euler(),
            0.0,
            ETA * STEPS,
            ETA,
            P.params,
            saveat=diffrax.SaveAt(t1=True, fn=lambda t, p, a: P.loss(p)),
            max_steps=STEPS,
            adjoint=diffrax.ForwardMode(),
        )
        return sol.ys

    return jax.vmap(run)(keys)


@eqx.filter_jit
def bare(P, keys):
    """One forward pass and two VJPs a step: the gradient, then the noise, each its own VJP."""

    def run(key):
        def step(params, k):
            dw = jnp.sqrt(ETA) * jax.random.normal(jax.random.fold_in(key, k), (P.n,), P.y.dtype)
            r, vjp = jax.vjp(P.residuals, params)
            (g,) = vjp(r / P.n)
            (noise,) = vjp(SIGMA * jnp.sqrt(ETA) / P.n * dw)
            return jax.tree.map(lambda p, gp, s: p - ETA * gp + s, params, g, noise), None

        params, _ = jax.lax.scan(step, P.params, jnp.arange(STEPS))
        return P.loss(params)

    return jax.vmap(run)(keys)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    P = setup()
    keys, r = jax.random.split(jax.random.key(2), PATHS), args.repeats
    sde = jax.jit(jax.vmap(lambda k: sde_loss(P, k)))
    sde4 = jax.jit(jax.vmap(lambda k: sde_loss(P, k, substeps=4)))
    sgd = jax.jit(jax.vmap(lambda k: sgd_loss(P, k)))
    interleaved = {
        "label-noise GD (label_noise_sgd)": lambda: sgd(keys),
        "label_noise_sde, Euler, one pass": lambda: sde(keys),
        "label_noise_sde, default substeps=4": lambda: sde4(keys),
        "bare scan: 1 forward + 2 VJPs": lambda: bare(P, keys),
        "diffrax Euler, two terms, BrownianGrid": lambda: diffrax_path(P, keys, "grid"),
    }
    rows = [*median_times(interleaved, repeats=r).items()]
    tree = median_time(lambda: diffrax_path(P, keys, "tree"), repeats=1)
    rows.append(("diffrax Euler, VirtualBrownianTree", tree))
    title = f"label-noise SDE: {PATHS} paths x {STEPS} steps, two-layer net n=32 d=16 m=32, float32"
    out = table(title, rows, "label-noise GD (label_noise_sgd)")
    t = dict(rows)
    sde_t = t["label_noise_sde, Euler, one pass"]
    print(f"SDE / label-noise GD = {sde_t / t['label-noise GD (label_noise_sgd)']:.2f}x (target <= 1.1x)")
    print(f"SDE / bare scan = {sde_t / t['bare scan: 1 forward + 2 VJPs']:.2f}x (target <= 0.9x)")

    def flow(k):
        return sde_loss(P, k)

    many = jax.random.split(jax.random.key(3), ENSEMBLE)
    small = median_time(lambda: ensembles.ensemble(flow, keys, seeds_at_once=PATHS), repeats=r)
    large = median_time(lambda: ensembles.ensemble(flow, many, seeds_at_once=PATHS), repeats=1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    per_small, per_large = small / (PATHS * STEPS), large / (ENSEMBLE * STEPS)
    scaling = [
        (f"ensemble of {PATHS} paths, per path-step", per_small),
        (f"ensemble of {ENSEMBLE} paths in blocks of {PATHS}, per path-step", per_large),
    ]
    out += table(f"label-noise SDE ensembles (peak RSS {rss:.2f} GB)", scaling, scaling[0][0])
    print(f"cost per path-step, {ENSEMBLE} / {PATHS} paths = {per_large / per_small:.2f}x (target: flat)")
    return out


if __name__ == "__main__":
    main()
