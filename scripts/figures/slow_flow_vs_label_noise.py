"""tr H against the slow time tau = eta^2 sigma^2 k / B: label-noise GD at three step sizes (iterates mapped
onto the zero-loss manifold by Phi; mean and 95% band over seeds) against the Riemannian flow of tr H / 4,
on the quadratic parametrisation w = u*u - v*v with a sparse teacher. Right: the weak error against eta.

Estimators: tr H = tr G on the manifold, exact from per-example gradients
(`Problem.gauss_newton_trace`, N gradients; the iterates are mapped onto the manifold by Phi first), so the
bands are the seeds' spread alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main

from analysis import compare, plots
from flows import limit_map, riemannian_flow
from models import Problem, QuadraticParam, data

PRESETS = {
    "smoke": dict(n=3, d=5, sigma=1.0, tau1=0.2, etas=[0.04, 0.02], seeds=4, num_saves=2),
    "quick": dict(n=3, d=5, sigma=1.0, tau1=1.0, etas=[0.04, 0.02, 0.01], seeds=16, num_saves=10),
    "paper": dict(n=10, d=30, sigma=1.0, tau1=3.0, etas=[0.02, 0.01, 0.005], seeds=64, num_saves=20),
}


def problem(cfg):
    X = data.gaussian(jax.random.key(0), cfg["n"], cfg["d"])
    return Problem(QuadraticParam(cfg["d"], init_scale=1.0), X, X[:, 0] - 0.5 * X[:, 1])


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each eta."""
    P = problem(cfg)
    r = compare.label_noise_slow_clock(
        P,
        P.params,
        etas=cfg["etas"],
        sigma=cfg["sigma"],
        tau1=cfg["tau1"],
        key=jax.random.key(1),
        seeds=cfg["seeds"],
        num_saves=cfg["num_saves"],
        part=part,
    )
    taus = jnp.linspace(0.0, cfg["tau1"], 101)
    metrics = {"trace_H": Problem.gauss_newton_trace}  # tr G = tr H on the manifold
    flow = riemannian_flow(
        P, limit_map(P, P.params), t1=cfg["tau1"], ts=taus, save_params=False, metrics=metrics
    )
    return r | {"flow": {"tau": taus, "trace_H": flow.stats["trace_H"]}}


def draw(cfg, r, path):
    fig, (ax, ax_e) = plots.figure(2)
    ax.plot(r["flow"]["tau"], r["flow"]["trace_H"], "k", lw=2, label="Riemannian flow of tr H / 4")
    for eta in cfg["etas"]:
        s = r["eta"][str(eta)]["trace_H"]
        plots.band(ax, r["tau"][str(eta)], s["sgd_mean"], s["sgd_band"], marker="o", ms=3,
                   label=f"label-noise GD, eta={eta}, Phi-mapped")  # fmt: skip
    ax.set(xlabel="tau = eta^2 sigma^2 k / B", ylabel="tr H", title="the slow flow on the zero-loss manifold")
    ax.legend(loc="upper right")
    errs = [float(r["eta"][str(eta)]["trace_H"]["weak_error"]) for eta in cfg["etas"]]
    ax_e.loglog(cfg["etas"], errs, "o-", label=f"slope {float(r['order']['trace_H']):.2f}")
    ax_e.loglog(cfg["etas"], errs[-1] * np.asarray(cfg["etas"]) / cfg["etas"][-1], "k:", label="slope 1")
    ax_e.set(xlabel="eta", ylabel="sup_tau |E tr H(Phi(theta_k)) - tr H(flow)|", title="weak error")
    ax_e.legend()
    return plots.save(fig, path)


def summary(cfg, r):
    for eta in cfg["etas"]:
        print(f"eta={eta}: weak error {float(r['eta'][str(eta)]['trace_H']['weak_error']):.4f}")
    print(f"observed order {float(r['order']['trace_H']):.2f} (theory: 1)")


FIGURE = Figure(
    "slow_flow_vs_label_noise", __doc__, PRESETS, compute, draw, summary, parts=lambda cfg: len(cfg["etas"])
)

if __name__ == "__main__":
    main(FIGURE)
