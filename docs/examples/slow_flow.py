"""The slow flow and rank-one features

The slow limit of label-noise SGD (Blanc et al. 2020; Damian et al. 2021; Li, Wang & Arora 2022) is the
Riemannian gradient flow of tr H / 4 on the zero-loss manifold, in the slow time tau = eta^2 sigma^2 k / B.
On a two-layer net with a fixed outer layer and a cubic activation, Gatmiry et al. (2024) show that it
drives the features W X^T to rank one. Here: the flow (`flows.riemannian_flow`, started where gradient flow
from the initialisation lands, `flows.limit_map`) against label-noise GD, whose iterates are mapped onto
the manifold by Phi, the minimum of tr H on the manifold (`features.min_trace_fixed_outer`) and the
singular values of the features along the way. float64: the flow runs to tau = 1e6, where differences of
1e-10 matter.
"""

import os

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from sharpflow.analysis import features  # noqa: E402
from sharpflow.flows import label_noise_sgd, limit_map, riemannian_flow, timescale  # noqa: E402
from sharpflow.models import Problem, TwoLayerNet  # noqa: E402

kx, ky, kn = jax.random.split(jax.random.key(0), 3)
X = jax.random.uniform(kx, (3, 3))  # n = d = 3
y = jax.random.uniform(ky, (3,), minval=0.5, maxval=1.0)
net = TwoLayerNet(3, 10, key=kn, activation="cubic", train_outer=False, outer="ones")
problem = Problem(net, X, y)
trace_H = {"trace_H": Problem.gauss_newton_trace}  # tr H = tr G on the manifold, exact

start = limit_map(problem, problem.params)
taus = jnp.concatenate([jnp.zeros(1), jnp.logspace(-1, 6, 36)])
flow = riemannian_flow(problem, start, t1=taus[-1], ts=taus, rtol=1e-10, metrics=trace_H)
flow_sv = jax.vmap(lambda p: features.singular_values(problem, p))(flow.params)

eta, sigma, saves = 1.0, 0.3, 10  # label-noise GD to tau = 1e4, its saves mapped by Phi
every = timescale.steps_for_slow_time(1e4 / saves, eta, sigma, problem.n)
sgd = label_noise_sgd(problem, start, steps=every * saves, eta=eta, sigma=sigma, key=jax.random.key(1),
                      save_every=every)  # fmt: skip
mapped = jax.vmap(lambda p: limit_map(problem, p))(sgd.params)
sgd_tau = sgd.slow_time()
sgd_trace = jax.vmap(lambda p: problem.gauss_newton_trace(p))(mapped)
sgd_sv = jax.vmap(lambda p: features.singular_values(problem, p))(mapped)

minimum = features.min_trace_fixed_outer(problem)
ratio, sgd_ratio = flow_sv[:, 1] / flow_sv[:, 0], sgd_sv[:, 1] / sgd_sv[:, 0]
first, last = float(flow.stats["trace_H"][0]), float(flow.stats["trace_H"][-1])
print(f"slow flow: tr H {first:.6f} at Phi(init), {last:.6f} at tau = 1e6 (its minimum on the manifold:")
print(f"  {minimum:.6f}); s2 / s1 of the features {ratio[0]:.3f} -> {ratio[-1]:.1e}")
print(f"label-noise GD (eta = {eta}, sigma = {sigma}, {every * saves:,} steps) at tau = {sgd_tau[-1]:.0f}:")
print(f"  tr H {float(sgd_trace[-1]):.6f}, s2 / s1 {sgd_ratio[-1]:.1e}")

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
left.plot(taus[1:], flow.stats["trace_H"][1:] - minimum, "k", label="slow flow")
left.plot(sgd_tau[1:], sgd_trace[1:] - minimum, "C1o", label="label-noise GD, mapped by Phi")
left.set(xscale="log", yscale="log", xlabel="tau", ylabel="tr H - its minimum on the manifold")
left.legend(frameon=False, fontsize=8)
right.plot(taus[1:], ratio[1:], "k", label="slow flow")
right.plot(sgd_tau[1:], sgd_ratio[1:], "C1o", label="label-noise GD, mapped by Phi")
right.set(xscale="log", yscale="log", xlabel="tau", ylabel="s2 / s1 of the features W X^T")
right.legend(frameon=False, fontsize=8)
fig.savefig(os.environ.get("SHARPFLOW_EXAMPLE_FIGURE", "slow_flow.png"), dpi=120)
