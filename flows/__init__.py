"""Dynamics: each flow is a pure function of (problem, params0, key) returning a `Trajectory`.

The implementation lives in private modules (`flows/_name.py`); what users call is re-exported here, and
`flows.timescale` (steps <-> time) is a public module of its own.
"""

import models as _models

if not hasattr(_models, "Problem"):  # a user's models.py (or models/) earlier on sys.path
    _where = getattr(_models, "__file__", None) or list(getattr(_models, "__path__", []))
    raise ImportError(
        f"'models' is {_where}, which shadows sharpflow's models package (flows imports it): rename that "
        "file or folder, or run from another directory"
    )

from . import timescale as timescale
from ._brownian import BrownianGrid as BrownianGrid
from ._brownian import step_keys as step_keys
from ._central import PAST_EDGE as PAST_EDGE
from ._central import Adam as Adam
from ._central import Momentum as Momentum
from ._central import RMSProp as RMSProp
from ._central import central_flow as central_flow
from ._central import sdcp as sdcp
from ._discrete import Steps as Steps
from ._discrete import gd as gd
from ._discrete import label_noise_sgd as label_noise_sgd
from ._discrete import sgd as sgd
from ._discrete import svag as svag
from ._edge import edge_flow as edge_flow
from ._gradient import gradient_flow as gradient_flow
from ._integrate import Saves as Saves
from ._integrate import Solve as Solve
from ._manifold import Objective as Objective
from ._manifold import label_noise_objective as label_noise_objective
from ._manifold import limit_map as limit_map
from ._manifold import retract as retract
from ._manifold import riemannian_flow as riemannian_flow
from ._manifold import riemannian_grad as riemannian_grad
from ._manifold import tangent_projection as tangent_projection
from ._manifold import trace_grad as trace_grad
from ._manifold import trace_grad_hutchinson as trace_grad_hutchinson
from ._noise import StepNoise as StepNoise
from ._numerics import Mode as Mode
from ._sde import label_noise_sde as label_noise_sde
from ._sde import sgd_sde as sgd_sde
from ._trajectory import DIVERGED as DIVERGED
from ._trajectory import INNER_SOLVER_FAILED as INNER_SOLVER_FAILED
from ._trajectory import MAX_STEPS as MAX_STEPS
from ._trajectory import OFF_MANIFOLD as OFF_MANIFOLD
from ._trajectory import SOLVER_FAILED as SOLVER_FAILED
from ._trajectory import SUCCESSFUL as SUCCESSFUL
from ._trajectory import UNBOUNDED as UNBOUNDED
from ._trajectory import Metric as Metric
from ._trajectory import Result as Result
from ._trajectory import Trajectory as Trajectory

__all__ = [
    "timescale",
    "BrownianGrid",
    "step_keys",
    "PAST_EDGE",
    "Adam",
    "Momentum",
    "RMSProp",
    "central_flow",
    "sdcp",
    "Steps",
    "gd",
    "label_noise_sgd",
    "sgd",
    "svag",
    "edge_flow",
    "gradient_flow",
    "Saves",
    "Solve",
    "Objective",
    "label_noise_objective",
    "limit_map",
    "retract",
    "riemannian_flow",
    "riemannian_grad",
    "tangent_projection",
    "trace_grad",
    "trace_grad_hutchinson",
    "StepNoise",
    "Mode",
    "label_noise_sde",
    "sgd_sde",
    "DIVERGED",
    "INNER_SOLVER_FAILED",
    "MAX_STEPS",
    "OFF_MANIFOLD",
    "SOLVER_FAILED",
    "SUCCESSFUL",
    "UNBOUNDED",
    "Metric",
    "Result",
    "Trajectory",
]
