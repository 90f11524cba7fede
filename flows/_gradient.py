"""Gradient flow d theta / dt = -grad L(theta), solved with diffrax on an adaptive step.

In gradient-flow time t this is the eta -> 0 limit of GD at t = eta * k; GD deviates from it by O(eta).
"""

from collections.abc import Mapping

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from models import Problem, checks
from models.problem import check_start

from ._integrate import Saves, Solve, solve_ode
from ._trajectory import (
    Metric,
    Trajectory,
    compiled,
    default_metrics,
    diverged_where,
    evaluate,
    finish,
)

__all__ = ["gradient_flow"]


def gradient_flow(
    problem: Problem,
    params0: PyTree,
    *,
    t1,
    t0=0.0,
    ts=None,
    save_every=None,
    num_saves: int = 101,
    save_params: bool = True,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    max_steps: int = 100_000,
    progress: bool = False,
    metrics: Mapping[str, Metric] | None = None,
    throw: bool = True,
) -> Trajectory:
    """Gradient flow from `params0` at time `t0` (default 0) to `t1`.

    **Arguments:**

    - `problem`, `params0` (a pytree shaped like `problem.params`), `t1 > t0`.
    - `ts`, `save_every`, `num_saves`, `save_params`: when to save (`flows.Saves`: at `ts`, else
      every `save_every` in time, else `num_saves` points in [t0, t1]) and whether to keep the parameters;
      `metrics` (name -> `fn(problem, params)`; the loss is always recorded) are evaluated at the saves.
    - `solver`, `rtol`, `atol`, `max_steps`, `progress`: how it is solved (`flows.Solve`): default
      `diffrax.Tsit5()` with PID steps; `progress` shows diffrax's tqdm meter.
    - `throw`: raise on a failed solve, or return the Trajectory with its `result` code.

    **Returns:** a `Trajectory` in gradient-flow time t.

    **Raises:** `ValueError` naming a bad argument; with `throw=True`, `equinox.EquinoxRuntimeError` when the
    solve fails (`max_steps` reached, a non-finite loss; `flows/_trajectory.py`).

    **Example:** GD at a small step follows the flow to O(eta).

    ```pycon
    >>> import jax
    >>> from flows import gd
    >>> from models import Problem, TwoLayerNet, data
    >>> X = data.gaussian(jax.random.key(0), 16, 3)
    >>> problem = Problem(TwoLayerNet(3, 8, key=jax.random.key(1), activation="tanh"), X, X[:, 0])
    >>> flow = gradient_flow(problem, problem.params, t1=5.0, save_every=1.0)
    >>> flow.ts.shape
    (6,)
    >>> run = gd(problem, problem.params, steps=500, eta=0.01, save_every=100)
    >>> gap = abs(run.stats["loss"][-1] - flow.stats["loss"][-1]) / flow.stats["loss"][-1]
    >>> bool(gap < 0.01)
    True

    ```
    """
    params0 = check_start(problem, params0)
    checks.positive("t1", t1)
    checks.forward_span(t0, t1)
    saves = Saves(ts, save_every, num_saves, save_params)
    solve = Solve(solver or diffrax.Tsit5(), rtol, atol, max_steps, progress)
    times = saves.times(t1, t0)  # from t1 as given: the number of saves is static
    t1 = checks.positive("t1", t1)
    traj = _solve(problem, params0, t0, t1, times, saves.params, solve, default_metrics(metrics))
    return finish("gradient_flow", traj, throw)


@compiled
def _solve(problem, params0, t0, t1, ts, save_params, solve, metrics):
    def field(t, params, args):
        return jax.tree.map(jnp.negative, problem.grad(params))

    def save(t, params, args):
        return (params if save_params else None), evaluate(problem, params, metrics)

    ts, (params, stats), result = solve_ode(field, params0, t0, t1, ts, save, solve)
    return Trajectory(
        ts=ts, params=params, stats=stats, clock="t", result=diverged_where(result, stats["loss"])
    )
