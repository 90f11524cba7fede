"""Step <-> time conversions: the one place where eta, B and sigma meet time (docs/conventions.md).

- Gradient-flow time: t = eta * k. GD, SGD and label-noise SGD at step k sit at time t on the clock of
  gradient flow and of the first-order SDEs.
- SDE diffusion in that clock: d theta = -grad L dt + sqrt(eta) Sigma^{1/2} dW.
- Slow time on the zero-loss manifold for label noise: tau = eta^2 sigma^2 k / B, or
  tau = eta^2 sigma^2 B_eps k / B^2 when the label noise falls on B_eps examples drawn apart from the
  gradient batch of B (`label_noise_sgd(noise_batch_size=B_eps)`; the label-noise covariance of a step is
  then sigma^2 B_eps J^T J / (B^2 n), B_eps / B times that of noise on the gradient batch itself). In tau,
  label-noise SGD follows d theta / d tau = -(1/4) P_T grad tr H (Blanc et al. 2020; Damian et al. 2021;
  Li, Wang & Arora 2022).

This slow time is the leading order in eta: the slow flow holds while eta tr H << 1. Beyond it,
(i) GD's own O(eta) drift shows, and (ii) with minibatches (B < n) SGD adds the noise of the residuals,
covariance (c_B^2 / B) [(1/n) sum_i r_i^2 grad f_i grad f_i^T - gbar gbar^T]. It vanishes on the manifold,
but label noise holds the iterates off it with E r_i^2 of order eta sigma^2 tr H, so next to the label
noise (covariance sigma^2 J^T J / (B n)) it is a relative correction of order eta tr H that a larger sigma
does not remove. A weak error that does not fall like eta says one of them is not small.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from models import checks

__all__ = [
    "WHOLE_RTOL",
    "flow_time",
    "steps_for_time",
    "grid_index",
    "slow_time",
    "steps_for_slow_time",
    "even_index",
    "is_whole",
]

# how far from a whole number t / eta may be and still count as one (float32 rounds at 6e-8)
WHOLE_RTOL = 1e-6


def flow_time(step, eta):
    """t = eta * k.

    **Arguments:** the step index (or indices) `step`, the step size `eta`.

    **Returns:** t: NumPy for NumPy or Python arguments; otherwise a JAX array in eta's dtype (an integer
    step array is cast to it, not promoted)."""
    if not any(isinstance(x, jax.Array) for x in (step, eta)):
        return eta * step
    eta = jnp.asarray(eta)
    return eta * jnp.asarray(step).astype(eta.dtype)


def steps_for_time(t, eta, *, name: str = "t"):
    """The number of steps k >= 1 with eta * k = t (to `WHOLE_RTOL` relative).

    **Arguments:** the time `t`, the step `eta`, the argument's `name` for the error.

    **Returns:** k: a Python int for concrete t and eta; an int32 array for traced ones (a flow under
    `jax.jit` or `jax.vmap`), guarded by `eqx.error_if`.

    **Raises:** `ValueError` naming `name` when a concrete t is not a whole number of steps."""
    count = t / eta
    if checks.is_concrete(count):
        c = float(count)
        k = round(c)
        if k < 1 or not is_whole(c, k):
            raise ValueError(f"{name} = {float(t):.6g} is not a whole number of steps of {float(eta):.6g}")
        return k
    k = jnp.round(count)
    return eqx.error_if(
        k.astype(jnp.int32), (k < 1) | ~is_whole(count, k, jnp), f"{name} is not a whole number of steps"
    )


def grid_index(ts, h, last, *, name: str = "ts"):
    """The step indices j = ts / h of save times on the grid of step h: each a whole number (to `WHOLE_RTOL`
    relative) in [0, last] (last = t1 / h), non-decreasing.

    **Arguments:** the times `ts`, the step `h`, the last step `last`, the argument's `name` for the error.

    **Returns:** an int32 array of indices (guarded by `eqx.error_if` when traced).

    **Raises:** `ValueError` naming `name` for concrete times off the grid or out of range."""
    if checks.is_concrete((ts, h, last)):
        count, last = np.asarray(ts, np.float64) / float(h), float(last)
        j = np.round(count)
        if count.ndim != 1 or np.any(np.diff(count) < 0) or np.any(j < 0) or np.any(_beyond(j, last, np)):
            raise ValueError(
                f"{name} must be a non-decreasing 1-D array of times in [0, {last * float(h):.6g}]"
            )
        if not np.all(is_whole(count, j)):
            raise ValueError(
                f"{name} must lie on the step grid of {float(h):.6g}: fixed steps do not interpolate"
            )
        return jnp.asarray(j, jnp.int32)
    count = jnp.asarray(ts) / h
    j = jnp.round(count)
    last = jnp.asarray(last).astype(j.dtype)
    off = jnp.any(~is_whole(count, j, jnp) | (j < 0) | _beyond(j, last, jnp))
    return eqx.error_if(j.astype(jnp.int32), off, f"{name} must lie on the step grid, in [0, t1]")


def is_whole(count, k, xp=np):
    """The one whole-number rule of the library: count is the whole number k, to `WHOLE_RTOL` relative.

    **Arguments:** `count`, `k`, and `xp` (numpy on the host, jax.numpy traced).

    **Returns:** a boolean (array) in `xp`."""
    return xp.abs(count - k) <= WHOLE_RTOL * xp.maximum(1.0, xp.abs(count))


def _beyond(j, last, xp=np):
    """Step j lies past step `last` by more than `WHOLE_RTOL` relative."""
    return j - last > WHOLE_RTOL * xp.maximum(1.0, last)


def slow_time(step, eta, sigma, batch_size, noise_batch_size=None):
    """tau = eta^2 sigma^2 k / B, or eta^2 sigma^2 B_eps k / B^2 with a label-noise batch of B_eps apart from
    the gradient batch.

    **Arguments:** `step` (k), `eta`, `sigma`, `batch_size` (B), `noise_batch_size` (B_eps, or None).

    **Returns:** tau, in the type of the arguments."""
    return eta**2 * sigma**2 * step / _effective_batch(batch_size, noise_batch_size)


def steps_for_slow_time(tau, eta, sigma, batch_size, noise_batch_size=None) -> int:
    """The number of steps k with `slow_time(k, ...)` = tau, rounded up to a whole step (a count within
    `WHOLE_RTOL` relative of a whole number is that number).

    **Arguments:** `tau`, and `eta`, `sigma`, `batch_size`, `noise_batch_size` as for `slow_time`.

    **Returns:** k, a Python int."""
    count = float(tau * _effective_batch(batch_size, noise_batch_size) / (eta**2 * sigma**2))
    k = round(count)
    return k if is_whole(count, k) else int(np.ceil(count))


def even_index(steps, num_saves: int):
    """`num_saves` step indices spread evenly over 0..steps, each rounded to the nearest step: the default
    save grid of the fixed-step flows (the SDEs, the central flow).

    **Arguments:** `steps` (may be traced), `num_saves` (static).

    **Returns:** an int32 array of `num_saves` indices."""
    grid = jnp.linspace(0.0, 1.0, num_saves)
    return jnp.round(grid * jnp.asarray(steps).astype(grid.dtype)).astype(jnp.int32)


def _effective_batch(batch_size, noise_batch_size):
    """B, or B^2 / B_eps: the batch that label noise on the gradient batch would need for the same tau."""
    return batch_size if noise_batch_size is None else batch_size**2 / noise_batch_size
