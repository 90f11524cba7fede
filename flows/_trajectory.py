"""The one result type of every flow, the metrics recorded along it, and the one failure convention.

Every flow takes `throw` (default True) and returns a `Trajectory` whose `result` is a code of the
enumeration `Result` (an int32 array, one code a seed in an ensemble; `Result(int(code))` names it and its
`message` says what happened; `SUCCESSFUL`, ... are its members under their own names): `SUCCESSFUL`,
`DIVERGED` (the loss became non-finite), `MAX_STEPS` (an adaptive solve ran out of its step budget),
`SOLVER_FAILED` (any other failure of the ODE solver), `INNER_SOLVER_FAILED` (an iterative solve inside a
step did not converge: conjugate gradients, the central flow's complementarity problem or its eigenpairs)
`UNBOUNDED` (the central flow's complementarity problem has no solution: GD cannot be held at the
edge) or `OFF_MANIFOLD` (a flow on the zero-loss manifold whose residuals grew past its tolerance: a
non-smooth model, ReLU or max pooling, whose manifold has kinks the flow cannot follow). A failed inner
solve is never reported as a divergence, nor its number as a result.

With `throw=True` a failed flow raises `equinox.EquinoxRuntimeError`: at once, naming the step or time,
when its arguments are concrete; from `eqx.branched_error_if` when the flow runs under the caller's
`eqx.filter_jit` or `vmap` (under a bare `jax.jit`, JAX raises its own runtime error carrying the same
message). With `throw=False` it returns the Trajectory (its values after the failure are not meaningful)
and the caller reads `result`, per seed in an ensemble. Bad arguments are another matter: they raise
`ValueError` naming the argument (`models.checks`).
"""

import enum
import functools
from collections.abc import Callable, Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from models import checks

from . import timescale

__all__ = [
    "Metric",
    "loss",
    "default_metrics",
    "evaluate",
    "Result",
    "SUCCESSFUL",
    "DIVERGED",
    "MAX_STEPS",
    "SOLVER_FAILED",
    "INNER_SOLVER_FAILED",
    "UNBOUNDED",
    "OFF_MANIFOLD",
    "Trajectory",
    "solver_result",
    "diverged_where",
    "finish",
    "compiled",
]

Metric = Callable[..., Array]  # metric(problem, params) -> scalar


def loss(problem, params) -> Array:
    """The full-batch loss L(params), the metric every flow records.

    **Arguments:** `problem`, `params`.

    **Returns:** L, a scalar."""
    return problem.loss(params)


def default_metrics(metrics: Mapping[str, Metric] | None) -> dict[str, Metric]:
    """The metrics to record: the full-batch loss always, plus any given ones. (Module-level functions, not
    closures: jitted flows key their compilation cache on them, so a fresh closure would recompile.)

    **Arguments:** `metrics`, name -> `fn(problem, params)`, or None.

    **Returns:** a dict with `"loss"` first."""
    return {"loss": loss, **(metrics or {})}


def evaluate(problem, params, metrics: Mapping[str, Metric]) -> dict[str, Array]:
    """Every metric at `params`, under `models.checks.flow_metrics()`: where the run diverged its metrics are
    NaN, and the flow reports the divergence itself (the metrics' own finiteness checks stand down).

    **Arguments:** `problem`, `params`, `metrics` (name -> `fn(problem, params)`).

    **Returns:** a dict name -> `fn(problem, params)`.

    **Raises:** what the metrics raise (their finiteness checks stand down here)."""
    with checks.flow_metrics():
        return {name: fn(problem, params) for name, fn in metrics.items()}


class Result(enum.IntEnum):
    """A flow's outcome, as `Trajectory.result` stores it (an int32 code): each member is its code, and its
    `message` completes "{flow} ..." in the error a failed flow raises."""

    SUCCESSFUL = 0, "succeeded"
    DIVERGED = 1, "diverged: the loss became non-finite"
    MAX_STEPS = 2, "ran out of steps (max_steps) before t1"
    SOLVER_FAILED = 3, "failed: the ODE solver could not take a step"
    INNER_SOLVER_FAILED = (
        4,
        "failed: an inner solver did not converge (conjugate gradients, the complementarity problem or the "
        "eigenpairs)",
    )
    UNBOUNDED = (
        5,
        "failed: the edge cannot be held: the complementarity problem is unbounded (the eigenvalues past "
        "2 / eta gain no curvature from the oscillation, as on least squares, and GD diverges there)",
    )

    OFF_MANIFOLD = (
        6,
        "left the zero-loss manifold: its residuals grew past the flow's tolerance (the flow needs a C^2 "
        "manifold: a ReLU, max pooling or another kink in the model breaks it; use a smooth activation)",
    )

    def __new__(cls, code: int, message: str):
        member = int.__new__(cls, code)
        member._value_ = code
        member.message = message
        return member


SUCCESSFUL = Result.SUCCESSFUL
DIVERGED = Result.DIVERGED
MAX_STEPS = Result.MAX_STEPS
SOLVER_FAILED = Result.SOLVER_FAILED
INNER_SOLVER_FAILED = Result.INNER_SOLVER_FAILED
UNBOUNDED = Result.UNBOUNDED
OFF_MANIFOLD = Result.OFF_MANIFOLD


class Trajectory(eqx.Module):
    """A saved path: `ts` (T,), `params` stacked over a leading axis of length T, `stats[name]` (T,).

    `result` is the flow's code (module docstring), `SUCCESSFUL` or the failure's.
    `ts` is in the flow's clock, `clock`: `"t"` is gradient-flow time t = eta * k (GD, SGD, gradient flow,
    the SDEs), `"tau"` the slow time tau = eta^2 sigma^2 k / B (eta^2 sigma^2 B_eps k / B^2 with a separate
    label-noise batch) of the flow on the zero-loss manifold (see `flows.timescale`). `params` is `None`
    when a flow was asked not to keep them. The discrete flows and the SDEs record their step size `eta`
    and their step's randomness `noise` (a `flows.StepNoise`; None for GD and the deterministic flows), so
    that `slow_time()` gives tau at the saved times without repeating them. An ensemble (`jax.vmap` over
    keys, `analysis.ensembles.ensemble`) is a Trajectory with a leading seed axis on every array.
    """

    ts: Float[Array, "*seeds T"]
    params: PyTree | None
    stats: dict[str, Array]
    clock: str = eqx.field(static=True, default="t")
    result: Int[Array, "*seeds"] = eqx.field(default_factory=lambda: jnp.asarray(SUCCESSFUL, jnp.int32))
    eta: Array | None = None
    noise: eqx.Module | None = None

    def at(self, i: int | Int[Array, ""]) -> PyTree:
        """The parameters saved at index i (negative counts from the end; may be traced, e.g. under
        `jax.lax.map` over save indices)."""
        return jax.tree.map(lambda x: x[i], self.params)

    @property
    def final(self) -> PyTree:
        """The parameters saved last (`at(-1)`)."""
        return self.at(-1)

    def slow_time(self) -> Array:
        """tau at the saved times of a label-noise run in gradient-flow time: tau = eta sigma^2 t / B, or
        eta sigma^2 B_eps t / B^2 with a separate label-noise batch (`flows.timescale.slow_time` at step
        k = t / eta)."""
        if self.clock != "t" or self.eta is None or self.noise is None or self.noise.sigma is None:
            raise ValueError(
                "slow_time needs a label-noise run in gradient-flow time (eta and sigma recorded)"
            )
        n = self.noise
        eta, sigma = jnp.asarray(self.eta)[..., None], jnp.asarray(n.sigma)[..., None]  # per seed
        return timescale.slow_time(self.ts / eta, eta, sigma, n.batch_size, n.noise_batch_size)


def solver_result(result) -> Int[Array, ""]:
    """A diffrax solve's `result` as a flow's code.

    **Arguments:** `result`, a `diffrax.RESULTS` value.

    **Returns:** an int32 `Result` code: `SUCCESSFUL`, `MAX_STEPS` or `SOLVER_FAILED`."""
    code = jnp.where(result == diffrax.RESULTS.max_steps_reached, MAX_STEPS, SOLVER_FAILED)
    return jnp.where(result == diffrax.RESULTS.successful, SUCCESSFUL, code).astype(jnp.int32)


def diverged_where(result, loss) -> Int[Array, ""]:
    """`result`, or `DIVERGED` where it is `SUCCESSFUL` but a saved loss is not finite.

    **Arguments:** a `Result` code `result` and the saved losses `loss`.

    **Returns:** an int32 code."""
    return jnp.where((result == SUCCESSFUL) & ~jnp.all(jnp.isfinite(loss)), DIVERGED, result).astype(
        jnp.int32
    )


def finish(name: str, traj: Trajectory, throw: bool, where: Callable[[], str] = lambda: "") -> Trajectory:
    """The end of every flow: `traj` as it is with `throw=False`; else raises `equinox.EquinoxRuntimeError`
    "{name} {message}{where()}" on failure (`where`, called only then, says when), or, traced, guards `traj`
    with `eqx.branched_error_if`.

    **Arguments:** the flow's `name`, its `traj`, `throw`, and `where` (a callable giving the step or time).

    **Returns:** `traj`.

    **Raises:** `equinox.EquinoxRuntimeError` with `throw=True` when `traj.result` is not `SUCCESSFUL`."""
    if not throw:
        return traj
    if checks.is_concrete(traj.result):
        code = int(np.max(np.asarray(traj.result)))
        if code != SUCCESSFUL:
            raise eqx.EquinoxRuntimeError(f"{name} {Result(code).message}{where()}")
        return traj
    failed = traj.result != SUCCESSFUL
    return eqx.branched_error_if(traj, failed, traj.result, [f"{name} {r.message}" for r in Result])


def compiled(fn: Callable) -> Callable:
    """`equinox.filter_jit(fn)` for a flow's compiled core, with every array argument passed through
    `lax.optimization_barrier` on entry: data and parameters that a caller's `jax.jit` closed over are
    constants of its trace, and XLA would otherwise constant-fold the forward pass over the whole data set
    while compiling (28 s seen for an SGD ensemble of an MLP on n = 1,024). Changes no value and costs
    nothing at run time.

    **Arguments:** `fn`, the core to compile.

    **Returns:** the compiled function, called as `fn`."""

    @functools.wraps(fn)
    def core(*args, **kwargs):
        arrays, static = eqx.partition((args, kwargs), eqx.is_array)
        args, kwargs = eqx.combine(jax.lax.optimization_barrier(arrays), static)
        return fn(*args, **kwargs)

    return eqx.filter_jit(core)
