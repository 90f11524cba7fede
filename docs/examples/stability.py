"""Stability thresholds and the sqrt(B)/eta bound

At a global minimum of a two-layer net, SGD with batch B stays (in mean square) only below a step size
eta_ms(B) (Wu, Wang & Su 2022; `analysis.stability.threshold`, in closed form from the Gram matrix); the
SDE of SGD has its own threshold, and a typical run (the Lyapunov exponent) another. Wu et al.'s bound says a
mean-square stable minimum has ||H||_F <= sqrt(B / mu*) / eta, mu* the noise-alignment constant
(`stability.min_alignment`): equivalently eta_ms(B) <= sqrt(B / mu*) / ||H||_F. Then SGD itself below
and above eta_ms, from the minimum nudged by 1e-3: it returns, or escapes.
float64: the thresholds sit where 1 - rho is 1e-3 to 1e-5.
"""

import os

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sharpflow.analysis import ensembles, stability  # noqa: E402
from sharpflow.flows import gd, limit_map, sgd  # noqa: E402
from sharpflow.models import Problem, TwoLayerNet, data  # noqa: E402

kx, kt, kn = jax.random.split(jax.random.key(0), 3)
X = data.gaussian(kx, 16, 4)
y, _ = data.two_layer_teacher(kt, X, width=2, activation="tanh")
problem = Problem(TwoLayerNet(4, 8, key=kn, activation="tanh"), X, y)
minimum = limit_map(problem, gd(problem, problem.params, steps=2000, eta=0.2, save_every=2000).final)

fro, lam = stability.gauss_newton_norms(problem, minimum)
mu = stability.min_alignment(problem, minimum)
print(f"at the minimum: ||H||_F = {fro:.4f}, lambda_max = {lam:.4f} (GD stable below 2 / lambda_max = "
      f"{2 / lam:.4f}), mu* = {mu:.4f}")  # fmt: skip
batches = [1, 2, 4, 8, 16]
rows = []
for B in batches:
    ms = stability.threshold(problem, minimum, batch_size=B)
    sde = stability.threshold(problem, minimum, batch_size=B, criterion="sde")
    bound = stability.wu_bound(1.0, B, mu=mu, n=problem.n) / fro  # the eta at which ||H||_F meets the bound
    rows.append((ms, sde, bound))
    print(f"B = {B:2d}: eta_ms = {ms:.4f}, the SDE's {sde:.4f}, Wu's bound on eta_ms {bound:.4f}")

B, eta_ms = 4, rows[2][0]
nudged = jax.tree.map(lambda w: w + 1e-3 * jnp.sign(w), minimum)
keys = jax.random.split(jax.random.key(1), 32)
losses = {}
for factor in (0.8, 1.5):
    runs = ensembles.ensemble(
        lambda k, f=factor: sgd(
            problem, nudged, steps=2000, eta=f * eta_ms, batch_size=B, key=k, save_every=20, throw=False
        ),
        keys,
    )
    losses[factor] = np.asarray(runs.stats["loss"])
    start, last = float(problem.loss(nudged)), losses[factor][:, -1]
    escaped = int(np.sum(~(last < start)))  # a diverged run's loss is inf or NaN
    returned = np.median(last[last < start]) if escaped < len(last) else np.nan
    print(f"SGD, B = {B}, eta = {factor} eta_ms: {escaped} of 32 seeds escaped (loss above its start, "
          f"{start:.1e}); the others' median loss {returned:.1e}")  # fmt: skip

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
rows = np.array(rows)
left.plot(batches, rows[:, 0], "C0o-", label="mean-square threshold eta_ms")
left.plot(batches, rows[:, 1], "C2s--", label="the SDE's threshold")
left.plot(batches, rows[:, 2], "k:", label="Wu et al.: sqrt(B / mu*) / ||H||_F")
left.axhline(2 / lam, color="0.5", lw=0.8, label="GD: 2 / lambda_max")
left.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="step size eta")
left.legend(frameon=False, fontsize=8)
steps = np.arange(losses[0.8].shape[1]) * 20
for factor, color in ((0.8, "C0"), (1.5, "C3")):
    shown = np.minimum(np.nan_to_num(losses[factor][:8], nan=1e3, posinf=1e3), 1e3)  # 8 seeds, cut at 1e3
    right.plot(steps, shown.T, color=color, lw=0.8, alpha=0.7)
    right.plot([], [], color=color, label=f"eta = {factor} eta_ms, 8 seeds")
right.set(yscale="log", xlabel="step k", ylabel="loss", title=f"SGD from the nudged minimum, B = {B}")
right.legend(frameon=False, fontsize=8)
fig.savefig(os.environ.get("SHARPFLOW_EXAMPLE_FIGURE", "stability.png"), dpi=120)
