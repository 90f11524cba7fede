import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import Problem, QuadraticParam, RandomFeatures, TwoLayerNet, data
from models.activations import relu
from models.matrix import MatrixFactorization
from tests.helpers import linear_regression, two_layer


def test_linear_regression_loss_grad_jacobian_match_closed_form():
    P = linear_regression()
    w = P.params.w
    r = P.X @ w - P.y
    np.testing.assert_allclose(P.residuals(P.params), r, rtol=1e-12)
    np.testing.assert_allclose(P.loss(P.params), r @ r / (2 * P.n), rtol=1e-12)
    np.testing.assert_allclose(P.grad(P.params).w, P.X.T @ r / P.n, rtol=1e-12)
    np.testing.assert_allclose(P.jacobian(P.params), P.X, rtol=1e-12)
    np.testing.assert_allclose(P.per_example_grads(P.params), r[:, None] * P.X, rtol=1e-12)


def test_per_example_grads_average_to_the_gradient_and_match_jacobian():
    P = two_layer()
    G = P.per_example_grads(P.params)
    flat_grad, _ = P.ravel(P.grad(P.params))
    np.testing.assert_allclose(G.mean(0), flat_grad, rtol=1e-10)
    J, r = P.jacobian(P.params), P.residuals(P.params)
    np.testing.assert_allclose(G, r[:, None] * J, rtol=1e-10)
    flat, unravel = P.ravel(P.params)
    J_fwd = jax.jacfwd(lambda v: jax.vmap(P.model(unravel(v)))(P.X))(flat)
    np.testing.assert_allclose(J, J_fwd, rtol=1e-10)


def test_fixed_outer_layer_is_not_a_parameter():
    P = two_layer(train_outer=False)
    assert P.params.a is None and P.num_params == 5 * 3
    full = two_layer(train_outer=True)
    assert full.num_params == 5 * 3 + 5


def test_vector_outputs_with_an_equinox_mlp():
    key = jax.random.key(1)
    X, y = data.digits(one_hot=True)
    X, y = X[:40], y[:40]
    mlp = eqx.nn.MLP(64, 10, 8, 1, key=key)
    P = Problem(mlp, X, y)
    r = P.residuals(P.params)
    assert r.shape == (40, 10)
    np.testing.assert_allclose(P.loss(P.params), jnp.sum(r**2) / (2 * 40), rtol=1e-6)
    assert P.jacobian(P.params).shape == (400, P.num_params)
    flat_grad, _ = P.ravel(P.grad(P.params))
    np.testing.assert_allclose(P.per_example_grads(P.params).mean(0), flat_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("activation", ["relu", "tanh", "cubic", "sinh", "softplus", "identity", jnp.cos])
def test_two_layer_activations(activation):
    net = TwoLayerNet(3, 4, key=jax.random.key(0), activation=activation)
    x = jnp.array([0.3, -1.0, 0.5])
    f = {
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
        "cubic": lambda z: z + z**3 / 3,
        "sinh": jnp.sinh,
        "softplus": jax.nn.softplus,
        "identity": lambda z: z,
    }.get(activation, activation)
    np.testing.assert_allclose(net(x), net.a @ f(net.W @ x), rtol=1e-12)


def test_relu_is_jax_nn_relu_without_its_transposes():
    """activations.relu has jax.nn.relu's values and derivatives (0 at z = 0, then 0), and the gradient of
    a vmapped ReLU net transposes no more n x m arrays than a tanh net's (jax.nn.relu's custom JVP adds 3)."""
    z = jnp.array([-3.0, -1e-30, -0.0, 0.0, 1e-30, 2.5])
    np.testing.assert_array_equal(relu(z), jax.nn.relu(z))
    for order in range(1, 4):
        d, d_ref = relu, jax.nn.relu
        for _ in range(order):
            d, d_ref = jax.grad(d), jax.grad(d_ref)
        np.testing.assert_array_equal(jax.vmap(d)(z), jax.vmap(d_ref)(z))
    np.testing.assert_array_equal(jax.vmap(jax.grad(relu))(z), [0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    X = jax.random.normal(jax.random.key(0), (40, 5))

    def transposes(activation):
        P = Problem(TwoLayerNet(5, 24, key=jax.random.key(1), activation=activation), X, X[:, 0])
        return sum(str(e.primitive) == "transpose" for e in jax.make_jaxpr(P.grad)(P.params).jaxpr.eqns)

    assert transposes("relu") == transposes("tanh") == 1


def test_balanced_init_and_bad_activation():
    net = TwoLayerNet(4, 6, key=jax.random.key(0), outer="balanced", init_scale=1e-3)
    np.testing.assert_allclose(jnp.abs(net.a), jnp.linalg.norm(net.W, axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        TwoLayerNet(4, 6, key=jax.random.key(0), activation="swishy")
    with pytest.raises((ValueError, TypeError), match="outer"):  # the jaxtyping hook may see it first
        TwoLayerNet(4, 6, key=jax.random.key(0), outer="zeros")


def test_other_models():
    key = jax.random.key(0)
    x = jnp.arange(4.0)
    q = QuadraticParam(4, init_scale=0.5)
    assert q(x) == 0.0
    rf = RandomFeatures(4, 7, key=key)
    P = Problem(rf, jnp.ones((3, 4)), jnp.zeros(3))
    assert P.params.V is None and P.num_params == 7
    mf = MatrixFactorization(3, 3, 2, key=key, symmetric=True)
    A = jnp.eye(3).reshape(-1)
    np.testing.assert_allclose(mf(A), jnp.trace(mf.U @ mf.U.T), rtol=1e-12)


def test_params_of_a_fresh_initialisation():
    P = two_layer(train_outer=False)
    other = TwoLayerNet(3, 5, key=jax.random.key(9), activation="tanh", train_outer=False)
    p = P.params_of(other)
    assert p.a is None and jnp.array_equal(p.W, other.W)
    with pytest.raises(ValueError, match="shape"):
        P.params_of(TwoLayerNet(3, 6, key=jax.random.key(9), activation="tanh", train_outer=False))


def test_bad_data_shapes_name_the_argument():
    net = TwoLayerNet(3, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="X must have shape"):
        Problem(net, jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="y must have shape"):
        Problem(net, jnp.ones((5, 3)), jnp.ones(4))
    with pytest.raises(ValueError, match="model cannot be called"):
        Problem(net, jnp.ones((5, 2)), jnp.ones(5))
    with pytest.raises(ValueError, match="does not match y"):
        Problem(net, jnp.ones((5, 3)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="X contains non-finite"):
        Problem(net, jnp.ones((5, 3)).at[0, 0].set(jnp.nan), jnp.ones(5))


def test_data_generators(key):
    X = data.orthogonal(key, 3, 5)
    np.testing.assert_allclose(X @ X.T, jnp.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="n <= d"):
        data.orthogonal(key, 6, 5)
    S = data.sphere(key, 10, 4)
    np.testing.assert_allclose(jnp.linalg.norm(S, axis=1), 1.0, rtol=1e-12)
    U = data.uniform(key, 100, 3)
    assert U.min() >= 0 and U.max() <= 1
    y, beta = data.linear_teacher(key, S, norm=2.0)
    np.testing.assert_allclose(y, S @ beta, rtol=1e-12)
    y2, teacher = data.two_layer_teacher(key, S, width=3)
    np.testing.assert_allclose(y2, jax.vmap(teacher)(S), rtol=1e-12)
    (Xtr, ytr), (Xte, yte) = data.train_test_split(key, S, y, n_train=7)
    assert Xtr.shape == (7, 4) and Xte.shape == (3, 4)
    assert np.allclose(np.sort(np.concatenate([ytr, yte])), np.sort(y))
    Xd, yd = data.digits(classes=(3, 8))
    assert Xd.shape[1] == 64 and set(np.unique(yd)) == {-1.0, 1.0}
    noisy = data.label_noise(key, jnp.zeros(20000), 0.5)
    assert abs(float(noisy.std()) - 0.5) < 5 * 0.5 / np.sqrt(2 * 20000)


def test_flip_labels_flips_the_stated_fraction_and_nothing_else(key):
    signs = jnp.where(jnp.arange(50) % 2 == 0, 1.0, -1.0)
    flipped = data.flip_labels(key, signs, 0.2)
    changed = np.asarray(flipped != signs)
    assert changed.sum() == 10 and np.all(np.asarray(flipped)[changed] == -np.asarray(signs)[changed])
    classes = jnp.arange(40) % 4
    moved = data.flip_labels(key, classes, 0.25, num_classes=4)
    changed = np.asarray(moved != classes)
    assert changed.sum() == 10 and np.all(
        np.asarray(moved)[changed] == (np.asarray(classes)[changed] + 1) % 4
    )
    np.testing.assert_array_equal(data.flip_labels(key, classes, 0.25, num_classes=4), moved)  # a fixed draw
    with pytest.raises(ValueError, match="fraction"):
        data.flip_labels(key, signs, 1.5)
