"""The helpers a researcher would otherwise write by hand (analysis.statistics, analysis.plots), against
direct computations."""

import jax
import matplotlib
import numpy as np
import pytest

from analysis import plots, statistics
from flows import gd, sgd
from tests.helpers import two_layer

matplotlib.use("Agg")


def test_time_average_is_the_centred_window_mean_of_every_saved_quantity():
    P = two_layer()
    run = gd(P, P.params, steps=20, eta=0.3)
    avg = statistics.time_average(run, 6)
    loss = np.asarray(run.stats["loss"])
    for k in range(21):
        expected = loss[k - 3 : k + 3].mean() if 3 <= k <= 18 else np.nan
        np.testing.assert_allclose(avg.stats["loss"][k], expected, rtol=1e-12)
    np.testing.assert_allclose(avg.params.W[10], np.asarray(run.params.W)[7:13].mean(0), rtol=1e-12)
    np.testing.assert_array_equal(avg.ts, run.ts)
    ensemble = jax.vmap(lambda k: sgd(P, P.params, steps=20, eta=0.3, batch_size=2, key=k))(
        jax.random.split(jax.random.key(0), 2)
    )
    seeds = statistics.time_average(ensemble, 5)
    np.testing.assert_allclose(seeds.stats["loss"][1, 9], np.asarray(ensemble.stats["loss"])[1, 7:12].mean())
    with pytest.raises(ValueError, match="window must be an int in 1..21"):
        statistics.time_average(run, 22)


def test_distance_between_parameter_pytrees():
    P = two_layer()
    run = gd(P, P.params, steps=4, eta=0.3)
    flat = np.asarray(jax.vmap(lambda p: P.ravel(p)[0])(run.params))
    np.testing.assert_allclose(
        statistics.distance(run.final, P.params), np.linalg.norm(flat[-1] - flat[0]), rtol=1e-12
    )
    np.testing.assert_allclose(
        statistics.distance(run.params, P.params, batch_dims=1), np.linalg.norm(flat - flat[0], axis=1)
    )
    with pytest.raises(ValueError, match="same structure"):
        statistics.distance(run.final, {"W": P.params.W})


def test_ensemble_bands_and_the_trajectory_plot():
    """The bands against their formula written out: the mean over 4 seeds and the Student-t half-width
    t_{0.975, 3} s / sqrt(4) = 3.1824 s / 2 (s the unbiased standard deviation; the normal quantile 1.96
    would be 38% narrower)."""
    P = two_layer()
    keys = jax.random.split(jax.random.key(1), 4)
    ensemble = jax.vmap(lambda k: sgd(P, P.params, steps=10, eta=0.3, batch_size=2, key=k))(keys)
    bands = statistics.ensemble_bands(ensemble)
    losses = np.asarray(ensemble.stats["loss"])  # (4 seeds, 11 saves)
    np.testing.assert_allclose(bands["loss"][0], losses.sum(0) / 4, rtol=1e-14)
    s = np.sqrt(((losses - losses.mean(0)) ** 2).sum(0) / 3)
    np.testing.assert_allclose(bands["loss"][1], 3.182446305284263 * s / 2, rtol=1e-12)
    assert np.all(bands["loss"][1][1:] > 0)  # the seeds differ after the first step
    fig, (ax,) = plots.figure()
    line = plots.trajectory(ax, ensemble, "loss", label="SGD")
    np.testing.assert_array_equal(line.get_ydata(), bands["loss"][0])
    assert len(ax.collections) == 1 and ax.get_xlabel() == "t = eta k"  # the band, the clock
    plots.trajectory(ax, gd(P, P.params, steps=10, eta=0.3), label="GD")
    assert len(ax.lines) == 2 and len(ax.collections) == 1  # one run: a line, no band
    with pytest.raises(ValueError, match="an ensemble"):
        statistics.ensemble_bands(gd(P, P.params, steps=2, eta=0.3))
    with pytest.raises(ValueError, match="stat must be one of"):
        plots.trajectory(ax, ensemble, "trace_H")


def test_the_edge_panels_share_a_colour_per_step_size_and_draw_gd_sharpness_at_every_step():
    """Each eta's GD, central-flow and gradient-flow lines share its colour (the central flow was black for
    every eta, so the curve that left GD could not be matched to its step size); GD's sharpness is drawn at
    every step it was measured, not at the saves."""
    from matplotlib.colors import to_rgba

    t = np.linspace(0.0, 2.0, 5)

    def run(eta):
        k = np.arange(0, int(round(2.0 / eta)) + 1)
        ones = np.ones_like(t)
        return {"t": t, "gd_loss": np.ones(len(k)), "gd_mean_loss": ones, "gd_lambda": ones,
                "gd_sharpness": np.linspace(1, 3, len(k)), "gd_sharpness_steps": k, "gf_loss": ones,
                "gf_lambda": ones, "cf_predicted": ones, "cf_lambda": ones, "cf_distance": ones,
                "gf_distance": ones}  # fmt: skip

    fig, axes = plots.figure(3)
    plots.edge_of_stability(axes, {0.5: run(0.5), 0.25: run(0.25)})
    sharp = axes[1]
    for eta, colour in ((0.5, "C0"), (0.25, "C1")):
        drawn = [
            line
            for line in sharp.lines
            if line.get_color() == colour or to_rgba(line.get_color()) == to_rgba(colour)
        ]
        styles = sorted(line.get_linestyle() for line in drawn)
        assert styles == ["-", "--", ":"], (eta, styles)  # GD, the central flow, gradient flow
        gd_line = next(line for line in drawn if line.get_linestyle() == "-")
        assert len(gd_line.get_xdata()) == int(round(2.0 / eta)) + 1  # every step
