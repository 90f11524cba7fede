"""Run every figure script at one preset (`make figures`), in order, and stop at the first failure."""

import argparse
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = [
    "gd_vs_gradient_flow",
    "sde_vs_sgd",
    "slow_flow_vs_label_noise",
    "rank_one_features",
    "sharpness_vs_lr_batch",
    "escape",
    "early_alignment",
    "optimization_threshold",
]


def main():
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", choices=("quick", "paper"), default="quick")
    args = p.parse_args()
    for name in SCRIPTS:
        start = time.perf_counter()
        print(f"== {name} ({args.preset})", flush=True)
        subprocess.run([sys.executable, str(here / f"{name}.py"), "--preset", args.preset], check=True)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
