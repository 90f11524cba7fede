"""SGD against its SDE on a two-layer tanh net, in gradient-flow time t = eta * k.

Top row: label-noise GD (every example, eps ~ N(0, sigma^2)) against the label-noise SDE, coupled path by
path (the SDE's Brownian path is built from the SGD run's own draws). Bottom row: minibatch SGD against
the minibatch SDE (same keys, independent noises). Each at three step sizes, mean and 95% band over seeds,
with gradient flow in black; the SDE is solved with Euler at eta / substeps. Right: the weak error
sup_t |E SGD - E SDE| of tr H against eta on log axes, with gradient flow's sup_t |E SGD - GF|, each with
its sampling noise removed and its 95% band (`analysis.statistics.debiased_weak_error`); an order is printed
only where every error is resolved. Minibatch noise cannot be coupled, so its errors carry the band of two
independent ensembles.

Estimators: the loss exactly; tr H exactly along every path (`hessian.trace`, `compare.sde_vs_sgd`'s
default: N gradients and p Hessian-vector products a save; p = 96 quick, 704 paper, small enough for the
exact trace). The exact trace adds nothing to the bands, which are the seeds' spread alone; the weak
error of tr H needs that, since one Hutchinson probe a seed (`hessian.TraceProbe`, `metrics=`) would widen
its band by the probes' variance, 2 (||H||_F^2 - sum_j H_jj^2) / seeds. For large p pass the probe.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main

from analysis import compare, plots
from models import Problem, TwoLayerNet, data

PRESETS = {
    "smoke": dict(n=8, d=3, width=6, sigma=1.0, batch=2, t1=0.8, etas=[0.08, 0.04], seeds=8, substeps=2),
    "quick": dict(
        n=16,
        d=5,
        width=16,
        sigma=1.0,
        batch=4,
        t1=3.2,
        etas=[0.08, 0.04, 0.02],
        seeds=64,
        substeps=4,
    ),
    "paper": dict(
        n=64,
        d=10,
        width=64,
        sigma=1.0,
        batch=8,
        t1=4.0,
        etas=[0.04, 0.02, 0.01],
        seeds=512,
        substeps=8,
    ),
}
KINDS = {"label": "label-noise GD", "batch": "minibatch SGD"}


def problem(cfg):
    kx, kn = jax.random.split(jax.random.key(0))
    X = data.gaussian(kx, cfg["n"], cfg["d"])
    net = TwoLayerNet(cfg["d"], cfg["width"], key=kn, activation="tanh")
    return Problem(net, X, jnp.sin(2 * X[:, 0]))


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each noise and eta."""
    P = problem(cfg)
    out = {}
    for i, noise in enumerate(KINDS):
        out[noise] = compare.sde_vs_sgd(
            P,
            P.params,
            noise=noise,
            etas=cfg["etas"],
            t1=cfg["t1"],
            key=jax.random.key(1 + i),
            seeds=cfg["seeds"],
            sigma=cfg["sigma"] if noise == "label" else None,
            batch_size=cfg["batch"] if noise == "batch" else None,
            substeps=cfg["substeps"],
            num_saves=10,
            progress=progress,
            part=lambda label, fn, noise=noise: part(f"{noise}-{label}", fn),
        )
    return out


def draw(cfg, r, path):
    fig, axes = plots.figure(3, 2)
    for row, (noise, name) in enumerate(KINDS.items()):
        rn, t = r[noise], r[noise]["t"]
        for col, m in enumerate(("loss", "trace_H")):
            ax = axes[3 * row + col]
            ax.plot(t, rn["gf"][m], "k", lw=2, label="gradient flow")
            for eta in cfg["etas"]:
                s = rn["eta"][str(eta)][m]
                line = plots.band(ax, t, s["sgd_mean"], s["sgd_band"], label=f"eta={eta}")
                plots.band(ax, t, s["sde_mean"], s["sde_band"], color=line.get_color(), ls="--")
            ax.set(
                xlabel="t = eta k",
                ylabel="tr H" if m == "trace_H" else "loss",
                title=f"{name} (solid) vs SDE (dashed)",
            )
            ax.legend(fontsize=7)
        ax = axes[3 * row + 2]
        etas = np.asarray(cfg["etas"])
        for key, label in (("weak_error", "SDE"), ("gf_error", "gradient flow")):
            errs = np.array([float(rn["eta"][str(eta)]["trace_H"][key]) for eta in cfg["etas"]])
            bands = np.array([float(rn["eta"][str(eta)]["trace_H"][f"{key}_band"]) for eta in cfg["etas"]])
            order = float(rn["order" if key == "weak_error" else "gf_order"]["trace_H"])
            slope = f"slope {order:.2f}" if np.isfinite(order) else "slope not resolved"
            ax.errorbar(etas, errs, yerr=bands, fmt="o-", capsize=2, label=f"{label} ({slope})")
            ax.set(xscale="log", yscale="log")
        ax.loglog(etas, errs[-1] * etas / etas[-1], "k:", label="slope 1")
        ax.set(
            xlabel="eta",
            ylabel="sup_t |E tr H(SGD) - E tr H(limit)|",
            title=f"{name}: weak error (95% band)",
        )
        ax.legend(fontsize=7, loc="upper left")
    return plots.save(fig, path)


def summary(cfg, r):
    for noise, name in KINDS.items():
        for eta in cfg["etas"]:
            s = r[noise]["eta"][str(eta)]["trace_H"]
            sde, gf = (
                f"{float(s[k]):.2e} +- {float(s[k + '_band']):.1e}" for k in ("weak_error", "gf_error")
            )
            print(f"{name}, eta={eta}: weak error of tr H (95% band), SDE {sde}, gradient flow {gf}")
        order = float(r[noise]["order"]["trace_H"])
        if np.isfinite(order):
            print(f"{name}: SDE weak-error order {order:.2f} (theory: >= 1)")
        else:
            print(f"{name}: SDE weak-error order not resolved (an error within its band at these seeds)")


FIGURE = Figure(
    "sde_vs_sgd", __doc__, PRESETS, compute, draw, summary, parts=lambda cfg: len(KINDS) * len(cfg["etas"])
)

if __name__ == "__main__":
    main(FIGURE)
