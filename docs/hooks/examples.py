"""MkDocs hook: run every worked example (`docs/examples/*.py`) before the build and write its page.

Each example is a script whose docstring's first line is its title and whose other paragraphs introduce it;
it prints its numbers and saves one figure to the path in $SHARPFLOW_EXAMPLE_FIGURE. The page shows the
introduction, the code as written, what it printed and the figure. An example that fails stops the build
(`mkdocs build --strict`, `make docs`). The pages and figures are build outputs (git ignores them).
With SHARPFLOW_DOCS_EXAMPLES=skip the pages show the code alone, for a quick build of the rest (the tests'
check of the API reference).
"""

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"


def on_pre_build(config, **kwargs):
    rows = []
    for script in sorted(EXAMPLES.glob("*.py")):
        title, intro = _docstring(script)
        figure = script.with_suffix(".png")
        code = script.read_text()
        body = code.split('"""', 2)[2].lstrip("\n") if code.lstrip().startswith('"""') else code
        if os.environ.get("SHARPFLOW_DOCS_EXAMPLES") == "skip":
            page = [
                f"# {title}",
                "",
                intro,
                "",
                "```python",
                body.rstrip(),
                "```",
                "",
                "(Not run in this build.)",
            ]
            script.with_suffix(".md").write_text("\n".join(page) + "\n")
            rows.append(f"- [{title}]({script.stem}.md)")
            continue
        env = {**os.environ, "MPLBACKEND": "Agg", "SHARPFLOW_EXAMPLE_FIGURE": str(figure)}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=ROOT
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise PluginError(f"example {script.name} failed:\n{done.stderr[-4000:]}")
        if not figure.is_file():
            raise PluginError(f"example {script.name} saved no figure at $SHARPFLOW_EXAMPLE_FIGURE")
        page = [
            f"# {title}",
            "",
            intro,
            "",
            f"`python docs/examples/{script.name}` ({seconds:.0f} s when this page was built):",
            "",
            "```python",
            body.rstrip(),
            "```",
            "",
            "It printed:",
            "",
            "```text",
            done.stdout.rstrip(),
            "```",
            "",
            f"![{title}]({figure.name})",
            "",
        ]
        script.with_suffix(".md").write_text("\n".join(page))
        rows.append(f"- [{title}]({script.stem}.md)")
    index = [
        "# Worked examples",
        "",
        "Each example is a script in `docs/examples/`, run by the documentation build at a small size: the",
        "code on each page is the code that drew its figure.",
        "",
        *rows,
        "",
    ]
    (EXAMPLES / "index.md").write_text("\n".join(index))


def _docstring(script: Path) -> tuple[str, str]:
    doc = ast.get_docstring(ast.parse(script.read_text())) or script.stem
    title, _, rest = doc.partition("\n\n")
    return title.strip(), rest.strip()
