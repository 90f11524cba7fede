import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import t as stats_t

import flows
from analysis import compare, ensembles, hessian, statistics
from flows import label_noise_sde, label_noise_sgd, limit_map
from models import Linear, Problem, QuadraticParam, data
from tests.helpers import two_layer


def test_mean_band_is_the_student_t_confidence_interval():
    """t_{0.975, N-1} s / sqrt(N): 2.1314 for N = 16 (the normal 1.96 would be 8% too narrow), 1.9659 for
    N = 400."""
    x = np.random.default_rng(0).normal(size=(400, 3))
    mean, half = statistics.mean_band(x)
    np.testing.assert_allclose(half, 1.9659 * x.std(0, ddof=1) / 20, rtol=1e-4)
    np.testing.assert_allclose(statistics.mean_band(x[:16])[1], 2.1314 * x[:16].std(0, ddof=1) / 4, rtol=1e-4)
    np.testing.assert_allclose(mean, x.mean(0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        statistics.mean_band(x[:1])
    assert statistics.order([0.1, 0.05, 0.025], [4.0, 2.0, 1.0]) == pytest.approx(1.0)


@pytest.mark.slow  # the figure scripts slow_flow_vs_label_noise and slow_flow_real_net measure it too
def test_label_noise_sgd_follows_the_slow_flow_in_tau_ever_closer_as_eta_shrinks():
    """tr H of label-noise GD mapped by Phi vs the Riemannian flow, in tau = eta^2 sigma^2 k / n, on the
    quadratic parametrisation: the weak error falls with eta (first order in theory) and is a few
    percent at eta = 0.01, well above the 16-seed standard error, so the trend is not noise."""
    X = data.gaussian(jax.random.key(0), 3, 5)
    P = Problem(QuadraticParam(5, init_scale=1.0), X, X[:, 0])
    etas = [0.02, 0.01]
    r = compare.label_noise_slow_clock(
        P, P.params, etas=etas, sigma=1.0, tau1=0.3, num_saves=3, key=jax.random.key(1), seeds=16
    )
    coarse, fine = r["eta"]["0.02"]["trace_H"], r["eta"]["0.01"]["trace_H"]
    scale = float(fine["flow"][0])
    e1, e2 = float(coarse["weak_error"]), float(fine["weak_error"])
    assert e2 < 0.75 * e1
    assert e2 / scale < 0.05 and e1 / scale < 0.1
    assert 0.5 < float(r["order"]["trace_H"]) < 1.5
    assert e1 > 2 * float(coarse["sgd_band"].max()) / 1.96  # the error is resolved by the sample
    np.testing.assert_allclose(r["tau"]["0.01"][-1], 0.3, rtol=1e-3)
    start = limit_map(P, P.params)  # the default observable is tr H, evaluated exactly
    np.testing.assert_allclose(fine["flow"][0], hessian.trace(P, start), rtol=1e-8)
    np.testing.assert_allclose(fine["sgd_mean"][0], hessian.trace(P, start), rtol=1e-8)


@pytest.mark.slow  # the closed-form weak and strong orders are in tests/flows/test_sde.py
def test_label_noise_sgd_and_its_sde_differ_by_at_most_first_order_in_eta():
    """On a two-layer net, the weak error sup_t |E SGD - E SDE| of the loss and of tr H (coupled paths,
    fine SDE steps eta / 8) falls at least linearly in eta and sits well above its own confidence band (so the
    slope is not noise). Gradient flow's error is not resolved by 64 uncoupled seeds (its band is wider than
    it), so the SDE's is only checked to be no larger than gradient flow's upper bound."""
    P = two_layer(n=8)
    etas = [0.04, 0.02, 0.01]
    r = compare.sde_vs_sgd(
        P,
        P.params,
        noise="label",
        etas=etas,
        t1=1.0,
        sigma=1.0,
        key=jax.random.key(3),
        seeds=64,
        substeps=8,
        num_saves=5,
    )
    for m in ("loss", "trace_H"):
        s = r["eta"]["0.01"][m]
        assert r["order"][m] > 0.85, (m, r["order"][m])
        assert np.max(s["diff_band"]) < 0.2 * s["weak_error"]
        assert s["weak_error"] < s["gf_error"] + s["gf_error_band"]
    assert r["eta"]["0.01"]["loss"]["sgd_mean"].shape == r["t"].shape == (6,)


def test_minibatch_noise_is_what_the_sde_adds_over_gradient_flow():
    """At the minimum of noisy least squares (L* ~ 0.08), minibatch SGD with B = 1 hovers above L* while
    gradient flow stays on it. The minibatch SDE carries that noise: its weak error in the loss (noise floor
    removed, 1,024 independent seeds each) is below gradient flow's by more than both bands. With the SDE's
    noise term dropped it would be gradient flow, and this would fail."""
    kx, kb, ke, km = jax.random.split(jax.random.key(6), 4)
    X = data.gaussian(kx, 8, 3)
    y = X @ jax.random.normal(kb, (3,)) + 0.5 * jax.random.normal(ke, (8,))
    P = Problem(Linear(3, key=km), X, y)
    star = jax.tree.map(lambda _: jnp.linalg.lstsq(X, y)[0], P.params)
    r = compare.sde_vs_sgd(
        P, star, noise="batch", etas=[0.05], batch_size=1, t1=2.0, key=jax.random.key(4), seeds=1024,
        substeps=2, num_saves=4,
    )  # fmt: skip
    s = r["eta"]["0.05"]["loss"]
    sde, sde_band = float(s["weak_error"]), float(s["weak_error_band"])
    gf, gf_band = float(s["gf_error"]), float(s["gf_error_band"])
    assert gf - gf_band > sde + sde_band, (gf, gf_band, sde, sde_band)
    assert gf > 3 * gf_band  # the noise matters: SGD sits measurably above the minimum (3% here)


def test_debiased_weak_error_removes_the_noise_floor():
    """Two ensembles of one law: the plain sup |mean difference| over 10 times sits at the noise floor, the
    debiased one within its simultaneous band (not resolved); a real offset of 5 standard errors is kept and
    resolved."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 10)), rng.normal(size=(64, 10))
    d, band = statistics.mean_band(a - b)
    err, half = statistics.debiased_weak_error(d, band, 64)
    assert np.max(np.abs(d)) > 0.2 and err < half
    se = float(np.mean(band)) / 1.96
    err, half = statistics.debiased_weak_error(d + 5 * se, band, 64)
    assert err > half and abs(err - np.max(np.abs(d + 5 * se))) < 2 * se


def test_debiased_weak_error_takes_the_standard_error_the_band_was_made_with():
    """With 16 seeds the band is t_{0.975, 15} se = 2.131 se: the noise floor removed is se exactly (a
    normal quantile would take it as 1.087 se, t / z too much), and the simultaneous half-width over one time
    is the band itself."""
    se = 0.1
    band = stats_t.ppf(0.975, 15) * se
    err, half = statistics.debiased_weak_error([np.hypot(3 * se, se)], [band], 16)
    np.testing.assert_allclose(err, 3 * se, rtol=1e-12)
    np.testing.assert_allclose(half, band, rtol=1e-12)
    with pytest.raises(ValueError, match="seeds"):
        statistics.debiased_weak_error([1.0], [0.1], 1)
    assert np.isnan(statistics.resolved_order([0.1, 0.05], [(1.0, 0.1), (0.2, 0.3)]))


def test_paired_difference_refuses_mismatched_clocks_and_times():
    P = two_layer()
    keys = jax.random.split(jax.random.key(0), 2)
    a = ensembles.ensemble(lambda k: label_noise_sgd(P, P.params, steps=4, eta=0.1, sigma=1.0, key=k), keys)
    b = ensembles.ensemble(
        lambda k: label_noise_sde(P, P.params, t1=0.4, eta=0.1, sigma=1.0, key=k, ts=a.ts[0], substeps=1),
        keys,
    )
    mean, _ = statistics.paired_difference(a, b, "loss")
    np.testing.assert_allclose(mean, 0.0, atol=1e-12)  # Euler at step eta is label-noise GD
    with pytest.raises(ValueError, match="mismatched clocks"):
        statistics.paired_difference(a, flows.Trajectory(b.ts, b.params, b.stats, clock="tau"), "loss")
    c = ensembles.ensemble(lambda k: label_noise_sde(P, P.params, t1=0.4, eta=0.1, sigma=1.0, key=k), keys)
    with pytest.raises(ValueError, match="mismatched save times"):
        statistics.paired_difference(a, c, "loss")
    with pytest.raises(ValueError, match="batch_size < n"):
        compare.sde_vs_sgd(P, P.params, noise="batch", etas=[0.1], t1=1.0, key=keys[0])


def test_edge_of_stability_reads_gd_and_both_flows_at_common_times():
    """On the toy whose edge orbit is known (tests/flows/test_central.py): GD's loss averaged over 200 steps
    (its catapult cycles are ~12 steps long) is the central flow's prediction, 0.5% off on average from the
    edge's opening on (6% at the first save past it), gradient flow's loss is 100% off; the edge opens where
    GD's sharpness reaches 2 / eta, and GD's averaged parameters close in on the flow's."""
    from tests.flows.test_central import edge_toy

    eta = 0.5
    P = edge_toy(4.0)
    r = compare.edge_of_stability(P, P.params, eta=eta, t1=1000.0, num_saves=20, window=200, num_eigs=1)
    assert r["t"].shape == (21,) and r["gd_loss"].shape == (2001,)
    np.testing.assert_allclose(r["t"], np.arange(21) * 50.0)
    e = compare.edge_errors(r, eta)
    assert e["cf_mean"] < 0.01 and e["cf_max"] < 0.1 and e["gf_mean"] > 0.9
    assert e["gd_first"] == e["cf_first"] == 100
    assert float(r["cf_distance"][-2]) < 2e-3 < float(r["cf_distance"][1])
    assert np.isnan(r["gd_mean_loss"][[0, -1]]).all()  # the window leaves the run
    none = compare.edge_of_stability(P, P.params, eta=0.05, t1=1.0, num_saves=2, window=2, num_eigs=1)
    assert compare.edge_errors(none, 0.05) is None
    assert compare.edge_summary(none, 0.05, 2) == "the central flow never reaches the edge"
    text = compare.edge_summary(r, eta, 200)
    assert text.startswith("GD reaches eta lambda_max = 2 at step 100, the central flow's edge opens at 100")
    assert f"{e['cf_mean']:.1%} on average" in text


def test_svag_vs_sde_runs_sgd_at_l_1_and_its_probe_trace_is_unbiased():
    """l = 1 is SGD itself (the same keys give the same losses); the default tr H (one Hutchinson probe a
    seed, the same probe for seed i in every run) has the exact trace's ensemble mean within its 95% band at
    every save; the weak gaps come with their bands for every stat."""
    P = two_layer(n=8, d=3, width=5)
    kw = dict(eta=0.1, t1=1.0, batch_size=2, key=jax.random.key(3), seeds=64, num_saves=2, substeps=4)
    r = compare.svag_vs_sde(P, P.params, ls=[1, 2], **kw)
    keys = jax.random.split(jax.random.key(3), 64)
    runs = jax.vmap(
        lambda k: flows.sgd(
            P,
            P.params,
            steps=10,
            eta=0.1,
            batch_size=2,
            key=k,
            save_every=5,
            metrics={"trace_H": hessian.trace},
        )
    )(keys)
    np.testing.assert_allclose(r["svag1"]["loss"], runs.stats["loss"].mean(0), rtol=1e-10)
    exact = np.asarray(runs.stats["trace_H"].mean(0))
    assert np.all(np.abs(r["svag1"]["trace_H"] - exact) < r["svag1"]["trace_H_band"]), (r["svag1"], exact)
    assert r["svag1"]["trace_H_band"][1] > 0
    # common probes: seed i's tr H probe is the same in every run, so from the common start the estimates at
    # t = 0 are one number (they differed by the probes' spread, +-1.8 on svag_cnn's tr H ~ 5)
    at_start = [r[run]["trace_H"][0] for run in ("svag1", "svag2", "sde")]
    np.testing.assert_allclose(at_start, at_start[0], rtol=1e-12)  # rounding: two compiled programs
    assert set(r["gap"]) == {"loss", "trace_H"} and r["gap"]["loss"].shape == (2, 2)
    assert r["t"].shape == (3,) and r["sde"]["loss"].shape == (3,)
    with pytest.raises(ValueError, match="not a multiple of num_saves"):
        compare.svag_vs_sde(P, P.params, ls=[1], **(kw | {"num_saves": 3}))


def _checkpointed(driver):
    from tests.flows.test_central import edge_toy

    if driver == "edge_of_stability":
        P = edge_toy(4.0)
        kw = dict(eta=0.5, t1=20.0, num_saves=4, window=4, num_eigs=1)
        return compare.edge_of_stability, P, kw, ["gd", "gf", "cf"]
    if driver == "svag_vs_sde":
        P = two_layer(n=8, d=3, width=5)
        kw = dict(ls=[1, 2], eta=0.1, t1=1.0, batch_size=2, key=jax.random.key(3), seeds=4, num_saves=2)
        return compare.svag_vs_sde, P, kw | {"substeps": 4}, ["svag1", "svag2", "sde"]
    X = data.gaussian(jax.random.key(0), 3, 5)
    P = Problem(QuadraticParam(5, init_scale=1.0), X, X[:, 0])
    kw = dict(etas=[0.05], sigma=1.0, tau1=0.05, num_saves=2, key=jax.random.key(1), seeds=2)
    labels = ["eta0.05-sgd", "eta0.05-phi0", "eta0.05-phi1", "eta0.05-phi2", "eta0.05-flow", "eta0.05"]
    return compare.label_noise_slow_clock, P, kw, labels


@pytest.mark.parametrize(
    "driver",
    # make test-all: the three share `part`, whose nested resumption make test checks on a toy figure
    # (tests/scripts/test_common.py, test_a_run_killed_inside_a_part_resumes_from_its_last_checkpoint)
    [
        pytest.param("edge_of_stability", marks=pytest.mark.slow),
        pytest.param("svag_vs_sde", marks=pytest.mark.slow),
        pytest.param("label_noise_slow_clock", marks=pytest.mark.slow),
    ],
)
def test_a_drivers_long_part_is_checkpointed_piece_by_piece_and_read_back(driver, tmp_path):
    """Each piece of a driver's part goes through `part` (stored on disk by `analysis.store.part`, as the
    figure scripts store it): a second run reads every piece back, computes none, and returns the same."""
    from analysis import store

    run, P, kw, labels = _checkpointed(driver)
    computed = []

    def part(label, fn):
        def recorded():
            computed.append(label)
            return fn()

        return store.part(tmp_path, {"driver": driver}, label, recorded)

    first = run(P, P.params, part=part, **kw)
    assert sorted(computed) == sorted(labels)
    computed.clear()
    again = run(P, P.params, part=part, **kw)
    assert computed == []
    jax.tree.map(np.testing.assert_array_equal, first, again)
