"""The figure scripts run at their smoke preset (seconds) and write their PNG; a second run redraws from the
stored result without computing (checked on one script: they all store and read through `common.main`)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "figures"))
from run_figures import SCRIPTS  # noqa: E402

# make test-all draws these too: slow_flow_real_net (50 s of compilation) runs slow_flow_vs_label_noise's
# pipeline; rank_one_features (30 s) is the slow flow, label-noise GD and analysis.features, each tested on
# its own; sde_vs_sgd (27 s) is compare.sde_vs_sgd, which tests/analysis/test_compare.py runs; central_flow
# (28 s), svag (23 s) and escape (22 s) are central_flow, svag and sgd with analysis.stability, each tested in
# tests/flows and tests/analysis; so are optimization_threshold (19 s: gd, sgd and the thresholds of
# analysis.stability) and sharpness_vs_lr_batch (20 s: sgd and analysis.stability); central_flow_cnn (29 s)
# is compare.edge_of_stability and svag_cnn (36 s) compare.svag_vs_sde, which tests/analysis/test_compare.py
# runs; gd_vs_gradient_flow (18 s) and early_alignment (9 s) are gd, gradient_flow and analysis.features,
# tested in tests/flows and tests/analysis. make test draws slow_flow_vs_label_noise: the figure pipeline end
# to end (label-noise SGD, Phi, the slow flow, stored parts). edge_flows_cnn (32 s: gd, central_flow with
# each optimizer, edge_flow) and sgd_edge_cnn (38 s: sgd, sgd_sde, central_flow, hessian.batch_sharpness) are
# tested in tests/flows and tests/analysis
SLOW = {
    "edge_flows_cnn",
    "sgd_edge_cnn",
    "gd_vs_gradient_flow",
    "early_alignment",
    "slow_flow_real_net",
    "rank_one_features",
    "sde_vs_sgd",
    "central_flow",
    "central_flow_cnn",
    "svag_cnn",
    "svag",
    "escape",
    "optimization_threshold",
    "sharpness_vs_lr_batch",
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_figure_names_the_estimator_of_each_observable(name):
    """Each figure's docstring has a paragraph "Estimators: ..." that names a library function (or says none
    is sampled): what a reader needs to know what its bands hold."""
    doc = ast.get_docstring(ast.parse((ROOT / "scripts" / "figures" / f"{name}.py").read_text()))
    (paragraph,) = [p for p in doc.split("\n\n") if p.startswith("Estimators:")]
    named = re.findall(r"`([\w.]+)`", paragraph)
    dotted = [n for n in named if "." in n]
    stale = [n for n in dotted if _library_name(n) is None]
    assert not stale, f"{name}'s Estimators paragraph names what the library lacks: {stale}"
    functions = [n for n in dotted if callable(_library_name(n))]
    assert functions or re.search(r"none sampled|nothing here is sampled", paragraph), paragraph


def _library_name(name: str):
    """What a backticked `name` refers to: a figure script (`central_flow.py`) or an attribute path from one
    of the packages (`hessian.lambda_max`, `Problem.gauss_newton_trace`, `analysis.stability`); None when
    it names nothing."""
    import importlib

    if name.endswith(".py"):
        return name if (ROOT / "scripts" / "figures" / name).is_file() else None
    head, *rest = name.split(".")
    roots = [importlib.import_module(p) for p in ("analysis", "flows", "models")]
    candidates = [r for r in roots if r.__name__ == head] or [
        getattr(r, head) for r in roots if hasattr(r, head)
    ]
    for obj in candidates:
        for part in rest:
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    return None


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SCRIPTS]
)
def test_smoke_preset_writes_a_figure_and_reuses_results(name, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "figures" / f"{name}.py"),
        "--preset",
        "smoke",
        "--out",
        str(tmp_path),
        "--results",
        str(tmp_path / "results"),
        "--no-progress",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    image = matplotlib.image.imread(tmp_path / f"{name}.png")
    assert image.shape[0] > 300 and image.shape[1] > 300 and np.ptp(image[..., :3]) > 0.5  # drawn, not blank
    assert f"figure: {tmp_path / name}.png" in first.stdout
    stored = list((tmp_path / "results").iterdir())
    assert len(stored) == 1
    with np.load(stored[0] / "arrays.npz") as f:
        leaves = [f[k] for k in f.files]
    assert leaves and all(x.size for x in leaves)
    curves = [x for x in leaves if np.issubdtype(x.dtype, np.floating) and x.ndim]  # scalars may be NaN
    assert curves and all(np.isfinite(x).any() for x in curves), "a stored curve is all NaN or inf"
    summary = first.stdout.split("figure:")[0]
    assert re.search(r"\d\.\d", summary), "the summary printed no headline number"
    if name != "gd_vs_gradient_flow":  # one fast script checks the stored result is read back
        return
    mtime = (stored[0] / "arrays.npz").stat().st_mtime_ns
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert (stored[0] / "arrays.npz").stat().st_mtime_ns == mtime  # read, not recomputed


def test_a_killed_run_resumes_from_its_stored_parts(tmp_path):
    from common import Figure, main

    calls = []

    def one(i):
        calls.append(i)
        if calls == [0, 1]:
            raise KeyboardInterrupt  # killed while computing part 1
        return {"x": np.full(3, i)}

    def compute(cfg, progress, part):
        return {"x": np.stack([part(f"p{i}", lambda i=i: one(i))["x"] for i in range(3)])}

    figure = Figure("toy", "", {"quick": {"a": 1}}, compute, lambda cfg, r, path: path, lambda cfg, r: None)
    argv = ["--results", str(tmp_path), "--out", str(tmp_path), "--no-progress"]
    with pytest.raises(KeyboardInterrupt):
        main(figure, argv)
    r = main(figure, argv)
    assert calls == [0, 1, 1, 2]  # part 0 read back, part 1 again from its start
    np.testing.assert_array_equal(r["x"], np.repeat(np.arange(3)[:, None], 3, axis=1))
    main(figure, argv + ["--recompute"])
    assert calls == [0, 1, 1, 2, 0, 1, 2]


def test_stored_results_are_keyed_on_the_code_that_computes_them(tmp_path):
    """A change to what runs (a library module or the script) changes the key, so old numbers are never
    redrawn as new ones; a docstring, a comment or reformatting does not."""
    from common import code_version

    script = tmp_path / "figure.py"
    script.write_text('"""A figure."""\n\ndef compute(cfg):\n    return 1  # one\n')
    base = code_version(script)
    script.write_text('"""Another docstring."""\n\n\ndef compute(cfg):\n    return 1  # another comment\n')
    assert code_version(script) == base
    script.write_text('"""A figure."""\n\ndef compute(cfg):\n    return 2\n')
    assert code_version(script) != base


def test_the_figure_list_is_every_figure_script_and_no_script_imports_one():
    """run_figures finds every script in scripts/figures that declares a FIGURE (the others there are its two
    helpers), and no script anywhere under scripts/ imports a figure script: what two scripts share lives in
    the library or in a helper."""
    folder = ROOT / "scripts" / "figures"
    assert set(SCRIPTS) == {p.stem for p in folder.glob("*.py")} - {"common", "run_figures"}
    for path in (ROOT / "scripts").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not set(names) & set(SCRIPTS), f"{path.relative_to(ROOT)} imports a figure script"


def test_svag_summary_calls_diverging_runs_diverging_not_within_the_band(capsys):
    """Runs whose loss explodes have a weak gap inside a band as wide as the runs (1e13 +- 2e13 at the first
    paper preset's eta = 0.25): the summary says they diverge instead of calling SGD within its SDE's band."""
    import svag

    gap = np.array([[1.3e13, 2.0e13], [1e13, 2e13]])
    r = {"0.25": {"gap": {"loss": gap}, "svag1": {"loss": np.array([0.32, 3.5e1, 2e22])}}}
    svag.summary({"etas": [0.25], "ls": [1, 2]}, r)
    assert "SGD diverges (its mean loss went from 0.32 to 2e+22)" in capsys.readouterr().out
    r["0.25"]["svag1"]["loss"] = np.array([0.32, 0.3, 0.28])
    svag.summary({"etas": [0.25], "ls": [1, 2]}, r)
    assert "SGD is within the band of its SDE" in capsys.readouterr().out
