"""SVAG: where the SDE of SGD holds, and where it does not

SVAG (Li, Malladi & Arora 2021) runs SGD with step eta / l on a combination of two minibatch gradients
whose mean and covariance per unit of time are SGD's: as l grows it converges to the SDE of SGD at rate
1 / l, while l = 1 is SGD itself. So SVAG tests the SDE without simulating it: where SGD's gap to the SDE
is resolved, SVAG's gap falls with l. On a two-layer tanh net with B = 2 at a small and a large step size,
1,024 seeds each (`analysis.compare.svag_vs_sde`), the weak gap sup_t |E L(SVAG_l) - E L(SDE)| with its
noise floor removed and its 95% band.
"""

import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from sharpflow.analysis import compare
from sharpflow.models import Problem, TwoLayerNet, data

kx, kn = jax.random.split(jax.random.key(0))
X = data.gaussian(kx, 16, 5)
problem = Problem(TwoLayerNet(5, 16, key=kn, activation="tanh"), X, jnp.sin(2 * X[:, 0]))

ls = (1, 2, 4, 8)
gaps = {}
for eta in (0.05, 0.25):
    r = compare.svag_vs_sde(problem, problem.params, eta=eta, ls=ls, t1=3.0, batch_size=2,
                            key=jax.random.key(1), seeds=1024, num_saves=6)  # fmt: skip
    gaps[eta] = r["gap"]["loss"]  # (len(ls), 2): the gap and its band
    for ell, (gap, band) in zip(ls, gaps[eta]):
        print(f"eta = {eta}, l = {ell}: weak gap of the loss to the SDE {gap:.1e} +- {band:.1e}")

fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
for (eta, g), color in zip(gaps.items(), ("C0", "C3")):
    ax.errorbar(ls, np.maximum(g[:, 0], 1e-5), yerr=g[:, 1], fmt="o-", color=color, capsize=3,
                label=f"eta = {eta}")  # fmt: skip
ax.plot(ls, gaps[0.25][0, 0] / np.asarray(ls), "k:", label="1 / l")
ax.set(
    xscale="log", yscale="log", xlabel="SVAG factor l (l = 1: SGD)", ylabel="weak gap of the loss to the SDE"
)
ax.legend(frameon=False, fontsize=8)
fig.savefig(os.environ.get("SHARPFLOW_EXAMPLE_FIGURE", "svag.png"), dpi=120)
