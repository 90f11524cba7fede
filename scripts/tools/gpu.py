"""Every GPU row in one run (`make gpu`): each benchmark, the real-network quick presets (central_flow_cnn,
svag_cnn, sharpness_vs_lr_batch with its CNN row) and the per-step cost of the central-flow paper preset,
each within a stated budget, the whole within 8 minutes, written as one table.

    python scripts/tools/gpu.py [--out gpu.md] [--cpu benchmarks.json] [--only NAME ...] [--allow-cpu]
                                [--smoke]

Each item runs in its own process under a timeout (its budget, in `ITEMS`); one that runs over is recorded
as such and the run goes on. The table (`--out`, markdown) gives the device, each item's sizes, seconds,
budget and status, and, for the benchmark rows, the ratio of the GPU's seconds to the CPU's where a CPU table
`--cpu` (the JSON `make bench` writes beside benchmarks.md) holds the same row. The paper presets' rows
time one GD step and one central-flow substep at the central-flow paper preset's size (a CNN with channels
(32, 32) on 1,000 CIFAR-10-shaped images, 4 classes; random pixels: the cost does not depend on them) and
multiply out the preset's steps: the estimate behind "sized for a GPU".

It refuses to run where JAX sees no GPU, unless `--allow-cpu` (how the tests run it, with `--smoke`: small
sizes, one benchmark repeat). `make gpu` installs the `gpu` extra (JAX's CUDA build) into .venv first; on a
machine that has a CUDA JAX and no network, run `python scripts/tools/gpu.py` with that Python (the children
find the packages through PYTHONPATH; of the dependencies, matfree and mnist1d are pure Python and install
from wheels carried there).
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1]
ROOT = SCRIPTS.parent

# name -> (what it runs, budget in seconds); the budgets sum to 8 minutes
ITEMS = {
    "bench_networks": ("scripts/benchmarks/bench_networks.py: CNN p = 154,058, n = 1,000", 50),
    "bench_lanczos": ("scripts/benchmarks/bench_lanczos.py: Lanczos against its products, p = 26,122", 15),
    "bench_discrete": ("scripts/benchmarks/bench_discrete.py: label-noise SGD against a bare scan", 30),
    "bench_sde": ("scripts/benchmarks/bench_sde.py: the label-noise SDE against label-noise GD", 30),
    "bench_slow_flow": (
        "scripts/benchmarks/bench_slow_flow.py: the slow flow, N up to 1,024, p up to 32,768",
        60,
    ),
    "bench_sharded": ("scripts/benchmarks/bench_sharded.py: an SGD ensemble over every device", 20),
    "central_flow_cnn": ("scripts/figures/central_flow_cnn.py --preset quick", 120),
    "svag_cnn": ("scripts/figures/svag_cnn.py --preset quick", 60),
    "sharpness_vs_lr_batch": ("scripts/figures/sharpness_vs_lr_batch.py --preset quick (its CNN row)", 75),
    "paper_cost": ("central_flow_cnn paper preset: one GD step, one central-flow substep", 20),
}
FIGURES = ("central_flow_cnn", "svag_cnn", "sharpness_vs_lr_batch")
# the sizes of scripts/figures/central_flow_cnn.py's paper preset that its per-step cost depends on (a
# script imports no figure script; tests/scripts/test_gpu.py holds these to the preset)
CENTRAL_FLOW_CNN_PAPER = dict(
    n=1000,
    channels=(32, 32),
    etas={"square": (0.08, 0.04, 0.02), "cross_entropy": (0.16, 0.08, 0.04)},
    t1=200.0,
    saves=100,
    num_eigs=3,
)
BENCH_ARGS = {"bench_discrete": ["--no-torch"]}
SMOKE_BUDGET = 600  # seconds an item at smoke sizes (the tests on a CPU; paper_cost took 344 s on a busy one)


def run_item(name: str, smoke: bool, budget: float, folder: Path) -> dict:
    """One item in a child process with `budget` seconds (figures in `folder`/figures, stored results in
    `folder`/results); returns its row (status "ok", "over budget" or "failed", and what it printed as JSON
    on its last line)."""
    if name.startswith("bench_"):
        args = BENCH_ARGS.get(name, []) + ["--repeats", "1" if smoke else "3"]
        if smoke and name == "bench_slow_flow":
            args = ["--sizes", "64", "--repeats", "1"]
        code = (
            f"import json, sys; sys.path.insert(0, {str(SCRIPTS / 'benchmarks')!r}); import {name}; "
            f"print(json.dumps({name}.main({args!r})))"
        )
        cmd = [sys.executable, "-c", code]
    elif name in FIGURES:
        preset = "smoke" if smoke else "quick"
        cmd = [sys.executable, str(SCRIPTS / "figures" / f"{name}.py"), "--preset", preset, "--no-progress"]
        cmd += ["--out", str(folder / "figures"), "--results", str(folder / "results"), "--recompute"]
    else:
        cmd = [sys.executable, str(Path(__file__)), "--paper-cost"] + (["--smoke"] if smoke else [])
    start = time.perf_counter()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "over budget", "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return {"status": f"failed: {tail[0][:120]}", "seconds": seconds}
    lines = done.stdout.strip().splitlines()
    try:
        printed = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        printed = None
    return {"status": "ok", "seconds": seconds, "printed": printed, "stdout": done.stdout}


def paper_cost(smoke: bool) -> dict:
    """Seconds for one GD step and one central-flow substep (num_eigs = 3) of the central_flow_cnn paper
    preset's CNN on random CIFAR-10-shaped images (n = 1,000; 50 with `smoke`), compiled first, and the
    preset's whole estimated time: its steps t1 / eta over its etas, for both losses."""
    import jax
    import numpy as np
    from bench_common import median_time

    from analysis import hessian
    from flows import central_flow, gd
    from models import CNN, Problem

    cfg = CENTRAL_FLOW_CNN_PAPER
    n = 50 if smoke else cfg["n"]
    X = jax.random.normal(jax.random.key(0), (n, 3, 32, 32))
    labels = jax.random.randint(jax.random.key(1), (n,), 0, 4)
    model = CNN((3, 32, 32), cfg["channels"], outputs=4, activation="tanh", key=jax.random.key(2))
    P = Problem(model, X, jax.nn.one_hot(labels, 4), loss="square")
    eta, reps = 0.05, 5
    timed = functools.partial(median_time, repeats=1)  # compiled first, then one timed call

    # GD: reps steps against one, the difference per step (compilation and launch excluded)
    step = (
        timed(lambda: gd(P, P.params, steps=reps + 1, eta=eta, save_every=reps + 1).stats)
        - timed(lambda: gd(P, P.params, steps=1, eta=eta, save_every=1).stats)
    ) / reps
    cf = (
        timed(
            lambda: (
                central_flow(P, P.params, eta=eta, t1=2 * eta, num_eigs=cfg["num_eigs"], num_saves=2).stats
            )
        )
        - timed(
            lambda: central_flow(P, P.params, eta=eta, t1=eta, num_eigs=cfg["num_eigs"], num_saves=2).stats
        )
    ) / 4  # one GD step more is 4 substeps more
    lanczos = timed(lambda: hessian.lambda_max(P, P.params))
    steps = sum(round(cfg["t1"] / e) for etas in cfg["etas"].values() for e in etas)
    saves = sum(len(etas) for etas in cfg["etas"].values()) * (cfg["saves"] + 1)
    estimate = steps * (step + 4 * cf) + 2 * saves * lanczos  # GD and gradient flow read lambda_max a save
    return {
        "p": int(P.num_params),
        "n": n,
        "gd_step_s": step,
        "cf_substep_s": cf,
        "lanczos_s": lanczos,
        "preset_steps": steps,
        "preset_estimate_s": float(np.round(estimate)),
    }


def cpu_rows(path: Path) -> dict:
    """(benchmark title without its backend, run) -> seconds, from a `make bench` JSON table."""
    if not path.is_file():
        return {}
    return {(r["benchmark"].rsplit(",", 1)[0], r["run"]): r["seconds"] for r in json.loads(path.read_text())}


def table(device: str, results: dict, cpu: dict) -> str:
    lines = [
        f"# GPU rows ({device})",
        "",
        "| item | what | seconds | budget s | status |",
        "|---|---|---:|---:|---|",
    ]
    bench = ["", "| benchmark | run | GPU s | CPU s | GPU / CPU |", "|---|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {ITEMS[name][0]} | {r['seconds']:.1f} | {r['budget']} | {r['status']} |")
        printed = r.get("printed")
        if name.startswith("bench_") and isinstance(printed, list):
            for row in printed:
                key = (row["benchmark"].rsplit(",", 1)[0], row["run"])
                base = cpu.get(key)
                ratio = f"{row['seconds'] / base:.3f}" if base else "-"
                cpu_s = f"{base:.4f}" if base else "-"
                bench.append(
                    f"| {row['benchmark']} | {row['run']} | {row['seconds']:.4f} | {cpu_s} | {ratio} |"
                )
        if name == "paper_cost" and isinstance(printed, dict):
            c = printed
            lines.append(
                f"| | paper preset: p = {c['p']}, n = {c['n']}: GD step {c['gd_step_s']:.4f} s, central-flow "
                f"substep {c['cf_substep_s']:.4f} s, Lanczos {c['lanczos_s']:.3f} s; {c['preset_steps']} GD "
                f"steps in the preset: ~{c['preset_estimate_s']:.0f} s | | | |"
            )
    return "\n".join(lines + bench) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "gpu.md", help="the table (markdown)")
    p.add_argument("--cpu", type=Path, default=ROOT / "benchmarks.json", help="a CPU table from make bench")
    p.add_argument("--only", nargs="*", choices=list(ITEMS), help="run these items alone")
    p.add_argument("--allow-cpu", action="store_true", help="run where JAX sees no GPU (the tests)")
    p.add_argument("--smoke", action="store_true", help="small sizes, one repeat (the tests)")
    p.add_argument("--paper-cost", action="store_true", help=argparse.SUPPRESS)  # the child of paper_cost
    args = p.parse_args(argv)
    if args.paper_cost:
        sys.path.insert(0, str(SCRIPTS / "benchmarks"))  # bench_common
        print(json.dumps(paper_cost(args.smoke)))
        return None
    import jax

    backend = jax.default_backend()
    if backend != "gpu" and not args.allow_cpu:
        raise SystemExit(
            f"JAX sees no GPU here (backend {backend!r}, devices {jax.devices()}): install JAX's CUDA build "
            "(`make gpu` installs the `gpu` extra) or run on a GPU machine; --allow-cpu runs the table anyway"
        )
    device = f"{backend}: {jax.devices()[0].device_kind}"
    results = {}
    for name in args.only or ITEMS:
        print(f"== {name}", flush=True)
        budget = SMOKE_BUDGET if args.smoke else ITEMS[name][1]
        results[name] = run_item(name, args.smoke, budget, args.out.parent) | {"budget": budget}
        print(f"== {name}: {results[name]['status']} in {results[name]['seconds']:.1f} s", flush=True)
    text = table(device, results, cpu_rows(args.cpu))
    args.out.write_text(text)
    print(text)
    print(f"table: {args.out}")
    return results


if __name__ == "__main__":
    main()
