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
number of distinct directions, for each lambda.
"""

import jax

jax.config.update("jax_enable_x64", True)  # norms from 1e-6 upward

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import no_seeds, parser, report  # noqa: E402

from analysis import features, plots, store  # noqa: E402
from flows import gd  # noqa: E402
from models import Problem, TwoLayerNet  # noqa: E402

PRESETS = {
    "quick": dict(n=20, width=30, scales=[1e-6, 1.0], eta=0.05, steps=1200, save_every=10),
    "paper": dict(n=100, width=100, scales=[1e-8, 1e-3, 1.0], eta=0.01, steps=10000, save_every=20),
}
BETA = [1.0, 0.5]


def problem(cfg, scale):
    kx, kn = jax.random.split(jax.random.key(0))
    X = jax.random.normal(kx, (cfg["n"], 2))
    net = TwoLayerNet(2, cfg["width"], key=kn, activation="relu", init_scale=scale, outer="balanced")
    return Problem(net, X, X @ jnp.asarray(BETA))


def compute(cfg, progress):
    out = {}
    for scale in cfg["scales"]:
        P = problem(cfg, scale)
        traj = gd(P, P.params, steps=cfg["steps"], eta=cfg["eta"], save_every=cfg["save_every"])
        out[f"{scale}/t"] = np.asarray(traj.ts)
        out[f"{scale}/W"] = np.asarray(traj.params.W)
        out[f"{scale}/a"] = np.asarray(traj.params.a)
        out[f"{scale}/loss"] = np.asarray(traj.stats["loss"])
        if progress:
            print(f"lambda = {scale}: final loss {float(traj.stats['loss'][-1]):.3g}", flush=True)
    P = problem(cfg, cfg["scales"][0])
    plus, minus = features.extremal_directions(P.X, P.y)
    out["plus"], out["minus"] = plus, minus
    return out


def summary(cfg, r, scale):
    """(t_end, index of t_end, largest angle of an active neuron to its predicted direction, #directions)."""
    t, loss = r[f"{scale}/t"], r[f"{scale}/loss"]
    t_end = features.alignment_end(t, loss)
    k = int(np.searchsorted(t, t_end)) if np.isfinite(t_end) else len(t) // 4
    W, a = r[f"{scale}/W"][k], r[f"{scale}/a"][k]
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
        t, W, a, loss = (r[f"{scale}/{k}"] for k in ("t", "W", "a", "loss"))
        t_end, k, _, _ = summary(cfg, r, scale)
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


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    no_seeds(args)
    cfg = dict(PRESETS[args.preset])
    r = store.cached(
        args.results,
        "early_alignment",
        cfg,
        lambda: compute(cfg, not args.no_progress),
        recompute=args.recompute,
    )
    fig = draw(cfg, r, args.out / "early_alignment.png")
    for scale in cfg["scales"]:
        t_end, _, angle, count = summary(cfg, r, scale)
        print(
            f"lambda = {scale}: end of early alignment t = {t_end:.3g}; active neurons within {angle:.2f} "
            f"degrees of the predicted directions; {count} distinct directions"
        )
    report(fig, [store.path(args.results, "early_alignment", cfg)])


if __name__ == "__main__":
    main()
