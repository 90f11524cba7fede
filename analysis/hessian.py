"""Hessian metrics of L = (1/(2n)) sum_i ||r_i||^2, matrix-free unless asked for the dense matrix.

    H = G + R,  G = (1/n) J^T J  (Gauss-Newton),  R = (1/n) sum_i r_i . grad^2 f_i  (residual part)
    tr G = (1/n) sum_i ||grad f_i||^2 = (1/n) ||J||_F^2,   R = 0 on the zero-loss manifold.

Vectors are flat, in the order of `Problem.ravel`. Every function takes `(problem, params, ...)`, so the
scalar ones serve as flow metrics (`metrics={"trace_H": hessian.trace}`); tr G is
`Problem.gauss_newton_trace`, which serves the same way.

Costs, in Hessian-vector products (HVPs, each ~3 gradients; with `Problem.chunk` set, memory O(chunk x
activations + p)):
    trace                 exact; p HVPs (square loss: N per-example gradients + p HVPs of the residual part)
    trace_split           square loss: tr G exact (N per-example gradients) + tr R by Hutchinson, s HVPs
    trace_hutchinson      s HVPs, standard error ~ sqrt(2 ||H||_F^2 / s)
    TraceProbe            a keyed metric: s HVPs a call (s = 1 by default), unbiased, for ensembles
    trace_xtrace          2s HVPs, error ~ the tail of the spectrum beyond the s largest / s (XTrace)
    spectral_density      s probes x m Lanczos steps: s m HVPs, memory s m p
    lambda_max            40 HVPs; top_eigenvalues(k) max(4k, 60) HVPs
    batch_sharpness       num_batches x 40 HVPs on B examples each: E_B lambda_max(H_B)
Dense matrices (`dense`, `gauss_newton`, `spectrum`) are for small p only.

Every function of `(problem, params, ...)` here is compiled (`equinox.filter_jit`): eager calls with the same
problem structure and shapes reuse one compiled program. Each refuses parameters or a result that are not
finite, a `ValueError` eagerly and `eqx.error_if` under `jax.jit` / `jax.vmap` (inside a flow's metrics the
flow reports a divergence instead: `models.checks.flow_metrics`).
Lanczos costs 1.24x its Hessian-vector products (`scripts/bench_lanczos.py`).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree
from matfree import decomp, stochtrace

from flows._brownian import batch_indices  # the minibatch draw of flows.sgd
from models import Problem, checks

__all__ = [
    "operator",
    "hvp",
    "dense",
    "gauss_newton",
    "spectrum",
    "trace_residual",
    "trace",
    "trace_split",
    "trace_hutchinson",
    "trace_xtrace",
    "TraceProbe",
    "SpectralDensity",
    "spectral_density",
    "lanczos_quadrature",
    "frobenius_norm",
    "frobenius_norm_hutchinson",
    "top_eigenvalues",
    "lambda_max",
    "batch_sharpness",
    "lanczos",
]

_CHUNK = 128  # Hessian-vector products evaluated together when sweeping a basis
# Probes evaluated together by the stochastic estimators (Hutchinson, ||H||_F, SLQ): 4 at a time took 0.28 s
# a probe on a CNN (p = 113,738, n = 256), one at a time 0.30 s, 20 at once 0.35 s, and memory grows with
# the number at once (all 50 of a Hutchinson estimate on a ResNet asked for 55 GB).
_PROBES_AT_ONCE = 4


def _checked(fn):
    """`equinox.filter_jit(fn)` for a function of `(problem, params, ...)`, with `params` refused where not
    finite (a `ValueError` naming them eagerly, `eqx.error_if` traced) and a result that is not finite
    refused likewise (`checks.finite_result`) rather than returned as a number. Both stand down inside a
    flow's metrics (`checks.flow_metrics`), where the flow reports a divergence itself."""
    jitted = eqx.filter_jit(fn)

    @functools.wraps(fn)
    def call(problem, params, *args, **kwargs):
        if not checks.in_flow_metrics():
            params = checks.finite_tree("params", params)
        return checks.finite_result(f"hessian.{fn.__name__}", jitted(problem, params, *args, **kwargs))

    return call


def operator(problem: Problem, params: PyTree) -> lx.FunctionLinearOperator:
    """H as a symmetric lineax operator; `.mv(v)` is one Hessian-vector product (forward over reverse,
    linearised once so repeated products reuse the primal pass). Memory O(p) (plus the activations).

    **Arguments:** `problem`, `params`.

    **Returns:** a `lineax.FunctionLinearOperator` on flat vectors (p,)."""
    flat, unravel = _ravel(problem, params)
    _, hvp = jax.linearize(jax.grad(lambda v: problem.loss(unravel(v))), flat)
    return lx.FunctionLinearOperator(hvp, jax.ShapeDtypeStruct(flat.shape, flat.dtype), lx.symmetric_tag)


@_checked
def hvp(problem: Problem, params: PyTree, v: Float[Array, " p"]) -> Float[Array, " p"]:
    """H v, one Hessian-vector product.

    **Arguments:** `problem`, `params`, `v` (flat, p).

    **Returns:** H v, flat (p,)."""
    return operator(problem, params).mv(v)


@_checked
def dense(problem: Problem, params: PyTree) -> Float[Array, "p p"]:
    """The dense Hessian (small p only: memory p^2, cost p Hessian-vector products).

    **Arguments:** `problem`, `params`.

    **Returns:** H (p, p)."""
    flat, unravel = _ravel(problem, params)
    return jax.hessian(lambda v: problem.loss(unravel(v)))(flat)


@_checked
def gauss_newton(problem: Problem, params: PyTree) -> Float[Array, "p p"]:
    """The dense Gauss-Newton part G = (1/n) J^T J (small p only: memory p^2 + N p); H - G is the residual
    part R.

    **Arguments:** `problem`, `params`.

    **Returns:** G (p, p).

    **Raises:** `ValueError` for a problem without residuals (cross-entropy)."""
    _ravel(problem, params)
    J = problem.jacobian(params)
    return J.T @ J / problem.n


@_checked
def spectrum(problem: Problem, params: PyTree) -> Float[Array, " p"]:
    """All eigenvalues of H, ascending (dense; small p only: memory p^2, cost p^3).

    **Arguments:** `problem`, `params`.

    **Returns:** the eigenvalues (p,)."""
    return jnp.linalg.eigvalsh(dense(problem, params))


@_checked
def trace_residual(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """tr R = (1/n) sum_i r_i . tr grad^2 f_i, exact: one Hessian-vector product of the residual part per
    coordinate (p in all). Zero on the zero-loss manifold.

    **Arguments:** `problem`, `params`.

    **Returns:** tr R, a scalar.

    **Raises:** `ValueError` for a problem without residuals (cross-entropy)."""
    flat, _ = _ravel(problem, params)
    residual_hvp = _residual_operator(problem, params)
    return _sum_over_basis(lambda j, e: residual_hvp(e)[j], flat)


@_checked
def trace(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """tr H, exact. Square loss: tr G + tr R (N gradient evaluations and p Hessian-vector products of the
    residual part); cross-entropy: sum_j e_j^T H e_j, p Hessian-vector products.

    **Arguments:** `problem`, `params`.

    **Returns:** tr H, a scalar."""
    _ravel(problem, params)
    if problem.loss_name == "square":
        return problem.gauss_newton_trace(params) + trace_residual(problem, params)
    H = operator(problem, params)
    return _sum_over_basis(lambda j, e: H.mv(e)[j], _ravel(problem, params)[0])


@_checked
def trace_split(
    problem: Problem, params: PyTree, key: PRNGKeyArray, num_samples: int = 10
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """tr H = tr G + tr R (square loss) with tr G exact from the rows of J (`Problem.gauss_newton_trace`: N
    per-example gradient evaluations, J never stored) and tr R by Hutchinson, E[z^T R z] over `num_samples`
    Rademacher z (one Hessian-vector product of the residual part each): (estimate, standard error).

    The error is the residual part's alone: Var = 2 (||R||_F^2 - sum_j R_jj^2) / num_samples, zero on the
    zero-loss manifold and small near it, where the whole-H Hutchinson estimate keeps the variance of G.
    Cost O(N + num_samples) gradients instead of `trace`'s p Hessian-vector products.

    **Arguments:** `problem`, `params`, the probes' `key`, `num_samples` (>= 2).

    **Returns:** (estimate, standard error).

    **Raises:** `ValueError` for a problem without residuals (cross-entropy) or fewer than two samples."""
    problem.require_square("trace_split")
    flat, _ = _ravel(problem, params)
    mean, se = _hutchinson(_residual_operator(problem, params), key, flat, num_samples)
    return problem.gauss_newton_trace(params) + mean, se


@_checked
def trace_hutchinson(
    problem: Problem, params: PyTree, key: PRNGKeyArray, num_samples: int = 100
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Hutchinson's estimate of tr H = E[z^T H z], z Rademacher: (mean, standard error) over `num_samples`
    (>= 2); Var = 2 (||H||_F^2 - sum_j H_jj^2) / num_samples. Cost `num_samples` Hessian-vector products.

    **Arguments:** `problem`, `params`, the probes' `key`, `num_samples` (>= 2).

    **Returns:** (mean, standard error).

    **Raises:** `ValueError` for fewer than two samples."""
    flat, _ = _ravel(problem, params)
    return _hutchinson(operator(problem, params).mv, key, flat, num_samples)


class TraceProbe(eqx.Module):
    """A flow metric estimating tr H by (1/s) sum_j z_j^T H z_j over s = `num_probes` Rademacher probes drawn
    from `key`, the same probes at every save: `metrics={"trace_H": hessian.TraceProbe(key)}`.

    Unbiased (E_z z^T H z = tr H) with variance 2 (||H||_F^2 - sum_j H_jj^2) / s. For an ensemble give each
    seed its own key (e.g. `TraceProbe(jax.random.fold_in(seed_key, 1))` inside the per-seed function): the
    ensemble mean is then unbiased for E tr H, and the probes' variance is part of the seeds' spread, so the
    ensemble's confidence band includes it (it widens the band by Var_z / seeds, no more). Where two
    ensembles are compared seed by seed (SGD against its SDE on the same keys), the same key on both sides
    makes the probes common random numbers. Cost s Hessian-vector products a call, memory O(p): the exact
    `trace` costs p. The key is a pytree leaf, so the metric works under `jax.jit` and `jax.vmap` over keys.
    """

    key: PRNGKeyArray
    num_probes: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        checks.positive_int("num_probes", self.num_probes)

    def __call__(self, problem: Problem, params: PyTree) -> Float[Array, ""]:
        flat, _ = _ravel(problem, params)
        z = _rademacher(self.key, flat, self.num_probes, minimum=1)
        return checks.finite_result("TraceProbe", jnp.mean(_quadratic_forms(operator(problem, params).mv, z)))


@_checked
def trace_xtrace(
    problem: Problem, params: PyTree, key: PRNGKeyArray, num_samples: int = 20
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """tr H by XTrace (Epperly, Tropp & Webber 2024, matfree's `leave_one_out_xtrace`): (estimate,
    standard error from its leave-one-out estimates). From s = `num_samples` Gaussian probes Omega it forms
    Q = orth(H Omega) and adds tr(Q^T H Q) to a Hutchinson estimate of the deflated rest, each probe left out
    of the Q it is used against; the estimate is unbiased and, like Hutch++ (of which it is the exchangeable
    successor, better at equal cost), its error falls like 1/s where the spectrum beyond the s largest
    eigenvalues is small (Hutchinson: 1/sqrt(s)). Cost 2s Hessian-vector products and memory 2 s p; exact
    (the dense operator, p products) when 2s >= p.

    **Arguments:** `problem`, `params`, the probes' `key`, `num_samples` s in 2..p.

    **Returns:** (estimate, standard error).

    **Raises:** `ValueError` for s outside 2..p."""
    num_samples = checks.positive_int("num_samples", num_samples)
    flat, _ = _ravel(problem, params)
    if num_samples < 2 or num_samples > flat.shape[0]:
        raise ValueError(f"num_samples must be in 2..p = {flat.shape[0]}, got {num_samples}")
    probes = jax.random.normal(key, (num_samples, flat.shape[0]), flat.dtype)
    with jax.numpy_rank_promotion("allow"):  # matfree broadcasts implicitly
        estimates = stochtrace.leave_one_out_xtrace()(operator(problem, params).mv, probes)
    return estimates.mean(), estimates.std(ddof=1) / jnp.sqrt(num_samples)


class SpectralDensity(eqx.Module):
    """A stochastic Lanczos quadrature (SLQ) of the spectral measure mu = (1/p) sum_k delta(lambda_k) of a
    symmetric operator on R^p.

    For each probe z_i, m Lanczos steps from z_i / ||z_i|| give a tridiagonal T_i = S diag(theta_i) S^T;
    the Gauss quadrature with `nodes` theta_ij and `weights` w_ij = S_1j^2 (sum_j w_ij = 1) gives
    z_i^T g(A) z_i / ||z_i||^2 = sum_j w_ij g(theta_ij) exactly for every polynomial g of degree <= 2m - 1.
    With Rademacher probes (||z||^2 = p, E[z z^T] = I) the average over probes is an unbiased estimate of
    (1/p) tr g(A) = integral g d mu for those g. The extreme nodes converge to the extreme eigenvalues first.
    """

    nodes: Float[Array, "probes m"]
    weights: Float[Array, "probes m"]

    def density(self, x: Float[Array, " g"], width) -> Float[Array, " g"]:
        """The measure smoothed by a Gaussian of standard deviation `width` at the points `x`:
        (1/s) sum_ij w_ij N(x; theta_ij, width^2). Integrates to 1 over the real line."""
        z = (x[:, None, None] - self.nodes[None]) / width
        g = jnp.exp(-0.5 * z**2) / (jnp.sqrt(2 * jnp.pi) * width)
        return jnp.sum(self.weights[None] * g, axis=(1, 2)) / self.nodes.shape[0]

    def moment(self, k: int) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """(1/p) tr A^k, estimated: (mean over probes of sum_j w_ij theta_ij^k, its standard error over the
        probes). Exact per probe for k <= 2m - 1."""
        per_probe = jnp.sum(self.weights * self.nodes**k, axis=1)
        return per_probe.mean(), per_probe.std(ddof=1) / jnp.sqrt(per_probe.shape[0])


@_checked
def spectral_density(
    problem: Problem, params: PyTree, key: PRNGKeyArray, *, num_probes: int = 10, num_steps: int = 80
) -> SpectralDensity:
    """The spectral density of H by stochastic Lanczos quadrature (`SpectralDensity`, `lanczos_quadrature`)
    from `num_probes` Rademacher probes and `num_steps` Lanczos steps each (at most p). Cost num_probes x
    num_steps Hessian-vector products (the probes batched together) and O(num_probes num_steps^2 p) for the
    reorthogonalisation; memory num_probes x num_steps x p.

    **Arguments:** `problem`, `params`, the probes' `key`, `num_probes` (>= 2), `num_steps` (<= p).

    **Returns:** a `SpectralDensity`.

    **Raises:** `ValueError` for fewer than two probes or more steps than p."""
    num_probes = checks.positive_int("num_probes", num_probes)
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 (the moments' standard error needs two), got {num_probes}")
    flat, _ = _ravel(problem, params)
    probes = jax.random.rademacher(key, (num_probes, flat.shape[0]), flat.dtype)
    return lanczos_quadrature(operator(problem, params).mv, probes, num_steps)


def lanczos_quadrature(matvec, probes: Float[Array, "s p"], num_steps: int) -> SpectralDensity:
    """Stochastic Lanczos quadrature of the symmetric operator `matvec` on R^p from the rows of `probes`
    (any nonzero vectors; Rademacher for an unbiased estimate of mu): `num_steps` (<= p) Lanczos steps from
    each, full reorthogonalisation (matfree's `tridiag_sym`), a few probes at a time. Memory s m p.

    **Arguments:** `matvec` (p,) -> (p,), `probes` (s, p), `num_steps` m (<= p).

    **Returns:** a `SpectralDensity`.

    **Raises:** `ValueError` for m not a positive integer or above p."""
    num_steps = checks.positive_int("num_steps", num_steps)
    if num_steps > probes.shape[1]:
        raise ValueError(f"num_steps must be <= the dimension p = {probes.shape[1]}, got {num_steps}")
    tridiagonal = decomp.tridiag_sym(num_steps, reortho="full", custom_vjp=False)

    def one(z):
        theta, S = jnp.linalg.eigh(tridiagonal(matvec, z).J_small)
        return theta, S[0] ** 2

    nodes, weights = lax.map(one, probes, batch_size=_PROBES_AT_ONCE)
    return SpectralDensity(nodes, weights)


@_checked
def frobenius_norm(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """||H||_F = sqrt(sum_j ||H e_j||^2), exact: p Hessian-vector products (small to moderate p).

    **Arguments:** `problem`, `params`.

    **Returns:** ||H||_F, a scalar."""
    H = operator(problem, params)
    flat, _ = _ravel(problem, params)
    return jnp.sqrt(_sum_over_basis(lambda j, e: jnp.sum(H.mv(e) ** 2), flat))


@_checked
def frobenius_norm_hutchinson(
    problem: Problem, params: PyTree, key: PRNGKeyArray, num_samples: int = 100
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Estimate of ||H||_F from ||H||_F^2 = E ||H z||^2, z Rademacher: (estimate, standard error by the
    delta method) over `num_samples`. Cost `num_samples` Hessian-vector products.

    **Arguments:** `problem`, `params`, the probes' `key`, `num_samples` (>= 2).

    **Returns:** (estimate, standard error).

    **Raises:** `ValueError` for fewer than two samples."""
    z = _rademacher(key, _ravel(problem, params)[0], num_samples)
    H = operator(problem, params)
    q = lax.map(lambda v: jnp.sum(H.mv(v) ** 2), z, batch_size=_PROBES_AT_ONCE)
    f = jnp.sqrt(q.mean())
    return f, q.std(ddof=1) / jnp.sqrt(num_samples) / (2 * f)


@_checked
def top_eigenvalues(
    problem: Problem,
    params: PyTree,
    k: int = 1,
    *,
    key: PRNGKeyArray,
    num_iter: int | None = None,
    return_vectors: bool = False,
):
    """The k largest eigenvalues of H (descending) by Lanczos on Hessian-vector products.

    `num_iter` Lanczos steps (default min(p, max(4k, 60))) with full reorthogonalisation: that many
    Hessian-vector products, memory `num_iter` p.

    **Arguments:** `problem`, `params`, `k`, the start's `key`, `num_iter`, `return_vectors`.

    **Returns:** the eigenvalues (k,); with `return_vectors`, (eigenvalues, Ritz vectors as the columns of
    a (p, k) array).

    **Raises:** as `lanczos`.
    """
    flat, _ = _ravel(problem, params)
    return lanczos(
        operator(problem, params).mv,
        flat.shape[0],
        k,
        key=key,
        num_iter=num_iter,
        dtype=flat.dtype,
        return_vectors=return_vectors,
    )


@_checked
def lambda_max(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """lambda_max(H), the sharpness: `top_eigenvalues` with 40 Lanczos steps from a fixed key (a metric for
    the flows). Cost 40 Hessian-vector products, memory 40 p.

    **Arguments:** `problem`, `params`.

    **Returns:** lambda_max, a scalar.

    **Raises:** as `lanczos`."""
    return top_eigenvalues(problem, params, 1, key=jax.random.key(0), num_iter=min(40, problem.num_params))[0]


@_checked
def batch_sharpness(
    problem: Problem,
    params: PyTree,
    batch_size: int,
    *,
    key: PRNGKeyArray,
    num_batches: int = 16,
    replace: bool = True,
    num_iter: int = 40,
) -> Float[Array, ""]:
    """The batch sharpness E_B[lambda_max(H_B)]: the mean, over `num_batches` minibatches of B = `batch_size`
    examples drawn as `flows.sgd` draws them (`replace`), of the top eigenvalue of the minibatch loss's
    Hessian H_B = hess (1/B) sum_{i in B} l_i, each by `num_iter` Lanczos steps. Where SGD runs at the edge
    of stability it is this, not the full batch's lambda_max(H), that it holds near 2 / eta (Andreyev &
    Beneventano 2024); B = n is the full batch (docs/conventions.md), lambda_max(H). Cost num_batches x
    num_iter Hessian-vector products on B examples, the batches one at a time; memory num_iter p.

    **Arguments:** `problem`, `params`, `batch_size` (1..n), the batches' `key`, `num_batches`, `replace`,
    `num_iter` (Lanczos steps a batch, at most p).

    **Returns:** the mean, a scalar.

    **Raises:** `ValueError` for a `batch_size` outside 1..n or a bad `num_batches`; as `lanczos`."""
    batch_size = checks.batch_size(batch_size, problem.n)
    num_batches = checks.positive_int("num_batches", num_batches)
    flat, unravel = _ravel(problem, params)
    num_iter = min(checks.positive_int("num_iter", num_iter), flat.shape[0])

    def top(key):
        batch_key, start_key = jax.random.split(key)
        X, y = problem.X, problem.y
        if batch_size < problem.n:  # B = n is the full batch, whatever `replace` says, as in flows.sgd
            idx = batch_indices(batch_key, problem.n, batch_size, replace)
            X, y = X[idx], y[idx]
        _, hvp = jax.linearize(jax.grad(lambda v: problem.loss(unravel(v), X, y)), flat)
        return lanczos(hvp, flat.shape[0], 1, key=start_key, num_iter=num_iter, dtype=flat.dtype)[0]

    return jnp.mean(lax.map(top, jax.random.split(key, num_batches)))


def lanczos(
    matvec,
    dim: int,
    k: int,
    *,
    key: PRNGKeyArray,
    num_iter=None,
    dtype=jnp.float32,
    return_vectors: bool = False,
    rtol: float = 1e-3,
):
    """The k largest eigenvalues of the symmetric operator `matvec` on R^dim (descending), by Lanczos with
    full reorthogonalisation. An invariant subspace found early (beta below 1e3 eps times the largest
    alpha or beta so far: relative, so the operator's scale does not matter) restarts from a fresh random
    vector orthogonal to the basis, so the tridiagonal matrix stays block-exact.

    Each Ritz pair's residual ||A v - theta v|| is |beta_m s_m| (s the eigenvector of the tridiagonal
    matrix): the operator has an eigenvalue within it of theta, and within residual^2 / gap when theta is
    separated by a gap. Memory `num_iter` x dim.

    **Arguments:** `matvec` (dim,) -> (dim,), `dim`, `k`, the start's `key`, `num_iter` (default
    min(dim, max(4k, 60))), `dtype`, `return_vectors`, `rtol`.

    **Returns:** the k eigenvalues, descending; with `return_vectors`, also the Ritz vectors (dim, k).

    **Raises:** `ValueError` for k not in 1..dim or a bad `num_iter`; `equinox.EquinoxRuntimeError` (eagerly
    and traced) when a residual is above `rtol` |theta_1| after `num_iter` steps, rather than return an
    unconverged value, or when a Ritz value or residual is not finite (outside a flow's metrics)."""
    k = checks.positive_int("k", k)
    if k > dim:
        raise ValueError(f"k must be <= the dimension {dim}, got {k}")
    m = min(dim, max(4 * k, 60)) if num_iter is None else checks.positive_int("num_iter", num_iter)
    m = min(m, dim)
    keys = jax.random.split(key, m + 1)

    def orthonormal(w, Q):
        """w against every row of Q (classical Gram-Schmidt), a second pass only where the first removed
        most of w (Kahan and Parlett's "twice is enough" test): each pass reads Q twice, the cost that
        dominates a step beside the product."""
        once = w - Q.T @ (Q @ w)
        again = jnp.linalg.norm(once) < 0.7 * jnp.linalg.norm(w)
        return lax.cond(again, lambda u: u - Q.T @ (Q @ u), lambda u: u, once)

    def body(j, state):
        Q, alpha, beta = state
        w = matvec(Q[j])
        a = w @ Q[j]
        w = w - a * Q[j] - beta[jnp.maximum(j - 1, 0)] * Q[jnp.maximum(j - 1, 0)]  # three terms (beta_-1 = 0)
        w = orthonormal(w, Q)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.maximum(jnp.abs(alpha).max(), jnp.abs(a)), jnp.maximum(beta.max(), b))
        restart = b <= 1e3 * jnp.finfo(dtype).eps * scale  # relative: an operator's scale is its own

        def fresh(_):
            u = orthonormal(jax.random.normal(keys[j + 1], (dim,), dtype), Q)
            return u / jnp.linalg.norm(u)

        nxt = lax.cond(restart, fresh, lambda _: w / jnp.where(restart, 1.0, b), None)
        return Q.at[j + 1].set(nxt), alpha.at[j].set(a), beta.at[j].set(jnp.where(restart, 0.0, b))

    v0 = jax.random.normal(keys[0], (dim,), dtype)
    Q = jnp.zeros((m + 1, dim), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    Q, alpha, beta = lax.fori_loop(0, m, body, (Q, jnp.zeros(m, dtype), jnp.zeros(m, dtype)))
    T = jnp.diag(alpha) + jnp.diag(beta[: m - 1], 1) + jnp.diag(beta[: m - 1], -1)
    evals, evecs = jnp.linalg.eigh(T)
    top = evals[::-1][:k]
    residual = jnp.abs(beta[m - 1] * evecs[m - 1, ::-1][:k])
    top = eqx.error_if(
        top,
        jnp.any(residual > rtol * jnp.abs(top[0])),
        "lanczos: the top Ritz pairs did not converge (residual above rtol |lambda_1|): raise num_iter",
    )
    top = checks.finite_result("lanczos: the Ritz values or their residuals", (top, residual))[0]
    if not return_vectors:
        return top
    return top, Q[:m].T @ evecs[:, ::-1][:, :k]


def _ravel(problem, params):
    """`problem.ravel(params)` after checking that `params` are this problem's (structure, shapes, dtypes),
    as the flows check their start."""
    checks.same_structure("params", params, problem.params, "problem.params")
    return problem.ravel(params)


def _rademacher(key, flat, num_samples, *, minimum: int = 2):
    """`num_samples` Rademacher vectors shaped like `flat`: at least `minimum`, 2 where a standard error is
    formed from them."""
    num_samples = checks.positive_int("num_samples", num_samples)
    if num_samples < minimum:
        raise ValueError(f"num_samples must be >= {minimum} (a standard error needs two), got {num_samples}")
    return jax.random.rademacher(key, (num_samples, flat.shape[0]), flat.dtype)


def _quadratic_forms(matvec, z):
    """z_j^T A z_j for each row z_j of `z`, `_PROBES_AT_ONCE` rows at a time."""
    return lax.map(lambda v: v @ matvec(v), z, batch_size=_PROBES_AT_ONCE)


def _hutchinson(matvec, key, flat, num_samples):
    """(mean, standard error) of z^T A z over `num_samples` Rademacher z: Hutchinson's estimate of tr A."""
    q = _quadratic_forms(matvec, _rademacher(key, flat, num_samples))
    return q.mean(), q.std(ddof=1) / jnp.sqrt(q.shape[0])


def _residual_operator(problem, params):
    """v -> R v, R = (1/n) sum_i r_i . grad^2 f_i: the Hessian of phi = (1/n) sum_i sg(r_i) . f_i (square
    loss), linearised once."""
    flat, unravel = _ravel(problem, params)
    r = lax.stop_gradient(problem.residuals(params))

    def phi(v):
        return jnp.sum(r * problem.outputs(unravel(v))) / problem.n

    return jax.linearize(jax.grad(phi), flat)[1]


def _sum_over_basis(fn, flat):
    """sum_j fn(j, e_j) over the standard basis of R^p, evaluated `_CHUNK` coordinates at a time."""
    p = flat.shape[0]
    terms = lax.map(
        lambda j: fn(j, jnp.zeros_like(flat).at[j].set(1.0)), jnp.arange(p), batch_size=min(p, _CHUNK)
    )
    return jnp.sum(terms)
