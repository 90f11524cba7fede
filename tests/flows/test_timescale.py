"""flows.timescale: where steps meet time, concrete and traced, with one tolerance (WHOLE_RTOL)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows import timescale


def test_steps_for_time_counts_whole_steps_and_refuses_the_rest():
    assert timescale.steps_for_time(1.0, 0.1) == 10  # 1.0 / 0.1 = 9.999999999999998 in float64
    assert timescale.steps_for_time(jnp.float32(3.0), jnp.float32(0.3)) == 10  # float32 rounding is whole
    with pytest.raises(ValueError, match="t1 = 0.33 is not a whole number of steps of 0.1"):
        timescale.steps_for_time(0.33, 0.1, name="t1")
    with pytest.raises(ValueError, match="is not a whole number"):
        timescale.steps_for_time(0.04, 0.1)  # k >= 1
    assert int(jax.jit(timescale.steps_for_time)(1.0, 0.1)) == 10
    with pytest.raises(eqx.EquinoxRuntimeError, match="t is not a whole number of steps"):
        eqx.filter_jit(timescale.steps_for_time)(jnp.asarray(0.33), jnp.asarray(0.1))


def test_grid_index_gives_save_steps_and_refuses_times_off_the_grid_or_past_t1():
    h = 0.05
    np.testing.assert_array_equal(timescale.grid_index(np.array([0.0, 0.15, 1.0]), h, 20), [0, 3, 20])
    ts32 = jnp.linspace(0.0, 1.0, 5, dtype=jnp.float32)  # 0.25 steps of 0.05: whole to float32 rounding
    np.testing.assert_array_equal(timescale.grid_index(ts32, h, 20.0), [0, 5, 10, 15, 20])
    with pytest.raises(ValueError, match="ts must lie on the step grid of 0.05"):
        timescale.grid_index([0.0, 0.12], h, 20)
    with pytest.raises(
        ValueError, match=r"save_every must be a non-decreasing 1-D array of times in \[0, 1\]"
    ):
        timescale.grid_index([0.0, 1.05], h, 20, name="save_every")
    with pytest.raises(ValueError, match="non-decreasing"):
        timescale.grid_index([0.5, 0.25], h, 20)
    traced = eqx.filter_jit(lambda ts: timescale.grid_index(ts, h, 20))
    np.testing.assert_array_equal(traced(jnp.array([0.0, 0.15, 1.0])), [0, 3, 20])
    for bad in ([0.0, 0.12], [0.0, 1.05]):
        with pytest.raises(eqx.EquinoxRuntimeError, match="ts must lie on the step grid, in"):
            traced(jnp.array(bad))


def test_steps_for_slow_time_rounds_with_the_relative_tolerance():
    """tau / (eta^2 sigma^2 / B) a whole number to WHOLE_RTOL relative is that number (an absolute 1e-9
    gave one step too many at ~1e7 steps), otherwise it rounds up."""
    eta, sigma, B = 0.01, 0.3, 7
    k = 12_345_677
    tau = timescale.slow_time(k, eta, sigma, B)
    assert timescale.steps_for_slow_time(tau * (1 + 1e-12), eta, sigma, B) == k
    assert timescale.steps_for_slow_time(tau * (1 + 1e-4), eta, sigma, B) == int(np.ceil(k * (1 + 1e-4)))
