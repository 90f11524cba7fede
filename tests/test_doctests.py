"""The main flows' docstring examples run as written (doctest), in float32 (x64 off, as a user runs them)."""

import doctest
import importlib

import jax
import pytest

MODULES = ["flows._discrete", "flows._gradient", "flows._sde", "flows._manifold"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_written(name):
    with jax.enable_x64(False):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0, result
