"""The slow flow of tr H on a real network: an MLP with two tanh hidden layers on scikit-learn's digits.

Quick preset: digits 3 vs 8 as a +-1 regression target, n = 64 training images, an eqx.nn.MLP 64-64-64-1
with tanh (p = 8,385), square loss. From the initialisation mapped onto the zero-loss manifold by Phi,
label-noise GD (sigma = 0.5, full batch) at two step sizes, `--seeds` paths each, its iterates mapped by Phi,
against the Riemannian flow of tr H / 4, in the slow time tau = eta^2 sigma^2 k / n:

- (a) tr H, (b) lambda_max(H) (Lanczos), (c) test accuracy on the held-out images of the two classes,
  label-noise GD as mean and 95% band over seeds, the flow as a line;
- (d) the weak error sup_tau |E tr H(Phi(theta_k)) - tr H(flow)| against eta, with slope 1.

The paper preset is sized for a GPU: all ten digits with a one-hot vector output (N = 10 n constraints),
n = 1,024, an MLP 64-128-128-10 (p = 26,122): the flow runs matrix-free. The test accuracy
is a metric that carries its own data (`analysis.metrics.Accuracy`, an Equinox module), so nothing
recompiles and no global holds the test set. The accuracy panel counts in steps of one test image in m
(the summary gives the counts): at the quick size a change of 0.01 is three images.

Estimators: tr H = tr G on the manifold, exact from per-example gradients
(`Problem.gauss_newton_trace`, N gradients) at each Phi-mapped iterate; lambda_max(H) by 40 Lanczos steps
(`hessian.lambda_max`, 40 Hessian-vector products, converged to its top eigenvalue on these nets); the test
accuracy exact (one forward pass). None adds sampling noise: the bands are the seeds' spread.
"""

import jax
import numpy as np
from common import Figure, main

from analysis import compare, hessian, metrics, plots
from models import MLP, Problem, data

PRESETS = {
    "smoke": dict(classes=[3, 8], n=12, width=6, sigma=0.5, etas=[0.1], tau1=0.01, num_saves=2, seeds=2),
    "quick": dict(
        classes=[3, 8], n=64, width=64, sigma=0.5, etas=[0.1, 0.05], tau1=0.2, num_saves=4, seeds=4
    ),
    "paper": dict(
        classes=None,
        n=1024,
        width=128,
        sigma=0.5,
        etas=[0.05, 0.025],
        tau1=0.5,
        num_saves=10,
        seeds=32,
    ),
}


def problem(cfg):
    classes = None if cfg["classes"] is None else tuple(cfg["classes"])
    X, y = data.digits(classes=classes, one_hot=classes is None)
    (train, test) = data.train_test_split(jax.random.key(0), X, y, n_train=cfg["n"])
    outputs = 1 if y.ndim == 1 else y.shape[1]
    return Problem(
        MLP(X.shape[1], cfg["width"], outputs=outputs, key=jax.random.key(1)), *train
    ), metrics.Accuracy(*test)


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each eta."""
    P, accuracy = problem(cfg)
    observables = {"trace_H": Problem.gauss_newton_trace, "lambda_max": hessian.lambda_max}
    observables["accuracy"] = accuracy
    r = compare.label_noise_slow_clock(
        P,
        P.params,
        etas=cfg["etas"],
        sigma=cfg["sigma"],
        tau1=cfg["tau1"],
        key=jax.random.key(2),
        seeds=cfg["seeds"],
        num_saves=cfg["num_saves"],
        observables=observables,
        part=part,
    )
    return r | {"p": np.asarray(P.num_params), "test": np.asarray(accuracy.X.shape[0])}


LABELS = {"trace_H": "tr H", "lambda_max": "λ_max(H)", "accuracy": "test accuracy"}


def draw(cfg, r, path):
    fig, axes = plots.figure(4, width=3.8)
    m = int(r["test"])
    for tag, ax, (name, label) in zip("abc", axes, LABELS.items()):
        for i, eta in enumerate(cfg["etas"]):
            s = r["eta"][str(eta)][name]
            plots.band(ax, r["tau"][str(eta)], s["sgd_mean"], s["sgd_band"], marker="o", ms=3,
                       color=f"C{i + 1}", label=f"label-noise GD, η = {eta}, Φ-mapped")  # fmt: skip
        eta = str(cfg["etas"][-1])
        ax.plot(r["tau"][eta], r["eta"][eta][name]["flow"], "k", lw=2, label="Riemannian flow of tr H / 4")
        ylabel = f"{label} (of {m} images)" if name == "accuracy" else label
        ax.set(xlabel="τ = η² σ² k / n", ylabel=ylabel, title=f"({tag}) {label}")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.locator_params(axis="x", nbins=5)
    axes[0].legend(fontsize=7)
    etas = np.asarray(cfg["etas"])
    errs = np.array([float(r["eta"][str(eta)]["trace_H"]["weak_error"]) for eta in cfg["etas"]])
    bands = np.array([float(r["eta"][str(eta)]["trace_H"]["weak_error_band"]) for eta in cfg["etas"]])
    ax = axes[3]
    slope = f"slope {float(r['order']['trace_H']):.2f}" if len(etas) > 1 else "one step size: no slope"
    ax.errorbar(etas, np.maximum(errs, 1e-12), yerr=bands, fmt="o-", capsize=3, label=f"{slope} (95% band)")
    if len(etas) > 1:
        ax.plot(etas, errs[-1] * etas / etas[-1], "k:", label="slope 1")
    ax.set(xscale="log", yscale="log", xlabel="η", ylabel="sup_τ |E tr H(Φ(θ_k)) − tr H(flow)|",
           title="(d) weak error of tr H")  # fmt: skip
    ax.legend(fontsize=7)
    return plots.save(fig, path)


def summary(cfg, r):
    flow = {name: r["eta"][str(cfg["etas"][-1])][name]["flow"] for name in LABELS}
    moves = ", ".join(f"{k} {v[0]:.3f} -> {v[-1]:.3f}" for k, v in flow.items())
    m = int(r["test"])
    right = np.round(np.asarray(flow["accuracy"])[[0, -1]] * m).astype(int)
    print(
        f"p = {int(r['p'])}; flow to tau = {cfg['tau1']:g}: {moves} "
        f"({right[0]} -> {right[1]} of {m} test images)"
    )
    for eta in cfg["etas"]:
        at = ", ".join(f"{k} {r['eta'][str(eta)][k]['sgd_mean'][-1]:.3f}" for k in LABELS)
        error = float(r["eta"][str(eta)]["trace_H"]["weak_error"])
        print(f"label-noise GD eta={eta}: at tau1 {at}; weak error of tr H {error:.4f}")
    if len(cfg["etas"]) > 1:
        print(f"weak-error order in eta: {float(r['order']['trace_H']):.2f} (theory: 1)")


FIGURE = Figure(
    "slow_flow_real_net",
    __doc__,
    PRESETS,
    compute,
    draw,
    summary,
    x64=True,
    parts=lambda cfg: len(cfg["etas"]),
)

if __name__ == "__main__":
    main(FIGURE)
