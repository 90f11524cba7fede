"""The shared numerical rules (flows/_numerics.py) against independent references: the rank rule against
NumPy's `matrix_rank`, the dense budget at its boundary, the dtype tolerances ordered as their reasons say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import numerics, two_layer


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_numerical_rank_is_numpys_matrix_rank(rank):
    rng = np.random.default_rng(rank)
    A = rng.standard_normal((7, rank)) @ rng.standard_normal((rank, 9))
    s = np.linalg.svd(A, compute_uv=False)
    assert numerics.numerical_rank(s, A.shape) == np.linalg.matrix_rank(A) == rank


def test_the_dense_budget_is_read_in_one_place(monkeypatch):
    P = two_layer(n=6, d=3, width=5)
    size = P.y.size * P.num_params * 8  # J's bytes in float64
    monkeypatch.setattr(numerics, "DENSE_BUDGET", size)
    assert numerics.mode_for(P, "auto", jnp.float64) == "dense"
    monkeypatch.setattr(numerics, "DENSE_BUDGET", size - 1)
    assert numerics.mode_for(P, "auto", jnp.float64) == "matrix_free"
    assert numerics.mode_for(P, "auto", jnp.float32) == "dense"  # half the bytes
    assert numerics.mode_for(P, "dense", jnp.float64) == "dense"  # a mode given is kept


def test_the_dtype_tolerances_sit_above_their_dtypes_rounding():
    for dtype in (jnp.float32, jnp.float64):
        eps = float(jnp.finfo(dtype).eps)
        assert numerics.slow_flow_rtol(dtype) > 10 * eps
        # Phi's stop (an RMS gradient): near eps in float32, where the stiff flow's tail makes it cheap
        assert min(eps / 2, 1e-10) <= numerics.limit_map_tol(dtype) < 1e-6
        assert 5 * eps < numerics.limit_map_rtol(dtype) < 1e-5
        assert numerics.retract_tol(dtype, jnp.array([2.0, -3.0])) == pytest.approx(1e3 * eps * 4, abs=0)
        assert numerics.residual_floor(dtype, jnp.array([2.0, -3.0])) == pytest.approx(10 * eps * 4, abs=0)
        assert eps < float(numerics.sdcp_rtol(dtype)) < float(numerics.edge_cutoff(dtype)) < 1e-2
        # the manifold's rank rules: the dense (QR) cut-off on squared singular values is far below the
        # matrix-free one on K's eigenvalues, which products with K cannot resolve
        assert numerics.rcond(100, dtype, "dense") < numerics.rcond(100, dtype, "matrix_free")
    # traced labels (every flow's compiled core traces the problem) are scaled in the trace: a floor of 10
    # eps there had stopped float32's Phi short of labels of size 2.4 (max|r| 2.1e-6 > 1.2e-6, not settled)
    for tol in (numerics.retract_tol, numerics.residual_floor):
        traced = jax.jit(lambda y, tol=tol: tol(jnp.float64, y))(jnp.array([2.0, -3.0]))
        assert float(traced) == pytest.approx(tol(jnp.float64, jnp.array([2.0, -3.0])), abs=0)
