"""The manifold's linear algebra in both modes (flows/_geometry.py) against dense computations, the flows
they drive against each other, at a size where a p x p array cannot exist, and in float32."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows import limit_map, riemannian_flow, tangent_projection, trace_grad
from models import Linear, Problem, TwoLayerNet, data
from tests.helpers import float32, geometry, largest_intermediate, numerics

Point, mode_for = geometry.Point, numerics.mode_for


def net(n=6, d=4, width=8, activation="tanh", outputs=False, seed=0):
    kx, ky, kn = jax.random.split(jax.random.key(seed), 3)
    X = data.gaussian(kx, n, d)
    y = 0.5 * jnp.tanh(X[:, 0] + 0.3 * X[:, 1])  # inside the range of a fixed outer layer 1/m
    if outputs:  # a vector-output MLP: N = 2 n constraints
        model = eqx.nn.MLP(d, 2, width, 1, activation=jnp.tanh, key=kn)
        return Problem(model, X, jnp.stack([y, -y], axis=1))
    return Problem(
        TwoLayerNet(d, width, key=kn, activation=activation, train_outer=False, outer="ones"), X, y
    )


@pytest.mark.parametrize(
    ("outputs", "mode"),
    [
        (False, "dense"),
        # the matrix-free mode on vector outputs in make test (its example-major layout is the harder case)
        pytest.param(False, "matrix_free", marks=pytest.mark.slow),
        (True, "dense"),
        (True, "matrix_free"),
    ],
    ids=["scalar-dense", "scalar-matrix_free", "vector-dense", "vector-matrix_free"],
)
def test_both_modes_match_the_dense_projector_and_the_dense_trace_gradient(mode, outputs):
    P = net(outputs=outputs)
    flat, unravel = P.ravel(P.params)
    J = np.asarray(jax.jacrev(lambda v: P.residuals(unravel(v)).reshape(-1))(flat))
    projector = np.eye(J.shape[1]) - J.T @ np.linalg.solve(J @ J.T, J)
    V = jax.random.normal(jax.random.key(1), (3, flat.shape[0]))
    PV = jax.vmap(lambda v: tangent_projection(P, P.params, v, mode=mode))(V)
    np.testing.assert_allclose(PV, V @ projector, atol=1e-9)

    def dense_trace(v):
        Jv = jax.jacrev(lambda w: P.residuals(unravel(w)).reshape(-1))(v)
        return jnp.sum(Jv**2) / P.n

    np.testing.assert_allclose(
        trace_grad(P, P.params, mode=mode, chunk=4), jax.grad(dense_trace)(flat), rtol=1e-10
    )
    point = Point(P, flat, unravel, mode)
    b = jax.random.normal(jax.random.key(2), (J.shape[0],))
    np.testing.assert_allclose(point.min_norm(b), np.linalg.pinv(J) @ np.asarray(b), rtol=1e-8, atol=1e-10)


@pytest.mark.slow  # the two modes agree at small size in test_both_modes_match_the_dense_projector_...
def test_dense_and_matrix_free_flows_agree_on_a_mid_size_net():
    """n = 24, width 40 (p = 240): tr H along the flow to tau = 2 within 1e-4 relative, float64."""
    P = net(n=24, d=6, width=40)
    start = limit_map(P, P.params)
    ts = jnp.linspace(0.0, 2.0, 5)
    dense = riemannian_flow(P, start, t1=2.0, ts=ts, mode="dense", save_params=False)
    free = riemannian_flow(P, start, t1=2.0, ts=ts, mode="matrix_free", save_params=False)
    trace = 4 * dense.stats["objective"]
    assert float(trace[0] - trace[-1]) > 1e-3 * float(trace[0])  # the flow moved
    np.testing.assert_allclose(4 * free.stats["objective"], trace, rtol=1e-4)
    assert float(free.stats["loss"].max()) < 1e-20


def test_matrix_free_mode_runs_where_a_p_by_p_array_cannot_exist():
    """p = 200,000 (a p x p float64 array would take 320 GB): the auto mode goes matrix-free for a budget
    this small, the projection is idempotent and kills J, and a short flow keeps the loss at zero."""
    P = net(n=8, d=200, width=1000, activation="cubic")
    assert P.num_params == 200_000
    assert mode_for(P, "auto") == "dense"  # J is 8 x 200,000: small
    start = limit_map(P, P.params, mode="matrix_free")
    v = jax.random.normal(jax.random.key(3), (P.num_params,))
    Pv = tangent_projection(P, start, v, mode="matrix_free")
    flat, unravel = P.ravel(start)
    Jv = jax.jvp(lambda w: P.residuals(unravel(w)), (flat,), (Pv,))[1]
    assert float(jnp.max(jnp.abs(Jv))) < 1e-8 * float(jnp.linalg.norm(v))
    np.testing.assert_allclose(tangent_projection(P, start, Pv, mode="matrix_free"), Pv, atol=1e-8)
    flow = riemannian_flow(P, start, t1=0.1, ts=jnp.array([0.0, 0.1]), mode="matrix_free", save_params=False)
    assert float(flow.stats["objective"][-1]) < float(flow.stats["objective"][0])
    assert float(flow.stats["loss"].max()) < 1e-20


def test_a_regular_float32_start_is_not_refused():
    """A cubic net of width 1,000 on n = d = 3 (cond(J) ~ 7) starts in float32 (it was once called singular).
    The float32 flow against float64 is in tests/test_float32.py."""
    wide = float32(net(n=3, d=3, width=1000, activation="cubic"))
    flow = riemannian_flow(
        wide, wide.params, t1=0.1, ts=jnp.array([0.0, 0.1], jnp.float32), save_params=False
    )
    assert bool(jnp.all(jnp.isfinite(flow.stats["objective"])))


def test_the_float32_dense_projection_resolves_j_to_its_eps():
    """N = 256, p = 8,192, float32 (cond(J) = 14): P_T v against float64's exact projector to 1e-5, and J's
    smallest right singular vector projected away to 1e-5. The normal equations, with the cut-off they need
    in float32 (mu = 10 N eps max ||grad f_a||^2, for K formed in float32), were 5.6e-4 ||v|| off."""
    kx, kt, kn = jax.random.split(jax.random.key(0), 3)
    X = data.gaussian(kx, 256, 32)
    y, _ = data.two_layer_teacher(kt, X, width=4, activation="tanh")
    P = float32(Problem(TwoLayerNet(32, 256, key=kn, activation="tanh", train_outer=False), X, y))
    with jax.enable_x64(False):
        flat, unravel = P.ravel(P.params)
        J = np.asarray(P.jacobian(P.params), np.float64)
        _, s, Vt = np.linalg.svd(J, full_matrices=False)
        v = np.asarray(jax.random.normal(jax.random.key(1), flat.shape), np.float64)
        cases = {"random": v, "smallest": Vt[-1]}
        point = Point(P, flat, unravel, "dense")
        for name, u in cases.items():
            got = np.asarray(point.project(jnp.asarray(u, jnp.float32)), np.float64)
            exact = u - Vt.T @ (Vt @ u)
            assert np.linalg.norm(got - exact) < 1e-5 * np.linalg.norm(u), (name, s[-1] / s[0])


def test_the_float32_dense_projection_loses_cond_eps_not_cond_squared():
    """Linear regression (J = X, N = 20, p = 80) with cond(X) = 300, float32: P_T v (one J product, two
    triangular solves with R from the QR, one J^T product) within 4 cond(J) eps ||v|| of the exact
    projector, for random v and for v near J's smallest right singular vector; the normal equations in the
    same float32 (K = J J^T formed and solved) miss that bound (measured 5-14 cond(J) eps)."""
    cond, N, p = 300.0, 20, 80
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((N, N)))
    V, _ = np.linalg.qr(rng.standard_normal((p, N)))
    X = (U * np.logspace(0, -np.log10(cond), N)) @ V.T
    P = float32(
        Problem(Linear(p, key=jax.random.key(0)), jnp.asarray(X), jnp.asarray(rng.standard_normal(N)))
    )
    bound = 4 * cond * np.finfo(np.float32).eps
    with jax.enable_x64(False):
        flat, unravel = P.ravel(P.params)
        point = Point(P, flat, unravel, "dense")
        Jf = np.asarray(P.jacobian(P.params))
        vs = [rng.standard_normal(p) for _ in range(5)] + [V[:, -1] + 0.1 * rng.standard_normal(p)]
        normal_equations = []
        for u in vs:
            exact = u - V @ (V.T @ u)
            got = np.asarray(point.project(jnp.asarray(u, jnp.float32)), np.float64)
            assert np.linalg.norm(got - exact) < bound * np.linalg.norm(u)
            uf = u.astype(np.float32)
            ne = uf - Jf.T @ np.linalg.solve(Jf @ Jf.T, Jf @ uf)
            normal_equations.append(np.linalg.norm(ne - exact) / np.linalg.norm(u))
    assert max(normal_equations) > bound


def test_the_dense_point_reads_j_singular_values_off_its_r():
    """J = X with singular values logspace(0, -3.5, 20) (N = 20, p = 80): sqrt(s_i(R)^2 - mu) recovers each
    to ~ eps sigma_max, the smallest included, without an SVD of J (measured 5.6e-16 in float64, 1.3e-7 in
    float32; bounds 1e-14 and 1e-6; s_i(R) itself, mu not taken off, is 1.6e-6 off in float32); the
    matrix-free mode, which never forms R, refuses."""
    N, p = 20, 80
    rng = np.random.default_rng(1)
    U, _ = np.linalg.qr(rng.standard_normal((N, N)))
    V, _ = np.linalg.qr(rng.standard_normal((p, N)))
    sigma = np.logspace(0, -3.5, N)
    P = Problem(Linear(p, key=jax.random.key(0)), jnp.asarray((U * sigma) @ V.T), jnp.zeros(N))
    for problem, atol in ((P, 1e-14), (float32(P), 1e-6)):
        with jax.enable_x64(problem is P):
            flat, unravel = problem.ravel(problem.params)
            got = Point(problem, flat, unravel, "dense").singular_values()
            np.testing.assert_allclose(np.asarray(got, np.float64), sigma, rtol=0, atol=atol)
    with pytest.raises(ValueError, match="singular_values needs the dense mode"):
        Point(P, *P.ravel(P.params), "matrix_free").singular_values()


def _projections_near_rank_loss(X, width, seed):
    """(P, v, the dense P_T v, the matrix-free P_T v, asserted finite) for a two-layer tanh net of `width`
    (key `seed`) on inputs X (two of them close), targets sin(x_0), v standard normal (key `seed + 1`)."""
    P = Problem(
        TwoLayerNet(X.shape[1], width, key=jax.random.key(seed), activation="tanh"), X, jnp.sin(X[:, 0])
    )
    v = jax.random.normal(jax.random.key(seed + 1), (P.num_params,))
    dense = tangent_projection(P, P.params, v, mode="dense")
    free = tangent_projection(P, P.params, v, mode="matrix_free")
    assert bool(jnp.all(jnp.isfinite(free)))
    return P, v, dense, free


@pytest.mark.parametrize("gap", [0.0, 1e-9, 1e-8, 1e-7, 1e-6, 1e-3])
def test_each_mode_drops_the_directions_it_cannot_resolve_near_rank_loss(gap):
    """Two inputs `gap` apart: J has lost rank exactly (gap 0) or nearly so (sigma_min ~ gap). Where both
    modes resolve J (gap 1e-3) or neither keeps the lost direction (gap 0), they agree to 1e-4. In between,
    the dense mode (QR, singular values to ~ eps) is the exact projector onto null(J) (numpy's SVD) and
    the matrix-free mode (products with K, to ~ sqrt(eps)) differs from it only along J's smallest singular
    direction, which it drops; neither returns NaN (the matrix-free mode's conjugate gradients once did)."""
    X = data.gaussian(jax.random.key(0), 6, 3)
    P, v, dense, free = _projections_near_rank_loss(X.at[1].set(X[0] + gap), 5, seed=1)
    scale = 1e-4 * float(jnp.linalg.norm(dense))
    if gap in (0.0, 1e-3):
        np.testing.assert_allclose(free, dense, rtol=0, atol=scale)
        return
    _, s, Vt = np.linalg.svd(np.asarray(P.jacobian(P.params)), full_matrices=False)
    assert s[-1] / s[0] < 1e-5  # nearly lost
    np.testing.assert_allclose(dense, v - Vt.T @ (Vt @ v), rtol=0, atol=scale)
    lost = Vt[-1]
    np.testing.assert_allclose(free - np.dot(free - dense, lost) * lost, dense, rtol=0, atol=scale)


def test_a_failed_conjugate_gradient_solve_is_reported_not_called_a_divergence(monkeypatch):
    """CG held to a tolerance it cannot reach: the point records it, the flow's result is
    INNER_SOLVER_FAILED (not DIVERGED, not SUCCESSFUL) and, thrown, the error names it."""
    import flows

    P = net(n=11, d=4, width=8)
    start = limit_map(P, P.params)
    flat, unravel = P.ravel(start)
    point = Point(P, flat, unravel, "matrix_free", cg_rtol=1e-30)
    point.solve(point.r + 1.0)
    assert not bool(point.solved)
    monkeypatch.setitem(numerics.CG_RTOL, "float64", 1e-30)
    traj = riemannian_flow(P, start, t1=0.1, ts=jnp.array([0.0, 0.1]), mode="matrix_free", throw=False)
    assert int(traj.result) == flows.INNER_SOLVER_FAILED
    with pytest.raises(eqx.EquinoxRuntimeError, match="inner solver"):
        riemannian_flow(P, start, t1=0.1, ts=jnp.array([0.0, 0.1]), mode="matrix_free")


def test_the_matrix_free_flow_never_forms_an_N_by_p_array():
    """Every intermediate of the matrix-free slow flow, its saved metrics included, holds fewer than N p
    numbers (the default objective metric formed J at every save): read from the traced program."""
    P = net(n=600, d=20, width=32)
    N, p = P.y.size, P.num_params
    jaxpr = jax.make_jaxpr(
        lambda w: riemannian_flow(P, w, t1=0.1, ts=jnp.array([0.0, 0.1]), mode="matrix_free").stats
    )(P.params)
    assert largest_intermediate(jaxpr.jaxpr) < N * p
    dense = jax.make_jaxpr(
        lambda w: riemannian_flow(P, w, t1=0.1, ts=jnp.array([0.0, 0.1]), mode="dense").stats
    )(P.params)
    assert largest_intermediate(dense.jaxpr) >= N * p  # the check sees J where it is formed


@pytest.mark.parametrize("gap", [1e-9, 1e-7])
def test_the_matrix_free_projection_stays_finite_where_lineax_cg_broke_down(gap):
    """The reported case: a two-layer tanh net (d = 2, width 3) whose inputs 2 and 3 are `gap` apart. The
    rank rule puts eigenvalues of K + mu I at mu, and lineax's CG took the step ~1 / mu there for a
    breakdown and returned all NaN at 1e-7; `geometry.shifted_solve` converges. The projection differs from
    the dense mode's only along J's smallest singular direction (which the matrix-free mode drops)."""
    X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)))
    P, _, dense, free = _projections_near_rank_loss(X.at[2].set(X[1] + gap), 3, seed=0)
    lost = np.linalg.svd(np.asarray(P.jacobian(P.params)), full_matrices=False)[2][-1]
    off = free - dense
    np.testing.assert_allclose(off - np.dot(off, lost) * lost, 0, atol=1e-4 * float(jnp.linalg.norm(dense)))


def test_a_failed_solve_raises_from_the_projection_rather_than_return_it(monkeypatch):
    """tangent_projection and riemannian_grad with conjugate gradients held to a tolerance they cannot
    reach: an error naming the solve, eagerly and under jax.jit (never the unconverged vector)."""
    from flows import riemannian_grad

    P = net(n=11, d=4, width=8)
    v = jnp.ones(P.num_params)
    monkeypatch.setitem(numerics.CG_RTOL, "float64", 1e-30)
    for call in (
        lambda w: tangent_projection(P, w, v, mode="matrix_free"),
        lambda w: riemannian_grad(P, w, mode="matrix_free"),
    ):
        with pytest.raises(eqx.EquinoxRuntimeError, match="conjugate-gradient solve with J J\\^T did not"):
            call(P.params)
        with pytest.raises(Exception, match="conjugate-gradient solve with J J\\^T did not"):
            jax.block_until_ready(eqx.filter_jit(call)(P.params))


def test_the_streamed_passes_take_the_problems_chunk():
    """The matrix-free geometry streams `Problem.chunk` examples at a time (it took 256 whatever the
    problem said): its largest intermediate follows the problem's chunk."""
    X = data.gaussian(jax.random.key(0), 64, 3)
    net_ = TwoLayerNet(3, 40, key=jax.random.key(1), activation="tanh")
    sizes = {}
    for chunk in (None, 4):
        P = Problem(net_, X, jnp.sin(X[:, 0]), chunk=chunk)
        jaxpr = jax.make_jaxpr(lambda w, P=P: trace_grad(P, w, mode="matrix_free"))(P.params)
        sizes[chunk] = largest_intermediate(jaxpr.jaxpr)
        np.testing.assert_allclose(
            trace_grad(P, P.params, mode="matrix_free"), trace_grad(P, P.params, mode="dense"), rtol=1e-10
        )
    assert sizes[4] <= sizes[None] / 4, sizes  # 64 examples at once without the chunk
