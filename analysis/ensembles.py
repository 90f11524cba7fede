"""Ensembles: one flow over many PRNG keys, compiled once and run on every device of every process.

The same keys give the same bits on one device, on several and across processes (`jax.distributed`, started
by `scripts/tools/launch.py`).
"""

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from flows import Trajectory
from models import checks

__all__ = ["init_processes", "seed_mesh", "ensemble"]


def init_processes() -> None:
    """Join a multi-process `jax.distributed` run when this process was started as one of its processes:
    `jax.distributed.initialize` from SHARPFLOW_COORDINATOR (host:port of process 0),
    SHARPFLOW_NUM_PROCESSES and SHARPFLOW_PROCESS_ID, which `scripts/tools/launch.py` sets. Does nothing
    when they are unset. Call it before anything else touches JAX's devices.

    **Returns:** None."""
    coordinator = os.environ.get("SHARPFLOW_COORDINATOR")
    if coordinator is None:
        return
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["SHARPFLOW_NUM_PROCESSES"]),
        process_id=int(os.environ["SHARPFLOW_PROCESS_ID"]),
    )


def seed_mesh(devices=None) -> Mesh:
    """A one-axis mesh, `"seeds"`, over `devices`: the devices an ensemble spreads its seeds over.

    **Arguments:** `devices` (default: every device of every process).

    **Returns:** a `jax.sharding.Mesh`."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("seeds",))


def ensemble(
    flow: Callable[..., Trajectory],
    keys,
    *per_seed,
    seeds_at_once: int | None = None,
    mesh=None,
    progress=False,
):
    """`flow(key, *args)` for every key (and the matching slices of `per_seed`, pytrees with a leading seed
    axis), stacked over a leading seed axis: `jax.vmap`-ed and compiled once (`jax.jit`) for blocks of
    `seeds_at_once` seeds, the blocks spread round-robin over the devices of `mesh` (default `seed_mesh()`:
    all devices of all processes; `mesh=False`: the default device alone). `progress=True` shows a tqdm bar
    over the blocks.

    Each block is dispatched to its device as an ordinary single-device computation (asynchronously, so
    the devices run at once): nothing in the traced program carries a sharding, so every batching rule JAX
    has serves (a user's `eqx.nn.Conv2d` under `jax.grad`, whose batching rule refuses sharded outputs,
    included). Every seed is computed by the same program, of width `seeds_at_once`, wherever it runs: the
    same keys and the same `seeds_at_once` give the same bits on one device, on several and across processes
    (`jax.distributed`, started by `scripts/tools/launch.py`; tested with 1 against 4 CPU devices,
    `XLA_FLAGS=--xla_force_host_platform_device_count=4`, and 1 against 2 processes). XLA's batched kernels
    round differently at different widths (a convolution or an attention layer vmapped over 1 or 4 seeds
    differ by ~1e-7 in float32, ~1e-16 in float64), so the default width, the seeds over the devices,
    follows the device count: pass `seeds_at_once` to fix the bits across machines. The last block is
    padded with copies of the last seed, which are dropped; across processes every process passes the same
    keys and gets the whole result back. Memory: a device runs one block at a time (`seeds_at_once` copies
    of the flow's working set) and holds the outputs of its blocks.

    **Arguments:** the `flow` (`flow(key, *args)` -> a `Trajectory`, or any pytree), its `keys`, the
    `per_seed` arguments, `seeds_at_once` (default: the seeds over the devices, rounded up), `mesh`,
    `progress`.

    **Returns:** the flow's outputs stacked over a leading seed axis (a `Trajectory` of ensembles).

    **Raises:** `ValueError` naming `seeds_at_once` when it is not a positive integer, and naming
    `per_seed` when its leading axis is not the number of keys."""
    from tqdm.auto import tqdm

    data, impl = _key_data(jnp.asarray(keys))
    raw = [_key_data(leaf) for leaf in jax.tree.leaves(per_seed)]  # typed keys travel as their data
    impls = (jax.tree.structure(per_seed), tuple(i for _, i in raw))
    per_seed = jax.tree.unflatten(impls[0], [x for x, _ in raw])
    seeds = len(data)
    for leaf in jax.tree.leaves(per_seed):
        if leaf.ndim == 0 or leaf.shape[0] != seeds:
            raise ValueError(
                f"per_seed arguments need a leading seed axis of {seeds} (one per key), got a leaf of "
                f"shape {leaf.shape}"
            )
    devices = [jax.devices()[0]] if mesh is False else list((mesh or seed_mesh()).devices.flat)
    devices.sort(key=lambda d: d.process_index)  # each process's devices in one contiguous run
    size = len(devices)
    width = (
        -(-seeds // size) if seeds_at_once is None else checks.positive_int("seeds_at_once", seeds_at_once)
    )
    blocks = -(-seeds // width)
    blocks += -blocks % size  # every device the same number of blocks: processes gather equal shapes
    padded = jax.tree.map(
        lambda x: np.concatenate([x, np.repeat(x[-1:], blocks * width - seeds, axis=0)]), (data, per_seed)
    )
    owner = [devices[b % size].process_index for b in range(blocks)]
    mine = [b for b in range(blocks) if owner[b] == jax.process_index()]

    run = _vmapped(flow, impl, impls)
    outs = [
        run(
            *jax.device_put(
                jax.tree.map(lambda x, b=b: x[b * width : (b + 1) * width], padded), devices[b % size]
            )
        )
        for b in mine
    ]  # dispatched asynchronously: the devices run at once
    outs = [jax.tree.map(np.asarray, out) for out in tqdm(outs, disable=not progress, desc="seed blocks")]
    out = jax.tree.map(lambda *xs: np.stack(xs), *outs)  # (local blocks, width, ...)
    if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)  # the processes' blocks, in process order
    where = np.argsort(sorted(range(blocks), key=lambda b: owner[b]))  # block b's row in `out` (stable)
    return jax.tree.map(lambda a: jnp.asarray(a[where].reshape(-1, *a.shape[2:])[:seeds]), out)


def _key_data(x):
    """(x as a NumPy array, None), or (its key data, its PRNG implementation) for typed PRNG keys."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x)), jax.random.key_impl(x)
    return np.asarray(x), None


def _wrapped(x, impl):
    return x if impl is None else jax.random.wrap_key_data(x, impl=impl)


@functools.lru_cache(maxsize=16)
def _vmapped(flow, impl, impls):
    """jit(vmap(flow)) taking raw key data and the per-seed arguments as one tuple (typed keys among them as
    their data, `impls`: their structure and implementations), cached on the flow so that calling
    `ensemble` again with the same flow (say, group after group of a long run) does not compile again."""
    structure, leaf_impls = impls

    def one(k, args):
        leaves = [_wrapped(x, i) for x, i in zip(jax.tree.leaves(args), leaf_impls)]
        return flow(_wrapped(k, impl), *jax.tree.unflatten(structure, leaves))

    return jax.jit(jax.vmap(one))
