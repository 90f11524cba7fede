"""What every figure script shares: its command line and where its outputs go."""

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--preset",
        choices=("quick", "paper"),
        default="quick",
        help="quick: minutes on a laptop CPU; paper: the sizes of the paper",
    )
    p.add_argument("--seeds", type=int, default=None, help="ensemble size (default: the preset's)")
    p.add_argument("--out", type=Path, default=ROOT / "figures", help="folder for the PNG")
    p.add_argument("--results", type=Path, default=ROOT / "results", help="folder of stored results")
    p.add_argument("--recompute", action="store_true", help="ignore stored results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def no_seeds(args) -> None:
    """For a deterministic figure: refuse --seeds rather than ignore it."""
    if args.seeds is not None:
        raise SystemExit("this figure is deterministic (no random seeds): drop --seeds")


def report(figure_path: Path, result_paths) -> None:
    print(f"figure: {figure_path}")
    for r in result_paths:
        print(f"data:   {r}")
