"""The plumbing the flows share for solving: when to save, and the one diffrax call of the deterministic flows
(gradient flow, the slow flow). The SDEs' fixed-step saves lie on their step grid (`timescale.grid_index`)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from models import checks

from .trajectory import solver_result

__all__ = ["save_times", "solve_ode"]


def save_times(t1, ts=None, save_every=None, num_saves: int = 101, *, t0=0.0):
    """Save times: `ts` as given, else t0, t0 + save_every, ..., t1 (save_every must divide t1 - t0),
    else `num_saves` points evenly in [t0, t1]."""
    if ts is not None:
        if checks.is_concrete((ts, t0, t1)):  # checked on the host: inside jit, jnp ops would be traced
            host = np.asarray(ts)
            eps = max(np.finfo(np.result_type(np.asarray(x), np.float32)).eps for x in (host, t1))
            slack = 8 * eps * max(1.0, abs(float(t1)))  # the coarser dtype of ts and t1 rounds them
            if (
                host.ndim != 1
                or np.any(np.diff(host) < 0)
                or host[0] < float(t0) - slack
                or host[-1] > float(t1) + slack
            ):
                raise ValueError(
                    f"ts must be a non-decreasing 1-D array of times in [t0, t1] = [{float(t0)}, {float(t1)}]"
                )
        return jnp.asarray(ts)
    if save_every is not None:
        checks.positive("save_every", save_every)
        span = float(t1) - float(t0)
        count = round(span / float(save_every))
        if count < 1 or abs(count * float(save_every) - span) > 1e-9 * max(1.0, abs(span)):
            raise ValueError(
                f"save_every = {float(save_every)} must divide t1 - t0 = {span} into a whole number of "
                "intervals; pass ts for other save times"
            )
        return float(t0) + jnp.linspace(0.0, span, count + 1)
    return jnp.linspace(t0, t1, num_saves)


def solve_ode(field, y0, t0, t1, ts, save, solver, rtol, atol, max_steps, progress):
    """The one diffrax call of the deterministic flows: d y / dt = field(t, y, None) on [t0, t1] with
    adaptive PID steps, `save(t, y, None)` recorded at `ts`. Returns (ts, saved, result code): a failed
    solve does not raise here (`flows.trajectory.finish` does). The times take the dtype of y0 (diffrax would
    promote a float32 state to float64 times)."""
    dtype = jnp.result_type(*jax.tree.leaves(y0))
    t0, t1, ts = (jnp.asarray(x, dtype) for x in (t0, t1, ts))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(ts=ts, fn=save),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
        throw=False,
    )
    return sol.ts, sol.ys, solver_result(sol.result)
