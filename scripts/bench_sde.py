"""The library's fixed-step SDE solve against a bare `lax.scan` Euler-Maruyama of the same SDE.

A two-layer tanh net (d = 10, width 32, n = 64), label-noise SDE at eta = 0.01, sigma = 0.5: an ensemble of
256 paths (vmap over keys), 1,000 Euler steps each, through

- `label_noise_sde` on `BrownianGrid` (the default fixed-step path),
- `label_noise_sde`-like solve on `diffrax.UnsafeBrownianPath` and on `diffrax.VirtualBrownianTree`
  (same terms and solver; the Brownian path is the only change),
- a bare `lax.scan`: theta <- theta - eta grad L + sqrt(eta) F(theta) dW, written here,
- label-noise GD (`label_noise_sgd`) for the same number of steps.

Target: the library within 1.3x of the bare scan. All compiled before timing; medians over repeats.
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from bench_common import median_time, table

from flows import label_noise_sde, label_noise_sgd
from flows.sde import diffusion, noise_parts
from models import Problem, TwoLayerNet, data

ETA, SIGMA, STEPS, PATHS = 0.01, 0.5, 1000, 256


def setup():
    X = data.gaussian(jax.random.key(0), 64, 10)
    net = TwoLayerNet(10, 32, key=jax.random.key(1), activation="tanh")
    return Problem(net, X, jnp.sin(X[:, 0]))


def library(P, keys):
    run = lambda k: label_noise_sde(  # noqa: E731
        P, P.params, t1=ETA * STEPS, eta=ETA, sigma=SIGMA, key=k, ts=jnp.array([0.0, ETA * STEPS])
    ).stats["loss"]
    return jax.vmap(run)(keys)


@eqx.filter_jit
def other_path(P, keys, kind):
    hyper = dict(eta=ETA, sigma=SIGMA, batch_size=P.n)
    shape = jax.ShapeDtypeStruct((P.n,), P.y.dtype)

    def run(key):
        if kind == "unsafe":
            path = diffrax.UnsafeBrownianPath(shape, key)
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
    assert noise_parts(P, SIGMA, P.n) == {"label": (P.n,)}

    def run(key):
        def step(params, k):
            dw = jnp.sqrt(ETA) * jax.random.normal(jax.random.fold_in(key, k), (P.n,), P.y.dtype)
            _, vjp = jax.vjp(P.residuals, params)
            (noise,) = vjp(SIGMA * jnp.sqrt(ETA) / P.n * dw)
            params = jax.tree.map(lambda p, g, s: p - ETA * g + s, params, P.grad(params), noise)
            return params, None

        params, _ = jax.lax.scan(step, P.params, jnp.arange(STEPS))
        return P.loss(params)

    return jax.vmap(run)(keys)


def sgd(P, keys):
    run = lambda k: label_noise_sgd(  # noqa: E731
        P, P.params, steps=STEPS, eta=ETA, sigma=SIGMA, key=k, save_every=STEPS, save_params=False
    ).stats["loss"]
    return jax.vmap(run)(keys)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    P = setup()
    keys, r = jax.random.split(jax.random.key(2), PATHS), args.repeats
    rows = [
        ("bare lax.scan Euler-Maruyama", median_time(lambda: bare(P, keys), repeats=r)),
        ("label_noise_sde (BrownianGrid)", median_time(lambda: library(P, keys), repeats=r)),
        ("diffrax UnsafeBrownianPath", median_time(lambda: other_path(P, keys, "unsafe"), repeats=r)),
        ("diffrax VirtualBrownianTree", median_time(lambda: other_path(P, keys, "tree"), repeats=1)),
        ("label-noise GD, same steps", median_time(lambda: sgd(P, keys), repeats=r)),
    ]
    title = f"SDE ensemble: {PATHS} paths x {STEPS} Euler steps, two-layer net, float32"
    out = table(title, rows, "bare lax.scan Euler-Maruyama")
    ratio = rows[1][1] / rows[0][1]
    print(f"label_noise_sde / bare scan = {ratio:.2f}x (target <= 1.3x)")
    return out


if __name__ == "__main__":
    main()
