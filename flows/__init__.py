"""Dynamics: each flow is a pure function of (problem, params0, key) returning a `Trajectory`."""

import models as _models

if not hasattr(_models, "Problem"):  # a user's models.py (or models/) earlier on sys.path
    _where = getattr(_models, "__file__", None) or list(getattr(_models, "__path__", []))
    raise ImportError(
        f"'models' is {_where}, which shadows sharpflow's models package (flows imports it): rename that "
        "file or folder, or run from another directory"
    )

from . import timescale as timescale
from .central import RMSProp as RMSProp
from .central import central_flow as central_flow
from .discrete import Steps as Steps
from .discrete import gd as gd
from .discrete import label_noise_sgd as label_noise_sgd
from .discrete import sgd as sgd
from .discrete import svag as svag
from .gradient import gradient_flow as gradient_flow
from .integrate import Saves as Saves
from .integrate import Solve as Solve
from .manifold import (
    label_noise_objective as label_noise_objective,
)
from .manifold import (
    limit_map as limit_map,
)
from .manifold import (
    retract as retract,
)
from .manifold import (
    riemannian_flow as riemannian_flow,
)
from .manifold import (
    riemannian_grad as riemannian_grad,
)
from .manifold import (
    tangent_projection as tangent_projection,
)
from .manifold import (
    trace_grad as trace_grad,
)
from .manifold import (
    trace_grad_hutchinson as trace_grad_hutchinson,
)
from .noise import StepNoise as StepNoise
from .sde import label_noise_sde as label_noise_sde
from .sde import sgd_sde as sgd_sde
from .trajectory import DIVERGED as DIVERGED
from .trajectory import INNER_SOLVER_FAILED as INNER_SOLVER_FAILED
from .trajectory import MAX_STEPS as MAX_STEPS
from .trajectory import SOLVER_FAILED as SOLVER_FAILED
from .trajectory import SUCCESSFUL as SUCCESSFUL
from .trajectory import UNBOUNDED as UNBOUNDED
from .trajectory import Result as Result
from .trajectory import Trajectory as Trajectory
