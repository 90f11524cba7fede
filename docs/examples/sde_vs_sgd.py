"""Does the SDE describe my SGD?

Label-noise GD on a two-layer tanh net against its stochastic modified equation (`flows.label_noise_sde`)
and against gradient flow, at two step sizes, 64 seeds each (`analysis.compare.sde_vs_sgd`). The SDE's
paths are driven by the SGD runs' own noise, so the two are compared path by path; the weak error
sup_t |E tr H(SGD) - E tr H(SDE)| is reported with its sampling noise removed and its 95% band. The SDE
should track SGD far more closely than gradient flow does, and its error should fall as eta does.
"""

import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

from sharpflow.analysis import compare
from sharpflow.models import Problem, TwoLayerNet, data

kx, kn = jax.random.split(jax.random.key(0))
X = data.gaussian(kx, 16, 5)
problem = Problem(TwoLayerNet(5, 16, key=kn, activation="tanh"), X, jnp.sin(2 * X[:, 0]))

etas = (0.08, 0.04)
r = compare.sde_vs_sgd(
    problem, problem.params, noise="label", sigma=1.0, etas=etas, t1=3.2, key=jax.random.key(1), seeds=64
)  # metrics: tr H, exact, at every save

for eta in etas:
    s = r["eta"][str(eta)]["trace_H"]
    print(
        f"eta = {eta}: weak error of tr H, SDE {s['weak_error']:.2e} +- {s['weak_error_band']:.1e}, "
        f"gradient flow {s['gf_error']:.2e} +- {s['gf_error_band']:.1e}"
    )
print(f"order in eta: SDE {r['order']['trace_H']:.2f}, gradient flow {r['gf_order']['trace_H']:.2f}")

fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
ax.plot(r["t"], r["gf"]["trace_H"], "k", lw=2, label="gradient flow")
for eta, color in zip(etas, ("C0", "C1")):
    s = r["eta"][str(eta)]["trace_H"]
    ax.plot(r["t"], s["sgd_mean"], color=color, label=f"label-noise GD, eta = {eta}")
    ax.fill_between(
        r["t"], s["sgd_mean"] - s["sgd_band"], s["sgd_mean"] + s["sgd_band"], color=color, alpha=0.2
    )
    ax.plot(r["t"], s["sde_mean"], color=color, ls="--", label="its SDE (dashed)")
ax.set(xlabel="t = eta k", ylabel="tr H (mean over 64 seeds, 95% band)")
ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
fig.savefig(os.environ.get("SHARPFLOW_EXAMPLE_FIGURE", "sde_vs_sgd.png"), dpi=120)
