"""Every module of models/, flows/ and analysis/ declares `__all__`: exactly its public top-level definitions,
each function, class, method and property among them with a docstring."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    f"{pkg}.{path.stem}"
    for pkg in ("models", "flows", "analysis")
    for path in (ROOT / pkg).glob("*.py")
    if path.name != "__init__.py"
)


def _defined(module_name):
    tree = ast.parse((ROOT / (module_name.replace(".", "/") + ".py")).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        for target in getattr(node, "targets", [getattr(node, "target", None)]):
            for leaf in target.elts if isinstance(target, ast.Tuple) else [target]:  # a, b = ...
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("name", MODULES)
def test_all_is_the_public_definitions_and_each_has_a_docstring(name):
    module = importlib.import_module(name)
    assert set(module.__all__) == _defined(name), set(module.__all__) ^ _defined(name)
    undocumented = []
    for public in module.__all__:
        obj = getattr(module, public)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            undocumented += [] if (obj.__doc__ or "").strip() else [public]
        if inspect.isclass(obj) and obj.__module__ == name:
            for attr, value in vars(obj).items():
                fn = value.fget if isinstance(value, property) else value
                if not attr.startswith("_") and callable(fn) and not (fn.__doc__ or "").strip():
                    undocumented.append(f"{public}.{attr}")
    assert not undocumented, undocumented


@pytest.mark.parametrize(("shadow", "imported"), [("models", "flows"), ("flows", "analysis")])
def test_a_users_module_that_shadows_a_package_is_named(tmp_path, shadow, imported):
    import os
    import subprocess
    import sys

    (tmp_path / f"{shadow}.py").write_text("x = 1\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    out = subprocess.run(
        [sys.executable, "-c", f"import {imported}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert f"'{shadow}' is {tmp_path / shadow}.py, which shadows sharpflow's {shadow} package" in out.stderr


def test_flows_implements_in_private_modules_and_re_exports_what_users_call():
    """flows/ is diffrax's layout: every module but `timescale` is private (`_name.py`), and the package's
    public names are re-exports of those modules' `__all__` (no module of the implementation leaks out as
    `flows.geometry`, ...)."""
    import flows

    modules = [path.stem for path in (ROOT / "flows").glob("*.py") if path.name != "__init__.py"]
    assert sorted(m for m in modules if not m.startswith("_")) == ["timescale"]
    exported = {name for m in modules for name in importlib.import_module(f"flows.{m}").__all__}
    public = {name: value for name, value in vars(flows).items() if not name.startswith("_")}
    submodules = {name for name, value in public.items() if inspect.ismodule(value)}
    assert {name for name in submodules if public[name].__name__.startswith("flows.")} == {"timescale"}
    assert set(public) - submodules <= exported, set(public) - submodules - exported
    for name in ("gd", "label_noise_sde", "riemannian_flow", "central_flow", "Saves", "Solve", "Trajectory"):
        assert name in public


def _sections_missing(fn) -> list[str]:
    """The docstring sections `fn` lacks: **Arguments:** when it takes any, **Returns:** always, **Raises:**
    when its own source raises or checks its arguments (`raise`, a `models.checks` check, `eqx.error_if`;
    `checks.is_concrete` only asks)."""
    doc = fn.__doc__ or ""
    source = inspect.getsource(fn)
    body = source.split('"""', 2)[-1] if '"""' in source else source
    takes = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    need = ["**Returns:**"] + (["**Arguments:**"] if takes else [])
    body = body.replace("checks.is_concrete", "")
    if any(word in body for word in ("raise ", "checks.", "error_if(")):
        need.append("**Raises:**")
    return [section for section in need if section not in doc]


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_documents_its_arguments_returns_and_raises(name):
    module = importlib.import_module(name)
    missing = {}
    for public in module.__all__:
        fn = inspect.unwrap(getattr(module, public))  # a compiled function (`eqx.filter_jit`) as written
        if inspect.isfunction(fn) and fn.__module__ == name:
            if gaps := _sections_missing(fn):
                missing[public] = gaps
    assert not missing, missing


def test_import_sharpflow_gives_the_three_packages_and_no_user_module_shadows_them(tmp_path):
    """`import sharpflow` in a folder holding a user's own flows.py and models.py: sharpflow.flows is the
    library's (`import flows` there took the user's file), and `from sharpflow.models import Problem`
    works; a user's module imported under one of those names before sharpflow is named in the error."""
    import os
    import subprocess
    import sys

    (tmp_path / "flows.py").write_text("x = 1\n")
    (tmp_path / "models.py").write_text("x = 2\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = (
        "import sharpflow\n"
        "from sharpflow.models import Problem\n"
        "from sharpflow.flows import gd\n"
        "from sharpflow.analysis import hessian\n"
        "print(sharpflow.flows.gd is gd, Problem.__module__, sharpflow.models.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == ["True", "models.problem"]
    assert run.stdout.split()[2] == str(ROOT / "models" / "__init__.py")
    first = subprocess.run(
        [sys.executable, "-c", "import flows; import sharpflow"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert first.returncode != 0
    assert f"'flows' is already imported from {tmp_path / 'flows.py'}, not sharpflow's" in first.stderr
