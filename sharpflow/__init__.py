"""sharpflow: continuous-time limits of neural-network training, held against the discrete runs they describe.

`import sharpflow` gives the library's three packages under one name: `sharpflow.models` (problems, models,
data), `sharpflow.flows` (the discrete runs and their limits), `sharpflow.analysis` (Hessian metrics,
ensembles, drivers, plots); `from sharpflow.models import Problem` works as well. They are the top-level
packages `models`, `flows` and `analysis`, loaded from the folder this package was installed beside, ahead
of anything else on `sys.path`: a user's own `flows.py` or
`models.py` in the working directory cannot stand in for them. (Once loaded they hold those names in
`sys.modules`, so a user's module of the same name is then reached by importing it under another name.)

**Raises:** `ImportError` where a module of one of those names that is not the library's was imported
before sharpflow: naming it, and saying to import sharpflow first or rename the module.
"""

import importlib
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent  # where models/, flows/ and analysis/ were installed

__all__ = ["models", "flows", "analysis", "__version__"]
__version__ = "0.1.0"


def _load(name: str):
    """The library's package `name`, imported with its install folder first on sys.path."""
    here = _ROOT / name / "__init__.py"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == here:
            return loaded
        raise ImportError(
            f"'{name}' is already imported from {getattr(loaded, '__file__', loaded)}, not sharpflow's "
            f"({here}): import sharpflow before it, or rename that module"
        )
    sys.path.insert(0, str(_ROOT))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(_ROOT))


models = _load("models")
flows = _load("flows")
analysis = _load("analysis")
for _name, _package in (("models", models), ("flows", flows), ("analysis", analysis)):
    sys.modules[f"sharpflow.{_name}"] = _package  # `from sharpflow.models import Problem`
