"""Print pip constraints that pin every dependency in pyproject.toml (and the `test` extra) to the lowest
version its range admits: `make test-min` installs them to test the lowest pins."""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lowest(requirements: list[str]) -> list[str]:
    """`name==X` for each requirement `name>=X,...` (with its extras dropped); others are skipped.

    **Arguments:** the `requirements`, PEP 508 strings.

    **Returns:** the constraint lines."""
    pins = []
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*>=\s*([^,;\s]+)", requirement)
        if match:
            pins.append(f"{match.group(1)}=={match.group(3)}")
    return pins


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    print("\n".join(lowest(project["dependencies"] + project["optional-dependencies"]["test"])))


if __name__ == "__main__":
    sys.exit(main())
