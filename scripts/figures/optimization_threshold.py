"""The optimization threshold (Boursier & Flammarion 2024): past some n, gradient flow stops interpolating.

A two-layer ReLU net (width m, trainable outer layer, balanced initialisation a_j = +-||w_j|| at scale
lambda = 1e-6) is fitted to a noisy linear teacher y = beta* . x + eps, x ~ N(0, I_d), eps ~ N(0, s^2),
||beta*|| = 1, for n from below d to many times d, several seeds each. Gradient flow is GD with a small fixed
step (the ReLU flow is non-smooth; the fixed grid steps over its kinks as GD does), run to t = eta * k = T.
Below the threshold the neurons align with many directions and the net interpolates (training loss ~0,
test loss up: it fits the noise); above it early alignment leaves two directions (+-beta_ols), the net stops
at a spurious stationary point next to the least-squares linear predictor, and the test loss drops to that
of OLS. Large initialisation (lambda = 0.4, GD) is the control: no early alignment, and the training loss
keeps falling below OLS's (it fits the noise) at every n.

Beyond the paper: the same sweep with minibatch SGD (B with replacement), with label-noise GD (label noise
sigma, full batch) and with the SGD SDE (`flows.sgd_sde`, the same B, Euler at eta / 4: its default four
substeps a step), all at the same eta and T. Does their noise move the threshold?

Panels, against n (median over seeds, band: the range of the seeds): (a) final training loss, with the
OLS training loss (1/2n)||y - X beta_ols||^2; (b) test loss (1/2) E (f(x) - beta* . x)^2 on fresh inputs, with
OLS's; (c) the distance to the OLS predictor, sqrt(E (f(x) - beta_ols . x)^2) (`features.distance_to_ols`);
(d) the number of distinct directions among the active neurons (`features.count_directions`, 5 degrees).
Printed: per method, the fraction of seeds that interpolate (training loss < 1e-2 s^2 / 2: the net has
fitted 99% of the noise; a simple net sits at ~ s^2 / 2 (1 - d / n), and label-noise GD hovers at ~1e-3 of
it at sigma = 0.1) at each n. float64: lambda = 1e-6 and interpolation down to losses of 1e-30.
`--seeds`: data sets (and initialisations) per n.

Estimators: the training loss and direction counts exactly; the test loss and the distance to OLS
(`features.distance_to_ols`) as means over `test` fresh inputs drawn per seed (the same inputs for every
method, so the methods' differences carry no sampling noise of their own). No curvature is recorded: the
bands are the seeds' range.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main

from analysis import features, plots
from flows import gd, label_noise_sgd, sgd, sgd_sde, timescale
from models import Problem, TwoLayerNet

PRESETS = {
    "smoke": dict(d=2, width=6, ns=[12], seeds=2, noise=0.5, scale=1e-6, eta=0.05, steps=400, batch=2,
                  label_sigma=0.1, test=64, large_scale=0.4, seeds_at_once=2),
    "quick": dict(d=4, width=50, ns=[3, 5, 7, 10, 14, 20, 40, 80, 160, 320], seeds=6, noise=0.5, scale=1e-6,
                  eta=0.05, steps=20000, batch=4, label_sigma=0.1, test=4096, large_scale=0.4,
                  seeds_at_once=6),
    "paper": dict(d=8, width=200, ns=[5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560], seeds=10, noise=0.5,
                  scale=1e-6, eta=0.02, steps=100000, batch=4, label_sigma=0.1, test=16384, large_scale=0.4,
                  seeds_at_once=2),
}  # fmt: skip
METHODS = {
    "gd": "gradient flow (GD, small step)",
    "sgd": "SGD, B = {batch}",
    "sde": "SGD SDE, B = {batch}",
    "label_noise": "label-noise GD, sigma = {label_sigma}",
    "large_init": "gradient flow, lambda = {large_scale}",
}
INTERPOLATES = 1e-2  # interpolation: training loss below this fraction of the noise's s^2 / 2


def problem(cfg, seed, n, scale):
    """Seed `seed`'s data at size n (nested: the first n points of a fixed stream) and net."""
    kx, ke, kn = jax.random.split(jax.random.fold_in(jax.random.key(seed), 7), 3)
    nmax = max(cfg["ns"])
    X = jax.random.normal(kx, (nmax, cfg["d"]))[:n]
    beta = jnp.ones(cfg["d"]) / jnp.sqrt(cfg["d"])
    y = X @ beta + cfg["noise"] * jax.random.normal(ke, (nmax,))[:n]
    net = TwoLayerNet(cfg["d"], cfg["width"], key=kn, activation="relu", init_scale=scale, outer="balanced")
    return Problem(net, X, y), beta


def train(cfg, method, seed, n):
    """The final parameters of one run, and its (train loss, test loss, distance to OLS)."""
    P, beta = problem(cfg, seed, n, cfg["large_scale"] if method == "large_init" else cfg["scale"])
    key = jax.random.fold_in(jax.random.key(seed), 11)
    steps, eta = cfg["steps"], cfg["eta"]
    common = dict(save_params=True)
    if method in ("gd", "large_init"):
        traj = gd(P, P.params, steps=steps, eta=eta, save_every=steps, **common)
    elif method == "sgd":
        traj = sgd(P, P.params, steps=steps, eta=eta, batch_size=cfg["batch"], key=key, save_every=steps,
                   **common)  # fmt: skip
    elif method == "label_noise":
        traj = label_noise_sgd(P, P.params, steps=steps, eta=eta, sigma=cfg["label_sigma"], key=key,
                               save_every=steps, **common)  # fmt: skip
    else:
        t1 = timescale.flow_time(steps, eta)
        traj = sgd_sde(P, P.params, t1=t1, eta=eta, batch_size=cfg["batch"], key=key, save_every=t1,
                       **common)  # fmt: skip
    final = traj.final
    X_test = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 13), (cfg["test"], cfg["d"]))
    f = P.outputs(final, X_test)
    scores = jnp.stack([
        P.loss(final),
        0.5 * jnp.mean((f - X_test @ beta) ** 2),
        features.distance_to_ols(P, final, X_test),
    ])  # fmt: skip
    return final, scores


def ols_scores(cfg, seed, n):
    """OLS's training loss and test loss on the same data."""
    P, beta = problem(cfg, seed, n, cfg["scale"])
    b = features.ols(P.X, P.y)
    X_test = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 13), (cfg["test"], cfg["d"]))
    return np.array([
        0.5 * float(jnp.mean((P.X @ b - P.y) ** 2)),
        0.5 * float(jnp.mean((X_test @ (b - beta)) ** 2)),
    ])  # fmt: skip


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each (method, n), all seeds at once."""
    from tqdm.auto import tqdm

    seeds = np.arange(cfg["seeds"])
    out = {"ols": np.array([[ols_scores(cfg, s, n) for s in seeds] for n in cfg["ns"]])}  # (ns, seeds, 3)
    for method in METHODS:
        runs = [
            part(f"{method}-n{n}", lambda n=n: run_seeds(cfg, method, n, seeds))
            for n in tqdm(cfg["ns"], desc=method, disable=not progress)
        ]
        out[method] = {
            "scores": np.array([r["scores"] for r in runs]),  # (ns, seeds, 3)
            "directions": np.array([r["directions"] for r in runs]),  # (ns, seeds)
        }
    return out


def run_seeds(cfg, method, n, seeds):
    """`train` for every seed at one n: the scores and the number of distinct active directions (NaN for
    minibatch methods where n <= B). The seeds run `seeds_at_once` at a time (`lax.map` over vmapped
    groups, one compiled loop). On this 2-core CPU two at a time was the fastest measured at the paper's
    sizes, n = 40 to 2,560 (GD at n = 2,560: 9.9 ms a step for 10 seeds, 10.6 one at a time, 20.6 all at
    once); all at once keeps every seed's n x m activations in flight. The quick preset's small nets run
    all six at once (its figure took 4.5 minutes so, 6.2 two at a time). On a GPU: `--set seeds_at_once=10`
    (assumed, not measured here)."""
    if method in ("sgd", "sde") and n <= cfg["batch"]:  # minibatches need n > B
        return {"scores": np.full((len(seeds), 3), np.nan), "directions": np.full(len(seeds), np.nan)}
    finals, scores = jax.lax.map(
        lambda seed: train(cfg, method, seed, n), jnp.asarray(seeds), batch_size=cfg["seeds_at_once"]
    )
    P, _ = problem(cfg, 0, n, cfg["scale"])
    counts = [
        features.count_directions(P, jax.tree.map(lambda a, i=i: a[i], finals), tol_deg=5.0, min_norm=1e-2)
        for i in range(len(seeds))
    ]
    return {"scores": np.asarray(scores), "directions": np.asarray(counts, dtype=float)}


def interpolating(cfg, r, method) -> np.ndarray:
    """The fraction of seeds that interpolate, at each n (NaN where the method was not run)."""
    loss = r[method]["scores"][..., 0]
    fraction = np.mean(loss < INTERPOLATES * cfg["noise"] ** 2 / 2, axis=1)
    return np.where(np.isfinite(loss).all(axis=1), fraction, np.nan)


def draw(cfg, r, path):
    fig, axes = plots.figure(4, 1, width=3.5, height=3.2)
    ns = np.asarray(cfg["ns"])
    titles = ["(a) final training loss", "(b) test loss (1/2) E(f - beta* . x)^2", "(c) distance to OLS"]
    for j, ax in enumerate(axes[:3]):
        for c, method in enumerate(METHODS):
            v = r[method]["scores"][..., j]
            ok = np.isfinite(v).all(axis=1)
            label = METHODS[method].format(**cfg)
            ax.plot(ns[ok], np.median(v[ok], axis=1), "o-", ms=3, color=f"C{c}", label=label)
            ax.fill_between(ns[ok], v[ok].min(axis=1), v[ok].max(axis=1), color=f"C{c}", alpha=0.15, lw=0)
        if j < 2:
            ax.plot(ns, np.median(r["ols"][..., j], axis=1), "k--", lw=1, label="OLS")
        ax.set(xscale="log", yscale="log", xlabel="n", title=titles[j])
    axes[0].axhline(INTERPOLATES * cfg["noise"] ** 2 / 2, color="0.5", ls=":", lw=1, label="interpolation")
    axes[0].set_ylim(bottom=1e-12)
    axes[0].legend(fontsize=6)
    ax = axes[3]
    for c, method in enumerate(METHODS):
        v = r[method]["directions"]
        ok = np.isfinite(v).all(axis=1)
        ax.plot(ns[ok], np.median(v[ok], axis=1), "o-", ms=3, color=f"C{c}")
        ax.fill_between(ns[ok], v[ok].min(axis=1), v[ok].max(axis=1), color=f"C{c}", alpha=0.15, lw=0)
    ax.set(xscale="log", xlabel="n", ylabel="count", title="(d) distinct active directions")
    for ax in axes:
        ax.axvline(cfg["d"], color="0.6", lw=0.8, ls=":")
    return plots.save(fig, path)


def summary(cfg, r):
    print("fraction of seeds that interpolate, at n = " + " ".join(f"{n:>5}" for n in cfg["ns"]))
    for method in METHODS:
        print(
            f"{METHODS[method].format(**cfg):>42}: "
            + " ".join(f"{f:5.2f}" for f in interpolating(cfg, r, method))
        )


FIGURE = Figure(
    "optimization_threshold",
    __doc__,
    PRESETS,
    compute,
    draw,
    summary,
    parts=lambda cfg: len(METHODS) * len(cfg["ns"]),
    x64=True,
)

if __name__ == "__main__":
    main(FIGURE)
