"""The README's library example runs as written, in float32 (x64 off, as a user runs it), asserts included."""

from pathlib import Path

import jax


def test_readme_example_runs_in_float32_and_its_asserts_hold():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = text.split("```python\n")[1].split("```")[0]
    assert code.count("assert ") >= 3
    with jax.enable_x64(False):
        exec(compile(code, "README.md", "exec"), {})
