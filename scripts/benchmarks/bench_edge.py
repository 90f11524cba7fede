"""The edge-of-stability flows against GD's own step, in seconds and gradients per unit of t = eta k.

The tanh CNN of figures/central_flow_cnn.py (`models.CNN`, 4 classes of scikit-learn's 8 x 8 digits,
cross-entropy, float32) at two sizes: the quick figure's (n = 128, channels (4, 8), p = 468) and a wider one
(n = 512, channels (32, 32)). Each row runs from the same start for `STEPS` and for 2 `STEPS` steps of its
eta, compiled first, medians of interleaved repeats in one process; a row's cost is the difference, the
second `STEPS` steps alone (a flow's start, 100 Rayleigh-Ritz steps from random vectors, left out). eta
lambda_max is below 2 there; a central-flow substep computes the same derivatives at the edge, where only
the k x k complementarity problem is added.

- a gradient of the full-batch loss (the unit: "gradients" = seconds / this);
- GD (`flows.gd`), one gradient a step;
- the central flow (`flows.central_flow`, k = 2 eigenpairs, 4 substeps a GD step, the default Euler step),
  and the same with `solver=diffrax.Heun()` (Sigma frozen over the step: a gradient and k quadratic-form
  gradients a stage);
- Edge Flow (`flows.edge_flow`, its default of one exponential Heun step a GD step);
- RMSProp (`optax.rmsprop`, eta = 0.01, decay 0.99, eps 1e-8, nu_0 the mean squared first gradient) and
  its central flow (`optimizer=flows.RMSProp(...)`, the same settings);
- heavy ball (`optax.sgd`, eta = 0.5, momentum 0.9) and its central flow (`optimizer=flows.Momentum(0.9)`);
- Adam (`optax.adam`, eta = 0.01, b1 0.9, b2 0.999) and its central flow (`optimizer=flows.Adam()`).

Printed: seconds per unit of t, the ratio to the optimizer's own step (GD's, RMSProp's, ...), and each flow's
gradients a substep and a GD step. Targets (issue 46): the central flow <= 20 gradients a substep at k = 2,
Edge Flow <= 5 a GD step.
"""

import argparse
import functools

import diffrax
import jax
import jax.numpy as jnp
import optax
from bench_common import median_times, table

import flows
from models import CNN, Problem, data

ETA, ETA_RMSPROP, STEPS, SUBSTEPS, EIGS = 0.5, 0.01, 10, 4, 2
GD_ROWS = ("GD", "central flow (Euler)", "central flow (Heun)", "Edge Flow")
RMSPROP_ROWS = ("RMSProp", "central flow of RMSProp (Euler)")
MOMENTUM_ROWS = ("momentum", "central flow of momentum")
ADAM_ROWS = ("Adam", "central flow of Adam")
BASES = (("GD", GD_ROWS), ("RMSProp", RMSPROP_ROWS), ("momentum", MOMENTUM_ROWS), ("Adam", ADAM_ROWS))
SIZES = {"quick (n=128, (4, 8))": (128, (4, 8)), "wide (n=512, (32, 32))": (512, (32, 32))}


def problem(n, channels):
    X, y = data.digits(classes=(0, 1, 2, 3), images=True, labels=True)
    order = jax.random.permutation(jax.random.key(0), X.shape[0])[:n]
    X, y = X[order].astype(jnp.float32), y[order]
    model = CNN(X.shape[1:], channels, outputs=4, activation="tanh", key=jax.random.key(1))
    return Problem(model, X, y, loss="cross_entropy")


def runs(P):
    """(name, steps) -> (a compiled call, its eta): each run STEPS and 2 STEPS steps of its eta, each flow
    with two saves; ("gradient", 1) a gradient."""
    common = dict(num_eigs=EIGS, substeps=SUBSTEPS, num_saves=2, save_params=False)
    scale = float(jnp.mean(P.ravel(P.grad(P.params))[0] ** 2))  # RMSProp's nu_0, as in its tests
    decay, eps = 0.99, 1e-8
    optimizer = functools.partial(optax.rmsprop, decay=decay, eps=eps, initial_scale=scale)
    rms = flows.RMSProp(decay, eps, scale)

    def gd(p, eta, optimizer=None, steps=STEPS):
        return flows.gd(P, p, steps=steps, eta=eta, save_every=steps, save_params=False, optimizer=optimizer)

    def edge(p, steps):
        return flows.edge_flow(P, p, eta=ETA, t1=ETA * steps, num_saves=2, save_params=False)

    def cf(p, eta, steps=STEPS, **kw):
        return flows.central_flow(P, p, eta=eta, t1=eta * steps, **common, **kw)

    calls = {
        "gradient": (lambda p: P.grad(p), None),
        "GD": (lambda p, s: gd(p, ETA, steps=s).stats, ETA),
        "central flow (Euler)": (lambda p, s: cf(p, ETA, s).stats, ETA),
        "central flow (Heun)": (lambda p, s: cf(p, ETA, s, solver=diffrax.Heun()).stats, ETA),
        "Edge Flow": (lambda p, s: edge(p, s).stats, ETA),
        "RMSProp": (lambda p, s: gd(p, ETA_RMSPROP, optimizer, s).stats, ETA_RMSPROP),
        "central flow of RMSProp (Euler)": (
            lambda p, s: cf(p, ETA_RMSPROP, s, optimizer=rms).stats,
            ETA_RMSPROP,
        ),
        "momentum": (lambda p, s: gd(p, ETA, functools.partial(optax.sgd, momentum=0.9), s).stats, ETA),
        "central flow of momentum": (lambda p, s: cf(p, ETA, s, optimizer=flows.Momentum(0.9)).stats, ETA),
        "Adam": (lambda p, s: gd(p, ETA_RMSPROP, optax.adam, s).stats, ETA_RMSPROP),
        "central flow of Adam": (
            lambda p, s: cf(p, ETA_RMSPROP, s, optimizer=flows.Adam()).stats,
            ETA_RMSPROP,
        ),
    }
    out = {("gradient", 1): (functools.partial(jax.jit(calls.pop("gradient")[0]), P.params), None)}
    for name, (fn, eta) in calls.items():
        for steps in (STEPS, 2 * STEPS):
            out[name, steps] = (functools.partial(jax.jit(fn, static_argnums=1), P.params, steps), eta)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = p.parse_args(argv)
    out = []
    with jax.enable_x64(False):
        for size in args.sizes:
            P = problem(*SIZES[size])
            calls = runs(P)
            t = median_times({name: fn for name, (fn, _) in calls.items()}, repeats=args.repeats)
            # the cost of the second STEPS steps: the first ones' start (100 Rayleigh-Ritz steps) left out
            extra = {name: t[name, 2 * STEPS] - t[name, STEPS] for name, steps in calls if steps == STEPS}
            per_t = {name: extra[name] / (calls[name, STEPS][1] * STEPS) for name in extra}
            gradient = t["gradient", 1]
            for base, names in BASES:
                title = f"edge flows per unit of t, tanh CNN {size}, p={P.num_params}, k={EIGS}, float32"
                out += table(title, [(name, per_t[name]) for name in names], base)
            for name in (name for _, names in BASES for name in names[1:]):  # the flows' substeps
                substeps = 1 if name == "Edge Flow" else SUBSTEPS
                substep = extra[name] / (STEPS * substeps) / gradient
                target = "Edge Flow: <= 5 a GD step" if name == "Edge Flow" else "central flow: <= 20"
                per_step = substeps * substep
                print(f"{name}: {substep:.1f} gradients a substep, {per_step:.1f} a GD step ({target})")
    return out


if __name__ == "__main__":
    main()
