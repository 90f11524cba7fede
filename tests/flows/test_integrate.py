"""The configuration objects every continuous-time flow builds from its keywords (`flows.Saves`,
`flows.Solve`): checked when built, and one rule for save times in every flow."""

import diffrax
import jax
import numpy as np
import pytest

from flows import Saves, Solve, central_flow, gradient_flow, label_noise_sde, riemannian_flow, sgd_sde
from models import Problem, TwoLayerNet, data
from tests.helpers import two_layer

P = two_layer(n=6, d=3, width=5)
X = data.gaussian(jax.random.key(1), 4, 3)  # riemannian_flow's doctest problem: N = 4 constraints, p = 24
ON_MANIFOLD = Problem(
    TwoLayerNet(3, 8, key=jax.random.key(2), activation="tanh", train_outer=False), X, X[:, 0]
)
KEY = jax.random.key(0)
ETA = 0.05  # a step grid of 0.05 (substeps=1)


def test_saves_and_solve_check_themselves_when_built():
    with pytest.raises(ValueError, match="ts or save_every, not both"):
        Saves(ts=[0.0, 1.0], every=0.5)
    with pytest.raises(ValueError, match="save_every must be > 0"):
        Saves(every=-0.5)
    with pytest.raises(ValueError, match="num_saves must be a positive integer"):
        Saves(num=0)
    with pytest.raises(ValueError, match="non-decreasing 1-D"):
        Saves(ts=[1.0, 0.5])
    with pytest.raises(ValueError, match="non-decreasing 1-D"):
        Saves(ts=[])
    with pytest.raises(ValueError, match="save_every must be a concrete number"):
        jax.jit(lambda e: Saves(every=e).num)(0.5)
    with pytest.raises(ValueError, match="solver must be a diffrax solver"):
        Solve("tsit5")
    with pytest.raises(ValueError, match="rtol must be > 0"):
        Solve(diffrax.Tsit5(), rtol=0.0)
    with pytest.raises(ValueError, match="atol needs rtol"):
        Solve(diffrax.Euler(), atol=1e-6)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        Solve(diffrax.Tsit5(), 1e-6, 1e-8, max_steps=0)
    # a literal tolerance inside a caller's jit stays a Python float: the controller keeps the state's dtype
    assert jax.jit(lambda: Solve(diffrax.Tsit5(), 1e-6, 1e-8).controller().rtol)() == pytest.approx(1e-6)


def test_save_every_divides_the_span_by_the_one_whole_number_rule():
    np.testing.assert_allclose(Saves(every=0.25).times(1.0), [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(Saves(every=0.1).times(0.3 + 1e-8), np.linspace(0.0, 0.3, 4), atol=1e-7)
    with pytest.raises(ValueError, match="save_every = 0.3 must divide t1 - t0 = 1.0"):
        Saves(every=0.3).times(1.0)
    np.testing.assert_allclose(Saves(num=3).times(2.0, t0=1.0), [1.0, 1.5, 2.0])


def _all_flows(**saves):
    """The saved times of every continuous flow on [0, 1] with the same save keywords."""
    noise = dict(eta=ETA, key=KEY, substeps=1, save_params=False)
    return {
        "gradient_flow": gradient_flow(P, P.params, t1=1.0, save_params=False, **saves).ts,
        "riemannian_flow": riemannian_flow(
            ON_MANIFOLD, ON_MANIFOLD.params, t1=1.0, save_params=False, **saves
        ).ts,
        "label_noise_sde": label_noise_sde(P, P.params, t1=1.0, sigma=0.5, **noise, **saves).ts,
        "sgd_sde": sgd_sde(P, P.params, t1=1.0, batch_size=2, **noise, **saves).ts,
        "central_flow": central_flow(P, P.params, eta=ETA, t1=1.0, substeps=1, save_params=False, **saves).ts,
    }


def test_every_continuous_flow_takes_the_same_save_keywords_to_the_same_times():
    """ts, save_every and num_saves (even points that lie on the grid), five saves each: every flow saves at
    the same times (the save times are arrays, so each flow compiles once for the three)."""
    expected = [0.0, 0.25, 0.5, 0.75, 1.0]
    for saves in (dict(ts=expected), dict(save_every=0.25), dict(num_saves=5)):
        for name, ts in _all_flows(**saves).items():
            np.testing.assert_allclose(ts, expected, atol=1e-12, err_msg=f"{name}, {saves}")


def test_fixed_step_flows_round_even_saves_to_their_grid_and_refuse_given_times_off_it():
    """num_saves = 4 on [0, 1] asks for 1/3 and 2/3, off the grid of 0.05: an adaptive flow saves there, a
    fixed-step flow at the nearest steps (7 and 13); a `ts` or `save_every` off the grid is refused."""
    np.testing.assert_allclose(gradient_flow(P, P.params, t1=1.0, num_saves=4).ts, np.linspace(0.0, 1.0, 4))
    sde = label_noise_sde(P, P.params, t1=1.0, eta=ETA, sigma=0.5, key=KEY, substeps=1, num_saves=4)
    np.testing.assert_allclose(sde.ts, [0.0, 0.35, 0.65, 1.0], atol=1e-12)
    np.testing.assert_array_equal(Saves(num=4).grid_index(1.0, ETA, 20), [0, 7, 13, 20])  # the central flow's
    for given, name in ((dict(ts=[0.0, 0.33]), "ts"), (dict(save_every=1 / 3), "save_every")):
        with pytest.raises(ValueError, match=f"{name} must lie on the step grid"):
            label_noise_sde(P, P.params, t1=1.0, eta=ETA, sigma=0.5, key=KEY, substeps=1, **given)
        with pytest.raises(ValueError, match=f"{name} must lie on the step grid"):
            central_flow(P, P.params, eta=ETA, t1=1.0, substeps=1, **given)
