"""The central flow on my CNN

Full-batch GD on a small tanh CNN (square loss on one-hot labels of four digit classes, 20% of them moved)
at a step size where its sharpness climbs to the edge of stability 2 / eta, against gradient flow and the
central flow of Cohen, Damian et al. (2024), through `analysis.compare.edge_of_stability`. Past the edge
GD oscillates; its loss averaged over a window of steps is what the central flow predicts, while gradient
flow, whose sharpness keeps rising, leaves GD.
"""

import os

import jax
import matplotlib.pyplot as plt
import numpy as np

from sharpflow.analysis import compare
from sharpflow.models import CNN, Problem, data

X, labels = data.digits(classes=(0, 1, 2, 3), images=True, labels=True)
X, labels = X[:128], data.flip_labels(jax.random.key(3), labels[:128], 0.2, num_classes=4)
y = jax.nn.one_hot(labels, 4, dtype=X.dtype)
problem = Problem(CNN((1, 8, 8), (4, 8), outputs=4, activation="tanh", key=jax.random.key(1)), X, y)

eta, window = 0.8, 20
r = compare.edge_of_stability(
    problem, problem.params, eta=eta, t1=80.0, num_saves=40, window=window, num_eigs=1
)  # one tracked eigenpair: one eigenvalue reaches the edge here
print(f"p = {problem.num_params}; the edge 2 / eta = {2 / eta:.3f}")
print(compare.edge_summary(r, eta, window))

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
t = r["t"]
steps = np.arange(len(r["gd_loss"])) * eta
left.plot(steps, r["gd_loss"], color="0.75", lw=0.6, label="GD, every step")
left.plot(t, r["gd_mean_loss"], "C0", lw=2, label=f"GD averaged over {window} steps")
left.plot(t, r["cf_predicted"], "C3--", label="central flow's prediction")
left.plot(t, r["gf_loss"], "k:", label="gradient flow")
left.set(xlabel="t = eta k", ylabel="loss", yscale="log")
left.legend(frameon=False, fontsize=8)
right.plot(t, r["gd_lambda"], "C0o", ms=3, label="GD")
right.plot(t, r["cf_lambda"], "C3--", label="central flow")
right.plot(t, r["gf_lambda"], "k:", label="gradient flow")
right.axhline(2 / eta, color="0.5", lw=0.8, label="2 / eta")
right.set(xlabel="t = eta k", ylabel="lambda_max(H)")
right.legend(frameon=False, fontsize=8)
fig.savefig(os.environ.get("SHARPFLOW_EXAMPLE_FIGURE", "central_flow_cnn.png"), dpi=120)
