"""Argument checks shared by every package.

Concrete values (Python numbers, NumPy arrays, JAX arrays outside `jit`) are checked on the host and raise
`ValueError` naming the argument. Traced values (inside a user's `jit` or `vmap`) are checked with
`eqx.error_if`, so the error survives compilation.

Inside `flow_metrics()` (a flow evaluating its metrics) the finiteness checks of the metrics' parameters and
results stand down: a flow whose loss became non-finite reports that itself (`DIVERGED`, naming the step),
and its metrics there are not meaningful (`flows/_trajectory.py`).
"""

import contextlib
import contextvars

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "positive",
    "positive_float",
    "non_negative",
    "unit_interval",
    "forward_span",
    "positive_int",
    "step_index",
    "batch_size",
    "finite_tree",
    "finite_result",
    "flow_metrics",
    "in_flow_metrics",
    "same_structure",
]

_IN_FLOW_METRICS = contextvars.ContextVar("sharpflow_in_flow_metrics", default=False)


@contextlib.contextmanager
def flow_metrics():
    """While tracing a flow's metrics: `finite_result` and the metrics' parameter checks stand down (the
    flow reports a non-finite loss as a divergence, naming the step). Read at trace time, so it holds under
    `jit` and `vmap` alike.

    **Returns:** a context manager."""
    token = _IN_FLOW_METRICS.set(True)
    try:
        yield
    finally:
        _IN_FLOW_METRICS.reset(token)


def in_flow_metrics() -> bool:
    """Whether a flow's metrics are being evaluated (`flow_metrics`).

    **Returns:** a Python bool."""
    return _IN_FLOW_METRICS.get()


def is_concrete(x) -> bool:
    """Whether `x` is known now: no leaf of it is a JAX tracer (a value known only inside a jit or vmap).

    **Arguments:** `x`, any pytree.

    **Returns:** a Python bool."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def positive(name: str, value):
    """`value > 0`, returned as a JAX array (so sweeps over it do not recompile).

    **Arguments:** the argument's `name` (for the error) and its `value`, a scalar.

    **Returns:** `value` as a JAX array (under `eqx.error_if` when traced).

    **Raises:** `ValueError` naming it when a concrete value is missing, not a scalar, not finite or not
    > 0."""
    return _check(name, value, lambda v: v > 0, "must be > 0")


def positive_float(name: str, value) -> float:
    """A concrete `value > 0` as a Python float, checked on the host without making a device array: for a
    setting that stays a literal (a tolerance, a save interval) or that fixes a shape.

    **Arguments:** the argument's `name` (for the error) and its `value`, a scalar.

    **Returns:** `value` as a Python float.

    **Raises:** `ValueError` naming it when the value is missing, traced, not a scalar, not finite or not
    > 0."""
    if value is None:
        raise ValueError(f"{name} is required")
    if not is_concrete(value):
        raise ValueError(f"{name} must be a concrete number, got a traced value ({type(value).__name__})")
    return float(_check_host(name, value, lambda v: v > 0, "must be > 0"))


def non_negative(name: str, value):
    """`value >= 0`, returned as a JAX array.

    **Arguments:** the argument's `name` (for the error) and its `value`, a scalar.

    **Returns:** `value` as a JAX array (under `eqx.error_if` when traced).

    **Raises:** `ValueError` naming it when a concrete value is missing, not a scalar, not finite or not
    >= 0."""
    return _check(name, value, lambda v: v >= 0, "must be >= 0")


def unit_interval(name: str, value):
    """`0 < value < 1` (a decay rate), returned as a JAX array.

    **Arguments:** the argument's `name` (for the error) and its `value`, a scalar.

    **Returns:** `value` as a JAX array (under `eqx.error_if` when traced).

    **Raises:** `ValueError` naming it when a concrete value is missing, not a scalar, not finite or not
    in (0, 1)."""
    return _check(name, value, lambda v: (v > 0) & (v < 1), "must be in (0, 1)")


def _check(name, value, ok, what):
    if value is None:
        raise ValueError(f"{name} is required")
    if is_concrete(value):
        _check_host(name, value, ok, what)
        return value if isinstance(value, jax.Array) else jnp.asarray(value)
    value = jnp.asarray(value)
    return eqx.error_if(value, ~(jnp.isfinite(value) & ok(value)), f"{name} {what}")


def _check_host(name, value, ok, what) -> np.ndarray:
    """A concrete `value` as a NumPy scalar array, raising `ValueError` naming it unless it is a finite
    scalar with `ok`."""
    v = np.asarray(value)
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    if not np.isfinite(v) or not ok(v):
        raise ValueError(f"{name} {what}, got {v.item()}")
    return v


def forward_span(t0, t1) -> None:
    """t1 > t0 when both are concrete: a flow runs forward in time (backwards, gradient flow would ascend).

    **Arguments:** `t0`, `t1`.

    **Returns:** None.

    **Raises:** `ValueError` when concrete t1 <= t0."""
    if is_concrete((t0, t1)) and not float(t1) > float(t0):
        raise ValueError(f"t1 = {float(t1):.6g} must be greater than t0 = {float(t0):.6g}: flows run forward")


def positive_int(name: str, value) -> int:
    """A count that fixes a shape or a loop's length: an integer > 0 (not a bool), known now.

    **Arguments:** the argument's `name` and its `value`.

    **Returns:** `value` as a Python int.

    **Raises:** `ValueError` naming it for a traced value, a bool, a non-integer or one <= 0."""
    _require_concrete(name, value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def step_index(name: str, value):
    """An integer >= 0 that may be traced (a step index handed to a jitted run), checked when concrete.

    **Arguments:** the argument's `name` and its `value`.

    **Returns:** `value` as a JAX array.

    **Raises:** `ValueError` naming it for a concrete value that is not an integer >= 0."""
    if is_concrete(value) and (
        np.ndim(value) or not np.issubdtype(np.asarray(value).dtype, np.integer) or value < 0
    ):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return jnp.asarray(value)


def batch_size(value, n: int) -> int:
    """A minibatch size in 1..n; `None` means the full batch n.

    **Arguments:** the batch size `value`, the number of examples `n`.

    **Returns:** B, a Python int.

    **Raises:** `ValueError` naming `batch_size` for a traced value or one outside 1..n."""
    if value is None:
        return n
    _require_concrete("batch_size", value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= n:
        raise ValueError(f"batch_size must be an integer in 1..n = 1..{n}, got {value!r}")
    return int(value)


def _require_concrete(name: str, value):
    """A ValueError saying so when a count that fixes an array's shape arrives traced."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{name} must be a concrete Python int (it fixes an array's shape or a loop's length), got a "
            f"traced value ({type(value).__name__}): pass it from outside jax.jit / jax.vmap, e.g. with "
            "functools.partial or jax.jit(..., static_argnames=...)"
        )


def finite_tree(name: str, tree):
    """Every array leaf of `tree` is finite.

    **Arguments:** the argument's `name` and its `tree`.

    **Returns:** `tree` (wrapped in `eqx.error_if` when traced).

    **Raises:** `ValueError` naming it when a concrete leaf holds NaN or inf."""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if eqx.is_array(leaf)]
    return _finite(tree, leaves, f"{name} contains non-finite values (NaN or inf)")


def finite_result(name: str, tree):
    """Every floating-point leaf of a result `tree` is finite, unless inside `flow_metrics()`: a NaN or
    inf is refused rather than returned as a number.

    **Arguments:** the computation's `name` (for the error) and its result `tree`.

    **Returns:** `tree` (wrapped in `eqx.error_if` when traced).

    **Raises:** `ValueError` naming it when a concrete leaf holds NaN or inf."""
    if in_flow_metrics():
        return tree
    leaves = [leaf for leaf in jax.tree.leaves(tree) if eqx.is_inexact_array(leaf)]
    return _finite(
        tree, leaves, f"{name} is not finite (NaN or inf): the parameters or the data overflow the dtype"
    )


def _finite(tree, leaves, message: str):
    """`tree` once its array `leaves` are all finite: a `ValueError` with `message` when they are concrete,
    else `tree` under `eqx.error_if` with it (`finite_tree`, `finite_result`)."""
    if is_concrete(leaves):
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves):
            raise ValueError(message)
        return tree
    bad = jnp.any(jnp.stack([~jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    return eqx.error_if(tree, bad, message)


def same_structure(name: str, tree, reference, reference_name: str):
    """`tree` has the structure, shapes and dtypes of `reference`.

    **Arguments:** `name` and `tree`, `reference` and `reference_name`.

    **Returns:** None.

    **Raises:** `ValueError` naming both for a different structure, shape or dtype."""
    a, b = jax.tree.structure(tree), jax.tree.structure(reference)
    if a != b:
        raise ValueError(f"{name} has pytree structure {a}, expected that of {reference_name}: {b}")
    for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"{name} has a leaf of shape {jnp.shape(x)} where {reference_name} has {jnp.shape(y)}"
            )
        if jnp.result_type(x) != jnp.result_type(y):
            raise ValueError(
                f"{name} has a leaf of dtype {jnp.result_type(x)} where {reference_name} has "
                f"{jnp.result_type(y)}; cast one to the other"
            )
