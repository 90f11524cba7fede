"""Analyses of trajectories: Hessian metrics, manifold diagnostics, ensembles and their statistics, the
experiment drivers that hold discrete runs against their limits, results on disk, figures."""

from . import compare as compare
from . import ensembles as ensembles
from . import features as features
from . import hessian as hessian
from . import plots as plots
from . import riemannian as riemannian
from . import stability as stability
from . import statistics as statistics
from . import store as store
