"""The central flow of GD and of RMSProp (Cohen et al. 2024): its complementarity solver against brute force,
(preconditioned) gradient flow before the edge, and a toy problem whose edge-of-stability orbit is known in
closed form for both, against the discrete runs."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import flows
from analysis import compare, statistics
from flows import central_flow, gd, gradient_flow, sdcp
from models import CNN, Problem, data
from tests.helpers import float32, linear_regression, two_layer


def brute_force_sdcp(A, B, starts=8, seed=0):
    """min_{X >= 0} (1/2) <X, B(X)> + <A, X> over X = L L^T (any L), BFGS from several starts: the best."""
    k = A.shape[0]
    rng = np.random.default_rng(seed)

    def f(flat):
        L = flat.reshape(k, k)
        X = L @ L.T
        return 0.5 * np.einsum("ij,ijkl,kl->", X, B, X) + np.sum(A * X)

    best = min(
        (
            scipy.optimize.minimize(f, rng.normal(size=k * k), method="BFGS", options={"gtol": 1e-12})
            for _ in range(starts)
        ),
        key=lambda r: r.fun,
    )
    L = best.x.reshape(k, k)
    return L @ L.T


def random_instance(k, negative, seed):
    """A with `negative` negative eigenvalues, B a random PSD operator on symmetric k x k matrices."""
    rng = np.random.default_rng(seed)
    V = np.linalg.qr(rng.normal(size=(k, k)))[0]
    lam = np.concatenate([-rng.uniform(0.5, 2, negative), rng.uniform(0.5, 2, k - negative)])
    A = (V * lam) @ V.T
    T = rng.normal(size=(k, k, 5))
    T = (T + T.transpose(1, 0, 2)) / 2  # t_ij = t_ji, as the third derivatives are
    return A, np.einsum("ijp,klp->ijkl", T, T)


@pytest.mark.parametrize("k, negative", [(1, 0), (1, 1), (3, 0), (3, 1), (3, 2), (4, 4)])
def test_sdcp_matches_brute_force_and_its_complementarity_conditions(k, negative):
    A, B = random_instance(k, negative, seed=10 * k + negative)
    X, result = sdcp(jnp.asarray(A), jnp.asarray(B))
    assert int(result) == flows.SUCCESSFUL
    X = np.asarray(X)
    Y = A + np.einsum("ijkl,kl->ij", B, X)
    scale = np.abs(A).max()
    assert np.linalg.eigvalsh(X)[0] >= -1e-10 and np.linalg.eigvalsh(Y)[0] >= -1e-7 * scale
    assert abs(np.sum(X * Y)) <= 1e-7 * scale * max(1.0, np.abs(X).max())
    np.testing.assert_allclose(X, brute_force_sdcp(A, B), atol=1e-5 * max(1.0, np.abs(X).max()))
    if negative == 0:
        assert np.all(X == 0)  # nothing at the edge: X = 0
    else:
        assert np.linalg.matrix_rank(X, tol=1e-6 * np.abs(X).max()) >= 1


def test_sdcp_on_no_eigenvalues_and_under_vmap():
    assert sdcp(jnp.zeros((0, 0)), jnp.zeros((0, 0, 0, 0)))[0].shape == (0, 0)
    instances = [random_instance(2, m, seed=m) for m in (0, 1, 2)]
    A, B = (jnp.asarray(np.stack(x)) for x in zip(*instances))
    batched, results = jax.vmap(sdcp)(A, B)
    assert np.all(np.asarray(results) == flows.SUCCESSFUL)
    for i in range(3):
        np.testing.assert_allclose(batched[i], sdcp(A[i], B[i])[0], rtol=1e-12, atol=1e-14)


def test_sdcp_reports_an_unbounded_problem_and_an_iteration_cap():
    """B = 0 with A not PSD has no solution (X -> inf along the negative eigenvector): UNBOUNDED, not a
    huge X called a success; a cap on the iterations that stops short says so."""
    A = jnp.diag(jnp.array([-0.1, 0.3]))
    assert int(sdcp(A, jnp.zeros((2, 2, 2, 2)))[1]) == flows.UNBOUNDED
    A, B = random_instance(3, 2, seed=1)
    assert int(sdcp(jnp.asarray(A), jnp.asarray(B), max_iter=2)[1]) == flows.INNER_SOLVER_FAILED


def test_central_flow_past_an_edge_it_cannot_hold_fails_as_unbounded():
    """Least squares (third derivatives zero) at eta lambda_max = 2.5: no oscillation lowers the sharpness, GD
    diverges, and the flow says so (it returned SUCCESSFUL with a predicted loss of 1e307), recording that
    the start is past the edge."""
    P = linear_regression()
    lmax = float(jnp.linalg.eigvalsh(P.X.T @ P.X / P.n)[-1])
    eta = 2.5 / lmax
    traj = central_flow(P, P.params, eta=eta, t1=20 * eta, num_eigs=2, throw=False)
    assert int(traj.result) == flows.UNBOUNDED
    assert int(traj.stats["past_edge"][0]) == 1
    with pytest.raises(eqx.EquinoxRuntimeError, match="unbounded"):
        central_flow(P, P.params, eta=eta, t1=20 * eta, num_eigs=2)


class EdgeToy(eqx.Module):
    """L(x, y) = (1/2)(1 + y) x^2 + (1/2)(y - Y)^2 as a least-squares problem: one-hot inputs e_1, e_2 give
    f = sqrt(2 (1 + y)) x and sqrt(2) y, the targets are 0 and sqrt(2) Y, n = 2. At x = 0, H = diag(1 + y, 1):
    gradient flow drives y to Y, so the sharpness 1 + y rises through 2 / eta when 1 + Y > 2 / eta."""

    w: jax.Array

    def __call__(self, e):
        x, y = self.w[0], self.w[1]
        return e[0] * jnp.sqrt(2 * (1 + y)) * x + e[1] * jnp.sqrt(2.0) * y


def edge_toy(Y=4.0, x0=0.3):
    return Problem(EdgeToy(jnp.array([x0, 0.0])), jnp.eye(2), jnp.array([0.0, np.sqrt(2) * Y]))


def test_central_flow_matches_the_closed_form_edge_orbit_and_gd_time_average():
    """GD at the edge holds 1 + y* = 2 / eta and oscillates x = +-a: y is fixed when a^2 = 2 (Y - y*). So the
    central flow must give Sigma = a^2 = 2 (Y - y*) along x, y -> y*, and a time-averaged loss
    (1/2)(y* - Y)^2 + (1/2)(2 / eta) a^2; GD's own average over its orbit must agree."""
    eta, Y = 0.5, 4.0
    P = edge_toy(Y)
    y_star = 2 / eta - 1
    flow = central_flow(P, P.params, eta=eta, t1=40.0, num_eigs=1, num_saves=81)
    sigma = 2 * (Y - y_star)
    predicted = 0.5 * (y_star - Y) ** 2 + 0.5 * (2 / eta) * sigma
    assert float(flow.final.w[1]) == pytest.approx(y_star, rel=1e-8)
    assert float(flow.stats["sigma_trace"][-1]) == pytest.approx(sigma, rel=1e-8)
    assert float(flow.stats["predicted_loss"][-1]) == pytest.approx(predicted, rel=1e-8)
    assert float(flow.stats["eigenvalues"][-1, 0]) == pytest.approx(2 / eta, rel=1e-8)
    assert int(flow.stats["edge_count"][-1]) == 1 and int(flow.stats["edge_count"][0]) == 0
    run = gd(P, P.params, steps=4000, eta=eta, save_every=1)
    assert float(run.stats["loss"][2000:].mean()) == pytest.approx(predicted, rel=0.02)
    assert float(run.stats["loss"][2000:].mean()) > 1.5 * float(P.loss(flow.final))  # not gradient flow's


@pytest.mark.parametrize("solver, order, bound", [(None, 1, 4e-3), (diffrax.Heun(), 2, 2e-5)])
def test_central_flow_is_gradient_flow_before_the_edge(solver, order, bound):
    """Below the edge X = 0 and each step is a step of gradient flow (Euler by default, Heun when asked):
    against diffrax's adaptive solve at 1e-10, the error falls like h^order (h = eta / substeps)."""
    P = two_layer()
    eta = 0.05  # eta lambda_max stays far below 2 on this net
    gf = gradient_flow(P, P.params, t1=1.0, ts=jnp.array([0.0, 1.0]), rtol=1e-10, atol=1e-12)
    errors = []
    for substeps in (2, 4):
        flow = central_flow(
            P, P.params, eta=eta, t1=1.0, num_eigs=2, num_saves=2, substeps=substeps, solver=solver
        )
        assert float(jnp.max(flow.stats["eigenvalues"])) * eta < 1
        assert np.all(np.asarray(flow.stats["sigma_trace"]) == 0)
        np.testing.assert_array_equal(flow.stats["predicted_loss"], flow.stats["loss"])
        errors.append(float(jnp.linalg.norm(P.ravel(flow.final)[0] - P.ravel(gf.final)[0])))
    assert order - 0.3 < np.log2(errors[0] / errors[1]) < order + 0.3, errors
    assert errors[-1] < bound * float(jnp.linalg.norm(P.ravel(gf.final)[0])), errors  # 2.5e-3, 3.4e-6


def test_central_flow_vmaps_over_step_sizes_and_starts():
    P = edge_toy()
    etas = jnp.array([0.5, 0.25])
    starts = jax.vmap(lambda x0: edge_toy(x0=x0).params)(jnp.array([0.3, 0.2]))
    both = jax.vmap(lambda eta, p: central_flow(P, p, eta=eta, t1=4.0, num_eigs=1, num_saves=5))(etas, starts)
    one = central_flow(P, edge_toy(x0=0.2).params, eta=0.25, t1=4.0, num_eigs=1, num_saves=5)
    np.testing.assert_allclose(both.params.w[1, -1], one.final.w, rtol=1e-10)


def test_bad_input_is_refused():
    P = edge_toy()
    with pytest.raises(ValueError, match="eta must be > 0"):
        central_flow(P, P.params, eta=0.0, t1=1.0)
    with pytest.raises(ValueError, match="num_eigs"):
        central_flow(P, P.params, eta=0.5, t1=1.0, num_eigs=3)
    with pytest.raises(ValueError, match="step grid"):
        central_flow(P, P.params, eta=0.5, t1=1.0, num_eigs=1, ts=jnp.array([0.0, 0.3]))
    with pytest.raises(ValueError, match="t1 = 1.1 is not a whole number of steps"):
        central_flow(P, P.params, eta=0.5, t1=1.1, num_eigs=1)


def test_default_saves_round_to_the_step_grid_as_the_sdes_do():
    """num_saves points that fall between steps are rounded to the nearest one (they were refused here and
    rounded by the SDEs): 4 saves over 8 steps of 0.125 are steps 0, 3, 5, 8."""
    P = edge_toy()
    traj = central_flow(P, P.params, eta=0.5, t1=1.0, num_eigs=1, num_saves=4)
    np.testing.assert_allclose(traj.ts, [0.0, 0.375, 0.625, 1.0])


def rmsprop_edge(eta, Y, decay, eps):
    """RMSProp's edge orbit on the toy: x = +-a, y = y* and nu_x = g_x^2 = s^2 a^2 (s = 1 + y*) are fixed when
    y's gradient a^2 / 2 + y* - Y vanishes and the preconditioned sharpness eta s / sqrt(nu_x + eps) is 2:
    eta^2 s^2 = 4 (2 s^2 (Y + 1 - s) + eps), solved for s by bisection. Returns (y*, a^2, nu_x)."""
    s = scipy.optimize.brentq(lambda s: eta**2 * s**2 - 4 * (2 * s**2 * (Y + 1 - s) + eps), 1.0, Y + 1)
    a2 = 2 * (Y + 1 - s)
    return s - 1, a2, s**2 * a2


def test_rmsprop_central_flow_matches_the_closed_form_edge_orbit_and_rmsprop_time_average():
    """RMSProp at the edge of the toy holds a period-2 orbit in closed form (`rmsprop_edge`): the central flow
    must land on it, with nu_x = s^2 a^2 (the squared gradient's oscillation diag(H Sigma H), not diag(Sigma),
    which would give a^2 and another edge), and predict optax.rmsprop's own time-averaged loss."""
    eta, Y, decay, eps = 0.5, 4.0, 0.9, 1.0
    y_star, a2, nu_x = rmsprop_edge(eta, Y, decay, eps)
    P = edge_toy(Y)
    flow = central_flow(
        P, P.params, eta=eta, t1=200.0, num_eigs=1, num_saves=41, optimizer=flows.RMSProp(decay, eps)
    )
    predicted = 0.5 * (y_star - Y) ** 2 + 0.5 * (1 + y_star) * a2
    assert float(flow.final.w[1]) == pytest.approx(y_star, rel=1e-8)
    assert float(flow.stats["nu"][-1, 0]) == pytest.approx(nu_x, rel=1e-8)
    assert float(flow.stats["sigma_trace"][-1]) == pytest.approx(a2, rel=1e-8)
    assert float(flow.stats["predicted_loss"][-1]) == pytest.approx(predicted, rel=1e-8)
    assert float(eta * flow.stats["eigenvalues"][-1, 0]) == pytest.approx(2.0, rel=1e-8)
    assert int(flow.stats["edge_count"][-1]) == 1 and int(flow.stats["edge_count"][0]) == 0
    run = gd(
        P,
        P.params,
        steps=4000,
        eta=eta,
        save_every=1,
        optimizer=functools.partial(optax.rmsprop, decay=decay, eps=eps),
    )
    assert float(run.stats["loss"][2000:].mean()) == pytest.approx(predicted, rel=1e-6)
    plain = central_flow(P, P.params, eta=eta, t1=200.0, num_eigs=1, num_saves=41)  # GD holds another edge
    assert abs(float(plain.final.w[1]) - y_star) > 0.1


def test_rmsprop_central_flow_in_float32_holds_the_same_edge():
    eta, Y, decay, eps = 0.5, 4.0, 0.9, 1.0
    y_star, a2, nu_x = rmsprop_edge(eta, Y, decay, eps)
    with jax.enable_x64(False):
        P = float32(edge_toy(Y))
        flow = central_flow(
            P, P.params, eta=eta, t1=200.0, num_eigs=1, num_saves=41, optimizer=flows.RMSProp(decay, eps)
        )
        assert flow.final.w.dtype == jnp.float32 and flow.stats["nu"].dtype == jnp.float32
    assert float(flow.final.w[1]) == pytest.approx(y_star, rel=1e-5)
    assert float(flow.stats["nu"][-1, 0]) == pytest.approx(nu_x, rel=1e-4)
    assert float(flow.stats["sigma_trace"][-1]) == pytest.approx(a2, rel=1e-3)


@pytest.mark.parametrize("solver, order, bound", [(None, 1, 4e-2), (diffrax.Heun(), 2, 1e-3)])
def test_rmsprop_central_flow_is_the_preconditioned_gradient_flow_before_the_edge(solver, order, bound):
    """Below the edge X = 0: each step is a step (Euler by default, Heun when asked) of
    d theta/dt = -g / sqrt(nu + eps), d nu/dt = r (g^2 - nu) with r = c / eta, c = (1 - decay) / decay,
    written here and solved by diffrax at 1e-10: the error falls like h^order. optax.rmsprop converges to
    the same flow at first order as eta -> 0 with r fixed (decay = 1 / (1 + r eta))."""
    P = two_layer()
    rate, eps, scale = 2.0, 1e-3, 0.1
    flat0, unravel = P.ravel(P.params)

    def field(t, y, args):
        w, nu = y
        g = P.ravel(P.grad(unravel(w)))[0]
        return -g / jnp.sqrt(nu + eps), rate * (g**2 - nu)

    solved = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        0.0,
        1.0,
        0.01,
        (flat0, jnp.full_like(flat0, scale)),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    ).ys
    reference = jnp.concatenate([solved[0][-1], solved[1][-1]])
    eta = 0.05
    rms = flows.RMSProp(1 / (1 + rate * eta), eps, initial_scale=scale)
    errors = []
    for substeps in (2, 4):
        flow = central_flow(
            P, P.params, eta=eta, t1=1.0, num_eigs=2, num_saves=2, substeps=substeps, optimizer=rms,
            solver=solver,
        )  # fmt: skip
        assert float(jnp.max(flow.stats["eigenvalues"])) * eta < 1
        assert np.all(np.asarray(flow.stats["sigma_trace"]) == 0)
        got = jnp.concatenate([P.ravel(flow.final)[0], flow.stats["nu"][-1]])
        errors.append(float(jnp.linalg.norm(got - reference)))
    assert order - 0.3 < np.log2(errors[0] / errors[1]) < order + 0.3, errors
    assert errors[-1] < bound * float(jnp.linalg.norm(reference)), errors  # h = 0.0125
    gaps = []
    for eta in (0.02, 0.01):
        optimizer = functools.partial(optax.rmsprop, decay=1 / (1 + rate * eta), eps=eps, initial_scale=scale)
        run = gd(P, P.params, steps=round(1 / eta), eta=eta, save_every=round(1 / eta), optimizer=optimizer)
        gaps.append(float(jnp.linalg.norm(P.ravel(run.final)[0] - solved[0][-1])))
    assert 0.8 < np.log2(gaps[0] / gaps[1]) < 1.2, gaps


def test_rmsprop_arguments_are_checked():
    P = edge_toy()
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        flows.RMSProp(1.0, 1e-8)
    with pytest.raises(ValueError, match="eps must be > 0"):
        flows.RMSProp(0.9, 0.0)
    # ValueError from the flow; under the tests' runtime type checker, its error naming the argument first
    with pytest.raises(Exception, match="optimizer"):
        central_flow(P, P.params, eta=0.5, t1=1.0, num_eigs=1, optimizer=optax.rmsprop(0.5))


MOMENTUM_AND_ADAM = [
    (flows.Momentum(0.9), functools.partial(optax.sgd, momentum=0.9)),
    (flows.Adam(0.9, 0.99, 1e-8), functools.partial(optax.adam, b1=0.9, b2=0.99, eps=1e-8)),
]


@pytest.mark.parametrize("optimizer, reference", MOMENTUM_AND_ADAM, ids=["momentum", "adam"])
def test_momentum_and_adam_central_flows_at_one_substep_are_the_optimizers_before_the_edge(
    optimizer, reference
):
    """With substeps = 1 and no eigenvalue at the edge, each step of the flow is one step of the optax
    optimizer (the moments first, then theta with the new ones; Adam's bias corrections): the same
    iterates."""
    P = two_layer()
    eta, steps = 0.05, 20
    flow = central_flow(
        P, P.params, eta=eta, t1=eta * steps, num_eigs=2, num_saves=steps + 1, substeps=1, optimizer=optimizer
    )
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int32 and float
        run = gd(P, P.params, steps=steps, eta=eta, save_every=1, optimizer=reference)
    assert np.all(np.asarray(flow.stats["edge_count"]) == 0)
    assert float(jnp.max(flow.stats["eigenvalues"][:, 0] / flow.stats["threshold"])) < 0.5
    np.testing.assert_allclose(flow.stats["loss"], run.stats["loss"], rtol=1e-12)
    np.testing.assert_allclose(P.ravel(flow.final)[0], P.ravel(run.final)[0], rtol=1e-12, atol=1e-14)


def test_momentum_central_flow_is_its_stable_flow_before_the_edge():
    """Below the edge X = 0 and each step is a semi-implicit Euler step of d theta/dt = -m / (1 - beta),
    dm/dt = ((1 - beta) / eta) (g - m) (m: optax's trace times 1 - beta), written here and solved by diffrax
    at 1e-10: the error falls like h; and the iterates the flow records as `momentum` are m."""
    P = two_layer()
    eta, beta = 0.05, 0.9
    flat0, unravel = P.ravel(P.params)

    def field(t, y, args):
        w, m = y
        g = P.ravel(P.grad(unravel(w)))[0]
        return -m / (1 - beta), ((1 - beta) / eta) * (g - m)

    solved = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 1.0, 0.01, (flat0, jnp.zeros_like(flat0)),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    ).ys  # fmt: skip
    reference = jnp.concatenate([solved[0][-1], solved[1][-1]])
    errors = []
    for substeps in (2, 4):
        flow = central_flow(
            P, P.params, eta=eta, t1=1.0, num_eigs=2, num_saves=2, substeps=substeps,
            optimizer=flows.Momentum(beta),
        )  # fmt: skip
        assert np.all(np.asarray(flow.stats["sigma_trace"]) == 0)
        got = jnp.concatenate([P.ravel(flow.final)[0], flow.stats["momentum"][-1]])
        errors.append(float(jnp.linalg.norm(got - reference)))
    assert 0.7 < np.log2(errors[0] / errors[1]) < 1.3, errors
    assert errors[-1] < 0.05 * float(jnp.linalg.norm(reference)), errors


def test_adam_central_flow_converges_at_first_order_before_the_edge():
    """Adam's flow before the edge (its bias corrections make the ODE singular at t = 0, so no solver is
    asked): the gaps between the flows at h, h / 2 and h / 4 halve, as a first-order scheme's do."""
    P = two_layer()
    optimizer = flows.Adam(0.9, 0.99, 1e-8)
    finals = []
    for substeps in (2, 4, 8):
        flow = central_flow(
            P, P.params, eta=0.05, t1=1.0, num_eigs=2, num_saves=2, substeps=substeps, optimizer=optimizer
        )
        assert np.all(np.asarray(flow.stats["edge_count"]) == 0)
        finals.append(
            jnp.concatenate([P.ravel(flow.final)[0], flow.stats["nu"][-1], flow.stats["momentum"][-1]])
        )
    gaps = [float(jnp.linalg.norm(a - b)) for a, b in zip(finals, finals[1:])]
    assert 0.7 < np.log2(gaps[0] / gaps[1]) < 1.3, gaps


def toy_flow(P, eta, optimizer, x64):
    """The central flow of `optimizer` on the toy to t = 400 eta, in float64 or in float32 (checked)."""
    with jax.enable_x64(x64):
        Q = P if x64 else float32(P)
        flow = central_flow(Q, Q.params, eta=eta, t1=eta * 400, num_eigs=1, num_saves=41, optimizer=optimizer)
    dtype = jnp.float64 if x64 else jnp.float32
    assert flow.final.w.dtype == dtype and flow.stats["momentum"].dtype == dtype
    return flow


def momentum_edge(Y, beta, gap):
    """Heavy ball's edge orbit on the toy: x = +-a, y = y* is a 2-cycle of m_{k+1} = g_k + beta m_k,
    theta_{k+1} = theta_k - eta m_{k+1} when GD's is with step eta / (1 + beta) (the oscillating part of m is
    g's over 1 + beta): 1 + y* = 2 (1 + beta) / eta, a^2 = 2 (Y - y*). Returns (eta, y*, a^2) for
    y* = Y - gap."""
    y_star = Y - gap
    return 2 * (1 + beta) / (1 + y_star), y_star, 2 * gap


@pytest.mark.parametrize("x64", [True, False], ids=["float64", "float32"])
def test_momentum_central_flow_matches_the_closed_form_edge_orbit_and_momentum_time_average(x64):
    """The heavy-ball flow lands on the toy's heavy-ball orbit (`momentum_edge`): y*, Sigma = a^2, the
    sharpness at 2 (1 + beta) / eta, m = 0, and optax.sgd(momentum=beta)'s own time-averaged loss; plain GD's
    flow at the same eta holds another edge."""
    Y, beta = 4.0, 0.5
    eta, y_star, a2 = momentum_edge(Y, beta, 0.2)
    predicted = 0.5 * (y_star - Y) ** 2 + 0.5 * (1 + y_star) * a2
    P = edge_toy(Y, x0=0.05)
    rel = 1e-8 if x64 else 1e-5
    flow = toy_flow(P, eta, flows.Momentum(beta), x64)
    assert float(flow.final.w[1]) == pytest.approx(y_star, rel=rel)
    assert float(flow.stats["sigma_trace"][-1]) == pytest.approx(a2, rel=rel)
    assert float(flow.stats["predicted_loss"][-1]) == pytest.approx(predicted, rel=rel)
    assert float(flow.stats["eigenvalues"][-1, 0]) == pytest.approx(2 * (1 + beta) / eta, rel=rel)
    assert float(flow.stats["threshold"][-1]) == pytest.approx(2 * (1 + beta) / eta, rel=1e-6)
    assert float(jnp.max(jnp.abs(flow.stats["momentum"][-1]))) < 1e-4
    assert int(flow.stats["edge_count"][-1]) == 1 and int(flow.stats["edge_count"][0]) == 0
    if not x64:
        return
    run = gd(
        P, P.params, steps=4000, eta=eta, save_every=1, optimizer=functools.partial(optax.sgd, momentum=beta)
    )
    assert float(run.stats["loss"][2000:].mean()) == pytest.approx(predicted, rel=1e-6)
    plain = central_flow(P, P.params, eta=eta, t1=eta * 400, num_eigs=1, num_saves=41)
    assert abs(float(plain.final.w[1]) - y_star) > 0.5


def adam_edge(Y, b1, eps, gap):
    """Adam's edge orbit on the toy (bias corrections settled): x = +-a, y = y* = Y - gap, nu_x = s^2 a^2
    (s = 1 + y*), nu_y = 0, and the preconditioned sharpness s / (s a + eps) at 2 (1 + b1) / (eta (1 - b1)).
    Returns (eta, y*, a^2, nu_x)."""
    s, a2 = Y + 1 - gap, 2 * gap
    return 2 * (1 + b1) / (1 - b1) * (s * np.sqrt(a2) + eps) / s, s - 1, a2, s**2 * a2


@pytest.mark.parametrize("x64", [True, False], ids=["float64", "float32"])
def test_adam_central_flow_matches_the_closed_form_edge_orbit_and_adam_time_average(x64):
    """Adam's flow lands on the toy's Adam orbit (`adam_edge`), nu_x included, and predicts optax.adam's
    time-averaged loss."""
    Y, b1, b2, eps = 4.0, 0.5, 0.9, 1.0
    eta, y_star, a2, nu_x = adam_edge(Y, b1, eps, 0.2)
    predicted = 0.5 * (y_star - Y) ** 2 + 0.5 * (1 + y_star) * a2
    P = edge_toy(Y, x0=0.05)
    rel = 1e-8 if x64 else 1e-4
    flow = toy_flow(P, eta, flows.Adam(b1, b2, eps), x64)
    assert float(flow.final.w[1]) == pytest.approx(y_star, rel=rel)
    assert float(flow.stats["nu"][-1, 0]) == pytest.approx(nu_x, rel=rel)
    assert float(flow.stats["sigma_trace"][-1]) == pytest.approx(a2, rel=rel)
    assert float(flow.stats["predicted_loss"][-1]) == pytest.approx(predicted, rel=rel)
    assert float(flow.stats["eigenvalues"][-1, 0]) == pytest.approx(
        float(flow.stats["threshold"][-1]), rel=rel
    )
    assert int(flow.stats["edge_count"][-1]) == 1
    if not x64:
        return
    adam = functools.partial(optax.adam, b1=b1, b2=b2, eps=eps)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int32 and float
        run = gd(P, P.params, steps=4000, eta=eta, save_every=1, optimizer=adam)
    assert float(run.stats["loss"][2000:].mean()) == pytest.approx(predicted, rel=1e-6)


def test_momentum_and_adam_central_flows_vmap_over_step_sizes():
    P = edge_toy()
    etas = jnp.array([0.5, 0.25])
    for optimizer in (flows.Momentum(0.5), flows.Adam(0.5, 0.9, 1.0)):
        both = jax.vmap(
            lambda eta: central_flow(
                P, P.params, eta=eta, t1=4.0, num_eigs=1, num_saves=5, optimizer=optimizer
            )
        )(etas)
        one = central_flow(P, P.params, eta=0.25, t1=4.0, num_eigs=1, num_saves=5, optimizer=optimizer)
        np.testing.assert_allclose(both.params.w[1, -1], one.final.w, rtol=1e-10)


def test_momentum_and_adam_arguments_are_checked():
    P = edge_toy()
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
        flows.Momentum(1.0)
    with pytest.raises(ValueError, match=r"b1 must be in \(0, 1\)"):
        flows.Adam(b1=0.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        flows.Adam(eps=-1.0)
    with pytest.raises(ValueError, match="solver"):
        central_flow(
            P, P.params, eta=0.5, t1=1.0, num_eigs=1, optimizer=flows.Momentum(0.9), solver=diffrax.Heun()
        )


def digits_cnn(n, channels, loss="square", flip=0.0):
    """A tanh CNN on the first n digits 0-3 (8 x 8 images) of a fixed shuffle, `flip` of the labels moved to
    the next class; one-hot targets for square loss."""
    X, y = data.digits(classes=(0, 1, 2, 3), images=True, labels=True)
    order = jax.random.permutation(jax.random.key(0), X.shape[0])[:n]
    X, y = X[order], y[order]
    m = round(flip * n)
    y = y.at[:m].set((y[:m] + 1) % 4)
    if loss == "square":
        y = jax.nn.one_hot(y, 4, dtype=X.dtype)
    return Problem(
        CNN((1, 8, 8), channels, outputs=4, activation="tanh", key=jax.random.key(1)), X, y, loss=loss
    )


@pytest.mark.slow  # 20 s each, mostly compilation; make test checks the same on a two-layer net above
@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
@pytest.mark.parametrize("solver, order", [(None, 1), (diffrax.Heun(), 2)])
def test_central_flow_on_a_cnn_is_gradient_flow_before_the_edge(loss, solver, order):
    """A CNN (convolutions, pooling, a dense head) below the edge: against diffrax's adaptive gradient flow
    at 1e-10, the error falls like h^order (Euler by default, Heun when asked)."""
    P = digits_cnn(16, (2,), loss)
    gf = gradient_flow(P, P.params, t1=0.5, ts=jnp.array([0.0, 0.5]), rtol=1e-10, atol=1e-12)
    errors = []
    for substeps in (1, 2):
        flow = central_flow(
            P, P.params, eta=0.05, t1=0.5, num_eigs=1, num_saves=2, substeps=substeps, solver=solver
        )
        assert float(jnp.max(flow.stats["eigenvalues"])) * 0.05 < 1
        errors.append(float(jnp.linalg.norm(P.ravel(flow.final)[0] - P.ravel(gf.final)[0])))
    assert order - 0.3 < np.log2(errors[0] / errors[1]) < order + 0.3, errors


@pytest.mark.slow  # 400 GD steps and 1,600 central-flow steps on a CNN in float64, then float32: 5 minutes
def test_central_flow_on_a_cnn_predicts_gd_time_averaged_loss_at_the_edge():
    """A digits CNN (p = 468, n = 128, square loss, 20% of the labels moved) at eta = 0.7 to t = 280: GD's
    sharpness reaches 2 / eta and hovers; from the edge's opening on the central flow predicts GD's loss
    averaged over 40 steps to within 4% on average (1.0% in float32 to t = 294, gradient flow 5.5%), closer
    than gradient flow, and ends at least 2x closer to GD's averaged parameters; in float32 the central flow
    follows float64."""
    P = digits_cnn(128, (4, 8), flip=0.2)
    eta = 0.7
    r = compare.edge_of_stability(P, P.params, eta=eta, t1=280.0, num_saves=40, window=40, num_eigs=2)
    e = compare.edge_errors(r, eta)
    assert e is not None and abs(e["gd_first"] - e["cf_first"]) <= 20
    assert e["cf_mean"] < 0.04 and e["gf_mean"] > 1.5 * e["cf_mean"], e
    assert e["cf_distance"] < 0.5 * e["gf_distance"], e
    with jax.enable_x64(False):
        P32 = float32(P)
        low = central_flow(
            P32, P32.params, eta=eta, t1=280.0, ts=jnp.asarray(r["t"], jnp.float32), num_eigs=2
        )
    gap = np.abs(np.asarray(low.stats["predicted_loss"], np.float64) - r["cf_predicted"]) / r["cf_predicted"]
    assert gap.max() < 1e-3, gap.max()


@pytest.mark.slow  # 400 RMSProp steps, 1,600 central-flow steps with 3 eigenpairs on a CNN, twice: 5 min
def test_rmsprop_central_flow_on_a_cnn_predicts_rmsprop_time_averaged_loss_at_the_edge():
    """optax.rmsprop (eta = 0.01, decay = 0.99) on the digits CNN: the preconditioned sharpness
    eta lambda_max(D^1/2 H D^1/2) rises to 2 and the central flow holds it there; from the edge's opening on
    its predicted loss is within 3% on average of RMSProp's loss averaged over 40 steps (1% measured), closer
    than the preconditioned gradient flow of (theta, nu) (the flow without Sigma, solved by diffrax here);
    in float32 the central flow follows float64."""
    P = digits_cnn(128, (4, 8), flip=0.2)
    eta, decay, eps, steps = 0.01, 0.99, 1e-8, 400
    flat0, unravel = P.ravel(P.params)
    scale = float(jnp.mean(P.ravel(P.grad(P.params))[0] ** 2))
    optimizer = functools.partial(optax.rmsprop, decay=decay, eps=eps, initial_scale=scale)
    run = gd(P, P.params, steps=steps, eta=eta, save_every=1, optimizer=optimizer)
    ks = np.arange(0, steps + 1, steps // 20)
    target = np.asarray(statistics.time_average(run, 40).stats["loss"])[ks]
    ts = jnp.asarray(ks * eta)
    rms = flows.RMSProp(decay, eps, scale)
    cf = central_flow(P, P.params, eta=eta, t1=eta * steps, ts=ts, num_eigs=3, optimizer=rms)
    edge = (np.asarray(cf.stats["edge_count"]) > 0) & np.isfinite(target)
    assert edge.sum() >= 8 and float(eta * cf.stats["eigenvalues"][0, 0]) < 1.5  # the edge is reached
    cf_error = np.abs(np.asarray(cf.stats["predicted_loss"])[edge] / target[edge] - 1)
    rate = (1 - decay) / decay / eta

    def field(t, y, args):
        w, nu = y
        g = jax.grad(lambda v: P.loss(unravel(v)))(w)
        return -g / jnp.sqrt(nu + eps), rate * (g**2 - nu)

    stable = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, eta * steps, eta / 4,
        (flat0, jnp.full_like(flat0, scale)), saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10), max_steps=100_000,
    ).ys[0]  # fmt: skip
    sf_loss = np.asarray(jax.vmap(lambda w: P.loss(unravel(w)))(stable))
    sf_error = np.abs(sf_loss[edge] / target[edge] - 1)
    assert cf_error.mean() < 0.03 and sf_error.mean() > 1.5 * cf_error.mean(), (cf_error, sf_error)
    with jax.enable_x64(False):
        P32 = float32(P)
        low = central_flow(P32, P32.params, eta=eta, t1=eta * steps, ts=jnp.asarray(ts, jnp.float32),
                           num_eigs=3, optimizer=flows.RMSProp(decay, eps, scale))  # fmt: skip
    gap = np.abs(
        np.asarray(low.stats["predicted_loss"], np.float64) / np.asarray(cf.stats["predicted_loss"]) - 1
    )
    assert gap[edge].max() < 1e-2, gap


def stable_flow_losses(P, optimizer, eta, steps, ks, substeps=4):
    """The flow of momentum or Adam without Sigma (X = 0: the optimizer's stable flow), by the same
    semi-implicit step as the central flow's, written out here: the loss at steps `ks`."""
    flat0, unravel = P.ravel(P.params)
    adam = isinstance(optimizer, flows.Adam)
    b1 = optimizer.b1 if adam else optimizer.beta

    def body(state, j):
        w, m, nu = state
        g = jax.grad(lambda v: P.loss(unravel(v)))(w)
        m = m + (1 - b1) / substeps * (g - m)
        if adam:
            nu = nu + (1 - optimizer.b2) / substeps * (g**2 - nu)
            nuhat = nu / (1 - optimizer.b2 ** ((j + 1) / substeps))
            w = w - eta / substeps / (1 - b1 ** ((j + 1) / substeps)) * m / (jnp.sqrt(nuhat) + optimizer.eps)
        else:
            w = w - eta / substeps / (1 - b1) * m
        return (w, m, nu), w

    zero = jnp.zeros_like(flat0)
    _, ws = jax.lax.scan(body, (flat0, zero, zero), jnp.arange(steps * substeps, dtype=flat0.dtype))
    ws = jnp.concatenate([flat0[None], ws])[np.asarray(ks) * substeps]
    return np.asarray(jax.vmap(lambda w: P.loss(unravel(w)))(ws))


@pytest.mark.slow  # 400 optimizer steps and 1,600 central-flow steps with 3 eigenpairs on a CNN: ~3 min each
@pytest.mark.parametrize(
    "optimizer, reference, eta, bound",
    [
        (flows.Momentum(0.3), functools.partial(optax.sgd, momentum=0.3), 0.6, 0.07),
        (flows.Adam(0.5, 0.99, 1e-8), functools.partial(optax.adam, b1=0.5, b2=0.99, eps=1e-8), 0.01, 0.07),
    ],
    ids=["momentum", "adam"],
)
def test_momentum_and_adam_central_flows_on_a_cnn_predict_the_time_averaged_loss_at_the_edge(
    optimizer, reference, eta, bound
):
    """Heavy ball (beta = 0.3, eta = 0.6: edge 4.3) and Adam (b1 = 0.5, b2 = 0.99, eta = 0.01: edge 600 on
    the preconditioned Hessian) on the digits CNN: the central flow reaches the edge and holds it; from the
    edge's opening on its predicted loss is within `bound` on average of the optimizer's loss averaged over
    40 steps (measured 5.1% and 5.7%: the discrete runs' catapults, spikes the flow smooths, make most of
    it), closer than the stable flow (8.0% and 61%)."""
    P = digits_cnn(128, (4, 8), flip=0.2)
    steps = 400
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int32 and float
        run = gd(P, P.params, steps=steps, eta=eta, save_every=1, optimizer=reference)
    ks = np.arange(0, steps + 1, steps // 20)
    target = np.asarray(statistics.time_average(run, 40).stats["loss"])[ks]
    cf = central_flow(
        P, P.params, eta=eta, t1=eta * steps, ts=jnp.asarray(ks * eta), num_eigs=3, optimizer=optimizer
    )
    edge = (np.asarray(cf.stats["edge_count"]) > 0) & np.isfinite(target)
    assert edge.sum() >= 8
    assert np.allclose(cf.stats["eigenvalues"][edge, 0] / cf.stats["threshold"][edge], 1, atol=0.01)
    cf_error = np.abs(np.asarray(cf.stats["predicted_loss"])[edge] / target[edge] - 1)
    sf_error = np.abs(stable_flow_losses(P, optimizer, eta, steps, ks)[edge] / target[edge] - 1)
    assert cf_error.mean() < bound and sf_error.mean() > 1.4 * cf_error.mean(), (cf_error, sf_error)
