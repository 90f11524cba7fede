"""Ensembles: one flow over many PRNG keys, compiled once and sharded over every device of every process.

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flows import Trajectory

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
    """A one-axis mesh, `"seeds"`, over `devices`.

    **Arguments:** `devices` (default: every device of every process).

    **Returns:** a `jax.sharding.Mesh`."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("seeds",))


def ensemble(
    flow: Callable[..., Trajectory], keys, *per_seed, chunk: int | None = None, mesh=None, progress=False
):
    """`flow(key, *args)` for every key (and the matching slices of `per_seed`, pytrees with a leading seed
    axis), stacked over a leading seed axis: `jax.vmap`-ed, compiled once (`jax.jit`) and sharded over the
    seed axis of `mesh` (default `seed_mesh()`: all devices of all processes; `mesh=False`: a plain vmap on
    the default device, for a flow whose batching rules do not survive sharding), `chunk` seeds at a time
    (all at once by default; `progress=True` shows a tqdm bar over the chunks).

    Every device runs the same compiled per-seed program on its share of the seeds, so the same keys give
    the same bits on one device, on several and across processes (`jax.distributed`, started by
    `scripts/tools/launch.py`); tested with 1 against 4 CPU devices
    (`XLA_FLAGS=--xla_force_host_platform_device_count=4`) and 1 against 2 processes. A chunk
    is padded to a multiple of the mesh size with copies of its last seed, which are dropped. Across
    processes every process passes the same keys and gets the whole result back.

    **Arguments:** the `flow` (`flow(key, *args)` -> a `Trajectory`, or any pytree), its `keys`, the
    `per_seed` arguments, `chunk`, `mesh`, `progress`.

    **Returns:** the flow's outputs stacked over a leading seed axis (a `Trajectory` of ensembles).
    """
    from tqdm.auto import tqdm

    keys = jnp.asarray(keys)
    typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    impl = jax.random.key_impl(keys) if typed else None
    data = np.asarray(jax.random.key_data(keys) if typed else keys)
    per_seed = jax.tree.map(np.asarray, per_seed)
    if mesh is False:  # a plain vmap on the default device, no sharding
        sharding, size = None, 1
    else:
        mesh = mesh if mesh is not None else seed_mesh()
        sharding, size = NamedSharding(mesh, PartitionSpec(mesh.axis_names)), mesh.size

    run = _vmapped(flow, impl)
    chunk = chunk or len(data)
    parts = []
    for start in tqdm(range(0, len(data), chunk), disable=not progress, desc="seeds"):
        count = min(chunk, len(data) - start)
        pad = -count % size

        def shard(x, start=start, count=count, pad=pad):
            x = x[start : start + count]
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            if sharding is None:
                return jnp.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        out = run(shard(data), *jax.tree.map(shard, per_seed))
        if jax.process_count() > 1:
            out = multihost_utils.process_allgather(out, tiled=True)
        parts.append(jax.tree.map(lambda a, count=count: a[:count], out))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


@functools.lru_cache(maxsize=16)
def _vmapped(flow, impl):
    """jit(vmap(flow)) taking raw key data, cached on the flow so that calling `ensemble` again with the same
    flow (say, chunk after chunk of a long run) does not compile again."""

    def one(k, *args):
        return flow(jax.random.wrap_key_data(k, impl=impl) if impl is not None else k, *args)

    return jax.jit(jax.vmap(one))
