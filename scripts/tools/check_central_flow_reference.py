"""`flows.central_flow` against the reference code of Cohen et al. (2024), alex-damian/central_flows_jax.

Not part of the project's environment: the reference solves its complementarity problem with cvxpy and
CVXOPT on the host. Run it in a throw-away environment that has both packages:

    python -m venv /tmp/refenv
    /tmp/refenv/bin/pip install "jax==0.10.2" <a clone of central_flows_jax> -e .
    /tmp/refenv/bin/python scripts/tools/check_central_flow_reference.py

The same problem for both: an MLP 64-16-16-1 with tanh on the first 128 digits 3 vs 8 of a fixed shuffle,
20% of the labels flipped, the loss of `models.Problem` (float32). GD's step eta = 0.2, 4 substeps per GD step
in both (the reference's `Flow.central(substeps=4)`: Euler steps of eta / 4 with a one-step look-ahead in its
complementarity problem), the top 3 eigenpairs tracked by both. Prints the largest relative gaps between the
two loss curves, predicted-loss curves and parameter paths, and the wall time of each (compiled once first).

Measured 2026-12-07 (dev CPU, 2 cores, float32, JAX 0.10.2; both take the same Euler step with the same
look-ahead): over 400 GD steps the loss curves agree to 9.2e-6 and the parameters to 8.4e-6 (relative
distance), the predicted losses to 1.9e-3. Time: reference 16.1 s (cvxpy on the host at every substep),
sharpflow 8.0 s (one compiled loop).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from flows import central_flow
from models import MLP, Problem, data

ETA, STEPS, EIGS = 0.2, 400, 3


def problem(n=128, width=16, flip=0.2):
    """The problem of figures/central_flow.py at n = 128, width 16 (the same draws: its keys 0, 1, 3)."""
    X, y = data.digits(classes=(3, 8))
    order = jax.random.permutation(jax.random.key(0), X.shape[0])[:n]
    y = data.flip_labels(jax.random.key(3), y[order], flip)
    return Problem(MLP(X.shape[1], width, 2, key=jax.random.key(1)), X[order], y)


def reference(P, steps):
    from central_flows_jax import Flow, GradientDescent  # the reference, installed in its own environment

    flat0, unravel = P.ravel(P.params)

    def loss(w):
        return P.loss(unravel(w))

    opt = GradientDescent(lr=ETA)
    flow = Flow(loss, opt)
    state = (flat0, opt.init(flat0), jax.random.normal(jax.random.key(0), (flat0.size, EIGS)))
    rows = []
    for _ in range(steps):
        w, U = state[0], state[2]
        state, aux = flow.central(*state, substeps=4)
        rows.append((w, aux["L"], Flow.make_pred(loss, w, U, aux["X"])))
    w, L, pred = (np.stack([np.asarray(r[i]) for r in rows]) for i in range(3))
    return w, L, pred


def ours(P, steps):
    ts = ETA * jnp.arange(steps)
    traj = central_flow(P, P.params, eta=ETA, t1=ETA * steps, ts=ts, num_eigs=EIGS)
    w = np.asarray(jax.vmap(lambda p: P.ravel(p)[0])(traj.params))
    return w, np.asarray(traj.stats["loss"]), np.asarray(traj.stats["predicted_loss"])


def timed(fn, P):
    fn(P, 5)  # compile
    start = time.perf_counter()
    out = fn(P, STEPS)
    return out, time.perf_counter() - start


def main():
    P = problem()
    (w_ref, L_ref, pred_ref), t_ref = timed(reference, P)
    (w, L, pred), t = timed(ours, P)
    print(f"p = {P.num_params}, n = {P.n}, eta = {ETA}, {STEPS} GD steps")
    print(f"loss: largest relative gap {np.max(np.abs(L - L_ref) / L_ref):.2e}")
    print(f"predicted loss: largest relative gap {np.max(np.abs(pred - pred_ref) / pred_ref):.2e}")
    dist = np.linalg.norm(w - w_ref, axis=1) / np.linalg.norm(w_ref, axis=1)
    print(f"parameters: largest relative distance {dist.max():.2e}")
    print(f"time: reference {t_ref:.1f} s, sharpflow {t:.1f} s")


if __name__ == "__main__":
    main()
