"""The numerical rules the flows and analyses share, in one place: when J is formed densely (the dense
budget), which singular values count as zero (the rank rules), and the tolerances that depend on the dtype.
Each rule says why it has the value it has. Two rules live elsewhere, each also in one place: J's rows are
built by `models.Problem.example_jacobian`, and steps meet time by `flows.timescale.is_whole` (one relative
tolerance, `WHOLE_RTOL`).
"""

from typing import Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from models import checks

__all__ = [
    "Mode",
    "DENSE_BUDGET",
    "CG_RTOL",
    "mode_for",
    "rcond",
    "manifold_drift_tol",
    "numerical_rank",
    "GRAM_RCOND",
    "slow_flow_rtol",
    "limit_map_tol",
    "limit_map_rtol",
    "retract_tol",
    "residual_floor",
    "sdcp_rtol",
    "edge_cutoff",
]

Mode = Literal["auto", "dense", "matrix_free"]

# -- the dense budget ---------------------------------------------------------------------------------------
DENSE_BUDGET = 2**30  # bytes: the dense mode is chosen while J (N, p) fits in this


def mode_for(problem, mode: Mode = "auto", dtype=None) -> Literal["dense", "matrix_free"]:
    """`mode` as given, or for `"auto"`: `"dense"` while J (N x p entries of `dtype`) takes at most
    `DENSE_BUDGET` bytes, else `"matrix_free"`: the one place the dense budget is read.

    **Arguments:** the `problem`, `mode` (`"auto"`, `"dense"` or `"matrix_free"`), `dtype` (default X's).

    **Returns:** `"dense"` or `"matrix_free"`.

    **Raises:** `ValueError` naming `mode` for any other value."""
    if mode not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"mode must be 'auto', 'dense' or 'matrix_free', got {mode!r}")
    if mode != "auto":
        return mode
    itemsize = jnp.dtype(dtype or problem.X.dtype).itemsize
    return "dense" if problem.y.size * problem.num_params * itemsize <= DENSE_BUDGET else "matrix_free"


# -- rank rules ---------------------------------------------------------------------------------------------
def rcond(N: int, dtype, mode: Literal["dense", "matrix_free"]) -> float:
    """The manifold's rank rule: J's squared singular values far below `rcond` max_a ||grad f_a||^2 count as
    zero. Dense (QR, singular values resolved to ~ eps sigma_max): (100 sqrt(N) eps)^2, two decades above
    the rounding of an exactly lost direction. Matrix-free (products with K, its eigenvalues resolved to
    ~ N eps lambda_max): 10 N eps.

    **Arguments:** N, the number of constraints; the `dtype`; the `mode`.

    **Returns:** rcond, a Python float."""
    eps = float(jnp.finfo(dtype).eps)
    if mode == "dense":
        return (100 * max(N, 1) ** 0.5 * eps) ** 2
    return 10 * max(N, 1) * eps


def numerical_rank(s, shape) -> int:
    """The rank of a dense matrix from its singular values: those above max(shape) eps s_max (NumPy's
    `matrix_rank` rule, for a matrix known to its rounding), where the analyses read a basis off a dense SVD
    (the tangent space of `analysis.riemannian`).

    **Arguments:** the singular values `s` (descending), the matrix's `shape`.

    **Returns:** the rank, a Python int."""
    s = np.asarray(s)
    return int(np.sum(s > s[0] * max(shape) * np.finfo(s.dtype).eps))


# the linear stability analysis' cut-off on the eigenvalues of K (float64 on the host): directions of K far
# below its largest eigenvalue are not curvature the linearisation can resolve
GRAM_RCOND = 1e-9


# -- dtype tolerances ---------------------------------------------------------------------------------------
CG_RTOL = {"float64": 1e-10, "float32": 1e-5}  # the matrix-free solves' relative tolerance, by dtype


def slow_flow_rtol(dtype) -> float:
    """The slow flow's default relative tolerance: 1e-8 in float64, 1e-5 in float32 (below float32's eps a
    controller cannot meet its tolerance and crawls).

    **Arguments:** the `dtype`.

    **Returns:** rtol, a Python float."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def limit_map_tol(dtype) -> float:
    """Where `flows.limit_map`'s gradient flow stops, the RMS of grad L, and the Gauss-Newton landing after
    it misses Phi by O(delta^2) at a distance delta ~ tol / lambda_min(K / n): 1e-10 in float64, 1e-7 in
    float32 (~ eps; where the gradient rounds above it, `residual_floor` ends the flow). A stiff flow goes on
    by Rosenbrock-W steps (flows/_rosenbrock.py, both modes), which grow geometrically in the tail, so a
    smaller tol costs a few steps; Tsit5 alone, its steps bound by lambda_max, needed 10 sqrt(eps) = 1.5e-7
    in float64 (4e-5 off Phi in tr H relative on the digits MLP, lambda_min(K / n) = 1.2e-3). On that MLP
    float32 lands 2e-5 off Phi in tr H relative at 1e-7, 8e-3 off at 100 eps.

    **Arguments:** the `dtype`.

    **Returns:** tol, a Python float."""
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-7


def limit_map_rtol(dtype) -> float:
    """The local error tolerance of `flows.limit_map`'s Rosenbrock-W flow (flows/_rosenbrock.py), relative to
    1 + |theta|: 1e-8 in float64 (Phi to ~2e-8 in the parameters and 1e-7 in tr H on the digits MLP), 1e-6 in
    float32 (~10 eps: 4e-6 and 2e-5 there).

    **Arguments:** the `dtype`.

    **Returns:** rtol, a Python float."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def _label_scale(y, dtype) -> float | Array:
    """1 + max |y|, the scale of the residuals' rounding: a Python float for concrete labels, computed in
    the trace in `dtype` for traced ones (every flow's compiled core traces its problem)."""
    if checks.is_concrete(y):
        return 1 + float(np.max(np.abs(y)))
    return 1 + jnp.max(jnp.abs(y)).astype(dtype)


def retract_tol(dtype, y) -> float | Array:
    """Where the Gauss-Newton retraction stops, max_i |r_i|: 1e3 eps (1 + max |y|), a thousand roundings of
    the labels' scale.

    **Arguments:** the `dtype`, the labels `y`.

    **Returns:** tol, a Python float (a scalar array for traced `y`)."""
    return 1e3 * float(jnp.finfo(dtype).eps) * _label_scale(y, dtype)


def residual_floor(dtype, y) -> float | Array:
    """Where the residuals are round-off, max_i |r_i| <= 10 eps (1 + max |y|): there the gradient is
    rounding too, and `flows.limit_map`'s gradient flow stops even above its gradient `tol` (a float32
    quadratic parametrisation with |J| ~ 1 rounds its RMS gradient at ~5e-7, above float32's tol 1e-7; the
    digits MLP at that tol still has residuals ~3e3 eps).

    **Arguments:** the `dtype`, the labels `y`.

    **Returns:** the floor, a Python float (a scalar array for traced `y`)."""
    return 10 * float(jnp.finfo(dtype).eps) * _label_scale(y, dtype)


def manifold_drift_tol(dtype, y, atol) -> float | Array:
    """Where a flow on the zero-loss manifold has left it, max_i |r_i| at a save: 1,000 times the larger of
    its absolute tolerance `atol` and the residuals' round-off floor (`residual_floor`), 1.5e-7 in float64
    and 2.7e-3 in float32 for labels up to 0.5. A smooth model's flow holds them near both (measured: a tanh
    CNN 1.3e-9 and a tanh two-layer net 3.4e-9 in float64 at atol 1e-10; 1.2e-7 in float32); a ReLU CNN's
    rose to 6.3e-7 by tau = 0.05 in float64 (from the same start), 4e-5 in float32, under float32's
    tolerance: a heuristic, which float32 resolves only where a kink throws the flow far.

    **Arguments:** the `dtype`, the labels `y`, the flow's `atol`.

    **Returns:** the tolerance (a scalar array for traced `y`)."""
    return 1000 * jnp.maximum(atol, residual_floor(dtype, y))


def sdcp_rtol(dtype):
    """The complementarity solver's default tolerance on the relative step: sqrt(eps) / 100 (its conditions
    are then met to sqrt(rtol) of the problem's scale, `flows.sdcp`).

    **Arguments:** the `dtype`.

    **Returns:** rtol, a 0-d array of `dtype`."""
    return jnp.sqrt(jnp.finfo(dtype).eps) / 100


def edge_cutoff(dtype):
    """The central flow's count of eigenvalues held at the edge: X's eigenvalues above sqrt(eps) times its
    largest (X solves `sdcp` to about sqrt(eps), so smaller ones are its rounding).

    **Arguments:** the `dtype`.

    **Returns:** the relative cut-off, a 0-d array of `dtype`."""
    return jnp.sqrt(jnp.finfo(dtype).eps)
