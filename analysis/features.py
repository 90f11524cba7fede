"""The features a two-layer net f(x) = sum_j a_j sigma(w_j . x) has learned, and the flattest ones.

    Phi = W X^T  (m, n)        the feature matrix: pre-activations of the m neurons on the n training inputs

Label-noise SGD minimises tr H on the zero-loss manifold; with the outer layer fixed, n <= d and an
activation with sigma''' > 0 (e.g. cubic z + z^3/3, sinh), that drives every neuron to the same feature:
Phi becomes rank one (Gatmiry et al. 2024). `singular_values`, `stable_rank` and `feature_cosines` measure it;
`min_trace_fixed_outer` computes the minimum of tr H on the manifold without any flow.

ReLU nets from small initialisation (Boursier & Flammarion 2024) first align their neurons with a few
directions: `neuron_directions`, `extremal_directions` (the directions theory predicts, computed without a
network), `angles_to`, `count_directions` and `alignment_end` (the end of that phase, read from the loss).
Past the optimization threshold in n the net stops interpolating and lands near the least-squares linear
predictor: `distance_to_ols` measures how near.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jaxtyping import Array, Float, PyTree

from models import Problem, TwoLayerNet

__all__ = [
    "feature_matrix",
    "singular_values",
    "stable_rank",
    "feature_cosines",
    "min_trace_fixed_outer",
    "neuron_directions",
    "extremal_directions",
    "angles_to",
    "count_directions",
    "alignment_end",
    "ols",
    "distance_to_ols",
]


def feature_matrix(problem: Problem, params: PyTree) -> Float[Array, "m n"]:
    """Phi = W X^T, the pre-activations of every neuron on every training input.

    **Arguments:** a two-layer net's `problem` and `params`.

    **Returns:** Phi (m, n).

    **Raises:** `TypeError` when the problem's model is not a `TwoLayerNet`."""
    return _net(problem, params).features(problem.X)


def singular_values(problem: Problem, params: PyTree) -> Float[Array, " k"]:
    """The singular values of Phi, largest first; s2 / s1 -> 0 is the rank-one collapse.

    **Arguments:** a two-layer net's `problem` and `params`.

    **Returns:** the singular values (min(m, n),).

    **Raises:** `TypeError` when the problem's model is not a `TwoLayerNet`."""
    return jnp.linalg.svd(feature_matrix(problem, params), compute_uv=False)


def stable_rank(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """||Phi||_F^2 / ||Phi||_2^2, between 1 (rank one) and rank Phi.

    **Arguments:** a two-layer net's `problem` and `params`.

    **Returns:** the stable rank, a scalar.

    **Raises:** `TypeError` when the problem's model is not a `TwoLayerNet`."""
    s = singular_values(problem, params)
    return jnp.sum(s**2) / s[0] ** 2


def feature_cosines(problem: Problem, params: PyTree) -> Float[Array, "m m"]:
    """Cosine similarities between the neurons' features (the rows of Phi): all +-1 when Phi is rank one. A
    neuron whose features are all zero has no direction: its row and column are 0.

    **Arguments:** a two-layer net's `problem` and `params`.

    **Returns:** the cosines (m, m).

    **Raises:** `TypeError` when the problem's model is not a `TwoLayerNet`."""
    Phi = feature_matrix(problem, params)
    norms = jnp.linalg.norm(Phi, axis=1, keepdims=True)
    rows = Phi / jnp.where(norms > 0, norms, 1.0)
    return rows @ rows.T


def min_trace_fixed_outer(problem: Problem, *, starts: int = 20, seed: int = 0) -> float:
    """The minimum of tr H over the zero-loss manifold of a two-layer net with a fixed outer layer a.

    On the manifold tr H = (1/n) sum_i ||x_i||^2 sum_j a_j^2 sigma'(z_ji)^2 with z_ji = w_j . x_i, under
    sum_j a_j sigma(z_ji) = y_i. When n <= d and X has full row rank every Z (m, n) is reached by some W,
    so the problem separates into one m-variable problem per example, each solved with scipy's SLSQP from
    `starts` random points (best kept). Independent of the flows: a check on where they end. Computed in
    float64 whatever the problem's dtype.

    **Arguments:** the `problem` (a `TwoLayerNet` with `train_outer=False`), `starts`, the starts' `seed`.

    **Returns:** min tr H, a Python float.

    **Raises:** `TypeError` for another model; `ValueError` for a trained outer layer, n > d, or X not of
    full row rank.
    """
    net = _net(problem, problem.params)
    if net.train_outer:
        raise ValueError("min_trace_fixed_outer needs a fixed outer layer (TwoLayerNet(train_outer=False))")
    X, y = np.asarray(problem.X, np.float64), np.asarray(problem.y, np.float64)
    n, d = X.shape
    if n > d or np.linalg.matrix_rank(X) < n:
        raise ValueError(f"min_trace_fixed_outer needs n <= d and X of full row rank; got n = {n}, d = {d}")
    a = np.asarray(net.a, np.float64)
    with jax.enable_x64(True):  # SLSQP at ftol 1e-15 and the 1e-9 feasibility test need float64
        return _min_trace_float64(X, y, a, net.activation, starts, seed)


def _min_trace_float64(X, y, a, activation, starts, seed):
    n = X.shape[0]
    sigma = jax.jit(jax.vmap(activation))
    dsigma = jax.jit(jax.vmap(jax.grad(activation)))
    d2sigma = jax.jit(jax.vmap(jax.grad(jax.grad(activation))))
    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(n):
        f = lambda z: float(np.sum(a**2 * np.asarray(dsigma(z)) ** 2))  # noqa: E731
        df = lambda z: 2 * a**2 * np.asarray(dsigma(z)) * np.asarray(d2sigma(z))  # noqa: E731
        constraint = {
            "type": "eq",
            "fun": lambda z, i=i: float(a @ np.asarray(sigma(z)) - y[i]),
            "jac": lambda z: a * np.asarray(dsigma(z)),
        }
        best = np.inf
        for _ in range(starts):
            z0 = rng.normal(size=a.size)
            res = scipy.optimize.minimize(
                f,
                z0,
                jac=df,
                constraints=[constraint],
                method="SLSQP",
                options={"ftol": 1e-15, "maxiter": 500},
            )
            if res.success and abs(constraint["fun"](res.x)) < 1e-9:
                best = min(best, res.fun)
        if not np.isfinite(best):
            raise RuntimeError(f"SLSQP found no feasible minimiser for example {i}")
        total += np.sum(X[i] ** 2) * best
    return total / n


# -- early alignment of ReLU neurons from small initialisation (Boursier & Flammarion 2024) ---------------
def neuron_directions(problem: Problem, params: PyTree) -> tuple[Float[Array, "m d"], Float[Array, " m"]]:
    """The neurons' directions and norms (a zero neuron gets direction 0).

    **Arguments:** a two-layer net's `problem` and `params`.

    **Returns:** (w_j / ||w_j|| (m, d), ||w_j|| (m,)).

    **Raises:** `TypeError` when the problem's model is not a `TwoLayerNet`."""
    W = _net(problem, params).W
    norms = jnp.linalg.norm(W, axis=1)
    return W / jnp.where(norms > 0, norms, 1.0)[:, None], norms


def extremal_directions(X, y, *, starts: int = 256, steps: int = 2000, seed: int = 0, tol_deg: float = 1.0):
    """The directions early alignment predicts, for a two-layer ReLU net f = sum_j a_j relu(w_j . x) from
    small initialisation.

    While the outputs are ~0, dw_j/dt = a_j D(w_j) with D(u) = (1/n) sum_i y_i 1[u . x_i > 0] x_i, the
    gradient of the positively homogeneous G(u) = (1/n) sum_i y_i relu(u . x_i). So a neuron's direction
    follows projected gradient ascent of G on the sphere when a_j > 0 (descent when a_j < 0) and ends at an
    extremal vector: a local maximum of G with G > 0 (minimum with G < 0). Computed here by that ascent
    (and descent) from `starts` random directions, without any network; duplicates within `tol_deg` merged.

    **Arguments:** the data `X` (n, d), `y` (n,); `starts`, `steps` of the ascent, `seed`, `tol_deg`.

    **Returns:** `(plus, minus)`: arrays (k, d) of unit vectors, the targets of positive and of negative
    neurons.
    """
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)

    def D(U):  # (s, d) -> (s, d)
        return ((U @ X.T > 0) * y) @ X / X.shape[0]

    def G(U):
        return np.maximum(U @ X.T, 0) @ y / X.shape[0]

    rng = np.random.default_rng(seed)
    out = []
    for sign in (1.0, -1.0):
        U = rng.standard_normal((starts, X.shape[1]))
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        step = 0.5 / max(np.abs(y).mean() * np.linalg.norm(X, axis=1).mean(), 1e-12)
        for _ in range(steps):
            g = sign * D(U)
            g -= np.sum(g * U, axis=1, keepdims=True) * U
            U = U + step * g
            U /= np.linalg.norm(U, axis=1, keepdims=True)
        keep = sign * G(U) > 0
        out.append(_distinct(U[keep], sign * G(U[keep]), tol_deg))
    return tuple(out)


def angles_to(directions, targets) -> np.ndarray:
    """The angle in degrees from each direction to the nearest target.

    **Arguments:** unit `directions` (m, d) and `targets` (k, d).

    **Returns:** the angles (m,) in degrees; inf where there is no target."""
    directions, targets = np.asarray(directions), np.asarray(targets)
    if targets.shape[0] == 0:
        return np.full(directions.shape[0], np.inf)
    cos = np.clip(directions @ targets.T, -1.0, 1.0)
    return np.degrees(np.arccos(cos.max(axis=1)))


def count_directions(problem: Problem, params: PyTree, *, tol_deg: float = 5.0, min_norm: float = 0.1) -> int:
    """The number of distinct directions carried by the active neurons: those with ||w_j|| >= `min_norm`
    times the largest, grouped greedily (largest first) into cones of half-angle `tol_deg`.

    **Arguments:** a two-layer net's `problem` and `params`, `tol_deg`, `min_norm`.

    **Returns:** the count, a Python int.

    **Raises:** `TypeError` when the problem's model is not a `TwoLayerNet`."""
    U, norms = (np.asarray(v) for v in neuron_directions(problem, params))
    active = norms >= min_norm * norms.max()
    return len(_distinct(U[active], norms[active], tol_deg))


def alignment_end(ts, loss, *, rtol: float = 1e-3) -> float:
    """The end of the early-alignment phase, read from the data: the first saved time at which the loss
    has fallen by `rtol` of its initial value (until then the outputs are ~0 and only directions move).

    **Arguments:** the saved times `ts` and losses `loss` of a run, `rtol`.

    **Returns:** that time, a Python float (inf if the loss never falls so far)."""
    ts, loss = np.asarray(ts), np.asarray(loss)
    below = np.nonzero(loss < (1 - rtol) * loss[0])[0]
    return float(ts[below[0]]) if below.size else float("inf")


def ols(X: Float[Array, "n d"], y: Float[Array, " n"]) -> Float[Array, " d"]:
    """The least-squares linear predictor beta = argmin ||X beta - y||^2 (minimum norm when n < d).

    **Arguments:** `X` (n, d), `y` (n,).

    **Returns:** beta (d,)."""
    return jnp.linalg.lstsq(X, y)[0]


def distance_to_ols(problem: Problem, params: PyTree, X_eval: Float[Array, "k d"]) -> Float[Array, ""]:
    """sqrt(mean_x (f(x) - beta_ols . x)^2) over the points X_eval: how far the net is from the linear
    predictor fitted to its own training data. A ReLU net a relu(u . x) - a relu(-u . x) with a u =
    beta_ols is that predictor exactly (distance 0); Boursier & Flammarion (2024) show gradient flow from
    small initialisation lands near it past the optimization threshold.

    **Arguments:** the `problem`, `params`, the evaluation points `X_eval` (k, d).

    **Returns:** the distance, a scalar."""
    f = problem.outputs(params, X_eval)
    return jnp.sqrt(jnp.mean((f - X_eval @ ols(problem.X, problem.y)) ** 2))


def _distinct(U, weight, tol_deg) -> np.ndarray:
    """Greedy clustering: the heaviest direction opens a cone of half-angle tol_deg that takes the others."""
    order = np.argsort(-np.asarray(weight))
    centres = []
    for u in U[order]:
        if all(np.degrees(np.arccos(np.clip(u @ c, -1, 1))) > tol_deg for c in centres):
            centres.append(u)
    return np.asarray(centres).reshape(-1, U.shape[1])


def _net(problem: Problem, params: PyTree) -> TwoLayerNet:
    net = problem.model(params)
    if not isinstance(net, TwoLayerNet):
        raise TypeError(f"feature analyses need a TwoLayerNet problem, got {type(net).__name__}")
    return net
