"""Ensembles at scale: sharded over devices and processes with the same bits, long runs that resume.

Each test runs `scripts/tools/ensemble.py` in subprocesses (device counts are fixed when JAX starts) and
compares the arrays its state folder ends with, bit for bit.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from analysis import store

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, str(ROOT / "scripts" / "tools" / "ensemble.py")]
ARGS = ["--seeds", "8", "--steps", "2000", "--chunk", "500", "--x64", "--no-progress"]


def run(out, *extra, env=None, launcher=()):
    cmd = [*launcher, *SCRIPT, *ARGS, *extra, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})


def arrays(out):
    with np.load(Path(out) / "arrays.npz") as f:
        return {k: f[k] for k in f.files if k != "chunks_done"}


def assert_same_bits(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, one CPU device."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert "on 1 devices (1 processes)" in run(out).stdout
    return arrays(out)


@pytest.mark.slow  # subprocesses (make test-all); chunked and padded ensembles are tested in process below
def test_four_host_devices_give_the_single_device_bits(reference, tmp_path):
    result = run(tmp_path / "run", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert "on 4 devices (1 processes)" in result.stdout
    assert_same_bits(arrays(tmp_path / "run"), reference)


@pytest.mark.slow  # the four-device test holds the sharding; this one the process launch (make test-all)
def test_two_processes_give_the_single_process_bits(reference, tmp_path):
    launcher = [sys.executable, str(ROOT / "scripts" / "tools" / "launch.py"), "--processes", "2", "--"]
    result = run(tmp_path / "run", launcher=launcher)
    assert "on 2 devices (2 processes)" in result.stdout
    assert_same_bits(arrays(tmp_path / "run"), reference)


@pytest.mark.slow  # resuming is tested in process (test_resumable_in_process, store and figure parts)
def test_a_killed_run_resumes_where_it_stopped_with_the_same_bits(tmp_path):
    out, extra = tmp_path / "run", ["--steps", "4000", "--chunk", "100", "--save-every", "100"]
    proc = subprocess.Popen([*SCRIPT, *ARGS, *extra, "--out", str(out)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "arrays.npz").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    with np.load(out / "arrays.npz") as f:
        done = int(f["chunks_done"])
    assert 0 < done < 40, done
    resumed = run(out, *extra)
    assert f"resuming {out} after chunk {done} of 40" in resumed.stdout, resumed.stdout
    whole = run(tmp_path / "whole", *extra)
    assert "resuming" not in whole.stdout
    assert_same_bits(arrays(out), arrays(tmp_path / "whole"))


@pytest.mark.slow  # the refusals themselves are tested on store.read (tests/analysis/test_store.py)
def test_a_foreign_or_damaged_state_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "run"
    run(out, "--steps", "500")
    before = (out / "arrays.npz").read_bytes()
    foreign = subprocess.run(
        [*SCRIPT, *ARGS, "--eta", "0.02", "--out", str(out)], capture_output=True, text=True
    )
    assert foreign.returncode != 0 and "holds a result for another config" in foreign.stderr
    (out / "arrays.npz").write_bytes(before[: len(before) // 2])  # a torn file
    damaged = subprocess.run([*SCRIPT, *ARGS, "--out", str(out)], capture_output=True, text=True)
    assert damaged.returncode != 0 and "is damaged" in damaged.stderr
    assert (out / "arrays.npz").read_bytes() == before[: len(before) // 2]


def test_ensemble_chunks_pad_and_take_per_seed_arguments():
    """In one process: chunks of 3 (padded) give the bits of one chunk of 8; `per_seed` slices follow the
    keys; the compiled ensemble agrees with a plain vmap to rounding."""
    import jax.numpy as jnp

    from analysis import ensembles
    from flows import sgd
    from tests.helpers import two_layer

    P = two_layer()
    keys = jax.random.split(jax.random.key(5), 8)
    starts = jax.vmap(lambda s: jax.tree.map(lambda a: a * (1 + 0.1 * s), P.params))(jnp.arange(8.0))

    def flow(k, p0):
        return sgd(P, p0, steps=20, eta=0.1, batch_size=2, key=k, save_every=5)

    whole = ensembles.ensemble(flow, keys, starts)
    chunked = ensembles.ensemble(flow, keys, starts, seeds_at_once=3)
    assert_same_bits(jax.tree.map(np.asarray, whole.stats), jax.tree.map(np.asarray, chunked.stats))
    plain = jax.vmap(flow)(keys, starts)
    np.testing.assert_allclose(whole.stats["loss"], plain.stats["loss"], rtol=1e-12)
    assert not np.allclose(whole.stats["loss"][0], whole.stats["loss"][1])
    unsharded = ensembles.ensemble(flow, keys, starts, seeds_at_once=3, mesh=False)  # a plain vmap, no mesh
    np.testing.assert_allclose(unsharded.stats["loss"], plain.stats["loss"], rtol=1e-12)


def test_resumable_in_process(tmp_path):
    """A pure `advance` resumed after any chunk gives the uninterrupted state, a pytree (here parameters as a
    tuple inside a dict) read back in its own structure; a state of another structure is refused."""
    config = {"what": "counter"}

    def init():
        return {"params": (np.zeros(3), np.ones(2)), "history": np.zeros(0)}

    def advance(state, i):
        x, w = state["params"]
        x = x + np.sqrt(i + 1.0)
        return {"params": (x, 2 * w), "history": np.append(state["history"], x.sum())}

    whole = store.resumable(tmp_path / "whole", config, init, advance, 6)
    calls = []
    store.resumable(tmp_path / "part", config, init, advance, 2)
    part = store.resumable(tmp_path / "part", config, init, lambda s, i: calls.append(i) or advance(s, i), 6)
    assert calls == [2, 3, 4, 5]
    assert isinstance(part["params"], tuple)
    assert_same_bits(part, whole)
    with pytest.raises(ValueError, match="do not have the structure asked for"):
        store.resumable(tmp_path / "part", config, lambda: {"y": np.zeros(1)}, advance, 6)
