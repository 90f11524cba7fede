"""scripts/tools/gpu.py, the one GPU run: it refuses a machine without a GPU, writes its table with GPU / CPU
ratios from a CPU table, and (make test-all) runs its items end to end on the CPU at smoke sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "tools"))
import gpu  # noqa: E402


def test_gpu_script_refuses_a_machine_without_a_gpu(tmp_path):
    """JAX_PLATFORMS=cpu hides any GPU, so the refusal is tested on every machine (on one with a GPU the
    script would otherwise run its whole suite)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tools" / "gpu.py"), "--out", str(tmp_path / "gpu.md")],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode != 0 and "JAX sees no GPU here" in done.stderr
    assert not (tmp_path / "gpu.md").exists()


def test_gpu_table_sets_each_benchmark_row_against_the_cpu_row(tmp_path):
    cpu = [{"benchmark": "CNN on 1000 digit images, float32, cpu", "run": "gradient", "seconds": 0.1}]
    (tmp_path / "benchmarks.json").write_text(json.dumps(cpu))
    rows = [
        {"benchmark": "CNN on 1000 digit images, float32, gpu", "run": "gradient", "seconds": 0.004},
        {"benchmark": "CNN on 1000 digit images, float32, gpu", "run": "hvp", "seconds": 0.01},
    ]
    results = {
        "bench_networks": {"status": "ok", "seconds": 12.0, "printed": rows, "budget": 50},
        "central_flow_cnn": {
            "status": "over budget",
            "seconds": 150.2,
            "budget": gpu.ITEMS["central_flow_cnn"][1],
        },
    }
    text = gpu.table("gpu: H200", results, gpu.cpu_rows(tmp_path / "benchmarks.json"))
    assert "# GPU rows (gpu: H200)" in text
    budget = gpu.ITEMS["central_flow_cnn"][1]
    row = (
        f"| central_flow_cnn | scripts/figures/central_flow_cnn.py --preset quick | 150.2 | {budget} | "
        "over budget |"
    )
    assert row in text
    assert "| gradient | 0.0040 | 0.1000 | 0.040 |" in text  # 0.004 / 0.1
    assert "| hvp | 0.0100 | - | - |" in text  # no CPU row
    assert sum(budget for _, budget in gpu.ITEMS.values()) <= 8 * 60


@pytest.mark.slow  # compiles the paper preset's CNN (p = 18,340) and the central_flow_cnn smoke preset
def test_gpu_script_runs_its_items_and_writes_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "tools" / "gpu.py"),
        "--allow-cpu",
        "--smoke",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd + ["--only", "paper_cost", "central_flow_cnn"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "| paper_cost |" in text and "| central_flow_cnn |" in text
    assert text.count("| ok |") == 2, text
    assert "paper preset: p = 18340, n = 50" in text
    assert (tmp_path / "figures" / "central_flow_cnn.png").is_file()


def test_the_paper_cost_uses_the_sizes_of_the_central_flow_cnn_paper_preset():
    """gpu.py states the sizes it times (it imports no figure script): they are the preset's."""
    sys.path.insert(0, str(ROOT / "scripts" / "figures"))
    import central_flow_cnn

    paper = central_flow_cnn.PRESETS["paper"]
    assert gpu.CENTRAL_FLOW_CNN_PAPER == {k: paper[k] for k in gpu.CENTRAL_FLOW_CNN_PAPER}
    assert set(paper["etas"]) == set(central_flow_cnn.LOSSES)
