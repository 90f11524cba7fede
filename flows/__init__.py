"""Dynamics: each flow is a pure function of (problem, params0, key) returning a `Trajectory`."""

from . import timescale as timescale
from .discrete import gd as gd
from .discrete import label_noise_sgd as label_noise_sgd
from .discrete import sgd as sgd
from .gradient import gradient_flow as gradient_flow
from .trajectory import Trajectory as Trajectory
