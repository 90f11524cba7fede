"""The features a two-layer net f(x) = sum_j a_j sigma(w_j . x) has learned, and the flattest ones.

    Phi = W X^T  (m, n)        the feature matrix: pre-activations of the m neurons on the n training inputs

Label-noise SGD minimises tr H on the zero-loss manifold; with the outer layer fixed, n <= d and an
activation with sigma''' > 0 (e.g. cubic z + z^3/3, sinh), that drives every neuron to the same feature:
Phi becomes rank one (Gatmiry et al. 2024). `singular_values`, `stable_rank` and `alignment` measure it;
`min_trace_fixed_outer` computes the minimum of tr H on the manifold without any flow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jaxtyping import Array, Float, PyTree

from models import Problem, TwoLayerNet


def feature_matrix(problem: Problem, params: PyTree) -> Float[Array, "m n"]:
    """Phi = W X^T, the pre-activations of every neuron on every training input."""
    return _net(problem, params).features(problem.X)


def singular_values(problem: Problem, params: PyTree) -> Float[Array, " k"]:
    """The singular values of Phi, largest first; s2 / s1 -> 0 is the rank-one collapse."""
    return jnp.linalg.svd(feature_matrix(problem, params), compute_uv=False)


def stable_rank(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """||Phi||_F^2 / ||Phi||_2^2, between 1 (rank one) and rank Phi."""
    s = singular_values(problem, params)
    return jnp.sum(s**2) / s[0] ** 2


def alignment(problem: Problem, params: PyTree) -> Float[Array, "m m"]:
    """Cosine similarities between the neurons' features (the rows of Phi): all +-1 when Phi is rank one."""
    Phi = feature_matrix(problem, params)
    rows = Phi / jnp.linalg.norm(Phi, axis=1, keepdims=True)
    return rows @ rows.T


def min_trace_fixed_outer(problem: Problem, *, starts: int = 20, seed: int = 0) -> float:
    """The minimum of tr H over the zero-loss manifold of a two-layer net with a fixed outer layer a.

    On the manifold tr H = (1/n) sum_i ||x_i||^2 sum_j a_j^2 sigma'(z_ji)^2 with z_ji = w_j . x_i, under
    sum_j a_j sigma(z_ji) = y_i. When n <= d and X has full row rank every Z (m, n) is reached by some W,
    so the problem separates into one m-variable problem per example, each solved with scipy's SLSQP from
    `starts` random points (best kept). Independent of the flows: a check on where they end.
    """
    net = _net(problem, problem.params)
    if net.train_outer:
        raise ValueError("min_trace_fixed_outer needs a fixed outer layer (TwoLayerNet(train_outer=False))")
    X, y = np.asarray(problem.X, np.float64), np.asarray(problem.y, np.float64)
    n, d = X.shape
    if n > d or np.linalg.matrix_rank(X) < n:
        raise ValueError(f"min_trace_fixed_outer needs n <= d and X of full row rank; got n = {n}, d = {d}")
    a = np.asarray(net.a, np.float64)
    sigma = jax.jit(jax.vmap(net.activation))
    dsigma = jax.jit(jax.vmap(jax.grad(net.activation)))
    d2sigma = jax.jit(jax.vmap(jax.grad(jax.grad(net.activation))))
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


def _net(problem: Problem, params: PyTree) -> TwoLayerNet:
    net = problem.model(params)
    if not isinstance(net, TwoLayerNet):
        raise TypeError(f"feature analyses need a TwoLayerNet problem, got {type(net).__name__}")
    return net
