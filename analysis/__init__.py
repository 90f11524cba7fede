"""Analyses of trajectories: Hessian metrics, manifold diagnostics, ensembles and their statistics, the
experiment drivers that hold discrete runs against their limits, results on disk, figures."""

import flows as _flows  # raises if a user's models.py shadows sharpflow's models

if not hasattr(_flows, "Trajectory"):  # a user's flows.py (or flows/) earlier on sys.path
    raise ImportError(
        f"'flows' is {getattr(_flows, '__file__', None)}, which shadows sharpflow's flows package (analysis "
        "imports it): rename that file or folder, or run from another directory"
    )

from . import compare as compare
from . import ensembles as ensembles
from . import features as features
from . import hessian as hessian
from . import metrics as metrics
from . import plots as plots
from . import riemannian as riemannian
from . import stability as stability
from . import statistics as statistics
from . import store as store

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
