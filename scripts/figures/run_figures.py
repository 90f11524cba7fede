"""Run every figure script at one preset (`make figures`), in order, stop at the first failure, and write
a gallery, figures/README.md: each PNG with the first paragraph of its script's docstring."""

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def is_figure(path: Path) -> bool:
    """A figure script declares its `common.Figure` at the top level: `FIGURE = Figure(...)`."""
    return any(
        isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FIGURE" for t in node.targets)
        for node in ast.parse(path.read_text()).body
    )


SCRIPTS = sorted(path.stem for path in HERE.glob("*.py") if is_figure(path))  # every figure in this folder


def summary(name: str) -> str:
    """The script's docstring up to its first blank line, on one line."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text()))
    return " ".join(doc.split("\n\n")[0].split())


def gallery(out: Path, preset: str, seconds: dict[str, float]) -> Path:
    lines = [
        "# Figures",
        "",
        f"Drawn by `make figures` (`python scripts/figures/run_figures.py --preset {preset}`); each script's "
        "data is stored under results/ and reused. Redraw one with "
        "`python scripts/figures/NAME.py --preset smoke|quick|paper`.",
        "",
    ]
    for name in SCRIPTS:
        lines += [f"## {name}", "", f"![{name}]({name}.png)", "", summary(name), ""]
        lines += [f"`scripts/figures/{name}.py --preset {preset}`: {seconds[name]:.0f} s.", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", choices=("smoke", "quick", "paper"), default="quick")
    p.add_argument(
        "--out", type=Path, default=HERE.parents[1] / "figures", help="folder for the PNGs and gallery"
    )
    args = p.parse_args()
    seconds = {}
    for name in SCRIPTS:
        start = time.perf_counter()
        print(f"== {name} ({args.preset})", flush=True)
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--preset", args.preset, "--out", str(args.out)]
        subprocess.run(cmd, check=True)
        seconds[name] = time.perf_counter() - start
        print(f"== {name}: {seconds[name]:.0f} s", flush=True)
    print(f"gallery: {gallery(args.out, args.preset, seconds)} ({sum(seconds.values()) / 60:.1f} min in all)")


if __name__ == "__main__":
    main()
