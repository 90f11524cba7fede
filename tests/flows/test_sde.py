"""The SDE limits: coupling with label-noise GD, the Brownian grid, noise covariances, the Ito correction,
Ornstein-Uhlenbeck against Lyapunov equations, convergence orders on an SDE with a closed-form solution."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.linalg

import flows
from flows import BrownianGrid, label_noise_sde, label_noise_sgd, sgd, sgd_sde, step_keys, trace_grad
from models import Problem
from tests.helpers import brownian, linear_regression, noise, tree_allclose, two_layer

diffusion, ito_correction, noise_parts = noise.diffusion, noise.ito_correction, noise.noise_parts


def dense_factor(P, params, **hyper):
    """The (p, m) diffusion sqrt(eta) F, column by column from the matrix-free product."""
    m = sum(int(np.prod(s)) for s in noise_parts(P, hyper["sigma"], hyper["batch_size"]).values())
    cols = jax.vmap(lambda e: P.ravel(diffusion(P, params, e, **hyper))[0])(jnp.eye(m))
    return cols.T


# -- coupling and the Brownian grid ------------------------------------------------------------------------
def test_euler_at_step_eta_is_label_noise_gd_with_the_same_key(key):
    """`substeps=1` is label-noise GD itself (what the docstring says it is), not a solve of the SDE."""
    P = two_layer()
    a = label_noise_sgd(P, P.params, steps=40, eta=0.05, sigma=0.5, key=key, save_every=10)
    b = label_noise_sde(P, P.params, t1=2.0, eta=0.05, sigma=0.5, key=key, save_every=0.5, substeps=1)
    np.testing.assert_allclose(a.ts, b.ts, rtol=1e-12)
    assert tree_allclose(a.params, b.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.stats["loss"], b.stats["loss"], rtol=1e-9)


@pytest.mark.parametrize("noise", ["label", "batch"])
def test_the_default_solves_the_sde_rather_than_repeating_the_discrete_run(key, noise):
    """At its defaults the SDE path is measurably closer to a fine solve (64 substeps, the same Brownian
    path) than the discrete run with the same key is: it solves the SDE; SGD is not its default."""
    P = two_layer()
    eta, t1, keys = 0.1, 1.0, jax.random.split(key, 16)
    if noise == "label":
        sde = lambda k, **kw: label_noise_sde(P, P.params, t1=t1, eta=eta, sigma=0.5, key=k, ts=[t1], **kw)  # noqa: E731
    else:
        sde = lambda k, **kw: sgd_sde(P, P.params, t1=t1, eta=eta, batch_size=2, key=k, ts=[t1], **kw)  # noqa: E731

    def gaps(k):
        fine = P.ravel(sde(k, substeps=64).final)[0]
        return [jnp.linalg.norm(P.ravel(sde(k, **kw).final)[0] - fine) for kw in ({}, {"substeps": 1})]

    default, one = np.mean([gaps(k) for k in keys], axis=0)
    assert default < 0.5 * one, (default, one)


def test_refined_paths_converge_to_the_coupled_label_noise_gd_path_as_eta_shrinks(key):
    """With the same key, the SDE (fine steps) and label-noise GD stay close path by path, and closer as
    eta shrinks: the coupling works at the level of paths, not only of laws."""
    P = two_layer()
    gaps = []
    for eta in (0.04, 0.01):
        steps = round(1.0 / eta)
        a = label_noise_sgd(P, P.params, steps=steps, eta=eta, sigma=0.5, key=key, save_every=steps)
        b = label_noise_sde(P, P.params, t1=1.0, eta=eta, sigma=0.5, key=key, substeps=16, ts=[0.0, 1.0])
        gaps.append(float(jnp.linalg.norm(P.ravel(a.final)[0] - P.ravel(b.final)[0])))
    assert gaps[1] < 0.6 * gaps[0], gaps


def test_brownian_grid_refinements_are_one_brownian_motion(key):
    """Fine increments sum to the coarser ones at every level, and have variance h."""
    eta, parts = 0.3, {"label": (5,)}
    paths = [BrownianGrid(key, jnp.asarray(eta), parts, levels=L, dtype=jnp.float64) for L in range(4)]

    def increments(path, count):
        h = eta / 2**path.levels
        return jnp.stack([path.evaluate(i * h, (i + 1) * h) for i in range(count)])

    coarse = increments(paths[0], 3)
    for L in (1, 2, 3):
        fine = increments(paths[L], 3 * 2**L).reshape(3, 2**L, 5).sum(axis=1)
        np.testing.assert_allclose(fine, coarse, rtol=1e-10, atol=1e-12)
    level2 = increments(paths[2], 12).reshape(6, 2, 5).sum(axis=1)
    np.testing.assert_allclose(level2, increments(paths[1], 6), rtol=1e-10, atol=1e-12)
    # the variance of a level-3 increment is h = eta / 8 (chi-square with 5 * 2000 dof: 3% relative s.e.)
    many = jax.vmap(lambda i: paths[3].evaluate(i * eta / 8, (i + 1) * eta / 8))(jnp.arange(2000.0))
    assert abs(float(jnp.var(many)) / (eta / 8) - 1) < 0.1
    # and the coarse increment is sqrt(eta) times label-noise SGD's step-k draw
    z = brownian.normal(step_keys(key, 2)[1], (5,), jnp.float64)
    np.testing.assert_array_equal(
        z, jax.random.normal(step_keys(key, 2)[1], (5,), jnp.float32)
    )  # float32 draws
    np.testing.assert_allclose(coarse[2], np.sqrt(eta) * z, rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.slow)])
def test_a_coarse_steps_increments_drawn_at_once_are_its_fine_steps_increments(key, dtype):
    """`step_increments(k)` (the bridge tree of coarse step k, drawn once: what the Euler loop uses) holds
    the numbers `increment(j)` gives at each of its fine steps, for both noise blocks and every level: the
    same draws and the same arithmetic, equal to the last bit or two (XLA fuses the two programs apart)."""
    parts = {"label": (3,), "batch": (4,)}
    for levels in range(4):
        path = BrownianGrid(key, jnp.asarray(0.3, dtype), parts, levels=levels, dtype=dtype)
        per = 2**levels
        one = eqx.filter_jit(BrownianGrid.increment)  # both compiled, as in the flows
        for k in (0, 5):
            one_by_one = jnp.stack([one(path, jnp.int32(k * per + i)) for i in range(per)])
            drawn = eqx.filter_jit(BrownianGrid.step_increments)(path, jnp.int32(k))
            eps = float(jnp.finfo(dtype).eps)  # rounding of terms of size sqrt(dt), whose sum may be smaller
            np.testing.assert_allclose(drawn, one_by_one, rtol=4 * eps, atol=4 * eps * 0.3**0.5)


# -- the noise factors -------------------------------------------------------------------------------------
def one_step_gradients(run, P, params, eta, seeds, **kw):
    """g = (theta_0 - theta_1) / eta of one discrete step, for many keys."""
    keys = jax.random.split(jax.random.key(7), seeds)
    step = jax.vmap(lambda k: P.ravel(run(P, params, steps=1, eta=eta, key=k, **kw).final)[0])(keys)
    return (P.ravel(params)[0][None, :] - step) / eta


@pytest.mark.parametrize("replace", [True, False])
def test_minibatch_factor_covariance_is_that_of_the_sgd_gradient(replace):
    """F F^T = (c_B^2 / B) [(1/n) sum g_i g_i^T - gbar gbar^T], dense from per-example gradients, and equals
    the empirical covariance of SGD's minibatch gradient (sgd itself, one step, many keys)."""
    P = two_layer(n=8)
    B, eta = 3, 0.1
    D = dense_factor(P, P.params, eta=eta, sigma=None, batch_size=B, replace=replace)
    G = P.per_example_grads(P.params)
    c2 = 1.0 if replace else (P.n - B) / (P.n - 1)
    expect = c2 / B * (G.T @ G / P.n - jnp.outer(G.mean(0), G.mean(0)))
    np.testing.assert_allclose(D @ D.T / eta, expect, rtol=1e-10, atol=1e-14)
    g = one_step_gradients(sgd, P, P.params, eta, 20000, batch_size=B, replace=replace)
    emp = np.cov(np.asarray(g).T)
    assert np.linalg.norm(emp - expect) < 0.05 * np.linalg.norm(expect)


def test_label_noise_factor_covariance_is_that_of_the_label_noise_gradient():
    """Full batch: F F^T = sigma^2 J^T J / n^2; with a minibatch of B, label and batch noise add up, and the
    sum matches label-noise SGD's empirical gradient covariance."""
    P = two_layer(n=8)
    eta, sigma = 0.1, 0.7
    J = P.jacobian(P.params)
    D = dense_factor(P, P.params, eta=eta, sigma=sigma, batch_size=P.n)
    np.testing.assert_allclose(D @ D.T / eta, sigma**2 * J.T @ J / P.n**2, rtol=1e-10, atol=1e-14)
    B = 4
    D = dense_factor(P, P.params, eta=eta, sigma=sigma, batch_size=B)
    g = one_step_gradients(label_noise_sgd, P, P.params, eta, 20000, sigma=sigma, batch_size=B)
    emp, model = np.cov(np.asarray(g).T), D @ D.T / eta
    assert np.linalg.norm(emp - model) < 0.05 * np.linalg.norm(model)


def test_ito_correction_of_label_noise_is_the_gradient_of_tr_g():
    """(1/2) sum_j DG_j G_j = (eta sigma^2 / 4B) grad tr G for the label columns (manifold.trace_grad)."""
    P = two_layer()
    eta, sigma = 0.1, 0.6
    c = ito_correction(P, P.params, eta=eta, sigma=sigma, batch_size=P.n)
    expect = eta * sigma**2 / (4 * P.n) * trace_grad(P, P.params)
    np.testing.assert_allclose(P.ravel(c)[0], expect, rtol=1e-9, atol=1e-13)


def test_ito_correction_of_minibatch_noise_matches_the_dense_derivative():
    """(1/2) sum_j (d G_{:, j} / d theta) G_{:, j} from jax.jacfwd of the dense factor."""
    P = two_layer(n=5)
    hyper = dict(eta=0.2, sigma=0.3, batch_size=2)
    flat, unravel = P.ravel(P.params)
    D = dense_factor(P, P.params, **hyper)
    dD = jax.jacfwd(lambda v: dense_factor(P, unravel(v), **hyper))(flat)  # (p, m, p)
    expect = 0.5 * jnp.einsum("imk,km->i", dD, D)
    np.testing.assert_allclose(
        P.ravel(ito_correction(P, P.params, **hyper))[0], expect, rtol=1e-9, atol=1e-13
    )


# -- Ornstein-Uhlenbeck: label noise on linear regression ----------------------------------------------------
def stationary_covariance(samples, center):
    x = np.asarray(samples).reshape(-1, samples.shape[-1]) - np.asarray(center)
    return x.T @ x / x.shape[0]


@pytest.mark.slow  # make test-all; the stationary loss is also held in tests/analysis/test_stability.py
def test_label_noise_on_linear_regression_has_the_lyapunov_stationary_covariances():
    """The SDE is OU: H S + S H = D D^T (continuous Lyapunov); label-noise GD solves
    S = A S A^T + eta D D^T, A = I - eta H (discrete Lyapunov). Each simulated stationary covariance matches
    its own equation, and the gap between the two equations shrinks like eta."""
    P = linear_regression()
    H = P.X.T @ P.X / P.n
    w_star = jnp.linalg.solve(P.X.T @ P.X, P.X.T @ P.y)
    eta, sigma, seeds = 0.1, 1.0, 1000

    def lyapunov(eta):
        DDt = np.asarray(dense_factor(P, P.params, eta=eta, sigma=sigma, batch_size=P.n))
        DDt = DDt @ DDt.T
        cont = scipy.linalg.solve_continuous_lyapunov(np.asarray(H), DDt)
        disc = scipy.linalg.solve_discrete_lyapunov(np.eye(4) - eta * np.asarray(H), eta * DDt)
        return cont, disc

    cont, disc = lyapunov(eta)
    start = eqx.tree_at(lambda m: m.w, P.params, w_star)
    keys = jax.random.split(jax.random.key(3), seeds)
    ts = jnp.linspace(5.0, 20.0, 31)  # after 5 relaxation times
    sde = jax.vmap(
        lambda k: label_noise_sde(P, start, t1=20.0, eta=eta, sigma=sigma, key=k, substeps=8, ts=ts).params.w
    )(keys)
    gd = jax.vmap(
        lambda k: label_noise_sgd(P, start, steps=200, eta=eta, sigma=sigma, key=k, save_every=5).params.w
    )(keys)[:, 10:]
    S_sde, S_gd = stationary_covariance(sde, w_star), stationary_covariance(gd, w_star)
    rel = lambda A, B: np.linalg.norm(A - B) / np.linalg.norm(B)  # noqa: E731
    assert rel(disc, cont) > 0.05  # the two equations differ at this eta ...
    assert rel(S_sde, cont) < 0.04 and rel(S_sde, cont) < rel(S_sde, disc)  # ... and each run finds its own
    assert rel(S_gd, disc) < 0.04 and rel(S_gd, disc) < rel(S_gd, cont)
    gaps = [rel(*lyapunov(e)[::-1]) for e in (eta, eta / 2, eta / 4)]
    np.testing.assert_allclose(np.array(gaps[:2]) / np.array(gaps[1:]), 2.0, rtol=0.1)


# -- convergence orders on an SDE with a closed-form solution --------------------------------------------
class Cosine(eqx.Module):
    """f(theta) = A cos(omega theta) on the single input x = 1."""

    theta: jax.Array
    A: float = eqx.field(static=True)
    omega: float = eqx.field(static=True)

    def __call__(self, x):
        return self.A * jnp.cos(self.omega * self.theta) * x[0]


ETA, SIGMA, A, Y, T = 0.25, 1.0, 0.25, 0.1, 1.0
C = np.sqrt(ETA) * SIGMA
OMEGA = np.sqrt(2) / C


def cosine_problem():
    """Label noise on one example: d theta = -(f - y) f' dt + c f' dW, c = sqrt(eta) sigma. With
    omega = sqrt(2) / c the Ito drift is (y/c) b + b b' / 2 for b = c f', so the Stratonovich SDE
    d theta = (y/c) b dt + b o dW reduces to d h(theta) = (y/c) dt + dW with h' = 1/b:
    tan(omega theta_t / 2) = tan(omega theta_0 / 2) exp(-(2A/c) ((y/c) t + W_t))."""
    return Problem(Cosine(jnp.asarray(0.5), A, float(OMEGA)), jnp.ones((1, 1)), jnp.array([Y]))


def exact(theta0, w):
    return 2 / OMEGA * np.arctan(np.tan(OMEGA * theta0 / 2) * np.exp(-(2 * A / C) * (Y / C * T + w)))


def cosine_errors(solver, substeps, seeds=2000):
    P = cosine_problem()
    keys = jax.random.split(jax.random.key(11), seeds)

    def run(k, s):
        traj = label_noise_sde(
            P, P.params, t1=T, eta=ETA, sigma=SIGMA, key=k, substeps=s, solver=solver, ts=[0.0, T]
        )
        return traj.final.theta

    # W_T from the coarse draws alone (the bridges only split them)
    w = jax.vmap(
        lambda k: sum(
            np.sqrt(ETA) * brownian.normal(step_keys(k, i)[1], (1,), jnp.float64)[0]
            for i in range(round(T / ETA))
        )
    )(keys)
    ref = exact(0.5, np.asarray(w))
    diffs = [np.asarray(jax.vmap(lambda k, s=int(s): run(k, s))(keys)) - ref for s in substeps]
    return np.array([np.mean(np.abs(d)) for d in diffs]), np.array([abs(np.mean(d)) for d in diffs])


@pytest.mark.parametrize(
    "solver, lo, hi",
    [
        pytest.param(diffrax.Euler(), 0.35, 0.7, marks=pytest.mark.slow),
        pytest.param(diffrax.ItoMilstein(), 0.8, 1.25, marks=pytest.mark.slow),
        pytest.param(diffrax.Heun(), 0.8, 1.25, marks=pytest.mark.slow),
    ],
    ids=["euler", "ito-milstein", "heun+correction"],
)
def test_strong_orders_on_the_closed_form_sde(solver, lo, hi):
    """E|theta_h(T) - theta(T)| ~ h^order: 1/2 for Euler-Maruyama, 1 for Milstein and for Heun (Stratonovich,
    with the Ito correction) on this scalar-noise SDE."""
    substeps = np.array([4, 8, 16, 32, 64])
    strong, _ = cosine_errors(solver, substeps)
    slope = np.polyfit(np.log(ETA / substeps), np.log(strong), 1)[0]
    assert lo < slope < hi, (slope, strong)


def test_weak_order_of_euler_on_the_closed_form_sde():
    """|E theta_h(T) - E theta(T)| ~ h: estimated on coupled paths (the difference has the strong error's
    variance); 16,000 paths keep the standard error below a third of the smallest weak error."""
    substeps = np.array([1, 2, 4])
    _, weak = cosine_errors(diffrax.Euler(), substeps, seeds=16000)
    slope = np.polyfit(np.log(ETA / substeps), np.log(weak), 1)[0]
    assert 0.6 < slope < 1.4, (slope, weak)


def test_adaptive_heun_on_the_virtual_brownian_tree_solves_the_same_sde():
    """Adaptive steps (PID) on the tree path, Stratonovich Heun with the Ito correction, against the closed
    form on the same Brownian path (the tree as the flow builds it)."""
    P = cosine_problem()
    keys = jax.random.split(jax.random.key(5), 200)
    h = ETA / 1

    def run(k):
        traj = label_noise_sde(
            P, P.params, t1=T, eta=ETA, sigma=SIGMA, key=k, solver=diffrax.Heun(), rtol=1e-4, ts=[0.0, T]
        )
        tree = diffrax.VirtualBrownianTree(
            0.0, T, tol=h / 64, shape=jax.ShapeDtypeStruct((1,), jnp.float64), key=k
        )
        return traj.final.theta, tree.evaluate(0.0, T)[0]

    theta, w = jax.vmap(run)(keys)
    assert np.mean(np.abs(np.asarray(theta) - exact(0.5, np.asarray(w)))) < 2e-3


# -- ensembles, keys, bad input ----------------------------------------------------------------------------
def test_same_key_same_bits_and_vmap_equals_single_runs(key):
    P = two_layer()
    run = lambda k: sgd_sde(P, P.params, t1=0.5, eta=0.05, batch_size=2, key=k, substeps=2)  # noqa: E731
    assert tree_allclose(run(key), run(key), rtol=0, atol=0)
    keys = jax.random.split(key, 3)
    batched = jax.vmap(run)(keys)
    for i, k in enumerate(keys):
        assert tree_allclose(jax.tree.map(lambda x: x[i], batched.params), run(k).params, rtol=1e-12)


def test_divergence_raises_naming_the_time(key):
    P = linear_regression()  # h lambda_max(H) > 2 for the Euler step h = eta / 4: the path blows up
    with pytest.raises(eqx.EquinoxRuntimeError, match="label_noise_sde diverged.*t ="):
        label_noise_sde(P, P.params, t1=20000.0, eta=20.0, sigma=1.0, key=key)
    path = label_noise_sde(P, P.params, t1=20000.0, eta=20.0, sigma=1.0, key=key, throw=False)
    assert int(path.result) == flows.DIVERGED


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eta=0.0), "eta must be > 0"),
        (dict(eta=-0.1), "eta must be > 0"),
        (dict(sigma=-1.0), "sigma must be >= 0"),
        (dict(batch_size=0), "batch_size must be an integer in 1..n"),
        (dict(batch_size=7), "batch_size must be an integer in 1..n"),
        (dict(substeps=3), "substeps must be a power of two"),
        (dict(t1=0.33), "not a whole number of steps"),
        (dict(solver=diffrax.SRA1(), rtol=1e-3), "assumes additive noise"),
        (dict(solver=diffrax.SPaRK()), "needs Levy area"),
        (dict(solver=diffrax.Tsit5()), "must be an SDE solver"),
        (dict(rtol=1e-3), "need a solver with an error estimate"),
    ],
)
def test_bad_input_gives_a_clear_error(kwargs, match, key):
    P = two_layer()
    args = dict(t1=1.0, eta=0.1, sigma=0.5, key=key) | kwargs
    with pytest.raises(ValueError, match=match):
        label_noise_sde(P, P.params, **args)


def test_sgd_sde_refuses_the_full_batch(key):
    P = two_layer()
    with pytest.raises(ValueError, match="full-batch GD"):
        sgd_sde(P, P.params, t1=1.0, eta=0.1, batch_size=P.n, key=key)


# -- the one-pass Euler step -------------------------------------------------------------------------------
# "uneven" and "traced" take the same while loop over segments (traced: its indices traced as well)
@pytest.mark.parametrize("ts", ["even", pytest.param("uneven", marks=pytest.mark.slow), "traced"])
def test_one_pass_euler_is_diffrax_euler_on_the_same_path(ts, key):
    """The default solve (one forward pass and one VJP a step) against diffrax's Euler with the drift and the
    noise as two terms on the same BrownianGrid: the same path to rounding, with label and minibatch noise
    together, 4 substeps, for evenly spaced saves (static loops), uneven ones and traced ones (jit, ts)."""
    P = two_layer(n=6)
    eta, sigma, B, t1 = 0.05, 0.4, 2, 1.0
    times = {"even": jnp.linspace(0.0, t1, 5), "uneven": jnp.array([0.0, 0.0125, 0.3, 1.0])}.get(ts)
    times = jnp.array([0.0, 0.25, 0.6, 1.0]) if times is None else times
    hyper = dict(eta=eta, sigma=sigma, batch_size=B)

    def ours(ts):
        return label_noise_sde(P, P.params, t1=t1, key=key, substeps=4, ts=ts, **hyper)

    run = jax.jit(ours)(times) if ts == "traced" else ours(times)
    path = BrownianGrid(key, eta, noise_parts(P, sigma, B), levels=2, dtype=jnp.float64)
    shape = jax.ShapeDtypeStruct((path.shape.shape[0],), jnp.float64)
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, p, a: jax.tree.map(jnp.negative, P.grad(p))),
        diffrax.ControlTerm(
            lambda t, p, a: lx.FunctionLinearOperator(lambda w: diffusion(P, p, w, **hyper), shape), path
        ),
    )
    grid = jnp.arange(81.0) * (eta / 4)
    sol = diffrax.diffeqsolve(
        terms, diffrax.Euler(), 0.0, t1, None, P.params, saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.StepTo(ts=grid.at[-1].set(t1)), max_steps=80,
    )  # fmt: skip
    np.testing.assert_allclose(run.ts, times, rtol=1e-12)
    assert tree_allclose(run.params, sol.ys, rtol=1e-10, atol=1e-12)


def test_fixed_step_saves_off_the_grid_are_refused(key):
    P = two_layer()
    with pytest.raises(ValueError, match="must lie on the step grid"):
        label_noise_sde(P, P.params, t1=1.0, eta=0.1, sigma=0.5, key=key, ts=[0.0, 0.55, 1.0], substeps=1)
    with pytest.raises(ValueError, match="must lie on the step grid"):
        label_noise_sde(P, P.params, t1=1.0, eta=0.1, sigma=0.5, key=key, save_every=0.25, substeps=1)
    with pytest.raises(ValueError, match="save_every = 0.4 must divide"):  # on the grid, but 0.8 is not t1
        label_noise_sde(P, P.params, t1=1.0, eta=0.1, sigma=0.5, key=key, save_every=0.4)
    traj = label_noise_sde(P, P.params, t1=1.0, eta=0.1, sigma=0.5, key=key)  # default: 101 grid points
    assert traj.ts.shape == (101,)
    h = 0.1 / 4  # the default four substeps a step
    np.testing.assert_allclose(traj.ts / h, np.round(np.asarray(traj.ts) / h), atol=1e-9)


def test_save_every_as_literals_inside_an_ensemble():
    """Python literals t1 and save_every stay concrete inside `ensembles.ensemble`'s jit: the saves are the
    single run's (the check used to see t1 after validation, a traced array)."""
    from analysis import ensembles

    P = two_layer()

    def run(k):
        return sgd_sde(P, P.params, t1=1.0, eta=0.1, batch_size=2, key=k, save_every=0.5)

    keys = jax.random.split(jax.random.key(0), 2)
    paths = ensembles.ensemble(run, keys, mesh=False)
    np.testing.assert_array_equal(paths.ts[0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(paths.stats["loss"][1], run(keys[1]).stats["loss"], rtol=1e-12)
