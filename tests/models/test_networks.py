"""Real networks: image inputs, the CNN, ResNet and ViT against hand-written forward passes and their stated
parameter counts, cross-entropy against a hand-written loss, physical batches against the unchunked
numbers, any optax optimizer against hand-written loops, and the arguments only square loss admits."""

import functools
import pickle

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from analysis import hessian, stability
from flows import gd, label_noise_sgd, limit_map, sgd, sgd_sde
from models import CNN, MLP, Problem, ResNet, ViT, data
from tests.helpers import tree_allclose, two_layer


def conv(x, layer):
    """A 'SAME' 3 x 3 (or any) convolution with bias, written with lax.conv_general_dilated."""
    out = jax.lax.conv_general_dilated(
        x[None],
        layer.weight,
        window_strides=layer.stride,
        padding="SAME",
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )[0]
    return out + layer.bias


def pool(x):
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def images(n=12, k=3, seed=0):
    X, y = data.digits(images=True, labels=True, classes=tuple(range(k)))
    idx = np.random.default_rng(seed).permutation(X.shape[0])[:n]
    return X[idx], y[idx]


def test_cnn_forward_and_parameter_count():
    X, _ = images()
    net = CNN((1, 8, 8), (4, 6), outputs=3, key=jax.random.key(0))
    h = pool(jax.nn.relu(conv(X[0], net.convs[0])))
    h = pool(jax.nn.relu(conv(h, net.convs[1])))
    expect = net.head.weight @ h.reshape(-1) + net.head.bias
    np.testing.assert_allclose(net(X[0]), expect, rtol=1e-12)
    count = (9 * 1 * 4 + 4) + (9 * 4 * 6 + 6) + (6 * 2 * 2 + 1) * 3
    assert Problem(net, X, jnp.zeros((X.shape[0], 3))).num_params == count


CONV_CASES = {
    "1d stride pad": (1, dict(kernel_size=5, stride=2, padding=1)),
    "1d dilated groups": (1, dict(kernel_size=3, padding="SAME", dilation=2, groups=2)),
    "2d odd kernel, uneven pads": (2, dict(kernel_size=(3, 2), stride=(2, 1), padding=((1, 0), (2, 1)))),
    "2d grouped SAME_LOWER": (2, dict(kernel_size=3, padding="SAME_LOWER", stride=2, groups=2)),
    "2d reflect, no bias": (2, dict(kernel_size=3, padding=1, padding_mode="REFLECT", use_bias=False)),
    "2d VALID dilated": (2, dict(kernel_size=3, padding="VALID", dilation=(1, 2))),
    "2d 1 x 1": (2, dict(kernel_size=1)),
    "3d circular": (3, dict(kernel_size=2, stride=(1, 2, 1), padding=1, padding_mode="CIRCULAR")),
}


FLOAT32_FAST = ("1d dilated groups", "2d grouped SAME_LOWER", "2d 1 x 1")  # the rest under slow: 2-4 s each


@pytest.mark.parametrize(
    "case, dtype",
    [(case, jnp.float64) for case in CONV_CASES]
    + [
        pytest.param(case, jnp.float32, marks=() if case in FLOAT32_FAST else pytest.mark.slow)
        for case in CONV_CASES
    ],
)
def test_the_matrix_product_convolution_is_equinox_s(case, dtype):
    """models.conv.conv against the layer's own call (XLA's convolution) on odd shapes, strides, paddings,
    dilations, groups and padding modes, 1-3 spatial dimensions: the outputs of a batch under jit and vmap,
    their gradient in the weights and the input, and a Hessian-vector product of a loss through them."""
    from models.conv import conv as product

    nd, kw = CONV_CASES[case]
    layer = eqx.nn.Conv(nd, 4, 6, **kw, dtype=dtype, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 4, *(9, 7, 5)[:nd]), dtype)
    eps = 1e-12 if dtype == jnp.float64 else 1e-5

    def close(a, b):  # relative to the largest entry: float32 rounds sums of many products
        a, b = (jax.flatten_util.ravel_pytree(eqx.filter(t, eqx.is_array))[0] for t in (a, b))
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=eps, atol=eps * float(jnp.max(jnp.abs(b))))

    def loss(apply, layer, x):
        return jnp.sum(jnp.tanh(jax.vmap(lambda xi: apply(layer, xi))(x)) ** 2)

    ours, theirs = functools.partial(loss, product), functools.partial(loss, lambda m, xi: m(xi))
    close(jax.jit(jax.vmap(lambda xi: product(layer, xi)))(x), jax.vmap(layer)(x))
    close(eqx.filter_jit(eqx.filter_grad(ours))(layer, x), eqx.filter_grad(theirs)(layer, x))
    close(jax.grad(ours, 1)(layer, x), jax.grad(theirs, 1)(layer, x))
    v = jax.tree.map(jnp.ones_like, eqx.filter(layer, eqx.is_array))

    def hvp(f):
        return jax.jvp(lambda m: eqx.filter_grad(lambda m: f(m, x))(m), (layer,), (v,))[1]

    close(eqx.filter_jit(hvp)(ours), hvp(theirs))


def test_problem_applies_a_users_convolutions_as_matrix_products_on_the_cpu():
    """Problem's forward passes run every equinox.nn.Conv of a user's model as matrix products (no XLA
    convolution left in the traced loss, the same loss to rounding); a subclass of Conv with its own call,
    and a ConvTranspose, are left to XLA's convolution (their calls may differ from Conv's)."""

    class Net(eqx.Module):
        layers: list

        def __call__(self, x):
            for layer in self.layers:
                x = jnp.tanh(layer(x))
            return jnp.mean(x)

    class Mine(eqx.nn.Conv2d):
        def __call__(self, x, *, key=None):
            return 2 * super().__call__(x)

    keys = jax.random.split(jax.random.key(0), 3)
    X = jax.random.normal(jax.random.key(1), (5, 2, 6, 6))
    plain = Net([eqx.nn.Conv2d(2, 3, 3, key=keys[0]), eqx.nn.Conv2d(3, 2, 3, padding=1, key=keys[1])])
    P = Problem(plain, X, jnp.zeros(5), chunk=2)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(P.loss)(P.params))
    expect = jnp.mean(0.5 * jax.vmap(plain)(X) ** 2)
    np.testing.assert_allclose(P.loss(P.params), expect, rtol=1e-12)
    for kept in (Mine(2, 2, 3, padding=1, key=keys[2]), eqx.nn.ConvTranspose2d(2, 2, 3, key=keys[2])):
        Q = Problem(Net([kept]), X, jnp.zeros(5))
        assert "conv_general_dilated" in str(jax.make_jaxpr(Q.loss)(Q.params))
        np.testing.assert_allclose(Q.loss(Q.params), jnp.mean(0.5 * jax.vmap(Net([kept]))(X) ** 2))


def test_resnet_forward_and_parameter_count():
    X, _ = images()
    net = ResNet(1, (4, 6), blocks=1, outputs=2, activation="tanh", key=jax.random.key(1))
    alpha = 1 / np.sqrt(2)
    x = conv(X[0], net.stem)
    b = net.stages[0][0]
    x = x + alpha * conv(jnp.tanh(conv(jnp.tanh(x), b.first)), b.second)
    x = conv(pool(x), net.transitions[0])
    b = net.stages[1][0]
    x = x + alpha * conv(jnp.tanh(conv(jnp.tanh(x), b.first)), b.second)
    expect = net.head.weight @ jnp.tanh(x).mean(axis=(1, 2)) + net.head.bias
    np.testing.assert_allclose(net(X[0]), expect, rtol=1e-12)
    count = (9 * 4 + 4) + 2 * (9 * 16 + 4) + (4 * 6 + 6) + 2 * (9 * 36 + 6) + (6 + 1) * 2
    assert Problem(net, X, jnp.zeros((X.shape[0], 2))).num_params == count


@jax.numpy_rank_promotion("allow")  # the hand-written reference broadcasts its biases
def test_vit_forward_and_parameter_count():
    X, _ = images()
    dim, heads = 8, 2
    net = ViT((1, 8, 8), patch=4, dim=dim, depth=1, heads=heads, outputs=3, key=jax.random.key(2))
    x = X[0]

    @eqx.filter_jit  # one compilation instead of ~100 eager dispatches
    def hand(net, x):
        patches = (
            x.reshape(1, 2, 4, 2, 4).transpose(1, 3, 0, 2, 4).reshape(4, 16)
        )  # (tokens, c p p), row-major
        z = patches @ net.embed.weight.reshape(dim, 16).T + net.embed.bias.reshape(-1) + net.positions

        def norm(ln, t):
            t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True) + ln.eps)
            return t * ln.weight + ln.bias

        layer = net.layers[0]
        a = layer.attention
        h = norm(layer.norm1, z)
        q, k, v = (h @ m.weight.T + m.bias for m in (a.query_proj, a.key_proj, a.value_proj))
        split = lambda t: t.reshape(4, heads, dim // heads).transpose(1, 0, 2)  # noqa: E731
        scores = jnp.einsum("hqd,hkd->hqk", split(q), split(k)) / np.sqrt(dim // heads)
        att = (
            jnp.einsum("hqk,hkd->hqd", jax.nn.softmax(scores, -1), split(v))
            .transpose(1, 0, 2)
            .reshape(4, dim)
        )
        z = z + att @ a.output_proj.weight.T + a.output_proj.bias
        h = norm(layer.norm2, z)
        z = z + jax.nn.gelu(h @ layer.up.weight.T + layer.up.bias) @ layer.down.weight.T + layer.down.bias
        return net.head.weight @ norm(net.norm, z.mean(0)) + net.head.bias

    np.testing.assert_allclose(eqx.filter_jit(lambda m, x: m(x))(net, x), hand(net, x), rtol=1e-10)
    count = (
        17 * dim + 4 * dim + 4 * (dim**2 + dim) + 2 * 4 * dim**2 + 5 * dim + 4 * dim + 2 * dim + (dim + 1) * 3
    )
    assert Problem(net, X, jnp.zeros((X.shape[0], 3))).num_params == count


def hand_cross_entropy(P, flat, unravel):
    logits = jax.vmap(P.model(unravel(flat)))(P.X)
    logp = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
    return -jnp.mean(logp[jnp.arange(P.n), P.y])


@pytest.mark.slow  # 16 s: jax.hessian of a CNN
def test_cross_entropy_loss_gradient_and_hessian_trace_on_a_tiny_cnn():
    X, y = images(n=6)
    P = Problem(CNN((1, 8, 8), (2,), outputs=3, key=jax.random.key(3)), X, y, loss="cross_entropy")
    flat, unravel = P.ravel(P.params)
    hand = lambda v: hand_cross_entropy(P, v, unravel)  # noqa: E731
    np.testing.assert_allclose(P.loss(P.params), hand(flat), rtol=1e-12)
    np.testing.assert_allclose(P.ravel(P.grad(P.params))[0], jax.grad(hand)(flat), rtol=1e-10, atol=1e-14)
    H = jax.hessian(hand)(flat)
    np.testing.assert_allclose(hessian.trace(P, P.params), jnp.trace(H), rtol=1e-10)
    top = hessian.top_eigenvalues(P, P.params, 2, key=jax.random.key(0))
    np.testing.assert_allclose(top, np.linalg.eigvalsh(H)[::-1][:2], rtol=1e-6)
    np.testing.assert_allclose(
        P.per_example_grads(P.params).mean(0), jax.grad(hand)(flat), rtol=1e-10, atol=1e-14
    )


def test_physical_batches_of_an_mlp_give_the_unchunked_loss_gradient_and_hvp():
    """chunk = 5 of n = 12 (a padded last chunk), cross-entropy on digits vectors: to 1e-12 (float64)."""
    X, y = images()
    net = MLP(64, 8, 1, outputs=3, key=jax.random.key(4))
    whole = Problem(net, X.reshape(12, 64), y, loss="cross_entropy")
    parts = Problem(net, X.reshape(12, 64), y, loss="cross_entropy", chunk=5)
    np.testing.assert_allclose(parts.loss(parts.params), whole.loss(whole.params), rtol=1e-12)
    assert tree_allclose(parts.grad(parts.params), whole.grad(whole.params), rtol=1e-12, atol=1e-14)
    v = jax.random.normal(jax.random.key(1), (whole.num_params,))
    np.testing.assert_allclose(
        hessian.hvp(parts, parts.params, v), hessian.hvp(whole, whole.params, v), rtol=1e-11
    )


@pytest.mark.slow  # 30 s each: J and the per-example gradients of a CNN, chunked and not
@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
def test_physical_batches_give_the_unchunked_numbers(loss):
    """chunk = 5 of n = 12 (a padded last chunk): loss, gradient, a Hessian-vector product, the per-example
    gradients and J match the all-at-once values to 1e-12 (float64)."""
    X, y = images()
    if loss == "square":
        y = jax.nn.one_hot(y, 3, dtype=X.dtype)
    net = CNN((1, 8, 8), (3,), outputs=3, activation="tanh", key=jax.random.key(4))
    whole, parts = Problem(net, X, y, loss=loss), Problem(net, X, y, loss=loss, chunk=5)
    np.testing.assert_allclose(parts.loss(parts.params), whole.loss(whole.params), rtol=1e-12)
    assert tree_allclose(parts.grad(parts.params), whole.grad(whole.params), rtol=1e-12, atol=1e-14)
    v = jax.random.normal(jax.random.key(1), (whole.num_params,))
    np.testing.assert_allclose(
        hessian.hvp(parts, parts.params, v), hessian.hvp(whole, whole.params, v), rtol=1e-11, atol=1e-13
    )
    np.testing.assert_allclose(
        parts.per_example_grads(parts.params), whole.per_example_grads(whole.params), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(
        parts.jacobian(parts.params), whole.jacobian(whole.params), rtol=1e-12, atol=1e-14
    )


def test_gd_and_sgd_take_any_optax_optimizer():
    """Momentum and Adam against loops written by hand from their update rules."""
    X, y = images(n=8)
    P = Problem(CNN((1, 8, 8), (2,), outputs=3, key=jax.random.key(5)), X, y, loss="cross_entropy")
    flat0, unravel = P.ravel(P.params)
    grad = jax.jit(lambda v: P.ravel(P.grad(unravel(v)))[0])
    eta, steps = 0.1, 5
    momentum = functools.partial(optax.sgd, momentum=0.9)  # a constructor: gd calls it with eta
    run = gd(P, P.params, steps=steps, eta=eta, save_every=steps, optimizer=momentum)
    w, m = flat0, jnp.zeros_like(flat0)
    for _ in range(steps):
        m = grad(w) + 0.9 * m
        w = w - eta * m
    np.testing.assert_allclose(P.ravel(run.final)[0], w, rtol=1e-10)
    np.testing.assert_allclose(run.ts, [0.0, eta * steps])  # the clock stays t = eta k
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int32 and float
        run = gd(P, P.params, steps=steps, eta=0.01, save_every=steps, optimizer=optax.adam)
    w, m, s = flat0, jnp.zeros_like(flat0), jnp.zeros_like(flat0)
    for k in range(1, steps + 1):
        g = grad(w)
        m, s = 0.9 * m + 0.1 * g, 0.999 * s + 0.001 * g**2
        w = w - 0.01 * (m / (1 - 0.9**k)) / (jnp.sqrt(s / (1 - 0.999**k)) + 1e-8)
    np.testing.assert_allclose(P.ravel(run.final)[0], w, rtol=1e-8)
    a = sgd(P, P.params, steps=3, eta=eta, batch_size=2, key=jax.random.key(0), optimizer=optax.sgd)
    b = sgd(P, P.params, steps=3, eta=eta, batch_size=2, key=jax.random.key(0))
    assert tree_allclose(a.params, b.params, rtol=1e-14)
    with pytest.raises((ValueError, TypeError), match="optimizer"):  # TypeError: the tests' type checker
        gd(P, P.params, steps=1, eta=eta, optimizer="adam")


def test_an_optimizer_has_one_step_size_the_runs_clock():
    """The clock t = eta k and the optimizer's step size are one number: a transformation built with a
    step of its own (optax.adam(1e-3) beside eta = 0.05 ran Adam at 1e-3 on a clock of 0.05) is refused,
    eagerly and under jax.jit / eqx.filter_jit / jax.vmap; an inject_hyperparams one is read and
    compared."""
    P = two_layer()
    run = lambda opt, eta=0.05: gd(P, P.params, steps=2, eta=eta, optimizer=opt)  # noqa: E731
    with pytest.raises(ValueError, match="optimizer is an optax transformation built with a step size"):
        run(optax.adam(1e-3))
    injected = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
    np.testing.assert_array_equal(P.ravel(run(injected).final)[0], P.ravel(run(optax.sgd).final)[0])
    with pytest.raises(
        ValueError, match=r"learning_rate differs from eta.*learning_rate = 0.001, eta = 0.05"
    ):
        run(optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3))
    other = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3)
    for wrap in (eqx.filter_jit, jax.jit):
        with pytest.raises(Exception, match="learning_rate differs from eta"):
            jax.block_until_ready(wrap(lambda e: run(other, e).stats["loss"])(jnp.asarray(0.05)))
    with pytest.raises(Exception, match="learning_rate differs from eta"):
        jax.block_until_ready(jax.vmap(lambda e: run(other, e).stats["loss"])(jnp.asarray([0.05, 1e-3])))


def test_the_minibatch_sde_on_cross_entropy_has_the_sgd_covariance():
    """With cross-entropy the batch factor takes q_i = softmax(f_i) - e_{y_i}: its covariance is that of
    the per-example gradients (1/B)[(1/n) sum g_i g_i^T - gbar gbar^T], and the SDE runs on a CNN."""
    from tests.helpers import noise

    X, y = images(n=6)
    P = Problem(CNN((1, 8, 8), (2,), outputs=3, key=jax.random.key(6)), X, y, loss="cross_entropy")
    g = np.asarray(P.per_example_grads(P.params))
    cov = (g.T @ g / P.n - np.outer(g.mean(0), g.mean(0))) / 2
    cols = jax.vmap(lambda e: P.ravel(noise.diffusion(P, P.params, e, eta=1.0, sigma=None, batch_size=2))[0])(
        jnp.eye(P.n)
    )
    np.testing.assert_allclose(cols.T @ cols, cov, rtol=1e-10, atol=1e-14)
    path = sgd_sde(P, P.params, t1=0.2, eta=0.1, batch_size=2, key=jax.random.key(0), ts=[0.0, 0.2])
    assert bool(jnp.all(jnp.isfinite(path.stats["loss"])))


@pytest.mark.slow  # 30 s: SGD and SDE ensembles with Lanczos, compiled twice
def test_the_drivers_run_on_a_cnn_sharded_or_not_and_store_their_parts(tmp_path):
    """compare.sde_vs_sgd on a CNN with cross-entropy and a caller's metric (no tr H forced): the sharded
    ensemble (default mesh) and the plain vmap give the same bits, and a stored part is read back, not
    recomputed."""
    from analysis import compare, store

    X, y = images(n=16)
    P = Problem(CNN((1, 8, 8), (2, 4), outputs=3, key=jax.random.key(8)), X, y, loss="cross_entropy")
    calls = []

    def part(label, compute):
        calls.append(label)
        return store.part(tmp_path, {"case": "cnn"}, label, compute)

    args = dict(noise="batch", etas=(0.1,), t1=0.4, key=jax.random.key(1), seeds=2, batch_size=4, num_saves=2)
    metrics = {"lambda_max": hessian.lambda_max}
    sharded = compare.sde_vs_sgd(P, P.params, metrics=metrics, part=part, **args)
    plain = compare.sde_vs_sgd(P, P.params, metrics=metrics, mesh=False, **args)
    assert set(sharded["eta"]["0.1"]) == {"loss", "lambda_max"}
    assert tree_allclose(sharded["eta"], plain["eta"], rtol=0, atol=0)
    again = compare.sde_vs_sgd(
        P, P.params, metrics={"lambda_max": lambda *a: jnp.asarray(jnp.nan)}, part=part, **args
    )
    assert tree_allclose(
        again["eta"], sharded["eta"], rtol=0, atol=0
    )  # read back: no NaN from the new metric
    assert calls == ["eta0.1", "eta0.1"]


def test_bad_input_names_the_argument():
    X, y = images(n=6)
    net = CNN((1, 8, 8), (2,), outputs=3, key=jax.random.key(7))
    with pytest.raises(ValueError, match=r"labels in 0..2 \(the model's 3 logits\), got 3..5"):
        Problem(net, X, y + 3, loss="cross_entropy")
    with pytest.raises(ValueError, match="integer class labels"):
        Problem(net, X, y.astype(X.dtype), loss="cross_entropy")
    with pytest.raises(ValueError, match="model cannot be called on one input of shape"):
        Problem(net, X.reshape(6, 64), y, loss="cross_entropy")
    with pytest.raises((ValueError, TypeError), match="loss"):  # TypeError: the tests' type checker
        Problem(net, X, y, loss="hinge")
    with pytest.raises(ValueError, match="y has dtype float32 where X has float64"):
        Problem(MLP(64, 4, key=jax.random.key(0)), X.reshape(6, 64), jnp.zeros(6, jnp.float32))
    P = Problem(net, X, y, loss="cross_entropy")
    for call in (
        lambda: label_noise_sgd(P, P.params, steps=1, eta=0.1, sigma=0.1, key=jax.random.key(0)),
        lambda: limit_map(P, P.params),
        lambda: stability.threshold(P, P.params),
        lambda: P.gauss_newton_trace(P.params),
    ):
        with pytest.raises(ValueError, match="needs the square loss"):
            call()


def test_cifar10_is_read_from_the_folder_the_user_names(tmp_path, monkeypatch):
    """Python-format batches written here (5 train batches of 4 images, a test batch): the first k classes,
    the first n of them, channel-major, standardised per channel; a missing folder or file names them."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, 4)),
        }
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    X, y = data.cifar10(tmp_path, classes=10, standardize=False)
    assert X.shape == (20, 3, 32, 32) and y.dtype == jnp.int32
    with open(tmp_path / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    np.testing.assert_allclose(X[0, 1, 0, :3], first[b"data"][0, 1024:1027] / 255.0, rtol=1e-6)
    monkeypatch.setenv("SHARPFLOW_CIFAR10", str(tmp_path))
    X, y = data.cifar10(classes=4, n=3)
    assert X.shape == (3, 3, 32, 32) and int(y.max()) < 4
    np.testing.assert_allclose(X.mean(axis=(0, 2, 3)), 0.0, atol=1e-6)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(ValueError, match="lacks test_batch"):
        data.cifar10(tmp_path, train=False)
    with pytest.raises(ValueError, match="nowhere lacks"):
        data.cifar10(tmp_path / "nowhere")


def test_a_corrupt_or_misshaped_cifar10_batch_names_its_file_and_what_it_expected(tmp_path):
    """A truncated pickle, a dict without b"data", rows of the wrong width, labels out of 0..9: each a
    ValueError naming the file and the format expected (was: a raw UnpicklingError or KeyError)."""
    rng = np.random.default_rng(0)
    good = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    bad = {
        "truncated": pickle.dumps(good)[:100],
        "no data": pickle.dumps({b"labels": [0, 1]}),
        "wide rows": pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
        "labels": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}),
        "count": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
    }
    for what, content in bad.items():
        (tmp_path / "test_batch").write_bytes(content)
        with pytest.raises(ValueError, match=r"cifar10: .*test_batch .*b\"data\" \(m, 3072\) uint8") as e:
            data.cifar10(tmp_path, train=False)
        assert "test_batch" in str(e.value), what


def test_image_and_sequence_data_sets():
    X, y = data.digits(images=True, labels=True)
    assert X.shape == (1797, 1, 8, 8) and y.dtype == jnp.int32 and int(y.max()) == 9
    X, y = data.mnist1d(200)
    assert X.shape == (200, 1, 40) and y.shape == (200,) and set(np.unique(y)) <= set(range(10))
    again, _ = data.mnist1d(200)
    np.testing.assert_array_equal(X, again)  # generated offline, the same for the same seed
    for n in (1, 7, 256):  # the generator makes 10 ceil(n / 10): any n is served (256 raised TypeError)
        X, y = data.mnist1d(n, labels=False)
        assert X.shape == (n, 1, 40) and y.shape == (n, 10) and np.all(np.isfinite(X))


@pytest.mark.slow  # 20 s; make test covers the landing check and Point.singular_values on a Linear model
def test_the_slow_flow_runs_on_a_cnn_and_its_landing_check_reads_j_singular_values():
    """A tanh CNN (p = 39) on 6 digit images, square loss on one output: Phi of the start, the regularity
    check at the landing (J's singular values read off the landing step's R, `Point.singular_values`)
    against a dense SVD of the CNN's Jacobian there, and the flow to tau = 0.05 keeping the loss at the
    solver's tolerance (measured 1.2e-20; residuals ~ rtol 1e-8 times the labels) while tr H / 4 falls.
    (tanh: the slow flow needs a C^2 manifold; across a ReLU kink the field jumps and the loss rose to
    3e-9.)"""
    from flows import riemannian_flow
    from tests.helpers import geometry

    X, y = images(n=6)
    net = CNN((1, 8, 8), (2,), outputs=1, key=jax.random.key(3), activation="tanh")
    P = Problem(net, X, y.astype(X.dtype) / 2)
    on = limit_map(P, P.params)
    flat, unravel = P.ravel(on)
    sigma = geometry.Point(P, flat, unravel, "dense").singular_values()
    np.testing.assert_allclose(sigma, np.linalg.svd(P.jacobian(on), compute_uv=False), rtol=1e-10)
    flow = riemannian_flow(P, P.params, t1=0.05, ts=[0.0, 0.05])
    assert float(flow.stats["loss"].max()) < 1e-16
    assert float(flow.stats["objective"][-1]) < float(flow.stats["objective"][0])
