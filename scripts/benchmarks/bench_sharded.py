"""A sharded ensemble against the same ensemble on one device (`analysis.ensembles.ensemble`, one process).

256 seeds of minibatch SGD (B = 32, 500 steps) on a two-layer tanh net (n = 256, d = 16, width 64), float32:
on a mesh of every device against a mesh of the first device alone, in the same process (the bits are the
same; tests/analysis/test_scale.py). On a CPU host with one device the benchmark re-runs itself with
XLA_FLAGS=--xla_force_host_platform_device_count=(cores), so the CPU devices share the host's cores. With
a GPU, the same ensemble on the host CPU is a third row.
"""

import argparse
import json
import os
import subprocess
import sys

import jax
from bench_common import median_time, table

from analysis import ensembles
from flows import sgd
from models import Problem, TwoLayerNet, data

SEEDS, STEPS = 256, 500


def rows(repeats):
    kx, kt, kn = jax.random.split(jax.random.key(0), 3)
    X = data.gaussian(kx, 256, 16)
    y, _ = data.two_layer_teacher(kt, X, width=4, activation="tanh")
    P = Problem(TwoLayerNet(16, 64, key=kn, activation="tanh"), X, y)
    keys = jax.random.split(jax.random.key(1), SEEDS)

    def flow(k):
        return sgd(P, P.params, steps=STEPS, eta=0.05, batch_size=32, key=k, save_every=STEPS).stats["loss"]

    meshes = {
        f"1 device ({jax.devices()[0].platform})": ensembles.seed_mesh(jax.devices()[:1]),
        f"{jax.device_count()} devices, sharded": ensembles.seed_mesh(),
    }
    if jax.default_backend() != "cpu":
        meshes["host CPU (1 device)"] = ensembles.seed_mesh(jax.devices("cpu")[:1])
    return [
        (name, median_time(lambda mesh=mesh: ensembles.ensemble(flow, keys, mesh=mesh), repeats=repeats))
        for name, mesh in meshes.items()
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the rows as JSON (the re-run's output)")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    if jax.default_backend() == "cpu" and jax.device_count() == 1 and cores > 1:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={cores}")
        cmd = [sys.executable, __file__, "--json", "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        measured = [tuple(r) for r in json.loads(out.strip().splitlines()[-1])]
    else:
        measured = rows(args.repeats)
    if args.json:
        print(json.dumps(measured))
        return []
    title = f"SGD ensemble, {SEEDS} seeds x {STEPS} steps, sharded over the seed axis"
    return table(title, measured, baseline=measured[0][0])


if __name__ == "__main__":
    main()
