"""Early alignment of ReLU neurons from small initialisation (Boursier & Flammarion 2024), d = 2.

A two-layer ReLU net with trainable outer layer and balanced initialisation (a_j = +-||w_j||, scale lambda)
fits a linear teacher y = beta . x on Gaussian inputs. Gradient flow is taken as GD with a small fixed step
(eta = 0.05; the ReLU makes the flow non-smooth, and the fixed grid steps over the kinks as GD does;
measured: halving eta to 0.025, then 0.0125, moves every neuron's direction at t = 15 by at most 0.09 and
0.035 degrees). For a small and a large lambda:

- left: every neuron's direction angle against time (polar: angle, radius = t), positive neurons (a_j > 0)
  in red, negative in blue; the extremal directions the theory predicts (`features.extremal_directions`,
  computed without a network) as dashed rays; the end of early alignment (`features.alignment_end`: the
  loss has moved by 1e-3) as a circle;
- middle: the neuron norms ||w_j|| against t (log scale) with the loss, the end of alignment marked;
- right: |cos| between the neurons at the end of alignment, ordered by angle.

Printed: the end of alignment, the largest angle of an active neuron to its predicted direction, and the
number of distinct directions, for each lambda. float64: neuron norms from 1e-6 upward. Deterministic.

Estimators: none sampled: directions, norms, cosines and the loss are exact functions of the
parameters of one deterministic run.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main

from analysis import features, plots
from flows import gd
from models import Problem, TwoLayerNet

PRESETS = {
    "smoke": dict(n=8, width=6, scales=[1e-6, 1.0], eta=0.05, steps=400, save_every=20),
    "quick": dict(n=20, width=30, scales=[1e-6, 1.0], eta=0.05, steps=1200, save_every=10),
    "paper": dict(n=100, width=100, scales=[1e-8, 1e-3, 1.0], eta=0.01, steps=10000, save_every=20),
}
BETA = [1.0, 0.5]


def problem(cfg, scale):
    kx, kn = jax.random.split(jax.random.key(0))
    X = jax.random.normal(kx, (cfg["n"], 2))
    net = TwoLayerNet(2, cfg["width"], key=kn, activation="relu", init_scale=scale, outer="balanced")
    return Problem(net, X, X @ jnp.asarray(BETA))


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each initialisation scale."""
    out = {}

    def run(scale):
        P = problem(cfg, scale)
        traj = gd(P, P.params, steps=cfg["steps"], eta=cfg["eta"], save_every=cfg["save_every"])
        return {"t": traj.ts, "W": traj.params.W, "a": traj.params.a, "loss": traj.stats["loss"]}

    for scale in cfg["scales"]:
        out[str(scale)] = part(f"scale{scale}", lambda scale=scale: run(scale))
        if progress:
            print(f"lambda = {scale}: final loss {float(out[str(scale)]['loss'][-1]):.3g}", flush=True)
    P = problem(cfg, cfg["scales"][0])
    plus, minus = features.extremal_directions(P.X, P.y)
    out["plus"], out["minus"] = plus, minus
    return out


def alignment_summary(cfg, r, scale):
    """(t_end, index of t_end, largest angle of an active neuron to its predicted direction, #directions)."""
    t, loss = r[str(scale)]["t"], r[str(scale)]["loss"]
    t_end = features.alignment_end(t, loss)
    k = int(np.searchsorted(t, t_end)) if np.isfinite(t_end) else len(t) // 4
    W, a = r[str(scale)]["W"][k], r[str(scale)]["a"][k]
    norms = np.linalg.norm(W, axis=1)
    U = W / norms[:, None]
    angle = np.where(a > 0, features.angles_to(U, r["plus"]), features.angles_to(U, r["minus"]))
    active = norms >= 1e-3 * norms.max()
    P = problem(cfg, scale)
    params = eqx.tree_at(lambda m: (m.W, m.a), P.params, (jnp.asarray(W), jnp.asarray(a)))
    count = features.count_directions(P, params, tol_deg=5.0, min_norm=1e-3)
    return t_end, k, float(angle[active].max()), count


def draw(cfg, r, path):
    scales = cfg["scales"]
    fig, axes = plots.figure(3, len(scales), width=3.6, height=3.4)
    for row, scale in enumerate(scales):
        t, W, a, loss = (r[str(scale)][k] for k in ("t", "W", "a", "loss"))
        t_end, k, _, _ = alignment_summary(cfg, r, scale)
        ax = axes[3 * row]
        ax.remove()
        ax = fig.add_subplot(len(scales), 3, 3 * row + 1, projection="polar")
        theta = np.arctan2(W[..., 1], W[..., 0])
        for j in range(W.shape[1]):
            ax.plot(theta[:, j], t, ".", ms=1, color="C3" if a[0, j] > 0 else "C0")
        for u, c in [(u, "C3") for u in r["plus"]] + [(u, "C0") for u in r["minus"]]:
            ax.plot([np.arctan2(u[1], u[0])] * 2, [0, t[-1]], "--", color=c, lw=1)
        if np.isfinite(t_end):
            ax.plot(np.linspace(0, 2 * np.pi, 200), np.full(200, t_end), "k-", lw=0.8)
        ax.set_title(f"lambda = {scale}: directions (radius t)", fontsize=8)
        ax = axes[3 * row + 1]
        ax.semilogy(t, np.linalg.norm(W, axis=2), lw=0.6, color="0.5")
        ax.semilogy(t, loss, "k", lw=2, label="loss")
        if np.isfinite(t_end):
            ax.axvline(t_end, color="k", ls=":", label="end of alignment")
        ax.set(xlabel="t = eta k", ylabel="||w_j||", title=f"lambda = {scale}: norms")
        ax.legend(fontsize=7)
        ax = axes[3 * row + 2]
        U = W[k] / np.linalg.norm(W[k], axis=1)[:, None]
        order = np.argsort(np.arctan2(U[:, 1], U[:, 0]))
        im = ax.imshow(np.abs(U[order] @ U[order].T), vmin=0, vmax=1, cmap="viridis")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set(title=f"|cos| between neurons at t = {t[k]:.3g}", xlabel="neuron", ylabel="neuron")
        ax.grid(False)
    return plots.save(fig, path)


def summary(cfg, r):
    for scale in cfg["scales"]:
        t_end, _, angle, count = alignment_summary(cfg, r, scale)
        print(
            f"lambda = {scale}: end of early alignment t = {t_end:.3g}; active neurons within {angle:.2f} "
            f"degrees of the predicted directions; {count} distinct directions"
        )


FIGURE = Figure(
    "early_alignment",
    __doc__,
    PRESETS,
    compute,
    draw,
    summary,
    parts=lambda cfg: len(cfg["scales"]),
    x64=True,
)

if __name__ == "__main__":
    main(FIGURE)
