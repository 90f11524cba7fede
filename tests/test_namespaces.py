"""Every module of models/, flows/ and analysis/ declares `__all__`: exactly its public top-level definitions,
each function, class, method and property among them with a docstring."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    f"{pkg}.{path.stem}" for pkg in ("models", "flows", "analysis") for path in (ROOT / pkg).glob("[!_]*.py")
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
