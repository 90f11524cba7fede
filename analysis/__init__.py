"""Analyses of trajectories: Hessian metrics, manifold diagnostics, comparisons, results on disk, figures."""

from . import compare as compare
from . import features as features
from . import hessian as hessian
from . import plots as plots
from . import riemannian as riemannian
from . import stability as stability
from . import store as store
