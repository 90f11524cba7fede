"""A researcher's own networks (`tests/user_models.py`: a 1-D ResNet of `eqx.nn.Conv1d`, a CNN of
`eqx.nn.Conv2d` with groups, a ViT of `eqx.nn.MultiheadAttention` and `eqx.nn.LayerNorm`) through every
flow, every `analysis.hessian` function and every driver, with default settings, against dense references
where one exists; the default ensemble on one device and on four with the same bits.

(The default ensemble had raised a bare NotImplementedError from JAX's convolution batching rule on a user's
`eqx.nn.Conv2d`: the seed axis was sharded, and that rule refuses sharded outputs.)"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import compare, ensembles, hessian
from flows import (
    central_flow,
    edge_flow,
    gd,
    gradient_flow,
    label_noise_sde,
    label_noise_sgd,
    limit_map,
    riemannian_flow,
    sgd,
    sgd_sde,
    svag,
)
from tests.user_models import problems

PROBLEMS = problems()
NAMES = list(PROBLEMS)
SLOW = pytest.mark.slow  # each model's compilations take ~25 s here: make test keeps the Conv2d CNN's


def test_the_default_ensemble_runs_a_users_convolutions_with_a_trace_metric():
    """Label-noise SDE paths with the exact tr H metric on the Conv2d CNN through `ensembles.ensemble`,
    default settings: the same numbers as a plain `jax.vmap`, and blocks of one seed the bits of blocks of
    one seed on the default device alone."""
    P = PROBLEMS["conv2d"]

    def paths(k):
        return label_noise_sde(P, P.params, t1=0.1, eta=0.05, sigma=0.5, key=k, num_saves=2,
                               metrics={"trace_H": hessian.trace})  # fmt: skip

    keys = jax.random.split(jax.random.key(1), 3)
    out = ensembles.ensemble(paths, keys)
    plain = jax.vmap(paths)(keys)
    np.testing.assert_allclose(out.stats["trace_H"], plain.stats["trace_H"], rtol=1e-12)
    assert np.all(np.asarray(out.stats["trace_H"]) > 0)
    one = ensembles.ensemble(paths, keys, seeds_at_once=1)
    alone = ensembles.ensemble(paths, keys, seeds_at_once=1, mesh=False)
    assert np.array_equal(np.asarray(one.stats["trace_H"]), np.asarray(alone.stats["trace_H"]))


@pytest.mark.parametrize(
    "name", ["conv2d", pytest.param("resnet1d", marks=SLOW), pytest.param("vit", marks=SLOW)]
)
def test_the_hessian_functions_agree_with_the_dense_hessian(name):
    """Lanczos, the batch sharpness at B = n, the exact trace, the Frobenius norm and the stochastic
    estimators against the dense H of each user model (p = 133 to 745)."""
    P = PROBLEMS[name]
    H = hessian.dense(P, P.params)
    eigs = np.linalg.eigvalsh(np.asarray(H))[::-1]
    key = jax.random.key(2)
    top = hessian.top_eigenvalues(P, P.params, 2, key=key)
    np.testing.assert_allclose(top, eigs[:2], rtol=1e-6)
    np.testing.assert_allclose(hessian.lambda_max(P, P.params), eigs[0], rtol=1e-6)
    # B = n is the full batch: the batch sharpness is lambda_max(H)
    full = hessian.batch_sharpness(P, P.params, P.n, key=key, num_batches=2)
    np.testing.assert_allclose(full, eigs[0], rtol=1e-6)
    np.testing.assert_allclose(hessian.trace(P, P.params), np.trace(H), rtol=1e-10)
    np.testing.assert_allclose(hessian.frobenius_norm(P, P.params), np.linalg.norm(H), rtol=1e-10)
    for estimate, se in (
        hessian.trace_hutchinson(P, P.params, key, 30),
        hessian.trace_xtrace(P, P.params, key, 10),
    ):
        assert abs(float(estimate) - np.trace(H)) < 5 * float(se) + 1e-8 * abs(np.trace(H))
    density = hessian.spectral_density(P, P.params, key, num_probes=4, num_steps=12)
    mean, se = density.moment(1)  # (1/p) tr H
    assert abs(float(mean) - np.trace(H) / H.shape[0]) < 5 * float(se) + 1e-10
    if P.loss_name == "square":
        G = hessian.gauss_newton(P, P.params)
        np.testing.assert_allclose(P.gauss_newton_trace(P.params), np.trace(G), rtol=1e-10)
        np.testing.assert_allclose(hessian.trace_residual(P, P.params), np.trace(H - G), atol=1e-10)


@pytest.mark.parametrize(
    "name", ["conv2d", pytest.param("resnet1d", marks=SLOW), pytest.param("vit", marks=SLOW)]
)
def test_every_flow_runs_on_a_users_model(name):
    """GD, SGD, SVAG, gradient flow, the minibatch SDE, the central flow, Edge Flow (and, on square loss,
    label-noise SGD and its SDE), default settings, a few steps each: finite, and GD, the central flow and
    Edge Flow against gradient flow to O(eta)."""
    P = PROBLEMS[name]
    key = jax.random.key(3)
    eta, steps = 0.02, 10
    t1 = eta * steps
    runs = {
        "gd": gd(P, P.params, steps=steps, eta=eta),
        "sgd": sgd(P, P.params, steps=steps, eta=eta, batch_size=4, key=key),
        "svag": svag(P, P.params, steps=2 * steps, eta=eta, batch_size=4, l=2, key=key),
        "gradient_flow": gradient_flow(P, P.params, t1=t1, num_saves=3),
        "sgd_sde": sgd_sde(P, P.params, t1=t1, eta=eta, batch_size=4, key=key, num_saves=3),
        "central_flow": central_flow(P, P.params, eta=eta, t1=t1, num_saves=3, num_eigs=1, substeps=1),
        "edge_flow": edge_flow(P, P.params, eta=eta, t1=t1, num_saves=3),
    }
    if P.loss_name == "square":
        runs["label_noise_sgd"] = label_noise_sgd(P, P.params, steps=steps, eta=eta, sigma=0.1, key=key)
        runs["label_noise_sde"] = label_noise_sde(
            P, P.params, t1=t1, eta=eta, sigma=0.1, key=key, num_saves=3
        )
    for flow, run in runs.items():
        assert np.all(np.isfinite(np.asarray(run.stats["loss"]))), flow
    loss_gd, loss_gf = float(runs["gd"].stats["loss"][-1]), float(runs["gradient_flow"].stats["loss"][-1])
    drop = float(runs["gd"].stats["loss"][0]) - loss_gf
    assert drop > 0 and abs(loss_gd - loss_gf) < 0.1 * drop  # GD is gradient flow to O(eta)
    for flow in ("central_flow", "edge_flow"):  # below the edge both are gradient flow to O(eta)
        assert abs(float(runs[flow].stats["loss"][-1]) - loss_gf) < 0.1 * drop, flow


@pytest.mark.parametrize("name", ["conv2d", pytest.param("vit", marks=SLOW)])
def test_the_manifold_flows_run_on_a_users_model(name):
    """Phi lands on the zero-loss manifold of the Conv2d CNN and the ViT (p > n), and the slow flow of
    tr H / 4 from there keeps it there while tr H falls."""
    P = PROBLEMS[name]
    start = limit_map(P, P.params)
    assert float(P.loss(start)) < 1e-14
    flow = riemannian_flow(P, start, t1=0.05, num_saves=3, metrics={"trace_G": type(P).gauss_newton_trace})
    assert float(flow.stats["loss"][-1]) < 1e-12
    assert float(flow.stats["trace_G"][-1]) < float(flow.stats["trace_G"][0])


@pytest.mark.slow  # the drivers at small sizes on each model, ~1 minute (make test-all)
@pytest.mark.parametrize("name", NAMES)
def test_every_driver_runs_on_a_users_model(name):
    P = PROBLEMS[name]
    key = jax.random.key(4)
    r = compare.sde_vs_sgd(P, P.params, noise="batch", etas=(0.02,), t1=0.08, batch_size=4, key=key,
                           seeds=4, num_saves=2)  # fmt: skip
    assert np.all(np.isfinite(r["eta"]["0.02"]["trace_H"]["sgd_mean"]))
    r = compare.svag_vs_sde(P, P.params, eta=0.02, ls=(1, 2), t1=0.08, batch_size=4, key=key, seeds=4,
                            num_saves=2)  # fmt: skip
    assert np.all(np.isfinite(r["gap"]["trace_H"]))
    r = compare.edge_of_stability(P, P.params, eta=0.02, t1=0.2, num_saves=2, window=2, num_eigs=1)
    assert np.all(np.isfinite(r["cf_loss"])) and np.all(np.isfinite(r["gd_lambda"]))
    if P.loss_name == "square" and name != "vit":
        r = compare.label_noise_slow_clock(P, P.params, etas=(0.05,), sigma=0.5, tau1=1e-3, key=key, seeds=2,
                                           num_saves=2)  # fmt: skip
        assert np.all(np.isfinite(r["eta"]["0.05"]["trace_H"]["flow"]))


@pytest.mark.slow  # a subprocess on four host devices (make test-all)
def test_four_devices_give_one_devices_bits_on_every_user_model():
    """Each user model's SGD ensemble with a tr H metric on 4 host devices against 1, the same
    `seeds_at_once`: the same bits (float32, where widths would show)."""
    code = """
import jax, numpy as np
from analysis import ensembles, hessian
from flows import sgd
from tests.user_models import problems
for name, P in problems().items():
    run = lambda k: sgd(P, P.params, steps=4, eta=0.05, batch_size=4, key=k, save_every=2,
                        metrics={"trace_H": hessian.trace})
    keys = jax.random.split(jax.random.key(1), 7)
    four = ensembles.ensemble(run, keys, seeds_at_once=2)
    one = ensembles.ensemble(run, keys, seeds_at_once=2, mesh=ensembles.seed_mesh(jax.devices()[:1]))
    assert jax.device_count() == 4
    assert np.array_equal(np.asarray(four.stats["trace_H"]), np.asarray(one.stats["trace_H"])), name
    assert np.array_equal(np.asarray(four.params.head.weight), np.asarray(one.params.head.weight)), name
print("same bits")
"""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert out.returncode == 0 and "same bits" in out.stdout, out.stderr[-3000:]


def test_jnp_is_the_models_float():
    """The user models follow JAX's default float (float64 under the tests' x64 switch)."""
    for P in PROBLEMS.values():
        assert {leaf.dtype for leaf in jax.tree.leaves(P.params)} == {jnp.result_type(float)}
