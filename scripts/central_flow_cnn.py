"""The edge of stability and the central flow on a CNN (Cohen et al. 2021; Cohen, Damian et al. 2024), with
square loss and with cross-entropy.

A CNN (`models.CNN`: 3 x 3 convolutions with tanh, 2 x 2 average pools, a dense head to one output per
class) trained by full-batch GD at each eta of its loss, against gradient flow and the central flow
(`flows.central_flow`), in gradient-flow time t = eta k (`analysis.compare.edge_of_stability`). One row a
loss (square loss on one-hot targets, L = (1/2n) sum ||f - e_y||^2; the mean softmax cross-entropy):

- (a) the loss: GD as it is (thin) and averaged over a centred window of `window` steps, gradient flow, and
  the central flow's prediction of GD's averaged loss, L + (1/2) <Sigma, H>;
- (b) the sharpness eta lambda_max(H) of GD, gradient flow and the central flow, with the edge at 2;
- (c) the distance from GD's averaged parameters to the central flow and to gradient flow.

Data: quick, scikit-learn's 8 x 8 digits 0-3 (the first n of a fixed shuffle, a fraction `flip` of the
labels moved to the next class, fixed draw); paper, CIFAR-10's first 4 classes, 1,000 examples, as the
central-flow paper, read from the folder `--set cifar10=PATH` names (or $SHARPFLOW_CIFAR10; nothing is
downloaded). float32.

Measured (quick, this 2-core CPU): see the README's figure table; the paper preset is sized for a GPU (its
per-step cost is measured by `scripts/gpu.py`).
"""

import jax
import numpy as np
from common import Figure, main

from analysis import compare, plots
from models import CNN, Problem, data

LOSSES = ("square", "cross_entropy")
PRESETS = {
    "smoke": dict(data="digits", cifar10=None, n=16, channels=(2,), flip=0.2,
                  etas={"square": (0.5,), "cross_entropy": (1.0,)}, t1=2.0, saves=2, window=2, num_eigs=1),
    "quick": dict(data="digits", cifar10=None, n=128, channels=(4, 8), flip=0.2,
                  etas={"square": (0.7, 0.6, 0.5), "cross_entropy": (2.1, 1.4, 1.05)}, t1=147.0, saves=21,
                  window=40, num_eigs=2),
    "paper": dict(data="cifar10", cifar10=None, n=1000, channels=(32, 32), flip=0.0,
                  etas={"square": (0.08, 0.04, 0.02), "cross_entropy": (0.16, 0.08, 0.04)}, t1=200.0,
                  saves=100, window=100, num_eigs=3),
}  # fmt: skip


def problem(cfg, loss):
    """The first n images of 4 classes, `flip` of the labels moved to the next class, and a tanh CNN with one
    output per class (the same initialisation for both losses)."""
    if cfg["data"] == "digits":
        X, y = data.digits(classes=(0, 1, 2, 3), images=True, labels=True)
        order = jax.random.permutation(jax.random.key(0), X.shape[0])[: cfg["n"]]
        X, y = X[order], y[order]
    else:
        try:
            X, y = data.cifar10(cfg["cifar10"], classes=4, n=cfg["n"])
        except ValueError as e:
            raise SystemExit(
                f"{e}\nThe paper preset reads CIFAR-10 from a folder: unpack the 'CIFAR-10 python version' "
                "archive and pass --set cifar10=PATH (or set SHARPFLOW_CIFAR10=PATH)"
            ) from e
    flip = jax.random.permutation(jax.random.key(3), X.shape[0])[: round(cfg["flip"] * X.shape[0])]
    y = y.at[flip].set((y[flip] + 1) % 4)
    if loss == "square":
        y = jax.nn.one_hot(y, 4, dtype=X.dtype)
    model = CNN(X.shape[1:], cfg["channels"], outputs=4, activation="tanh", key=jax.random.key(1))
    return Problem(model, X, y, loss=loss)


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each (loss, eta)."""
    out = {}
    for loss in LOSSES:
        P = problem(cfg, loss)
        out[loss] = {"p": np.asarray(P.num_params), "n": np.asarray(P.n)}
        for eta in cfg["etas"][loss]:
            out[loss][str(eta)] = part(
                f"{loss}-eta{eta}",
                lambda P=P, eta=eta: compare.edge_of_stability(
                    P, P.params, eta=eta, t1=cfg["t1"], num_saves=cfg["saves"], window=cfg["window"],
                    num_eigs=cfg["num_eigs"],
                ),
            )  # fmt: skip
            if progress:
                print(f"{loss}, eta = {eta}: done", flush=True)
    return out


def draw(cfg, r, path):
    fig, axes = plots.figure(3, len(LOSSES), width=4.2, height=3.2)
    for row, loss in enumerate(LOSSES):
        ax_loss, ax_sharp, ax_dist = axes[3 * row : 3 * row + 3]
        for c, eta in enumerate(cfg["etas"][loss]):
            e = r[loss][str(eta)]
            color = f"C{c}"
            k = np.arange(e["gd_loss"].shape[0]) * eta
            ax_loss.plot(k, e["gd_loss"], color=color, lw=0.4, alpha=0.4)
            ax_loss.plot(e["t"], e["gd_mean_loss"], color=color, lw=2, label=f"GD averaged, η = {eta}")
            ax_loss.plot(e["t"], e["cf_predicted"], "--", color="k", lw=1.2, dashes=(4, 2 + c))
            ax_loss.plot(e["t"], e["gf_loss"], ":", color=color, lw=1.2)
            ax_sharp.plot(e["t"], eta * e["gd_lambda"], color=color, lw=2, label=f"GD, η = {eta}")
            ax_sharp.plot(e["t"], eta * e["cf_lambda"], "--", color="k", lw=1.2, dashes=(4, 2 + c))
            ax_sharp.plot(e["t"], eta * e["gf_lambda"], ":", color=color, lw=1.2)
            ax_dist.plot(e["t"], e["cf_distance"], "--", color=color, label=f"to central flow, η = {eta}")
            ax_dist.plot(e["t"], e["gf_distance"], ":", color=color, label=f"to gradient flow, η = {eta}")
        # one legend entry per line style, beside the per-eta colours
        ax_loss.plot([], [], "k--", lw=1.2, label="central flow (prediction)")
        ax_loss.plot([], [], "k:", lw=1.2, label="gradient flow (colour: its η)")
        ax_sharp.plot([], [], "k--", lw=1.2, label="central flow")
        ax_sharp.plot([], [], "k:", lw=1.2, label="gradient flow")
        ax_sharp.axhline(2.0, color="C3", lw=1.5, ls="-.", label="edge: η λ = 2")
        name = "square loss" if loss == "square" else "cross-entropy"
        a, b, c = "abc" if row == 0 else "def"
        ax_loss.set(xlabel="t = η k", ylabel="training loss", yscale="log", title=f"({a}) {name}: loss")
        ax_sharp.set(xlabel="t = η k", ylabel="η λ_max(H)", title=f"({b}) {name}: sharpness")
        ax_dist.set(xlabel="t = η k", ylabel="‖θ − mean GD θ‖", title=f"({c}) {name}: distance from mean GD")
        for ax in (ax_loss, ax_sharp, ax_dist):
            ax.legend(fontsize=6)
    return plots.save(fig, path)


def summary(cfg, r):
    for loss in LOSSES:
        print(f"{loss}: CNN with p = {int(r[loss]['p'])} on n = {int(r[loss]['n'])} images ({cfg['data']})")
        for eta in cfg["etas"][loss]:
            print(f"  eta = {eta}: {compare.edge_summary(r[loss][str(eta)], eta, cfg['window'])}")


FIGURE = Figure("central_flow_cnn", __doc__, PRESETS, compute, draw, summary)

if __name__ == "__main__":
    main(FIGURE)
