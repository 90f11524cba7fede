"""The zero-loss manifold: projection, retraction, Phi, the Riemannian flow of tr H (float64)."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from analysis import hessian
from flows import (
    gradient_flow,
    label_noise_objective,
    limit_map,
    retract,
    riemannian_flow,
    tangent_projection,
    trace_grad,
    trace_grad_hutchinson,
)
from models import Linear, Problem, QuadraticParam, TwoLayerNet, data
from tests.helpers import float32


def gatmiry(activation, seed=0, n=3, d=3, width=10):
    """Fixed outer layer, n <= d, inputs U[0, 1] (Gatmiry et al. 2024, Figure 1), labels in [0.5, 1]."""
    kx, ky, kn = jax.random.split(jax.random.key(seed), 3)
    X = data.uniform(kx, n, d)
    y = jax.random.uniform(ky, (n,), minval=0.5, maxval=1.0)
    net = TwoLayerNet(d, width, key=kn, activation=activation, train_outer=False, outer="ones")
    return Problem(net, X, y)


@pytest.mark.parametrize(
    "activation",
    [pytest.param(a, marks=pytest.mark.slow) for a in ("cubic", "sinh", "tanh")],
)
def test_long_flow_stays_on_the_manifold_descends_and_ends_stationary(activation):
    """Loss < 1e-12 throughout, F never increases (beyond the solve's rtol = 1e-11), the end is stationary,
    and the features collapse to rank one exactly when sigma''' > 0 (cubic, sinh) but not for tanh."""
    P = gatmiry(activation)
    start = limit_map(P, P.params)
    taus = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-2, 1e6, 25)])
    traj = riemannian_flow(P, start, t1=1e6, ts=taus, rtol=1e-11, atol=1e-13)
    assert traj.clock == "tau"
    assert float(traj.stats["loss"].max()) < 1e-12
    F = traj.stats["objective"]
    assert bool(jnp.all(jnp.diff(F) <= 1e-11 * F[:-1])), jnp.diff(F).max()
    s = jnp.linalg.svd(traj.final.W @ P.X.T, compute_uv=False)
    if activation == "tanh":
        assert s[1] / s[0] > 0.1
    else:
        assert float(traj.stats["grad_norm"][-1]) < 1e-8
        assert s[1] / s[0] < 1e-6


@pytest.mark.slow  # both geometry modes are held against the dense gradient in tests/flows/test_geometry.py
def test_trace_gradient_matches_the_dense_gradient():
    """Off the manifold grad tr G equals the dense gradient of tr(J^T J)/n; on it, P_T grad tr G equals
    P_T grad tr H with H from jax.hessian; the Hutchinson variant is unbiased."""
    P = gatmiry("cubic", width=4)
    flat, unravel = P.ravel(P.params)

    def dense_trace_G(v):
        J = jax.jacrev(lambda w: P.residuals(unravel(w)))(v)
        return jnp.sum(J**2) / P.n

    np.testing.assert_allclose(trace_grad(P, P.params), jax.grad(dense_trace_G)(flat), rtol=1e-10)

    on = retract(P, P.params)
    flat_on, _ = P.ravel(on)
    dense_trace_H = jax.grad(lambda v: jnp.trace(jax.hessian(lambda w: P.loss(unravel(w)))(v)))(flat_on)
    np.testing.assert_allclose(
        tangent_projection(P, on, trace_grad(P, on)), tangent_projection(P, on, dense_trace_H), atol=1e-10
    )
    N = 2000
    est = jax.vmap(lambda k: trace_grad_hutchinson(P, on, k, num_samples=1))(
        jax.random.split(jax.random.key(0), N)
    )
    se = est.std(0) / np.sqrt(N)
    assert np.all(np.abs(est.mean(0) - trace_grad(P, on)) < 5 * se + 1e-12)


def test_tangent_projection_is_the_orthogonal_projector_onto_null_J():
    P = gatmiry("sinh", width=4)
    J = np.asarray(P.jacobian(P.params))
    dense = np.eye(J.shape[1]) - J.T @ np.linalg.solve(J @ J.T, J)
    V = jax.random.normal(jax.random.key(1), (5, J.shape[1]))
    PV = jax.vmap(lambda v: tangent_projection(P, P.params, v))(V)
    np.testing.assert_allclose(PV, V @ dense, atol=1e-12)


def test_retraction_and_limit_map():
    P = gatmiry("cubic")
    on = retract(P, P.params)
    assert float(P.loss(on)) < 1e-25
    phi = limit_map(P, P.params)
    assert float(P.loss(phi)) < 1e-25
    # Phi is the gradient flow's limit, not the nearest point: compare with a long gradient flow.
    from flows import gradient_flow

    far = gradient_flow(P, P.params, t1=2e4, ts=jnp.array([2e4]), rtol=1e-12, atol=1e-14).final
    np.testing.assert_allclose(P.ravel(phi)[0], P.ravel(far)[0], atol=1e-7)
    assert float(jnp.linalg.norm(P.ravel(phi)[0] - P.ravel(on)[0])) > 1e-4


def test_bad_starting_points_say_which():
    """A map that fails to converge fails as every flow does (EquinoxRuntimeError, eagerly with its
    numbers); a degenerate or non-finite start is bad input (ValueError)."""
    P = gatmiry("cubic")
    far = jax.tree.map(lambda x: 1e3 * x, P.params)
    with pytest.raises(eqx.EquinoxRuntimeError, match="limit_map: gradient flow from params did not settle"):
        limit_map(P, far, max_steps=2000)  # riemannian_flow's default start; 100,000 steps by default
    with pytest.raises(eqx.EquinoxRuntimeError, match="too far from the manifold"):
        riemannian_flow(P, far, t1=1.0, start="retract")
    # traced (inside a caller's jit), the failed landing raises through eqx.error_if
    traced = eqx.filter_jit(lambda p: riemannian_flow(P, p, t1=1.0, start="retract").stats["loss"])
    with pytest.raises(eqx.EquinoxRuntimeError, match="too far from the manifold"):
        jax.block_until_ready(traced(far))
    with pytest.raises(ValueError, match="params0 contains non-finite"):
        riemannian_flow(P, jax.tree.map(lambda x: x.at[0, 0].set(jnp.inf), P.params), t1=1.0)
    # two identical examples: the constraints are dependent, J J^T is singular everywhere
    twin = Problem(P.model(P.params), P.X.at[1].set(P.X[0]), P.y.at[1].set(P.y[0]))
    with pytest.raises(ValueError, match="J J\\^T is singular where the start lands"):
        riemannian_flow(twin, twin.params, t1=1.0)
    # traced, the flow from a singular landing is skipped and says why (no NaN trajectory passed off as done)
    traced = eqx.filter_jit(lambda p: riemannian_flow(twin, p, t1=1.0).stats["loss"])
    with pytest.raises(eqx.EquinoxRuntimeError, match="J J\\^T is singular where the start lands"):
        jax.block_until_ready(traced(twin.params))
    # twins with different labels: no zero-loss point at all; Gauss-Newton fails because J J^T is singular,
    # and the message says so rather than calling the start too far
    clash = Problem(twin.model(twin.params), twin.X, twin.y.at[1].add(1e-3))
    for run in (lambda: retract(clash, clash.params), lambda: limit_map(clash, clash.params)):
        with pytest.raises(ValueError, match="J J\\^T is singular near the start"):
            run()
    # more constraints than parameters: no start helps, and the message says why
    wide = Problem(Linear(2, key=jax.random.key(0)), P.X[:, :2], P.y)  # N = 3 > p = 2
    with pytest.raises(ValueError, match="N = 3 constraints r_i = 0 on p = 2 parameters.*no start helps"):
        limit_map(wide, wide.params)


def test_a_failed_landing_skips_the_flow():
    """The landing and the flow are one compiled call; where the landing fails, the flow does not run (it
    would spend its whole budget on a point off the manifold) and the landing's error is raised. The
    objective counts its evaluations through a callback: none for a failed landing, many for a good one."""
    P = gatmiry("cubic")
    calls = []

    def counted(problem, params):
        jax.debug.callback(lambda: calls.append(1))
        return label_noise_objective(problem, params)

    far = jax.tree.map(lambda x: 1e3 * x, P.params)
    with pytest.raises(eqx.EquinoxRuntimeError, match="too far from the manifold"):
        riemannian_flow(P, far, t1=1.0, start="retract", objective=counted, ts=[0.0, 1.0])
    assert not calls
    riemannian_flow(P, P.params, t1=1.0, start="retract", objective=counted, ts=[0.0, 1.0])
    assert len(calls) > 10


def test_phi_runs_once_per_start():
    """A start limit_map already mapped is its own Phi: riemannian_flow and limit_map from it run no
    gradient flow (the forward passes, counted by a callback in the model, equal those of the Gauss-Newton
    retraction from it; the flow from a mapped start ran Phi's gradient flow again, 35 s on a ResNet)."""
    calls = []

    class Counted(eqx.Module):
        net: TwoLayerNet

        def __call__(self, x):
            jax.debug.callback(lambda: calls.append(1))
            return self.net(x)

    X = data.gaussian(jax.random.key(0), 5, 3)
    P = Problem(Counted(TwoLayerNet(3, 6, key=jax.random.key(1), activation="tanh")), X, jnp.sin(X[:, 0]))
    start = limit_map(P, P.params)
    counts = {}
    for how in ("limit_map", "retract"):
        calls.clear()
        riemannian_flow(P, start, t1=1e-3, ts=[0.0, 1e-3], start=how)
        counts[how] = len(calls)
    assert counts["limit_map"] == counts["retract"], counts
    calls.clear()
    again = limit_map(P, start)
    mapped = len(calls)
    calls.clear()
    retract(P, start)
    assert mapped == len(calls)
    np.testing.assert_allclose(P.ravel(again)[0], P.ravel(start)[0], rtol=0, atol=1e-12)


def test_a_flow_that_leaves_a_non_smooth_manifold_says_so():
    """The slow flow on a ReLU CNN (p = 39, 6 digit images) crosses kinks of its manifold and its residuals
    rise to 6.3e-7 by tau = 0.05 (it had reported SUCCESSFUL): OFF_MANIFOLD, raised with a message naming
    the cause. The same CNN with tanh holds them at 1.3e-9 and succeeds, in float32 too."""
    from flows import OFF_MANIFOLD, SUCCESSFUL
    from models import CNN

    X, y = data.digits(classes=(0, 1), images=True)
    X, y = X[:6], y[:6] / 2
    results = {}
    for activation in ("tanh", "relu"):
        P = Problem(CNN((1, 8, 8), (2,), outputs=1, key=jax.random.key(3), activation=activation), X, y)
        flow = riemannian_flow(P, P.params, t1=0.05, num_saves=6, start="retract", throw=False)
        results[activation] = (int(flow.result), float(flow.stats["max_residual"].max()))
    assert results["tanh"][0] == SUCCESSFUL and results["tanh"][1] < 1e-8, results
    assert results["relu"][0] == OFF_MANIFOLD and results["relu"][1] > 3e-7, results
    with pytest.raises(eqx.EquinoxRuntimeError, match="left the zero-loss manifold.*C\\^2"):
        riemannian_flow(P, P.params, t1=0.05, num_saves=6, start="retract")
    tanh = float32(Problem(CNN((1, 8, 8), (2,), outputs=1, key=jax.random.key(3), activation="tanh"), X, y))
    with jax.enable_x64(False):  # float32, as users run it: the smooth flow is not flagged
        flow = riemannian_flow(tanh, tanh.params, t1=0.05, num_saves=6, start="retract", throw=False)
    assert int(flow.result) == SUCCESSFUL and float(flow.stats["max_residual"].max()) < 1e-5


def test_flow_converges_to_a_sparse_optimum_where_J_loses_rank():
    """Quadratic parametrisation w = u*u - v*v, n = 3 < d = 5, a 1-sparse teacher. On Gamma,
    tr H = (4/n) sum_j c_j (u_j^2 + v_j^2), c_j = sum_i x_ij^2, which at the optimum is the weighted l1 norm
    (4/n) sum_j c_j |w_j| (u_j v_j = 0 there). The flow's end must be the weighted-l1 minimiser subject to
    X w = y (a linear program, scipy), which is sparse, so J = [2 X diag(u), -2 X diag(v)] drops to rank 1."""
    kx = jax.random.key(3)
    X = data.gaussian(kx, 3, 5)
    y = 1.5 * X[:, 0]
    P = Problem(QuadraticParam(5, init_scale=1.0), X, y)
    start = limit_map(P, P.params)
    traj = riemannian_flow(P, start, t1=1e4, ts=jnp.array([0.0, 1e2, 1e3, 1e4]))
    w = traj.final.u**2 - traj.final.v**2
    c = np.asarray(jnp.sum(X**2, axis=0))
    lp = scipy.optimize.linprog(
        np.concatenate([c, c]), A_eq=np.hstack([X, -X]), b_eq=np.asarray(y), bounds=(0, None)
    )
    w_lp = lp.x[:5] - lp.x[5:]
    np.testing.assert_allclose(w, w_lp, atol=1e-5)
    assert np.sum(np.abs(w_lp) > 1e-8) == 1
    assert float(traj.stats["loss"].max()) < 1e-12
    s = jnp.linalg.svd(P.jacobian(traj.final), compute_uv=False)
    assert s[1] / s[0] < 1e-2  # J has (nearly) lost rank, and the flow still converged
    np.testing.assert_allclose(traj.stats["objective"][-1], np.dot(c, np.abs(w_lp)) / P.n, rtol=1e-5)


def test_hessian_trace_objective_matches_analysis_trace_on_the_manifold():
    P = gatmiry("sinh", width=4)
    on = retract(P, P.params)
    np.testing.assert_allclose(4 * label_noise_objective(P, on), hessian.trace(P, on), rtol=1e-10)


def test_a_backward_span_is_refused():
    """t1 < t0 would integrate backwards and ascend tr H, reported as a success."""
    P = gatmiry("cubic")
    with pytest.raises(ValueError, match="t1 = 0.5 must be greater than t0 = 1"):
        riemannian_flow(P, P.params, t0=1.0, t1=0.5)
    with pytest.raises(ValueError, match="t1 = 0.5 must be greater than t0 = 1"):
        gradient_flow(P, P.params, t0=1.0, t1=0.5)


def test_a_vmapped_limit_map_of_many_points_finishes():
    """jax.jit(jax.vmap(limit_map)) over 160 label-noise GD iterates of f(x) = <v*v, x> (d = 100, n = 40,
    float64) deadlocked XLA's CPU runtime (every thread idle): a batched lax.cond between a Cholesky and an
    eigendecomposition solve inside the while loops. Run in a subprocess that must end within 240 s."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, equinox as eqx
        jax.config.update("jax_enable_x64", True)
        from models import Problem, data
        from flows import label_noise_sgd, limit_map

        class Squares(eqx.Module):
            v: jax.Array
            def __call__(self, x):
                return (self.v * self.v) @ x

        X = data.gaussian(jax.random.key(0), 40, 100)
        P = Problem(Squares(jnp.full((100,), 0.5)), X, X[:, :5].sum(1))
        start = limit_map(P, P.params)
        run = label_noise_sgd(P, start, steps=1600, eta=0.01, sigma=0.5, key=jax.random.key(1), save_every=10)
        points = jax.tree.map(lambda x: x[:160], run.params)
        out = jax.block_until_ready(jax.jit(jax.vmap(lambda p: limit_map(P, p)))(points))
        print(float(jnp.max(jnp.abs(jax.vmap(P.residuals)(out)))))
        """
    )
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-10  # every point landed on the manifold
