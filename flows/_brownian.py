"""Randomness by step: the key contract shared by the discrete flows and the SDEs, and the Brownian path on
the step grid built from it.

Step k draws from `step_keys(key, k)` = split(fold_in(key, k), 3) = (batch, label noise, bridge): the
minibatch from the first, the label noise from the second; the third refines the step's Brownian increment in
the SDEs.
`BrownianGrid` draws the SDE's increment over step k exactly as label-noise SGD draws its step-k noise, so an
SDE path and a label-noise SGD run with the same key are coupled.

Every draw is made in float32 and int32 (`normal`, `rademacher`, `batch_indices`) and cast to the run's
dtype, so the same key gives the same minibatches and the same noise (to float32's resolution, 6e-8
relative) in a float32 run and a float64 one, with or without `jax_enable_x64`: a float64 run is a
path-by-path reference for a float32 one. (Drawn in float64, JAX's bits would differ by dtype. The cost:
float32 normal draws reach |z| ~ 5.4, a tail of probability 1e-7.)
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, PRNGKeyArray

from ._noise import noise_dim

__all__ = ["normal", "rademacher", "batch_indices", "step_keys", "BrownianGrid"]


def normal(key: PRNGKeyArray, shape, dtype) -> Array:
    """N(0, 1) draws, made in float32 and cast to `dtype` (the same bits in every dtype).

    **Arguments:** `key`, the draws' `shape` and `dtype`.

    **Returns:** an array of `shape` in `dtype`."""
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def rademacher(key: PRNGKeyArray, shape, dtype) -> Array:
    """Uniform draws on {-1, +1} from the top bit of 32 random bits, cast to `dtype`.

    **Arguments:** `key`, the draws' `shape` and `dtype`.

    **Returns:** an array of `shape` in `dtype`, each entry -1 or +1."""
    return (1 - 2 * (jax.random.bits(key, shape, jnp.uint32) >> 31).astype(jnp.int32)).astype(dtype)


def batch_indices(key: PRNGKeyArray, n: int, batch_size: int, replace: bool = True) -> Array:
    """A minibatch of example indices drawn uniformly from 0..n-1.

    **Arguments:** `key`, the number of examples `n`, `batch_size` (at most n without replacement),
    `replace` (with replacement, the default, or without).

    **Returns:** an int32 array of `batch_size` indices."""
    if replace:
        return jax.random.randint(key, (batch_size,), 0, n, dtype=jnp.int32)
    return jax.random.choice(key, jnp.arange(n, dtype=jnp.int32), (batch_size,), replace=False)


def step_keys(key: PRNGKeyArray, k) -> tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray]:
    """Step k's keys (batch, label noise, bridge) = `split(fold_in(key, k), 3)`: where every flow's step k
    draws its randomness (docs/conventions.md, Keys).

    **Arguments:** the run's `key` and the step index `k` (may be traced).

    **Returns:** the three keys (batch, label noise, bridge)."""
    return tuple(jax.random.split(jax.random.fold_in(key, k), 3))


class BrownianGrid(diffrax.AbstractBrownianPath):
    """Brownian motion on the grid t = k * dt / 2^levels, for fixed steps of that size.

    The motion is the concatenation of the blocks `parts` (see `noise_parts`). Its increment over coarse
    step k, [k dt, (k+1) dt], is sqrt(dt) z_k with z_k ~ N(0, I) drawn from step k's keys
    (`step_keys`): the `"label"` block exactly as label-noise SGD draws its label noise (so
    the two are coupled), the `"batch"` block from the batch key. Each coarse increment is split `levels`
    times by Brownian bridges (halves D/2 +- sqrt(h) xi / 2 of an increment D over h, xi drawn from the
    step's bridge key, the level and the position), so paths with the same key and different `levels` are
    one Brownian motion seen on finer grids. `evaluate(t0, t1)` answers one fine step [t0, t1].
    """

    key: PRNGKeyArray
    dt: Array = eqx.field(converter=jnp.asarray)
    parts: tuple = eqx.field(static=True, converter=lambda p: tuple(dict(p).items()))
    levels: int = eqx.field(static=True, default=0)
    dtype: DTypeLike = eqx.field(static=True, default=jnp.float32)
    levy_area: type = eqx.field(static=True, default=diffrax.BrownianIncrement)

    @property
    def shape(self) -> jax.ShapeDtypeStruct:
        """The Brownian motion's shape and dtype (diffrax's `AbstractBrownianPath` interface)."""
        return jax.ShapeDtypeStruct((noise_dim(dict(self.parts)),), self.dtype)

    @property
    def t0(self):
        """The start of the grid's time axis, 0."""
        return 0.0

    @property
    def t1(self):
        """The end of its time axis: unbounded (steps are indexed, not stored)."""
        return jnp.inf

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        """W(t1) - W(t0) over one fine grid step starting at t0 (diffrax's interface; `left` unused)."""
        del left
        if t1 is None:
            raise ValueError("BrownianGrid answers increments over one grid step, not W(t) at a point")
        w = self.increment(jnp.round(t0 / (self.dt / 2**self.levels)).astype(jnp.int32))
        if use_levy:
            return diffrax.BrownianIncrement(dt=t1 - t0, W=w)
        return w

    def increment(self, j) -> Array:
        """The increment over fine step j, [j h, (j + 1) h] with h = dt / 2^levels (an integer index: no
        rounding of times): the one path down the bridge tree, levels + 1 draws."""
        local = j % 2**self.levels

        def refine(d, kb, level):
            parent = local >> (self.levels - level + 1)
            right = (local >> (self.levels - level)) & 1
            return self._half(d, self._bridge_draw(kb, level, parent, d.shape), level, right)

        return self._blocks(j // 2**self.levels, refine)

    def step_increments(self, k) -> Array:
        """The 2^levels fine increments of coarse step k, (2^levels, dim): the same numbers as `increment`
        at j = k 2^levels + 0, 1, ..., with the whole bridge tree drawn once (2^levels draws where
        `increment` makes levels + 1 for each of the 2^levels fine steps)."""

        def refine(d, kb, level):  # d: (2^(level-1), size) -> (2^level, size), each node split in two
            parents = jnp.arange(d.shape[0])
            xi = jax.vmap(lambda q: self._bridge_draw(kb, level, q, d.shape[1:]))(parents)
            halves = [self._half(d, xi, level, right) for right in (0, 1)]
            return jnp.stack(halves, axis=1).reshape(-1, d.shape[1])

        return self._blocks(k, refine, batched=True)

    def _blocks(self, k, refine, batched: bool = False) -> Array:
        """Coarse step k's increment sqrt(dt) z_k, block by block, refined `levels` times by `refine`."""
        k_batch, k_noise, k_bridge = step_keys(self.key, k)
        blocks = []
        for i, (name, shape) in enumerate(self.parts):
            z = normal(k_noise if name == "label" else k_batch, shape, self.dtype).reshape(-1)
            d = jnp.sqrt(self.dt).astype(self.dtype) * z
            d = d[None] if batched else d
            kb = jax.random.fold_in(k_bridge, i)
            for level in range(1, self.levels + 1):
                d = refine(d, kb, level)
            blocks.append(d)
        return jnp.concatenate(blocks, axis=-1)

    def _bridge_draw(self, kb, level, parent, shape) -> Array:
        """The bridge's draw that splits node `parent` of `level` (from the block's bridge key `kb`)."""
        return normal(jax.random.fold_in(jax.random.fold_in(kb, level), parent), shape, self.dtype)

    def _half(self, d, xi, level, right) -> Array:
        """The left (`right` = 0) or right half of increments d over dt / 2^(level - 1):
        d / 2 +- sqrt(dt / 2^(level - 1)) xi / 2."""
        half = jnp.sqrt(self.dt / 2 ** (level - 1)).astype(self.dtype) / 2
        return d / 2 + jnp.where(right, -half, half) * xi
