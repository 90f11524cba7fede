"""SGD at the edge of stability on a CNN: the full-batch sharpness and the batch sharpness along SGD against
2 / eta, across batch sizes, with the minibatch SDE and the central flow beside it (Andreyev & Beneventano
2024; Cohen, Damian et al. 2024).

The tanh CNN of `central_flow_cnn.py` (square loss) trained by `flows.sgd` at one step size eta, past
2 / lambda_max of the full-batch Hessian along the way, at each batch size B (B = n is GD), several seeds, in
t = eta k:

- (a) the full-batch loss: SGD's (solid, mean and a band of one standard deviation over seeds), the
  minibatch SDE's (`flows.sgd_sde`, dashed, B < n) and the central flow's prediction of GD's averaged loss
  (`flows.central_flow`, black dotted);
- (b) the full-batch sharpness eta lambda_max(H) / 2 along SGD (1 is GD's edge);
- (c) the batch sharpness eta E_B[lambda_max(H_B)] / 2 along SGD (`hessian.batch_sharpness`, the batches
  drawn as SGD draws them), the quantity SGD holds near 1 where it runs at the edge.

Data: quick, scikit-learn's 8 x 8 digits 0-3 (the first n of a fixed shuffle, a fraction `flip` of the
labels moved to the next class); paper, CIFAR-10's first 4 classes, read from the folder `--set
cifar10=PATH` names (or $SHARPFLOW_CIFAR10; nothing is downloaded). float32.

Estimators: losses exact; lambda_max(H) by 40 Lanczos steps (`hessian.lambda_max`); the batch sharpness by
`hessian.batch_sharpness` (`num_batches` minibatches, 40 Lanczos steps each); bands over `seeds` seeds (SGD's
batches and the SDE's Brownian paths). The summary prints, per batch size, the mean over the run's second half
of both sharpnesses (over seeds) and the relative gap of the SDE's and the central flow's loss to SGD's mean.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main, tanh_cnn

import flows
from analysis import hessian, plots

PRESETS = {
    "smoke": dict(data="digits", cifar10=None, n=16, channels=(2,), flip=0.2, eta=0.5, batch_sizes=(4, 16),
                  seeds=2, steps=8, saves=4, num_batches=2, num_eigs=1),
    "quick": dict(data="digits", cifar10=None, n=128, channels=(4, 8), flip=0.2, eta=0.7,
                  batch_sizes=(8, 32, 128), seeds=4, steps=1200, saves=24, num_batches=8, num_eigs=2),
    "paper": dict(data="cifar10", cifar10=None, n=1000, channels=(32, 32), flip=0.0, eta=0.08,
                  batch_sizes=(50, 200, 1000), seeds=8, steps=2000, saves=50, num_batches=16, num_eigs=3),
}  # fmt: skip


def times(cfg):
    """The saved steps k and their times t = eta k."""
    ks = np.arange(0, cfg["steps"] + 1, cfg["steps"] // cfg["saves"])
    return ks, ks * cfg["eta"]


def one_batch_size(P, cfg, B):
    """SGD (GD at B = n) and, for B < n, the SDE, over seeds; both sharpnesses at SGD's saves."""
    eta, steps = cfg["eta"], cfg["steps"]
    ks, ts = times(cfg)
    every = steps // cfg["saves"]
    out = {k: [] for k in ("loss", "sharpness", "batch_sharpness", "sde_loss")}
    for seed in range(cfg["seeds"]):
        key = jax.random.key(seed)
        run = flows.sgd(P, P.params, steps=steps, eta=eta, batch_size=B, key=key, save_every=every)
        out["loss"].append(np.asarray(run.stats["loss"]))
        saved = [run.at(i) for i in range(len(ks))]
        out["sharpness"].append([float(hessian.lambda_max(P, p)) for p in saved])
        out["batch_sharpness"].append(
            [
                float(
                    hessian.batch_sharpness(
                        P, p, B, key=jax.random.key(1000 + i), num_batches=cfg["num_batches"]
                    )
                )
                for i, p in enumerate(saved)
            ]
        )
        if B < P.n:
            sde = flows.sgd_sde(
                P, P.params, t1=float(ts[-1]), eta=eta, batch_size=B, key=jax.random.fold_in(key, 1),
                ts=jnp.asarray(ts, P.X.dtype), save_params=False,
            )  # fmt: skip
            out["sde_loss"].append(np.asarray(sde.stats["loss"]))
    return {k: np.asarray(v) for k, v in out.items() if v}


def compute(cfg, progress, part):
    P = tanh_cnn(cfg, "square")
    _, ts = times(cfg)
    out = {
        str(B): part(f"B{B}", lambda B=B: one_batch_size(P, cfg, B)) for B in cfg["batch_sizes"] if B <= P.n
    }

    def central():
        cf = flows.central_flow(
            P, P.params, eta=cfg["eta"], t1=float(ts[-1]), ts=jnp.asarray(ts, P.X.dtype),
            num_eigs=cfg["num_eigs"], save_params=False,
        )  # fmt: skip
        return {
            "predicted": np.asarray(cf.stats["predicted_loss"]),
            "lambda": np.asarray(cf.stats["eigenvalues"][:, 0]),
        }

    out["central"] = part("central flow", central)
    out["t"] = ts
    return out


def draw(cfg, r, path):
    fig, axes = plots.figure(3, 1, width=4.0, height=3.2)
    ax_loss, ax_full, ax_batch = axes
    t, eta = r["t"], cfg["eta"]
    for c, B in enumerate(b for b in cfg["batch_sizes"] if str(b) in r):
        e, color = r[str(B)], f"C{c}"
        name = f"B = {B}" + (" (GD)" if "sde_loss" not in e else "")
        plots.band(ax_loss, t, e["loss"].mean(0), e["loss"].std(0), color=color, label=f"SGD, {name}")
        if "sde_loss" in e:
            plots.band(ax_loss, t, e["sde_loss"].mean(0), e["sde_loss"].std(0), color=color, ls="--")
        for ax, key in ((ax_full, "sharpness"), (ax_batch, "batch_sharpness")):
            v = eta * e[key] / 2
            plots.band(ax, t, v.mean(0), v.std(0), color=color, label=name)
    ax_loss.plot(t, r["central"]["predicted"], "k:", lw=1.6, label="central flow (GD's average)")
    ax_loss.plot([], [], "k--", label="minibatch SDE")
    ax_full.plot(t, eta * r["central"]["lambda"] / 2, "k:", lw=1.6, label="central flow")
    for ax in (ax_full, ax_batch):
        ax.axhline(1.0, color="0.4", lw=1.0, ls="-.", label="edge: η λ = 2")
    ax_loss.set(xlabel="t = η k", ylabel="training loss", yscale="log", title=f"(a) loss, η = {eta}")
    ax_full.set(xlabel="t = η k", ylabel="η λ_max(H) / 2", title="(b) full-batch sharpness")
    ax_batch.set(xlabel="t = η k", ylabel="η E λ_max(H_B) / 2", title="(c) batch sharpness")
    for ax in axes:
        ax.legend(fontsize=6, loc="best", framealpha=0.8)
    return plots.save(fig, path)


def summary(cfg, r):
    t, eta = r["t"], cfg["eta"]
    late = t >= t[-1] / 2
    for B in (b for b in cfg["batch_sizes"] if str(b) in r):
        e = r[str(B)]
        sgd = e["loss"].mean(0)
        full = float(np.mean(eta * e["sharpness"][:, late] / 2))
        batch = float(np.mean(eta * e["batch_sharpness"][:, late] / 2))
        gaps = [f"central flow {np.mean(np.abs(r['central']['predicted'][late] / sgd[late] - 1)):.1%}"]
        if "sde_loss" in e:
            gaps.insert(0, f"SDE {np.mean(np.abs(e['sde_loss'].mean(0)[late] / sgd[late] - 1)):.1%}")
        print(
            f"B = {B}: over the second half eta lambda_max / 2 = {full:.2f}, batch sharpness x eta / 2 = "
            f"{batch:.2f}; loss gap to SGD's mean: {', '.join(gaps)}"
        )


FIGURE = Figure(
    "sgd_edge_cnn", __doc__, PRESETS, compute, draw, summary, parts=lambda cfg: len(cfg["batch_sizes"]) + 1
)

if __name__ == "__main__":
    main(FIGURE)
