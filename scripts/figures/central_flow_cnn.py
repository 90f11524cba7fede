"""The edge of stability and the central flow on a CNN (Cohen et al. 2021; Cohen, Damian et al. 2024), with
square loss and with cross-entropy.

A CNN (`models.CNN`: 3 x 3 convolutions with tanh, 2 x 2 average pools, a dense head to one output per
class) trained by full-batch GD at each eta of its loss, against gradient flow and the central flow
(`flows.central_flow`), in gradient-flow time t = eta k (`analysis.compare.edge_of_stability`). One row a
loss (square loss on one-hot targets, L = (1/2n) sum ||f - e_y||^2; the mean softmax cross-entropy):

- (a) the loss: GD as it is (thin) and averaged over a centred window of `window` steps, gradient flow, and
  the central flow's prediction of GD's averaged loss, L + (1/2) <Sigma, H>;
- (b) the sharpness eta lambda_max(H) of GD (at every step: its overshoots past the edge last a few steps),
  gradient flow and the central flow, with the edge at 2;
- (c) the distance from GD's averaged parameters to the central flow and to gradient flow.

Data: quick, scikit-learn's 8 x 8 digits 0-3 (the first n of a fixed shuffle, a fraction `flip` of the
labels moved to the next class, fixed draw); paper, CIFAR-10's first 4 classes, 1,000 examples, as the
central-flow paper, read from the folder `--set cifar10=PATH` names (or $SHARPFLOW_CIFAR10; nothing is
downloaded). float32.

Estimators: as `central_flow.py`: losses and distances exact, lambda_max(H) by 40 Lanczos steps
(`hessian.lambda_max`, at every GD step), single deterministic runs.
"""

import numpy as np
from common import Figure, main, tanh_cnn

from analysis import compare, plots

LOSSES = ("square", "cross_entropy")
PRESETS = {
    "smoke": dict(data="digits", cifar10=None, n=16, channels=(2,), flip=0.2,
                  etas={"square": (0.5,), "cross_entropy": (1.0,)}, t1=2.0, saves=2, window=2, num_eigs=1),
    "quick": dict(data="digits", cifar10=None, n=128, channels=(4, 8), flip=0.2,
                  etas={"square": (0.7, 0.5), "cross_entropy": (2.1, 1.05)}, t1=294.0, saves=42,
                  window=40, num_eigs=2),
    "paper": dict(data="cifar10", cifar10=None, n=1000, channels=(32, 32), flip=0.0,
                  etas={"square": (0.08, 0.04, 0.02), "cross_entropy": (0.16, 0.08, 0.04)}, t1=200.0,
                  saves=100, window=100, num_eigs=3),
}  # fmt: skip


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each (loss, eta)."""
    out = {}
    for loss in LOSSES:
        P = tanh_cnn(cfg, loss)  # the same initialisation for both losses
        out[loss] = {"p": np.asarray(P.num_params), "n": np.asarray(P.n)}
        for eta in cfg["etas"][loss]:
            out[loss][str(eta)] = part(
                f"{loss}-eta{eta}",
                lambda P=P, eta=eta: compare.edge_of_stability(
                    P, P.params, eta=eta, t1=cfg["t1"], num_saves=cfg["saves"], window=cfg["window"],
                    num_eigs=cfg["num_eigs"], sharpness_every=1,
                    part=lambda label, fn, loss=loss, eta=eta: part(f"{loss}-eta{eta}-{label}", fn),
                ),
            )  # fmt: skip
    return out


def draw(cfg, r, path):
    fig, axes = plots.figure(3, len(LOSSES), width=4.2, height=3.2)
    for row, loss in enumerate(LOSSES):
        runs = {eta: r[loss][str(eta)] for eta in cfg["etas"][loss]}
        name = "square loss" if loss == "square" else "cross-entropy"
        plots.edge_of_stability(
            axes[3 * row : 3 * row + 3], runs, name=name, tags="abc" if row == 0 else "def"
        )
    return plots.save(fig, path)


def summary(cfg, r):
    for loss in LOSSES:
        print(f"{loss}: CNN with p = {int(r[loss]['p'])} on n = {int(r[loss]['n'])} images ({cfg['data']})")
        for eta in cfg["etas"][loss]:
            print(f"  eta = {eta}: {compare.edge_summary(r[loss][str(eta)], eta, cfg['window'])}")


FIGURE = Figure(
    "central_flow_cnn", __doc__, PRESETS, compute, draw, summary,
    parts=lambda cfg: sum(len(cfg["etas"][loss]) for loss in LOSSES),
)  # fmt: skip

if __name__ == "__main__":
    main(FIGURE)
