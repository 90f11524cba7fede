import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows import gd, gradient_flow, label_noise_sgd, sgd
from tests.helpers import brownian, linear_regression, tree_allclose, two_layer


def test_gd_on_linear_regression_matches_the_closed_form():
    """theta_k - theta* = (I - eta H)^k (theta_0 - theta*), H = X^T X / n."""
    P = linear_regression()
    H = P.X.T @ P.X / P.n
    w_star = jnp.linalg.solve(P.X.T @ P.X, P.X.T @ P.y)
    eta, steps = 0.1, 50
    traj = gd(P, P.params, steps=steps, eta=eta, save_every=10)
    for i, k in enumerate(range(0, steps + 1, 10)):
        expect = w_star + jnp.linalg.matrix_power(jnp.eye(4) - eta * H, k) @ (P.params.w - w_star)
        np.testing.assert_allclose(traj.params.w[i], expect, rtol=1e-10)
    np.testing.assert_allclose(traj.ts, eta * np.arange(0, steps + 1, 10), rtol=1e-12)
    assert traj.stats["loss"].shape == (6,)


def test_gd_converges_to_gradient_flow_at_first_order():
    """||theta_GD(T) - theta_GF(T)|| = O(eta): the fitted log-log slope over three step sizes is ~1."""
    P = two_layer()
    T = 2.0
    ref = gradient_flow(P, P.params, t1=T, ts=jnp.array([0.0, T]), rtol=1e-11, atol=1e-12).final
    etas = np.array([0.04, 0.02, 0.01])
    errs = [
        jnp.linalg.norm(
            P.ravel(gd(P, P.params, steps=round(T / e), eta=e, save_every=round(T / e)).final)[0]
            - P.ravel(ref)[0]
        )
        for e in etas
    ]
    slope = np.polyfit(np.log(etas), np.log(errs), 1)[0]
    assert 0.9 < slope < 1.1, slope


def _one_step(P, key, **kw):
    run = kw.pop("run")
    return P.ravel(run(P, P.params, steps=1, key=key, **kw).final)[0]


@pytest.mark.parametrize("replace", [True, False])
def test_minibatch_gradient_is_unbiased(replace):
    """theta_1 = theta_0 - eta g_B: the mean of g_B over N draws is grad L within 5 standard errors."""
    P = two_layer(n=8)
    eta, N = 0.5, 4000
    keys = jax.random.split(jax.random.key(1), N)
    theta0, _ = P.ravel(P.params)
    g = jax.vmap(lambda k: (theta0 - _one_step(P, k, run=sgd, eta=eta, batch_size=3, replace=replace)) / eta)(
        keys
    )
    grad, _ = P.ravel(P.grad(P.params))
    se = g.std(0) / np.sqrt(N)
    assert np.all(np.abs(g.mean(0) - grad) < 5 * se + 1e-12)
    assert np.any(se > 0)


def test_a_batch_drawn_without_replacement_is_distinct_examples_and_the_full_batch_is_gd():
    """One SGD step without replacement is the mean gradient over B distinct examples, the ones its batch key
    draws (the sampling code itself, B < n); B = n is GD whatever `replace` says (docs/conventions.md)."""
    P = two_layer(n=8)
    key, eta = jax.random.key(0), 0.1
    idx = np.asarray(brownian.batch_indices(flows.step_keys(key, 0)[0], 8, 5, replace=False))
    assert len(set(idx.tolist())) == 5
    step = sgd(P, P.params, steps=1, eta=eta, batch_size=5, replace=False, key=key)
    g = (P.ravel(P.params)[0] - P.ravel(step.final)[0]) / eta
    np.testing.assert_allclose(g, np.asarray(P.per_example_grads(P.params))[idx].mean(0), rtol=1e-10)
    b = gd(P, P.params, steps=5, eta=eta)
    for replace in (True, False):
        a = sgd(P, P.params, steps=5, eta=eta, batch_size=8, replace=replace, key=key)
        assert tree_allclose(a.params, b.params, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_label_noise_has_the_stated_variance(noise):
    """On a linear model one label-noise GD step deviates from GD by eta X^T eps / n:
    covariance eta^2 sigma^2 X^T X / n^2. Compared entrywise within 5 standard errors."""
    P = linear_regression(n=6, d=3)
    eta, sigma, N = 0.2, 0.3, 20000
    keys = jax.random.split(jax.random.key(2), N)
    w1 = jax.vmap(lambda k: _one_step(P, k, run=label_noise_sgd, eta=eta, sigma=sigma, noise=noise))(keys)
    w_gd = P.ravel(gd(P, P.params, steps=1, eta=eta).final)[0]
    dev = w1 - w_gd[None, :]
    C = dev.T @ dev / N
    expect = eta**2 * sigma**2 * P.X.T @ P.X / P.n**2
    # var of a product of two zero-mean entries: E[a^2 b^2] - E[ab]^2 (estimated)
    se = np.sqrt(np.var(dev[:, :, None] * dev[:, None, :], axis=0) / N)
    assert np.all(np.abs(C - expect) < 5 * se)
    assert np.all(np.abs(dev.mean(0)) < 5 * dev.std(0) / np.sqrt(N))


def test_same_key_same_bits_other_key_other_path():
    P = two_layer()
    kw = dict(steps=20, eta=0.1, sigma=0.5, batch_size=3, save_every=5)
    a = label_noise_sgd(P, P.params, key=jax.random.key(3), **kw)
    b = label_noise_sgd(P, P.params, key=jax.random.key(3), **kw)
    c = label_noise_sgd(P, P.params, key=jax.random.key(4), **kw)
    assert tree_allclose(a, b, rtol=0, atol=0)
    assert not np.allclose(a.params.W[-1], c.params.W[-1])


def test_an_ensemble_is_a_vmap_over_keys():
    P = two_layer()
    kw = dict(steps=20, eta=0.1, sigma=0.5, save_every=10)
    keys = jax.random.split(jax.random.key(5), 8)
    ens = jax.vmap(lambda k: label_noise_sgd(P, P.params, key=k, **kw))(keys)
    for i in range(8):
        single = label_noise_sgd(P, P.params, key=keys[i], **kw)
        assert tree_allclose(jax.tree.map(lambda x: x[i], ens), single, rtol=1e-12, atol=1e-14)


def test_metrics_on_the_fly_and_without_parameters():
    P = two_layer()
    run = gd(
        P,
        P.params,
        steps=10,
        eta=0.1,
        save_every=5,
        save_params=False,
        metrics={"norm": lambda prob, p: jnp.linalg.norm(prob.ravel(p)[0])},
    )
    full = gd(P, P.params, steps=10, eta=0.1, save_every=5)
    assert run.params is None
    norms = jax.vmap(lambda p: jnp.linalg.norm(P.ravel(p)[0]))(full.params)
    np.testing.assert_allclose(run.stats["norm"], norms, rtol=1e-12)
    np.testing.assert_allclose(run.stats["loss"], jax.vmap(P.loss)(full.params), rtol=1e-12)


def test_bad_input_names_the_argument(key):
    P = two_layer()
    with pytest.raises(ValueError, match="eta must be > 0, got -0.1"):
        gd(P, P.params, steps=2, eta=-0.1)
    with pytest.raises(ValueError, match="eta must be > 0"):
        gd(P, P.params, steps=2, eta=0.0)
    with pytest.raises(ValueError, match="batch_size must be an integer in 1..n = 1..6, got 7"):
        sgd(P, P.params, steps=2, eta=0.1, batch_size=7, key=key)
    with pytest.raises(ValueError, match="batch_size"):
        sgd(P, P.params, steps=2, eta=0.1, batch_size=0, key=key)
    with pytest.raises(ValueError, match="sigma must be >= 0, got -1"):
        label_noise_sgd(P, P.params, steps=2, eta=0.1, sigma=-1.0, key=key)
    with pytest.raises(ValueError, match="params0 contains non-finite"):
        gd(P, jax.tree.map(lambda x: x.at[0].set(jnp.nan), P.params), steps=2, eta=0.1)
    with pytest.raises(ValueError, match="multiple of save_every"):
        gd(P, P.params, steps=10, eta=0.1, save_every=3)
    with pytest.raises(ValueError, match="params0 has a leaf of shape"):
        gd(P, jax.tree.map(lambda x: x[:2], P.params), steps=2, eta=0.1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        gd(P, P.params, steps=0, eta=0.1)
    with pytest.raises(ValueError, match="first_step must be an integer >= 0, got -1"):
        gd(P, P.params, steps=2, eta=0.1, first_step=-1)


def test_divergence_raises_naming_the_step_or_returns_its_result_code():
    """One failure convention (flows/_trajectory.py): `throw=True` raises EquinoxRuntimeError naming the step;
    `throw=False` returns the run with `result = DIVERGED`, per seed under vmap."""
    P = linear_regression()
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"gd diverged: the loss became non-finite at step \d+"):
        gd(P, P.params, steps=2000, eta=10.0, save_every=100)
    run = gd(P, P.params, steps=2000, eta=10.0, save_every=100, throw=False)
    assert not np.isfinite(run.stats["loss"][-1]) and int(run.result) == flows.DIVERGED
    assert int(gd(P, P.params, steps=10, eta=0.01).result) == flows.SUCCESSFUL
    runs = jax.vmap(lambda eta: gd(P, P.params, steps=200, eta=eta, throw=False))(jnp.array([0.01, 10.0]))
    np.testing.assert_array_equal(runs.result, [flows.SUCCESSFUL, flows.DIVERGED])
    # the codes are an enumeration: a stored code names its outcome and carries the raised message
    named = [flows.Result(int(code)) for code in runs.result]
    assert (
        named == [flows.Result.SUCCESSFUL, flows.Result.DIVERGED] and flows.DIVERGED is flows.Result.DIVERGED
    )
    assert named[1].message == "diverged: the loss became non-finite"
    assert [int(r) for r in flows.Result] == list(range(7))  # one code each, as stored results hold them


def test_a_start_of_another_dtype_is_refused():
    """float32 parameters given to a float64 problem are refused, naming the dtypes (they once entered
    silently, and limit_map then took float32's tolerance)."""
    P = two_layer()
    with pytest.raises(ValueError, match="params0 has a leaf of dtype float32 where problem.params has"):
        gd(P, jax.tree.map(lambda x: x.astype(jnp.float32), P.params), steps=2, eta=0.1)


def test_divergence_at_the_last_step_is_caught():
    """The loss after the last step is checked too, not only the losses the steps saw."""
    P = linear_regression()
    with pytest.raises(eqx.EquinoxRuntimeError, match="gd diverged"):
        gd(P, P.params, steps=1, eta=1e300)


def test_divergence_inside_jit_is_still_an_error():
    P = linear_regression()
    f = jax.jit(lambda eta: gd(P, P.params, steps=2000, eta=eta, save_every=100).stats["loss"])
    with pytest.raises(Exception, match="gd diverged"):  # jax.jit: JAX's error, holding equinox's message
        jax.block_until_ready(f(10.0))
    g = eqx.filter_jit(lambda eta: gd(P, P.params, steps=2000, eta=eta, save_every=100).stats["loss"])
    with pytest.raises(eqx.EquinoxRuntimeError, match="gd diverged"):
        jax.block_until_ready(g(10.0))
    with pytest.raises(Exception, match="eta must be > 0"):
        jax.block_until_ready(f(-1.0))
    with pytest.raises(eqx.EquinoxRuntimeError, match="eta must be > 0"):  # the message alone, no dump
        jax.block_until_ready(g(jnp.asarray(-1.0)))  # traced (a Python float is static there: ValueError)


def test_hyper_parameters_are_modules_validated_when_built():
    """`StepNoise` and `Steps` check themselves when built (`__check_init__` and field converters): eagerly
    with ValueError naming the argument, and a traced sigma inside `eqx.filter_jit`."""
    with pytest.raises(ValueError, match="noise must be 'gaussian' or 'rademacher', got 'uniform'"):
        flows.StepNoise(batch_size=2, sigma=1.0, noise="uniform")
    with pytest.raises(ValueError, match="sigma must be >= 0, got -1.0"):
        flows.StepNoise(batch_size=2, sigma=-1.0)
    with pytest.raises(ValueError, match="noise_batch_size must be a positive integer"):
        flows.StepNoise(batch_size=2, sigma=1.0, noise_batch_size=0)
    with pytest.raises(ValueError, match=r"steps \(10\) must be a multiple of save_every \(3\)"):
        flows.Steps(10, 3, 0)
    traced = eqx.filter_jit(lambda s: flows.StepNoise(batch_size=2, sigma=s).sigma)
    assert float(traced(jnp.asarray(0.5))) == 0.5
    with pytest.raises(eqx.EquinoxRuntimeError, match="sigma must be >= 0"):
        jax.block_until_ready(traced(jnp.asarray(-1.0)))


def test_arguments_that_cannot_mean_what_was_asked_are_refused():
    """label_noise_sgd without sigma would be plain GD; SVAG's divergence names eta / l, its real step."""
    P = linear_regression()
    with pytest.raises(ValueError, match="sigma is required"):
        label_noise_sgd(P, P.params, steps=2, eta=0.1, sigma=None, key=jax.random.key(0))
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"eta / l = 5 \(eta = 10, l = 2\)"):
        flows.svag(P, P.params, steps=200, eta=10.0, batch_size=3, l=2, key=jax.random.key(0))


def test_a_trajectory_records_its_step_and_noise_and_gives_its_slow_time():
    """The discrete runs and the SDEs record eta and their StepNoise, so tau needs no repeated arguments:
    tau = eta^2 sigma^2 k / B, and with a separate noise batch eta^2 sigma^2 B_eps k / B^2, per seed."""
    P = two_layer(n=8)
    key = jax.random.key(0)
    run = label_noise_sgd(P, P.params, steps=20, eta=0.1, sigma=0.5, key=key, batch_size=4, save_every=10)
    np.testing.assert_allclose(run.slow_time(), 0.1**2 * 0.25 * np.array([0, 10, 20]) / 4, rtol=1e-12)
    apart = label_noise_sgd(
        P, P.params, steps=20, eta=0.1, sigma=0.5, key=key, noise_batch_size=2, save_every=10
    )
    np.testing.assert_allclose(apart.slow_time(), 0.1**2 * 0.25 * 2 * np.array([0, 10, 20]) / 64, rtol=1e-12)
    keys = jax.random.split(key, 3)
    sde = jax.vmap(
        lambda k: flows.label_noise_sde(P, P.params, t1=1.0, eta=0.1, sigma=0.5, key=k, ts=[0.0, 1.0])
    )(keys)
    np.testing.assert_allclose(sde.slow_time(), np.tile([0.0, 0.1 * 0.25 / 8], (3, 1)), rtol=1e-12)
    with pytest.raises(ValueError, match="slow_time needs a label-noise run"):
        gd(P, P.params, steps=2, eta=0.1).slow_time()


def test_progress_bar_changes_no_bit_and_shows_one_bar_under_vmap(capfd):
    P = two_layer()
    run = functools.partial(sgd, P, P.params, steps=200, eta=0.1, batch_size=2, save_every=2)
    quiet = run(key=jax.random.key(0))
    capfd.readouterr()
    shown = run(key=jax.random.key(0), progress=True)
    assert tree_allclose(shown, quiet, rtol=0, atol=0)
    assert capfd.readouterr().err.count("100.00%|") == 2  # the last refresh and the close, one bar
    keys = jax.random.split(jax.random.key(1), 3)
    jax.vmap(lambda k: run(key=k, progress=True).stats["loss"])(keys)
    assert capfd.readouterr().err.count("100.00%|") == 2  # three runs, one bar


def test_a_traced_count_says_it_must_be_concrete():
    """The flows' count checks (their signatures' type hints say int too, which a type checker enforces
    first): a traced batch size or step count is named, with the way out."""
    from models import checks

    with pytest.raises(ValueError, match="batch_size must be a concrete Python int"):
        jax.jit(lambda b: checks.batch_size(b, 4))(2)
    with pytest.raises(ValueError, match="steps must be a concrete Python int"):
        jax.jit(lambda s: checks.positive_int("steps", s))(2)
    # a setting read as a Python float on the host (a tolerance, a step size of an analysis)
    with pytest.raises(ValueError, match="eta must be a concrete number, got a traced value"):
        jax.jit(lambda e: checks.positive_float("eta", e))(0.1)
    with pytest.raises(ValueError, match="eta must be > 0, got -0.1"):
        checks.positive_float("eta", -0.1)
    assert checks.positive_float("eta", np.float32(0.5)) == 0.5
