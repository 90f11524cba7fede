"""The documentation a user reads: a README of at most 150 lines with no history in it, and an API reference
that lists every public name (`make docs` then checks each one is rendered, `scripts/tools/check_docs.py`)."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "flows", "analysis")

# what a lab notebook says and a user's page does not: work sessions, before/after, per-run timings
HISTORY = [
    r"\bsessions?\b",
    r"\bbefore (this|the) (change|session|fix)",
    r"\buntil (this|now)\b",
    r"\bwas \S+ (before|until)\b",
    r"\b\d+(\.\d+)? ?(ms|us|s|seconds|min|minutes|hours?)\b(?! ?=)",
]


def test_the_readme_is_short_and_has_no_history():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150, len(text.splitlines())
    found = [(p, m.group(0)) for p in HISTORY for m in re.finditer(p, text, flags=re.IGNORECASE)]
    assert not found, found


@pytest.mark.parametrize(
    "line,history",
    [
        ("took 7.7 minutes in session 12", True),
        ("a float32 call went from 4.5 to 3.5 ms", True),
        ("the tr H of the start", False),
        ("Python >= 3.11", False),
    ],
)
def test_the_history_patterns_catch_what_they_name(line, history):
    assert bool([p for p in HISTORY if re.search(p, line, flags=re.IGNORECASE)]) == history


@pytest.mark.parametrize("package", PACKAGES)
def test_the_api_reference_lists_every_public_name(package):
    page = (ROOT / "docs" / "api" / f"{package}.md").read_text()
    listed = re.findall(rf"^::: {package}\.(\w+)$", page, flags=re.M)
    public = importlib.import_module(package).__all__
    assert sorted(listed) == sorted(public), set(listed) ^ set(public)
    assert len(listed) == len(set(listed))
