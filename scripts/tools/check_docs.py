"""After `mkdocs build` (`make docs`): every public name of models, flows and analysis (their `__all__`) is
rendered in the built API reference, as an anchor `id="package.name"` of site/api/<package>/index.html.
Exits non-zero naming what is missing."""

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    missing = []
    for package in ("models", "flows", "analysis"):
        html = (ROOT / "site" / "api" / package / "index.html").read_text()
        names = importlib.import_module(package).__all__
        missing += [f"{package}.{name}" for name in names if f'id="{package}.{name}"' not in html]
    if missing:
        print(f"not in the built API reference: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("API reference: every public name of models, flows and analysis is rendered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
