"""Data sets: synthetic generators and scikit-learn's bundled digits (no download, ever).

Every generator takes an explicit PRNG key and returns JAX arrays; X has shape (n, d), y has (n,) or (n, k).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import checks
from .two_layer import TwoLayerNet


def gaussian(key: PRNGKeyArray, n: int, d: int, *, scale: float = 1.0) -> Float[Array, "n d"]:
    """x_i ~ N(0, scale^2 I_d)."""
    return scale * jax.random.normal(key, (n, d))


def uniform(key: PRNGKeyArray, n: int, d: int, *, low: float = 0.0, high: float = 1.0) -> Float[Array, "n d"]:
    """x_ij ~ U[low, high] i.i.d. (Gatmiry et al. 2024, Figure 1, use U[0, 1])."""
    return jax.random.uniform(key, (n, d), minval=low, maxval=high)


def orthogonal(key: PRNGKeyArray, n: int, d: int) -> Float[Array, "n d"]:
    """n <= d orthonormal rows (a random n-frame of R^d): X X^T = I_n."""
    if n > d:
        raise ValueError(f"orthogonal inputs need n <= d, got n = {n}, d = {d}")
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, n)))
    return (q * jnp.sign(jnp.diag(r))[None, :]).T


def sphere(key: PRNGKeyArray, n: int, d: int) -> Float[Array, "n d"]:
    """x_i uniform on the unit sphere S^{d-1}."""
    x = jax.random.normal(key, (n, d))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def linear_teacher(key: PRNGKeyArray, X: Float[Array, "n d"], *, norm: float = 1.0):
    """y = beta* . x with beta* uniform on the sphere of radius `norm`. Returns (y, beta*)."""
    beta = sphere(key, 1, X.shape[1])[0] * norm
    return X @ beta, beta


def two_layer_teacher(key: PRNGKeyArray, X: Float[Array, "n d"], *, width: int, activation="relu"):
    """y = sum_j a_j sigma(w_j . x) with unit w_j and a_j = +-1/width. Returns (y, teacher model)."""
    kw, ka = jax.random.split(key)
    teacher = TwoLayerNet(X.shape[1], width, key=ka, activation=activation, outer="signs")
    teacher = eqx.tree_at(lambda m: m.W, teacher, sphere(kw, width, X.shape[1]))
    return jax.vmap(teacher)(X), teacher


def label_noise(key: PRNGKeyArray, y: Float[Array, " n *k"], sigma: float) -> Float[Array, " n *k"]:
    """y + sigma * N(0, 1), fixed once (noisy targets, not the per-step noise of label-noise SGD)."""
    sigma = checks.non_negative("sigma", sigma)
    return y + sigma * jax.random.normal(key, y.shape, y.dtype)


def train_test_split(key: PRNGKeyArray, X, y, *, n_train: int):
    """A random split: ((X_train, y_train), (X_test, y_test)) with n_train training rows."""
    n = X.shape[0]
    if not 1 <= n_train < n:
        raise ValueError(f"n_train must be in 1..n-1 = 1..{n - 1}, got {n_train}")
    perm = jax.random.permutation(key, n)
    tr, te = perm[:n_train], perm[n_train:]
    return (X[tr], y[tr]), (X[te], y[te])


def digits(*, classes: tuple[int, ...] | None = None, one_hot: bool = False, standardize: bool = True):
    """scikit-learn's bundled 8x8 digits (1,797 images, shipped inside the package).

    Returns (X (n, 64), y). With `one_hot`, y is (n, 10) (or (n, len(classes))) in {0, 1}; with two
    `classes` and no `one_hot`, y is +-1 (a binary regression target); otherwise y is the class index as a
    float. `standardize` centres every pixel and scales by the global standard deviation (computed in
    float32). Both arrays in the default float dtype, float64 when `jax_enable_x64` is set.
    """
    from sklearn.datasets import load_digits

    X, labels = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    if classes is not None:
        keep = np.isin(labels, classes)
        X, labels = X[keep], labels[keep]
        labels = np.searchsorted(np.asarray(sorted(classes)), labels)
    if standardize:
        X = (X - X.mean(0)) / X.std()
    k = 10 if classes is None else len(classes)
    if one_hot:
        y = np.eye(k, dtype=np.float32)[labels]
    elif k == 2:
        y = np.where(labels == 1, 1.0, -1.0).astype(np.float32)
    else:
        y = labels.astype(np.float32)
    dtype = jnp.result_type(float)  # the default float, as the other generators give (float64 under x64)
    return jnp.asarray(X, dtype), jnp.asarray(y, dtype)
