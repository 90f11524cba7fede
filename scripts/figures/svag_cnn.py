"""SGD against its SDE and SVAG on a CNN with cross-entropy (Li, Malladi & Arora 2021): where the SDE
describes SGD, and where SVAG brings it back.

A tanh CNN (`models.CNN`: 3 x 3 convolutions, 2 x 2 average pools, a dense head to 4 logits) on the digits
0-3 as 8 x 8 images (the first n of a fixed shuffle for training, the rest held out), the mean softmax
cross-entropy. Minibatch SGD (B = `batch`) at a small and a large step size against SVAG at each l of `ls`
(`flows.svag`, l = 1 is SGD) and the SGD SDE (`flows.sgd_sde`, Euler, 32 substeps), each an ensemble of
`--seeds` runs (`analysis.compare.svag_vs_sde`). Observables that scale (none costs more than 40
Hessian-vector products a call, none p):

- the training loss (exact), the test accuracy on the held-out images (`analysis.metrics.Accuracy`, one
  forward pass), tr H by one Hutchinson probe a seed (`hessian.TraceProbe`: unbiased for the ensemble mean;
  the probe's variance is spread over the seeds and lies inside the 95% band drawn) and lambda_max(H) by 40
  Lanczos steps (`hessian.lambda_max`);
- each against t (rows: the two step sizes), SGD thick, SVAG thin, the SDE dashed with its 95% band;
- the last column: the weak gap sup_t |E loss(SVAG_l) - E loss(SDE)| (noise floor removed, 95% band, two
  independent ensembles) against 1/l, l = 1 being SGD. A gap above its band is resolved: SGD (or SVAG at
  that l) departs from the SDE there; within its band the seeds cannot tell them apart. The summary gives
  the gap of tr H too: one probe a seed makes its band wide (about +-1.8 at 64 seeds in the quick preset,
  against tr H ~ 5), so tr H resolves no gap at that size; the loss's band is 100x narrower.

Paper preset: CIFAR-10's first 4 classes (`--set cifar10=PATH` or $SHARPFLOW_CIFAR10), a wider CNN, sized for
a GPU.
Its measured per-step costs are in the README's paper-preset table. lambda_max is off there
(`lambda_max=False`), `--set lambda_max=True` turns it on.

Estimators: as listed above: the loss and test accuracy exactly, tr H by one Hutchinson probe a seed
(`hessian.TraceProbe`: unbiased, its variance inside the band), lambda_max by 40 Lanczos steps
(`hessian.lambda_max`, no sampling noise).
"""

import jax
import numpy as np
from common import Figure, images, main

from analysis import compare, hessian, metrics, plots
from models import CNN, Problem

PRESETS = {
    "smoke": dict(data="digits", cifar10=None, n=16, test=16, channels=(2,), batch=4, etas=[0.1, 0.4],
                  t1=0.8, ls=[1, 2], seeds=4, saves=2, lambda_max=True),
    "quick": dict(data="digits", cifar10=None, n=128, test=512, channels=(4, 8), batch=8, etas=[0.1, 1.0],
                  t1=6.0, ls=[1, 2, 4], seeds=64, saves=6, lambda_max=True),
    "paper": dict(data="cifar10", cifar10=None, n=1024, test=1024, channels=(32, 64), batch=32,
                  etas=[0.05, 0.5], t1=10.0, ls=[1, 2, 4, 8], seeds=256, saves=10, lambda_max=False),
}  # fmt: skip
SDE_SUBSTEPS = 32
SEEDS_AT_ONCE = 256  # seeds a compiled call
STATS = {"loss": "training loss", "accuracy": "test accuracy", "trace_H": "tr H", "lambda_max": "λ_max(H)"}


def problem(cfg):
    """The training problem (cross-entropy) and the held-out images' accuracy metric."""
    X, y = images(cfg["data"], cfg["n"] + cfg["test"], folder=cfg["cifar10"])
    model = CNN(X.shape[1:], cfg["channels"], outputs=4, activation="tanh", key=jax.random.key(1))
    P = Problem(model, X[: cfg["n"]], y[: cfg["n"]], loss="cross_entropy")
    return P, metrics.Accuracy(X[cfg["n"] :], y[cfg["n"] :])


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each eta."""
    P, accuracy = problem(cfg)

    def observables(seed_key):
        probe = hessian.TraceProbe(jax.random.fold_in(seed_key, 1))
        extra = {"lambda_max": hessian.lambda_max} if cfg["lambda_max"] else {}
        return {"accuracy": accuracy, "trace_H": probe} | extra

    out = {"p": np.asarray(P.num_params)}
    for eta in cfg["etas"]:
        out[str(eta)] = part(
            f"eta{eta}",
            lambda eta=eta: compare.svag_vs_sde(
                P, P.params, eta=eta, ls=cfg["ls"], t1=cfg["t1"], batch_size=cfg["batch"],
                key=jax.random.key(2), seeds=cfg["seeds"], num_saves=cfg["saves"], metrics=observables,
                substeps=SDE_SUBSTEPS, seeds_at_once=SEEDS_AT_ONCE, progress=progress,
                part=lambda label, fn, eta=eta: part(f"eta{eta}-{label}", fn),
            ),
        )  # fmt: skip
    return out


def draw(cfg, r, path):
    stats = {m: label for m, label in STATS.items() if m != "lambda_max" or cfg["lambda_max"]}
    fig, axes = plots.figure(len(stats) + 1, len(cfg["etas"]), width=3.2, height=2.8)
    ncols = len(stats) + 1
    for row, eta in enumerate(cfg["etas"]):
        re = r[str(eta)]
        t = re["t"]
        for col, (m, label) in enumerate(stats.items()):
            ax = axes[row * ncols + col]
            for i, ell in enumerate(cfg["ls"]):
                name = "SGD (l = 1)" if ell == 1 else f"SVAG, l = {ell}"
                plots.band(ax, t, re[f"svag{ell}"][m], re[f"svag{ell}"][f"{m}_band"], color=f"C{i}",
                           lw=2 if ell == 1 else 1, label=name)  # fmt: skip
            plots.band(ax, t, re["sde"][m], re["sde"][f"{m}_band"], color="k", ls="--", label="SGD SDE")
            ax.set(
                xlabel="t = k η / l",
                ylabel=label,
                title=f"({chr(97 + row * ncols + col)}) η = {eta}: {label}",
            )
        ax = axes[row * ncols + ncols - 1]
        inv = 1 / np.asarray(cfg["ls"], float)
        gap = re["gap"]["loss"]
        ax.errorbar(inv, gap[:, 0], yerr=gap[:, 1], fmt="o-", capsize=3, label="training loss (95% band)")
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(inv, [f"1/{ell}" if ell > 1 else "1" for ell in cfg["ls"]], minor=False)
        ax.set_xticks([], minor=True)
        ax.set(xlabel="1 / l (l = 1: SGD)", ylabel="sup_t |E loss(SVAG_l) − E loss(SDE)|",
               title=f"({chr(97 + row * ncols + ncols - 1)}) η = {eta}: weak gap to the SDE")  # fmt: skip
        ax.legend(fontsize=6)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend for the runs, below the panels
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=7, frameon=False)
    return plots.save(fig, path)


def summary(cfg, r):
    print(
        f"CNN with p = {int(r['p'])}, cross-entropy, n = {cfg['n']}, B = {cfg['batch']}, {cfg['seeds']} seeds"
    )
    for eta in cfg["etas"]:
        re = r[str(eta)]
        for m in ("loss", "trace_H"):
            gap = re["gap"][m]
            cells = ", ".join(f"l={ell}: {g:.2e} +- {b:.1e}" for ell, (g, b) in zip(cfg["ls"], gap))
            verdict = "SGD departs from its SDE" if gap[0, 0] > gap[0, 1] else "SGD is within the SDE's band"
            print(f"eta = {eta}, {STATS[m]}: weak gap to the SDE {cells}; {verdict}")
        acc = {name: float(re[name]["accuracy"][-1]) for name in ("svag1", "sde")}
        print(f"eta = {eta}: test accuracy at t1, SGD {acc['svag1']:.3f}, SDE {acc['sde']:.3f}")


FIGURE = Figure("svag_cnn", __doc__, PRESETS, compute, draw, summary, parts=lambda cfg: len(cfg["etas"]))

if __name__ == "__main__":
    main(FIGURE)
