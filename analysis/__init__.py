"""Analyses of trajectories: Hessian metrics, manifold diagnostics, ensembles and their statistics, the
experiment drivers that hold discrete runs against their limits, results on disk, figures."""

import flows as _flows  # raises if a user's models.py shadows sharpflow's models

if not hasattr(_flows, "Trajectory"):  # a user's flows.py (or flows/) earlier on sys.path
    raise ImportError(
        f"'flows' is {getattr(_flows, '__file__', None)}, which shadows sharpflow's flows package (analysis "
        "imports it): rename that file or folder, or run from another directory"
    )

import importlib as _importlib

__all__ = [
    "compare",
    "ensembles",
    "features",
    "hessian",
    "metrics",
    "plots",
    "riemannian",
    "stability",
    "statistics",
    "store",
]


def __getattr__(name: str):
    """Each submodule on first use (`analysis.hessian`, `from analysis import plots`): importing `analysis`
    does not load matplotlib and scipy.stats (0.6 s) for a user who needs only the Hessian metrics."""
    if name in __all__:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
