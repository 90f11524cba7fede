"""GD at the edge of stability against gradient flow and the central flow (Cohen et al. 2024) on digits.

An MLP 64-32-32-1 with tanh (`models.MLP`, p = 3,169) on scikit-learn's digits 3 vs 8 (all 357 images, +-1
targets) with 20% of the labels flipped, square loss. Full-batch GD at each eta, in gradient-flow time
t = eta k:

- (a) the loss: GD as it is (thin) and time-averaged over a centred window of `window` steps, gradient flow,
  and the central flow's prediction of GD's time-averaged loss, L + (1/2) <Sigma, H>;
- (b) the sharpness eta lambda_max(H) of GD, gradient flow and the central flow, with the edge eta lambda = 2;
- (c) the distance from GD's time-averaged parameters to gradient flow and to the central flow.

With clean labels GD never holds at the edge on this problem; with the flips its sharpness reaches 2 / eta and
stays around it, in cycles of catapults (loss spikes) tens of steps apart, so GD's loss is averaged over a
window of 200 steps.

`scripts/tools/check_central_flow_reference.py` holds `flows.central_flow` against the reference
implementation.

Estimators: the losses and distances exactly; lambda_max(H) by 40 Lanczos steps (`hessian.lambda_max`,
40 Hessian-vector products a save, no sampling noise; the central flow's own top eigenvalues are tracked by
`flows.central_flow`). Single deterministic runs: no bands.
"""

import jax
import numpy as np
from common import Figure, main

from analysis import compare, plots
from models import MLP, Problem, data

PRESETS = {
    "smoke": dict(n=20, width=4, flip=0.2, etas=[0.2], t1=2.0, saves=2, window=4, num_eigs=1),
    "quick": dict(n=None, width=32, flip=0.2, etas=[0.2, 0.1], t1=150.0, saves=60, window=200, num_eigs=3),
    "paper": dict(n=None, width=32, flip=0.2, etas=[0.2, 0.1, 0.05], t1=300.0, saves=120, window=200,
                  num_eigs=4),
}  # fmt: skip


def problem(cfg):
    """Digits 3 vs 8 (the first n of a fixed shuffle, all when n is None), a fraction `flip` of the +-1
    labels negated (fixed draw), an MLP with two tanh hidden layers of `width`."""
    X, y = data.digits(classes=(3, 8))
    order = jax.random.permutation(jax.random.key(0), X.shape[0])[: cfg["n"]]
    y = data.flip_labels(jax.random.key(3), y[order], cfg["flip"])
    return Problem(MLP(X.shape[1], cfg["width"], 2, key=jax.random.key(1)), X[order], y)


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each eta."""
    P = problem(cfg)
    out = {"p": np.asarray(P.num_params), "n": np.asarray(P.n)}
    for eta in cfg["etas"]:
        out[str(eta)] = part(
            f"eta{eta}",
            lambda eta=eta: compare.edge_of_stability(
                P, P.params, eta=eta, t1=cfg["t1"], num_saves=cfg["saves"], window=cfg["window"],
                num_eigs=cfg["num_eigs"], part=lambda label, fn, eta=eta: part(f"eta{eta}-{label}", fn),
            ),
        )  # fmt: skip
    return out


def draw(cfg, r, path):
    fig, axes = plots.figure(3, width=4.2, height=3.2)
    plots.edge_of_stability(axes, {eta: r[str(eta)] for eta in cfg["etas"]})
    return plots.save(fig, path)


def summary(cfg, r):
    print(
        f"MLP with p = {int(r['p'])} on n = {int(r['n'])} digits (3 vs 8, {cfg['flip']:.0%} labels flipped)"
    )
    for eta in cfg["etas"]:
        print(f"eta = {eta}: {compare.edge_summary(r[str(eta)], eta, cfg['window'])}")


FIGURE = Figure("central_flow", __doc__, PRESETS, compute, draw, summary, parts=lambda cfg: len(cfg["etas"]))

if __name__ == "__main__":
    main(FIGURE)
