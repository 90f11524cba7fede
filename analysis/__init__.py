"""Analyses of trajectories: Hessian metrics, results on disk, figures."""

from . import hessian as hessian
from . import plots as plots
from . import store as store
