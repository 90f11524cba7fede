"""The gradient noise of one SGD step, as a matrix-free factor of its covariance (docs/conventions.md).

With batch B of n examples, label noise sigma and residuals r (square loss; for any loss the batch factor
takes q_i = d l_i / d f_i, which is r_i for square loss, `Problem.output_grads`),

    F_label = (sigma / sqrt(B n)) J^T                          (p, N)  label noise eps ~ N(0, sigma^2)
    F_batch = (c_B / sqrt(B n)) [g_1 - gbar, ..., g_n - gbar]  (p, n)  minibatch of B, g_i = J_i^T r_i

with c_B = 1 for batches drawn with replacement and sqrt((n - B) / (n - 1)) without; F F^T is the covariance
of one step's gradient. Neither factor is formed: F_label w + F_batch v = J^T [sigma w + c_B r * (v - mean v)]
/ sqrt(B n) is one vector-Jacobian product of the outputs (memory O(p + N), cost one backward pass), and the
p x p covariance never appears. `noise_cotangent` is that bracket, so a flow can fold it into the VJP it
takes for the drift.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from models import Problem, checks

__all__ = ["StepNoise", "noise_parts", "diffusion", "noise_cotangent", "noise_dim", "ito_correction"]


class StepNoise(eqx.Module):
    """The randomness of one SGD step, validated when built: a minibatch of `batch_size` (1..n; B = n is the
    full batch, GD's gradient, whatever `replace` says: docs/conventions.md) drawn with replacement or not
    (`replace`), label noise of scale `sigma` (None: none; Gaussian or Rademacher, `noise`), on the gradient
    batch or on `noise_batch_size` examples drawn apart from it. The discrete flows step with it and the SDEs
    model it. `sigma` may be traced; the rest is static.

    The label noise is weighted as the batch's loss weights its examples, 1/B each: on the gradient batch the
    step's gradient is that of (1/(2B)) sum_i (f_i - y_i - eps_i)^2; on a separate noise batch it gains
    -(1/B) sum_j eps_j grad f_j. A published scheme that adds one example's unweighted noise term
    -delta z grad f_j (z ~ N(0, 1)) to the full-batch gradient is B = n, B_eps = 1 with sigma = n delta."""

    batch_size: int = eqx.field(static=True, converter=lambda b: checks.positive_int("batch_size", b))
    sigma: Array | None = eqx.field(
        default=None, converter=lambda s: None if s is None else checks.non_negative("sigma", s)
    )
    replace: bool = eqx.field(static=True, default=True)
    noise: str = eqx.field(static=True, default="gaussian")  # "gaussian" or "rademacher"
    noise_batch_size: int | None = eqx.field(
        static=True,
        default=None,
        converter=lambda b: None if b is None else checks.positive_int("noise_batch_size", b),
    )

    def __check_init__(self):
        if self.noise not in ("gaussian", "rademacher"):
            raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {self.noise!r}")
        if not isinstance(self.replace, bool):
            raise ValueError(f"replace must be True or False, got {self.replace!r}")
        if self.sigma is None and self.noise_batch_size is not None:
            raise ValueError(
                f"noise_batch_size = {self.noise_batch_size} places label noise, but sigma is None (no label "
                "noise): give sigma, or drop noise_batch_size"
            )

    @property
    def factor_args(self) -> dict:
        """The keyword arguments of the noise factors below (`diffusion`, `noise_cotangent`, ...). With a
        label-noise batch of B_eps apart from the gradient batch of B, the label term's covariance is
        sigma^2 B_eps J^T J / (B^2 n), B_eps / B times that of noise on the gradient batch: the factors get
        sigma sqrt(B_eps / B)."""
        sigma = self.sigma
        if self.noise_batch_size is not None:
            sigma = sigma * (self.noise_batch_size / self.batch_size) ** 0.5
        return dict(sigma=sigma, batch_size=self.batch_size, replace=self.replace)


def noise_parts(problem: Problem, sigma, batch_size: int) -> dict[str, tuple[int, ...]]:
    """The blocks of the Brownian motion, in order: `"label"` (shaped like y) when `sigma` is given,
    `"batch"` (n,) when `batch_size < n`. The SDE's Brownian motion is their concatenation, flattened.

    **Arguments:** the `problem`, the label-noise scale `sigma` (None: no label block) and `batch_size`.

    **Returns:** a dict block name -> shape, in order."""
    parts = {}
    if sigma is not None:
        parts["label"] = problem.y.shape
    if batch_size < problem.n:
        parts["batch"] = (problem.n,)
    return parts


def diffusion(
    problem: Problem,
    params: PyTree,
    w: Float[Array, " m"],
    *,
    eta,
    sigma,
    batch_size: int,
    replace: bool = True,
) -> PyTree:
    """sqrt(eta) [F_label w_label + F_batch w_batch] at `params` for w = (w_label, w_batch) flattened (see
    `noise_parts`), as one VJP of the outputs; the module docstring gives F. The covariance of one SGD
    step's gradient noise is F F^T. Memory O(N + p), cost one forward pass and one VJP.

    **Arguments:** `problem`, `params`, the noise `w` (m entries, `noise_dim`), and `eta`, `sigma`,
    `batch_size`, `replace` as in `StepNoise.factor_args`.

    **Returns:** a pytree shaped like `params`.

    **Raises:** `ValueError` when `w` does not have m entries."""
    outputs, vjp = jax.vjp(problem.outputs, params)
    q = problem.output_grads(outputs)
    (step,) = vjp(
        noise_cotangent(problem, q, w, eta=eta, sigma=sigma, batch_size=batch_size, replace=replace)
    )
    return step


def noise_cotangent(problem: Problem, r, w, *, eta, sigma, batch_size: int, replace: bool = True):
    """sqrt(eta) [sigma w_label + c_B r * (w_batch - mean w_batch)] / sqrt(B n), shaped like the outputs: the
    cotangent whose VJP through the outputs is `diffusion`.

    **Arguments:** `problem`; `r`, q = `Problem.output_grads` (the residuals for square loss); the noise `w`
    (m entries); `eta`, `sigma`, `batch_size`, `replace` as in `StepNoise.factor_args`.

    **Returns:** an array shaped like the outputs (like `r`).

    **Raises:** `ValueError` when `w` does not have m entries."""
    n = problem.n
    w = _split(w, noise_parts(problem, sigma, batch_size))
    cotangent = jnp.zeros_like(r)
    if "label" in w:
        cotangent = cotangent + sigma * w["label"]
    if "batch" in w:
        v = w["batch"] - jnp.mean(w["batch"])
        c = 1.0 if replace else jnp.sqrt((n - batch_size) / (n - 1))
        cotangent = cotangent + c * r * v.reshape((n,) + (1,) * (r.ndim - 1))
    return cotangent * (jnp.sqrt(eta) / jnp.sqrt(batch_size * n))


def noise_dim(parts: dict[str, tuple[int, ...]]) -> int:
    """m, the dimension of the Brownian motion with these blocks.

    **Arguments:** `parts`, as `noise_parts` returns them.

    **Returns:** m, a Python int."""
    return sum(math.prod(shape) for shape in parts.values())


def _split(w, parts: dict[str, tuple[int, ...]]) -> dict[str, Array]:
    out, start = {}, 0
    for name, shape in parts.items():
        size = math.prod(shape)
        out[name] = w[start : start + size].reshape(shape)
        start += size
    if start != w.shape[0]:
        raise ValueError(f"the noise w has {w.shape[0]} entries, expected {start} (blocks {parts})")
    return out


def ito_correction(
    problem: Problem, params: PyTree, *, eta, sigma, batch_size: int, replace: bool = True
) -> PyTree:
    """(1/2) sum_j D G_j(theta)[G_j(theta)], G_j = `diffusion` applied to the j-th unit vector: a Stratonovich
    solver with drift (Ito drift - this) solves the Ito SDE. One JVP of a VJP per noise column (vmapped).

    The label columns alone give (eta sigma^2 / (4B)) grad tr G, tr G = (1/n) sum_i ||grad f_i||^2.
    Memory m p (the m columns' JVPs at once), cost m JVPs of a VJP.

    **Arguments:** `problem`, `params`, and `eta`, `sigma`, `batch_size`, `replace` as in
    `StepNoise.factor_args`.

    **Returns:** a pytree shaped like `params`.
    """
    hyper = dict(eta=eta, sigma=sigma, batch_size=batch_size, replace=replace)
    m = noise_dim(noise_parts(problem, sigma, batch_size))

    def term(e):
        column = lambda p: diffusion(problem, p, e, **hyper)  # noqa: E731
        return jax.jvp(column, (params,), (column(params),))[1]

    terms = jax.vmap(term)(jnp.eye(m, dtype=problem.X.dtype))
    return jax.tree.map(lambda x: 0.5 * jnp.sum(x, axis=0), terms)
