"""The plumbing the continuous-time flows share: when a flow saves (`Saves`), how it solves (`Solve`), and the
one diffrax call of the deterministic flows (`solve_ode`: gradient flow, the slow flow).

`Saves` and `Solve` are validated Equinox modules, as `flows.Steps` and `flows.StepNoise` are for the discrete
flows: each flow builds them from its keywords (`ts`, `save_every`, `num_saves`, `save_params`; `solver`,
`rtol`, `atol`, `max_steps`, `progress`) and hands them down whole, so the keywords mean the same in every
flow and are checked in one place.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from models import checks

from . import timescale
from ._trajectory import solver_result

__all__ = ["Saves", "Solve", "progress_meter", "solve_ode"]


class Saves(eqx.Module):
    """When a continuous-time flow records its metrics (and parameters), validated when built.

    - `ts`: the save times, a non-empty, non-decreasing 1-D array in [t0, t1] (may be traced);
    - else `every`: t0, t0 + every, ..., t1, where `every` divides t1 - t0 into a whole number of intervals
      (to `timescale.WHOLE_RTOL` relative; concrete, since it fixes the number of saves);
    - else `num` points spread evenly over [t0, t1] (default 101).

    `params`: keep the parameters at each save, or only the metrics.

    **One rule for grids.** An adaptive solve saves at these times exactly (diffrax interpolates: `times`).
    A fixed-step flow on a grid of step h (the SDEs' Euler path, the central flow) saves on its grid
    (`grid_index`): `ts` and the `every` times must lie on it, since fixed steps do not interpolate, and the
    `num` even points are each rounded to the nearest step.

    **Raises:** `ValueError` naming `ts`, `save_every` or `num_saves` for a bad one, or when both `ts` and
    `save_every` are given.
    """

    ts: Array | np.ndarray | None
    every: float | None = eqx.field(static=True)
    num: int = eqx.field(static=True)
    params: bool = eqx.field(static=True)

    def __init__(self, ts=None, every=None, num: int = 101, params: bool = True):
        if ts is not None and every is not None:
            raise ValueError("give ts or save_every, not both")
        if ts is not None and checks.is_concrete(ts):
            ts = np.asarray(ts) if not isinstance(ts, jax.Array) else ts
            host = np.asarray(ts)
            if host.ndim != 1 or host.size == 0 or np.any(np.diff(host) < 0):
                raise ValueError(f"ts must be a non-empty, non-decreasing 1-D array of times, got {host!r}")
        if every is not None:
            if not checks.is_concrete(every):
                raise ValueError(
                    "save_every must be a concrete number (it fixes the number of saves); give ts under jit"
                )
            every = checks.positive_float("save_every", every)
        self.ts = ts
        self.every = every
        self.num = checks.positive_int("num_saves", num)
        self.params = bool(params)

    def times(self, t1, t0=0.0) -> Array:
        """The save times in [t0, t1], for a solver that interpolates. The number of saves is static; `ts`
        and t1 may be traced (then `ts` is taken as given)."""
        if self.ts is not None:
            if checks.is_concrete((self.ts, t0, t1)):  # on the host: inside jit, jnp ops would be traced
                host = np.asarray(self.ts)
                eps = max(np.finfo(np.result_type(np.asarray(x), np.float32)).eps for x in (host, t1))
                slack = 8 * eps * max(1.0, abs(float(t1)))  # the coarser dtype of ts and t1 rounds them
                if host[0] < float(t0) - slack or host[-1] > float(t1) + slack:
                    raise ValueError(f"ts must be times in [t0, t1] = [{float(t0)}, {float(t1)}]")
            return jnp.asarray(self.ts)
        if self.every is not None:
            if not checks.is_concrete((t0, t1)):
                raise ValueError(
                    "save_every under jit needs t0 and t1 as concrete numbers (they fix the number of "
                    "saves); give ts instead"
                )
            span = float(t1) - float(t0)
            count = span / self.every
            k = round(count)
            if k < 1 or not timescale.is_whole(count, k):
                raise ValueError(
                    f"save_every = {self.every} must divide t1 - t0 = {span} into a whole number of "
                    "intervals; give ts for other save times"
                )
            return float(t0) + jnp.linspace(0.0, span, k + 1)
        return jnp.linspace(t0, t1, self.num)

    def grid_index(self, t1, h, last) -> Array:
        """The save indices j (at t = j h) on the grid of step h from 0 to step `last` = t1 / h, for a
        fixed-step flow: `ts` and the `every` times on the grid (`timescale.grid_index`, which refuses times
        off it), or `num` points spread evenly, each rounded to the nearest step (`timescale.even_index`)."""
        if self.ts is None and self.every is None:
            return timescale.even_index(last, self.num)
        if self.ts is not None:
            return timescale.grid_index(self.ts, h, last, name="ts")
        return timescale.grid_index(self.times(t1), h, last, name="save_every")


class Solve(eqx.Module):
    """How a flow's ODE or SDE is solved, validated when built: by `solver` (a diffrax solver), with adaptive
    steps from a PID controller at `rtol`, `atol` (`rtol=None`: fixed steps, in the flows that have them), at
    most `max_steps` steps (None: the flow's budget), with diffrax's tqdm progress meter if `progress`.

    **Raises:** `ValueError` naming the argument: a `solver` that is not a diffrax solver, `rtol` or `atol`
    not > 0, `max_steps` not a positive integer, `atol` without `rtol`.
    """

    solver: diffrax.AbstractSolver
    rtol: float | Array | None
    atol: float | Array | None
    max_steps: int | None = eqx.field(static=True)
    progress: bool = eqx.field(static=True)

    def __init__(self, solver, rtol=None, atol=None, max_steps=None, progress: bool = False):
        if not isinstance(solver, diffrax.AbstractSolver):
            raise ValueError(f"solver must be a diffrax solver, got {type(solver).__name__}")
        if rtol is None and atol is not None:
            raise ValueError("atol needs rtol: tolerances set adaptive steps")
        self.solver = solver
        self.rtol = _tolerance("rtol", rtol)
        self.atol = _tolerance("atol", atol)
        self.max_steps = None if max_steps is None else checks.positive_int("max_steps", max_steps)
        self.progress = bool(progress)

    def controller(self) -> diffrax.PIDController:
        """The adaptive step-size controller: PID at (rtol, atol)."""
        return diffrax.PIDController(rtol=self.rtol, atol=self.atol)

    def meter(self) -> diffrax.AbstractProgressMeter:
        """diffrax's tqdm progress meter if `progress`, else none (`progress_meter`)."""
        return progress_meter(self.progress)


def _tolerance(name, value):
    """A tolerance > 0 (None stays None): a concrete one as a Python float, which keeps the controller's
    arithmetic in the state's dtype; a traced one checked by `eqx.error_if`."""
    if value is None:
        return None
    return checks.positive_float(name, value) if checks.is_concrete(value) else checks.positive(name, value)


def progress_meter(progress: bool, refresh_steps: int = 1) -> diffrax.AbstractProgressMeter:
    """diffrax's tqdm meter when `progress` (refreshed every `refresh_steps` steps), else none: the one
    progress bar of every flow, continuous and discrete.

    **Arguments:** `progress`, `refresh_steps`.

    **Returns:** a `diffrax.TqdmProgressMeter` or `diffrax.NoProgressMeter`."""
    return diffrax.TqdmProgressMeter(refresh_steps=refresh_steps) if progress else diffrax.NoProgressMeter()


def solve_ode(field, y0, t0, t1, ts, save, solve: Solve):
    """The one diffrax call of the deterministic flows: d y / dt = field(t, y, None) on [t0, t1] by `solve`
    (adaptive PID steps), `save(t, y, None)` recorded at `ts`. The times take the dtype of y0 (diffrax
    would promote a float32 state to float64 times).

    **Arguments:** the vector `field`, the start `y0`, the span `t0`, `t1`, the save times `ts`, the `save`
    function, the `Solve`.

    **Returns:** (ts, saved, result code). A failed solve does not raise here (`finish` in
    flows/_trajectory.py does)."""
    dtype = jnp.result_type(*jax.tree.leaves(y0))
    t0, t1, ts = (jnp.asarray(x, dtype) for x in (t0, t1, ts))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solve.solver,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(ts=ts, fn=save),
        stepsize_controller=solve.controller(),
        max_steps=solve.max_steps,
        progress_meter=solve.meter(),
        throw=False,
    )
    return sol.ts, sol.ys, solver_result(sol.result)
