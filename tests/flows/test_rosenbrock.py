"""The Rosenbrock-W flow behind `limit_map` (flows/_rosenbrock.py), float64: its order with a W that is not
the Jacobian, dense and matrix-free, and its limit against a long explicit gradient flow on a stiff net."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows import gradient_flow, limit_map
from models import MLP, Problem, QuadraticParam, data
from tests.helpers import float32, numerics, rosenbrock, two_layer


@pytest.mark.parametrize("mode", ["dense", "matrix_free"])
def test_ros34pw2_is_third_order_with_a_stale_gauss_newton_w(mode):
    """Fixed steps of gradient flow on a two-layer net far from its manifold, W = I + gamma h G frozen at
    the start (G = J^T J / n, neither the Hessian there nor the Gauss-Newton matrix later): a W-method
    keeps its order for any W, so the error at t = 1 against Tsit5 at rtol 1e-13 falls like h^3. The
    matrix-free stages (conjugate gradients to 1e-12, J never formed) are the same method."""
    P = two_layer(n=6, d=3, width=5)
    flat, unravel = P.ravel(P.params)
    grad = jax.grad(lambda v: P.loss(unravel(v)))
    if mode == "dense":
        w, take = rosenbrock.gauss_newton_w(P, flat, unravel), rosenbrock.step
    else:
        w = rosenbrock.matrix_free_w(P, flat, unravel)
        take = functools.partial(rosenbrock.step_matrix_free, unravel=unravel, cg_rtol=1e-12)
    ref = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, v, args: -grad(v)), diffrax.Tsit5(), 0.0, 1.0, 0.01, flat,
        stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-13), max_steps=100_000,
    ).ys[-1]  # fmt: skip

    def run(h, steps):
        def body(theta, _):
            new, _, solved = take(P, grad, w, theta, -grad(theta), h)
            return new, solved

        theta, solved = jax.lax.scan(body, flat, length=steps)
        assert bool(jnp.all(solved))
        return theta

    errors = np.array([float(jnp.max(jnp.abs(run(1.0 / m, m) - ref))) for m in (16, 32, 64)])
    orders = np.log2(errors[:-1] / errors[1:])
    assert errors[-1] < 1e-6 and np.all((orders > 2.7) & (orders < 3.5)), (errors, orders)


@pytest.mark.slow  # 25 s; in make test the dense limit_map meets a long flow in test_retraction_and_limit_map
def test_the_stiff_limit_map_lands_where_a_long_explicit_flow_ends():
    """A tanh MLP on 32 digits (N = 32, p = 1,329), cond(K) = 1.6e3 at the limit: Tsit5 gradient flow at
    rtol 1e-12 to t = 2e4 (an independent explicit solver, its step bound by lambda_max) passes theta(20),
    near the manifold (a save of a trajectory, where Phi is called often), and ends at theta(inf) =
    Phi(theta(20)) = Phi(theta(0)). The dense limit_map (Rosenbrock-W, ~200 and ~400 steps) lands on it to
    1e-6 from both (measured 4.3e-7: the slow tail's local errors at rtol 1e-8 add up; Tsit5 at the old
    tolerances landed 8e-6 off on the digits MLP of slow_flow_real_net), and the matrix-free one (the same
    steps, conjugate gradients for J) where the dense one does."""
    X, y = data.digits(classes=(3, 8))
    P = Problem(MLP(X.shape[1], 16, key=jax.random.key(0)), X[:32], y[:32])
    flow = gradient_flow(
        P, P.params, t1=2e4, ts=jnp.array([20.0, 2e4]), rtol=1e-12, atol=1e-12, max_steps=10**6
    )
    near, end = (jax.tree.map(lambda x: x[i], flow.params) for i in (0, 1))
    assert float(P.loss(end)) < 1e-20 < 1e-8 < float(P.loss(near))
    J = P.jacobian(end)
    lam = jnp.linalg.eigvalsh(J @ J.T)
    assert lam[-1] / lam[0] > 1e3  # stiff: an explicit solver is bound by lambda_max, the tail by lambda_min
    for start in (near, P.params):
        phi = P.ravel(limit_map(P, start, mode="dense"))[0]
        np.testing.assert_allclose(phi, P.ravel(end)[0], rtol=0, atol=1e-6)
        free = P.ravel(limit_map(P, start, mode="matrix_free"))[0]
        np.testing.assert_allclose(free, phi, rtol=0, atol=1e-9)


@pytest.mark.slow  # 8 s; in make test slow_flow_vs_label_noise's smoke figure maps this problem in float32
def test_float32_phi_stops_where_the_residuals_reach_round_off():
    """The quadratic parametrisation of slow_flow_vs_label_noise's smoke preset (n = 3, d = 5), float32: its
    RMS gradient rounds at ~5e-7, above float32's default tol 1e-7, so the flow stops where max |r| reaches
    round-off (`residual_floor`) instead of running to max_time; it lands within 1e-5 of float64's Phi."""
    X = data.gaussian(jax.random.key(0), 3, 5)
    P = Problem(QuadraticParam(5, init_scale=1.0), X, X[:, 0] - 0.5 * X[:, 1])
    reference = P.ravel(limit_map(P, P.params))[0]
    assert numerics.residual_floor(jnp.float32, P.y) < numerics.retract_tol(jnp.float32, P.y)
    with jax.enable_x64(False):
        P32 = float32(P)
        flat, unravel = P32.ravel(P32.params)
        small_gradient = lambda theta, f: jnp.sqrt(jnp.mean(f**2)) <= 1e-7  # noqa: E731
        _, settled, _, _ = rosenbrock.settle(P32, flat, unravel, small_gradient, 1e-6, 1e6, 10_000)
        assert not settled  # the gradient alone never gets there: it runs to max_time
        phi = P32.ravel(limit_map(P32, P32.params))[0]
    np.testing.assert_allclose(np.asarray(phi, np.float64), reference, rtol=0, atol=1e-5)


@pytest.mark.slow  # 12 s
def test_the_float32_matrix_free_limit_map_lands_near_float64s_phi():
    """A two-layer tanh net (n = 24, width 40, p = 280) in float32, matrix-free: the Rosenbrock-W flow (its
    W solved by conjugate gradients) and the landing reach float64's dense Phi to 1e-4 (measured 1.2e-5;
    the dense float32 one 2.5e-6). Before, Tsit5 stopped at an RMS gradient of 1.2e-5, too far out for
    the matrix-free Gauss-Newton landing, whose conjugate gradients failed."""
    P = two_layer(n=24, d=6, width=40)
    reference = P.ravel(limit_map(P, P.params, mode="dense"))[0]
    with jax.enable_x64(False):
        P32 = float32(P)
        phi = P32.ravel(limit_map(P32, P32.params, mode="matrix_free"))[0]
    np.testing.assert_allclose(np.asarray(phi, np.float64), reference, rtol=0, atol=1e-4)
