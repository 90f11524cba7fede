"""Run every scripts/benchmarks/bench_*.py (`make bench`) and write their ratios as one markdown table,
benchmarks.md, and the same rows as benchmarks.json (the CPU rows `scripts/tools/gpu.py` sets its GPU rows
against)."""

import importlib
import json
import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    rows = []
    for path in sorted(here.glob("bench_*.py")):
        if path.stem == "bench_common":
            continue
        print(f"== {path.stem}", flush=True)
        rows += importlib.import_module(path.stem).main([])
    out = here.parents[1] / "benchmarks.md"
    lines = ["| benchmark | run | median s | ratio | baseline |", "|---|---|---:|---:|---|"]
    lines += [
        f"| {r['benchmark']} | {r['run']} | {r['seconds']:.4f} | {r['ratio']:.2f}x | {r['baseline']} |"
        for r in rows
    ]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"table: {out} (and {out.with_suffix('.json').name})")


if __name__ == "__main__":
    main()
