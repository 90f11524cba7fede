"""The figure scripts run at their quick preset, write their PNG, and redraw from stored results."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name",
    [
        "gd_vs_gradient_flow",
        "sde_vs_sgd",
        "slow_flow_vs_label_noise",
        "rank_one_features",
        "sharpness_vs_lr_batch",
        "escape",
    ],
)
def test_quick_preset_writes_a_figure_and_reuses_results(name, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / f"{name}.py"),
        "--preset",
        "quick",
        "--out",
        str(tmp_path),
        "--results",
        str(tmp_path / "results"),
        "--no-progress",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert f"figure: {tmp_path / name}.png" in first.stdout
    stored = list((tmp_path / "results").iterdir())
    assert len(stored) == 1
    mtime = (stored[0] / "arrays.npz").stat().st_mtime_ns
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert (stored[0] / "arrays.npz").stat().st_mtime_ns == mtime  # read, not recomputed
