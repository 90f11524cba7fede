"""scripts/figures/common.py: `--set` overrides a preset entry and is recorded in the stored config."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "figures"))
import common  # noqa: E402

PRESET = {"t1": 10.0, "steps": 5, "etas": (0.2, 0.1), "activation": "tanh", "seeds": 4}


def toy_figure(compute, parts=None):
    """A figure named "toy" with `PRESET` at every preset, computing by `compute`, drawing nothing."""
    return common.Figure(
        name="toy",
        doc="a toy figure",
        presets={"smoke": PRESET, "quick": PRESET, "paper": PRESET},
        compute=compute,
        draw=lambda cfg, arrays, path: path,
        summary=lambda cfg, arrays: None,
        parts=parts,
    )


def test_set_parses_each_entry_as_its_type():
    cfg = common.override(PRESET, ["t1=3", "steps=7", "etas=[0.05]", "activation=relu", "etas=(0.3,)"])
    assert cfg == {**PRESET, "t1": 3.0, "steps": 7, "etas": (0.3,), "activation": "relu"}
    assert isinstance(cfg["t1"], float) and PRESET["t1"] == 10.0  # the preset itself is untouched


@pytest.mark.parametrize(
    ("assignment", "match"),
    [("eta=0.1", "one of the preset's"), ("t1", "one of the preset's"), ("steps=2.5", "steps is a int")],
)
def test_set_refuses_unknown_keys_and_wrong_types(assignment, match):
    with pytest.raises(SystemExit, match=match):
        common.override(PRESET, [assignment])


def test_set_is_recorded_in_the_stored_config(tmp_path):
    calls = []

    def compute(cfg, progress, part):
        calls.append(cfg["t1"])
        return {"t": np.linspace(0.0, cfg["t1"], 3)}

    figure = toy_figure(compute)
    argv = ["--preset", "smoke", "--results", str(tmp_path), "--out", str(tmp_path)]
    arrays = common.main(figure, [*argv, "--set", "t1=2"])
    assert arrays["t"][-1] == 2.0
    (config,) = [json.loads(p.read_text()) for p in tmp_path.rglob("config.json") if "parts" not in p.parts]
    assert config["t1"] == 2.0
    common.main(figure, [*argv, "--set", "t1=2"])  # read back, not recomputed
    common.main(figure, argv)  # the preset's own run is stored apart
    assert calls == [2.0, 10.0]


def test_the_bar_over_parts_counts_them_and_shows_each_label(tmp_path, capsys):
    def compute(cfg, progress, part):
        return {
            "a": part("first", lambda: {"x": np.ones(2)}),
            "b": part("second", lambda: {"x": np.zeros(2)}),
        }

    figure = toy_figure(compute, parts=lambda cfg: 2)
    common.main(figure, ["--preset", "smoke", "--results", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "toy parts: 100%" in err and "2/2" in err and "second" in err
    common.main(figure, ["--preset", "smoke", "--results", str(tmp_path), "--no-progress", "--recompute"])
    assert "toy parts" not in capsys.readouterr().err


def test_a_run_killed_inside_a_part_resumes_from_its_last_checkpoint(tmp_path, capsys):
    """A part whose pieces go through `part` too: killed in its third piece, the re-run reads the first two
    from disk and computes only the rest; the bar counts the outer parts only."""
    computed = []

    def compute(cfg, progress, part):
        def long_part():
            pieces = []
            for j in range(4):

                def piece(j=j):
                    if j == 2 and not computed.count("killed"):
                        computed.append("killed")
                        raise KeyboardInterrupt
                    computed.append(j)
                    return {"x": np.full(2, float(j))}

                pieces.append(part(f"long-piece{j}", piece)["x"])
            return {"x": np.stack(pieces)}

        return {"long": part("long", long_part), "short": part("short", lambda: {"x": np.ones(1)})}

    figure = toy_figure(compute, parts=lambda cfg: 2)
    argv = ["--preset", "smoke", "--results", str(tmp_path), "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        common.main(figure, argv)
    assert computed == [0, 1, "killed"]
    arrays = common.main(figure, argv)
    assert computed == [0, 1, "killed", 2, 3]  # pieces 0 and 1 read back
    np.testing.assert_array_equal(arrays["long"]["x"][:, 0], [0.0, 1.0, 2.0, 3.0])
    err = capsys.readouterr().err
    assert "2/2" in err and "long > long-piece3" in err and "3/2" not in err


def test_a_paper_preset_without_cifar10_stops_saying_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SHARPFLOW_CIFAR10", raising=False)
    with pytest.raises(SystemExit, match=r"lacks data_batch_1(.|\n)*--set cifar10=PATH"):
        common.images("cifar10", 10, folder=tmp_path)
    with pytest.raises(SystemExit, match="SHARPFLOW_CIFAR10"):
        common.images("cifar10", 10)
    X, y = common.images("digits", 12)
    assert X.shape == (12, 1, 8, 8) and int(y.max()) <= 3
