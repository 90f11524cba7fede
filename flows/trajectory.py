"""The one result type of every flow, and the metrics recorded along it."""

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
from jaxtyping import Array, Float, PyTree

Metric = Callable[..., Array]  # metric(problem, params) -> scalar


def loss(problem, params) -> Array:
    return problem.loss(params)


def default_metrics(metrics: Mapping[str, Metric] | None) -> dict[str, Metric]:
    """The metrics to record: the full-batch loss always, plus any given ones. (Module-level functions, not
    closures: jitted flows key their compilation cache on them, so a fresh closure would recompile.)"""
    return {"loss": loss, **(metrics or {})}


def evaluate(problem, params, metrics: Mapping[str, Metric]) -> dict[str, Array]:
    return {name: fn(problem, params) for name, fn in metrics.items()}


class Trajectory(eqx.Module):
    """A saved path: `ts` (T,), `params` stacked over a leading axis of length T, `stats[name]` (T,).

    `ts` is in the flow's clock, `clock`: `"t"` is gradient-flow time t = eta * k (GD, SGD, gradient flow,
    the SDEs), `"tau"` the slow time tau = eta^2 sigma^2 k / B of the flow on the zero-loss manifold
    (see `flows.timescale`). `params` is `None` when a flow was asked not to keep them. An ensemble
    (`jax.vmap` over keys, `analysis.ensembles.ensemble`) is a Trajectory with a leading seed axis on
    every array.
    """

    ts: Float[Array, "*seeds T"]
    params: PyTree | None
    stats: dict[str, Array]
    clock: str = eqx.field(static=True, default="t")

    def at(self, i: int) -> PyTree:
        """The parameters saved at index i (negative counts from the end)."""
        return jax.tree.map(lambda x: x[i], self.params)

    @property
    def final(self) -> PyTree:
        return self.at(-1)
