"""The Hessian spectrum of my model

A CNN written with Equinox's own layers (`eqx.nn.Conv2d`, nothing from sharpflow), trained briefly on 8 x 8
digits, and its Hessian measured matrix-free: the top eigenvalues by Lanczos, the trace exactly and by two
stochastic estimators, and the whole spectral density by stochastic Lanczos quadrature. The model is small
(p = 181) so that the dense Hessian can check every number.
"""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from sharpflow.analysis import hessian
from sharpflow.flows import gd
from sharpflow.models import Problem, data


class MyCNN(eqx.Module):
    first: eqx.nn.Conv2d
    second: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.first = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
        self.second = eqx.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, key=k2)
        self.head = eqx.nn.Linear(4 * 4 * 4, "scalar", key=k3)

    def __call__(self, x):
        x = jnp.tanh(self.second(jnp.tanh(self.first(x))))
        return self.head(x.reshape(-1))


X, y = data.digits(classes=(3, 8), images=True)  # +-1 targets, images (n, 1, 8, 8)
problem = Problem(MyCNN(key=jax.random.key(0)), X[:64], y[:64])
params = gd(problem, problem.params, steps=200, eta=0.2, save_every=200).final
key = jax.random.key(1)

dense = np.linalg.eigvalsh(np.asarray(hessian.dense(problem, params), np.float64))[::-1]
top = hessian.top_eigenvalues(problem, params, 3, key=key)  # Lanczos on Hessian-vector products
exact = hessian.trace(problem, params)
hutch, hutch_se = hessian.trace_hutchinson(problem, params, key, num_samples=20)
xtrace, xtrace_se = hessian.trace_xtrace(problem, params, key, num_samples=10)
slq = hessian.spectral_density(problem, params, key, num_probes=8, num_steps=30)

print(f"p = {problem.num_params}, loss = {float(problem.loss(params)):.4f}")
print("top eigenvalues, Lanczos:", np.round(np.asarray(top), 4), " dense:", np.round(dense[:3], 4))
print(f"tr H exact {float(exact):.4f} (dense {dense.sum():.4f})")
print(f"  Hutchinson, 20 products: {float(hutch):.4f} +- {float(hutch_se):.4f}")
print(f"  XTrace, 20 products:     {float(xtrace):.4f} +- {float(xtrace_se):.4f}")
mean, se = slq.moment(1)
print(f"(1/p) tr H by SLQ: {float(mean):.5f} +- {float(se):.5f} (dense {dense.mean():.5f})")

grid = np.linspace(dense.min() - 0.2, dense.max() + 0.2, 400)
fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
ax.hist(dense, bins=60, density=True, color="0.8", label="dense eigenvalues")
ax.plot(grid, slq.density(jnp.asarray(grid, X.dtype), 0.05), color="C0", label="SLQ, 8 probes x 30 steps")
for i, value in enumerate(np.asarray(top)):
    ax.axvline(value, color="C3", lw=0.8, ls="--", label="top 3 by Lanczos" if i == 0 else None)
ax.set(xlabel="eigenvalue of H", ylabel="density", yscale="log", ylim=(1e-3, None))
ax.legend(loc="upper right", frameon=False)
fig.savefig(os.environ.get("SHARPFLOW_EXAMPLE_FIGURE", "hessian_spectrum.png"), dpi=120)
