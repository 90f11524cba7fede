"""Every script under scripts/ imports (its top level runs) in a fresh interpreter: the benchmarks and tools
call library internals (`flows._manifold`, `flows._noise`, ...) that a rename would otherwise break
silently, since only `make bench` and `make gpu` run them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_script_imports():
    scripts = sorted((ROOT / "scripts").glob("*/*.py"))
    assert len(scripts) > 20, scripts
    program = "\n".join(
        [
            "import importlib.util, sys",
            "for path in sys.argv[1:]:",
            "    folder = path.rsplit('/', 1)[0]",
            "    sys.path.insert(0, folder)",
            "    name = 'script_' + path.replace('/', '_')[:-3]",
            "    spec = importlib.util.spec_from_file_location(name, path)",
            "    spec.loader.exec_module(importlib.util.module_from_spec(spec))",
            "    sys.path.remove(folder)",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", program, *map(str, scripts)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
