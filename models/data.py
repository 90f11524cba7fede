"""Data sets: synthetic generators, scikit-learn's bundled digits (as vectors or 8 x 8 images), MNIST-1D
generated offline by the `mnist1d` package, and CIFAR-10 read from a folder the user names. Nothing is
downloaded, ever.

Every generator takes an explicit PRNG key and returns JAX arrays; X has shape (n, d) or (n, c, h, w), y
has (n,) or (n, k), or integer labels (n,) for cross-entropy (`labels=True`).
"""

import os
import pickle
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import checks
from .two_layer import TwoLayerNet

__all__ = [
    "gaussian",
    "uniform",
    "orthogonal",
    "sphere",
    "linear_teacher",
    "two_layer_teacher",
    "label_noise",
    "flip_labels",
    "train_test_split",
    "digits",
    "mnist1d",
    "CIFAR10_ENV",
    "cifar10",
]


def gaussian(key: PRNGKeyArray, n: int, d: int, *, scale: float = 1.0) -> Float[Array, "n d"]:
    """x_i ~ N(0, scale^2 I_d).

    **Arguments:** `key`, the number of points `n`, the dimension `d`, `scale`.

    **Returns:** X (n, d)."""
    return scale * jax.random.normal(key, (n, d))


def uniform(key: PRNGKeyArray, n: int, d: int, *, low: float = 0.0, high: float = 1.0) -> Float[Array, "n d"]:
    """x_ij ~ U[low, high] i.i.d. (Gatmiry et al. 2024, Figure 1, use U[0, 1]).

    **Arguments:** `key`, `n`, `d`, the interval `low`, `high`.

    **Returns:** X (n, d)."""
    return jax.random.uniform(key, (n, d), minval=low, maxval=high)


def orthogonal(key: PRNGKeyArray, n: int, d: int) -> Float[Array, "n d"]:
    """n <= d orthonormal rows (a random n-frame of R^d): X X^T = I_n.

    **Arguments:** `key`, `n`, `d`.

    **Returns:** X (n, d).

    **Raises:** `ValueError` when n > d."""
    if n > d:
        raise ValueError(f"orthogonal inputs need n <= d, got n = {n}, d = {d}")
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, n)))
    return (q * jnp.sign(jnp.diag(r))[None, :]).T


def sphere(key: PRNGKeyArray, n: int, d: int) -> Float[Array, "n d"]:
    """x_i uniform on the unit sphere S^{d-1}.

    **Arguments:** `key`, `n`, `d`.

    **Returns:** X (n, d), unit rows."""
    x = jax.random.normal(key, (n, d))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def linear_teacher(key: PRNGKeyArray, X: Float[Array, "n d"], *, norm: float = 1.0):
    """y = beta* . x with beta* uniform on the sphere of radius `norm`.

    **Arguments:** `key`, the inputs `X` (n, d), `norm`.

    **Returns:** (y (n,), beta* (d,))."""
    beta = sphere(key, 1, X.shape[1])[0] * norm
    return X @ beta, beta


def two_layer_teacher(key: PRNGKeyArray, X: Float[Array, "n d"], *, width: int, activation="relu"):
    """y = sum_j a_j sigma(w_j . x) with unit w_j and a_j = +-1/width.

    **Arguments:** `key`, the inputs `X` (n, d), the teacher's `width` and `activation`.

    **Returns:** (y (n,), the teacher, a `TwoLayerNet`)."""
    kw, ka = jax.random.split(key)
    teacher = TwoLayerNet(X.shape[1], width, key=ka, activation=activation, outer="signs")
    teacher = eqx.tree_at(lambda m: m.W, teacher, sphere(kw, width, X.shape[1]))
    return jax.vmap(teacher)(X), teacher


def label_noise(key: PRNGKeyArray, y: Float[Array, " n *k"], sigma: float) -> Float[Array, " n *k"]:
    """y + sigma * N(0, 1), fixed once (noisy targets, not the per-step noise of label-noise SGD).

    **Arguments:** `key`, the targets `y`, `sigma >= 0`.

    **Returns:** the noisy targets, shaped like `y`.

    **Raises:** `ValueError` naming `sigma` when it is negative."""
    sigma = checks.non_negative("sigma", sigma)
    return y + sigma * jax.random.normal(key, y.shape, y.dtype)


def flip_labels(key: PRNGKeyArray, y: Array, fraction: float, *, num_classes: int | None = None) -> Array:
    """y with `round(fraction * n)` of its n labels flipped, the examples drawn by `key` (a fixed draw):
    +-1 targets negated, or, with `num_classes`, class indices moved to the next class (y + 1) mod k.

    **Arguments:** `key`, the labels `y` (+-1, or class indices with `num_classes`), `fraction` in [0, 1].

    **Returns:** the flipped labels, shaped like `y`.

    **Raises:** `ValueError` for a `fraction` outside [0, 1]."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    flip = jax.random.permutation(key, y.shape[0])[: round(fraction * y.shape[0])]
    if num_classes is None:
        return y.at[flip].multiply(-1)
    return y.at[flip].set((y[flip] + 1) % num_classes)


def train_test_split(key: PRNGKeyArray, X, y, *, n_train: int):
    """A random split of the rows of X and y.

    **Arguments:** `key`, `X`, `y`, the number of training rows `n_train` in 1..n-1.

    **Returns:** ((X_train, y_train), (X_test, y_test)).

    **Raises:** `ValueError` for `n_train` outside 1..n-1."""
    n = X.shape[0]
    if not 1 <= n_train < n:
        raise ValueError(f"n_train must be in 1..n-1 = 1..{n - 1}, got {n_train}")
    perm = jax.random.permutation(key, n)
    tr, te = perm[:n_train], perm[n_train:]
    return (X[tr], y[tr]), (X[te], y[te])


def digits(
    *,
    classes: tuple[int, ...] | None = None,
    one_hot: bool = False,
    standardize: bool = True,
    images: bool = False,
    labels: bool = False,
):
    """scikit-learn's bundled 8x8 digits (1,797 images, shipped inside the package).

    **Arguments:** `classes` (the digits kept, or None: all ten), `one_hot`, `standardize` (centre every
    pixel and scale by the global standard deviation, computed in float32), `images`, `labels`.

    **Returns:** (X, y): X (n, 64), or (n, 1, 8, 8) images with `images`. With `labels`, y is the integer
    class index (n,) in 0..k-1 (for cross-entropy); with `one_hot`, y is (n, 10) (or (n, len(classes))) in
    {0, 1}; with two `classes` and neither, y is +-1 (a binary regression target); otherwise y is the class
    index as a float. X (and a float y) in the default float dtype, float64 when `jax_enable_x64` is set.
    """
    from sklearn.datasets import load_digits

    X, classes_of = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    if classes is not None:
        keep = np.isin(classes_of, classes)
        X, classes_of = X[keep], classes_of[keep]
        classes_of = np.searchsorted(np.asarray(sorted(classes)), classes_of)
    if standardize:
        X = (X - X.mean(0)) / X.std()
    k = 10 if classes is None else len(classes)
    if labels:
        y = classes_of.astype(np.int32)
    elif one_hot:
        y = np.eye(k, dtype=np.float32)[classes_of]
    elif k == 2:
        y = np.where(classes_of == 1, 1.0, -1.0).astype(np.float32)
    else:
        y = classes_of.astype(np.float32)
    dtype = jnp.result_type(float)  # the default float, as the other generators give (float64 under x64)
    X = jnp.asarray(X, dtype).reshape(-1, 1, 8, 8) if images else jnp.asarray(X, dtype)
    return X, jnp.asarray(y) if labels else jnp.asarray(y, dtype)


def mnist1d(n: int = 4000, *, seed: int = 42, labels: bool = True):
    """MNIST-1D (Greydanus 2020): n one-dimensional "digits" of length 40 in 10 classes, generated offline
    by the `mnist1d` package from its ten templates (the published recipe and defaults: random padding,
    scale, translation, shear, correlated and iid noise).

    **Arguments:** the number of examples `n`, the generator's `seed`, `labels`.

    **Returns:** (X (n, 1, 40): one channel, as a 1-D convolution or `reshape` takes it; y): integer labels
    (n,) in 0..9 with `labels`, else one-hot (n, 10) for square loss. X in the default float dtype,
    standardised as generated. The generator makes the same number of examples of every class, in a
    shuffled order: for any n, 10 ceil(n / 10) are made (standardised together) and the first n kept.

    **Raises:** `ValueError` for `n` not a positive integer."""
    from mnist1d.data import get_dataset_args, make_dataset

    n = checks.positive_int("n", n)
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 10 * -(-n // 10), 1.0, seed
    made = make_dataset(args)
    dtype = jnp.result_type(float)
    X = jnp.asarray(made["x"][:n], dtype).reshape(n, 1, -1)
    classes = np.asarray(made["y"][:n], np.int32)
    return X, jnp.asarray(classes) if labels else jnp.asarray(np.eye(10)[classes], dtype)


CIFAR10_ENV = "SHARPFLOW_CIFAR10"  # the folder holding CIFAR-10's python batches, when no folder is given
_CIFAR10_FILES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}


def cifar10(
    folder=None,
    *,
    classes: int = 10,
    n: int | None = None,
    train: bool = True,
    labels: bool = True,
    standardize: bool = True,
):
    """CIFAR-10 read from the standard python-format batches ("CIFAR-10 python version": `data_batch_1` ..
    `data_batch_5`, `test_batch`, each a pickled dict of b"data" (m, 3072) uint8 rows, channel-major, and
    b"labels") in `folder`, or in the folder the environment variable SHARPFLOW_CIFAR10 names. Nothing is
    downloaded: a missing folder or file is a `ValueError` naming the path and the files expected.

    **Arguments:** `folder`; the subsets the papers use: the examples of the first `classes` classes (in
    file order), the first `n` of them; `train` (the five training batches, or the test batch); `labels`;
    `standardize` (centre and scale per channel by the subset's own mean and standard deviation).

    **Returns:** (X (n, 3, 32, 32), y): integer labels (n,) in 0..classes-1 with `labels`, else one-hot
    (n, classes) for square loss; X scaled to [0, 1] (then standardised); in the default float dtype.

    **Raises:** `ValueError` naming the folder and the files expected when they are missing, and for
    `classes` outside 1..10 or an `n` above the subset's size."""
    folder = folder if folder is not None else os.environ.get(CIFAR10_ENV)
    if folder is None:
        raise ValueError(
            f"cifar10 needs the folder of CIFAR-10's python batches: pass folder=..., or set {CIFAR10_ENV}"
        )
    folder = Path(folder)
    names = _CIFAR10_FILES[bool(train)]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"cifar10: {folder} lacks {', '.join(missing)}; it must hold the python-format batches "
            f"{', '.join(names)} (the 'CIFAR-10 python version' archive, unpacked)"
        )
    classes = checks.positive_int("classes", classes)
    if classes > 10:
        raise ValueError(f"classes must be in 1..10, got {classes}")
    rows, found = [], []
    for name in names:
        data, y = _cifar10_batch(folder / name)
        rows.append(data)
        found.append(y)
    data, y = np.concatenate(rows), np.concatenate(found)
    keep = y < classes
    data, y = data[keep][:n], y[keep][:n]
    if n is not None and data.shape[0] < n:
        raise ValueError(f"n = {n} exceeds the {data.shape[0]} examples of the first {classes} classes")
    X = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    if standardize:
        X = (X - X.mean(axis=(0, 2, 3), keepdims=True)) / X.std(axis=(0, 2, 3), keepdims=True)
    dtype = jnp.result_type(float)
    targets = jnp.asarray(y, jnp.int32) if labels else jnp.asarray(np.eye(classes)[y], dtype)
    return jnp.asarray(X, dtype), targets


def _cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-format CIFAR-10 batch: (data (m, 3072) uint8, labels (m,) int64).

    **Raises:** `ValueError` naming the file and what it should hold when it is not a pickled dict of
    b"data" (m, 3072) uint8 rows and m b"labels" in 0..9."""
    expected = 'a pickled dict of b"data" (m, 3072) uint8 rows and m b"labels" in 0..9'
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # truncated, not a pickle, another format
        raise ValueError(f"cifar10: {path} cannot be read as {expected}: {type(e).__name__}: {e}") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"cifar10: {path} holds {keys}, expected {expected}")
    data, y = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(
            f'cifar10: {path} has b"data" of {data.dtype}{list(data.shape)}, expected {expected}'
        )
    if y.shape != (data.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
        raise ValueError(
            f'cifar10: {path} has {y.shape[0] if y.ndim else 0} b"labels" ({y.dtype}) for '
            f"{data.shape[0]} rows, expected {expected}"
        )
    return data, y.astype(np.int64)
