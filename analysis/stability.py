"""Linear stability of SGD at a global minimum (Wu, Wang & Su 2022), exactly and by their bound.

Near a global minimum theta* (r = 0) SGD with step eta and batch B is, to first order in
delta = theta - theta*,

    delta_{k+1} = (I - eta H_k) delta_k,    H_k = (1/B) sum_{i in batch_k} J_i^T J_i,

with J_i the Jacobian rows of example i (E H_k = G = (1/n) J^T J = H at the minimum). The linearised
residuals r = J delta then obey a closed recursion of size N = n k (outputs),
r_{k+1} = (I - (eta/B) K S_k) r_k, with K = J J^T the Gram matrix and S_k the counts of each example in
batch k. Their second moment
R_k = E r_k r_k^T evolves by the linear map

    T(R) = R - (eta/n)(K R + R K) + (eta^2/B^2) K (C o R) K,
    C_ab = E[c_e(a) c_e(b)] = alpha + beta [e(a) = e(b)]

(o the entrywise product, e(a) the example of residual row a; with replacement alpha = B(B-1)/n^2, beta = B/n;
without, alpha = B(B-1)/(n(n-1)), beta = B/n - alpha). The loss of the linearised dynamics is
E L_k = tr R_k / (2n), so theta* is *mean-square (linearly) stable* iff the spectral radius rho(T) <= 1, and
SGD started near it escapes like rho^k otherwise. Everything is computed on the range of K (directions of
theta that do not change the outputs are neutral), never with a p x p matrix: p may be large.

Wu et al. bound it through the alignment of the noise with the curvature. With Sigma_1(theta) the covariance
of one example's gradient g_i = J_i^T r_i and G the Gauss-Newton matrix,

    mu(theta) = tr(Sigma_1 G) / (2 L ||G||_F^2),

and SGD's noise covariance is v_B Sigma_1 (v_B = c_B^2 / B with the c_B of docs/conventions.md: 1/B with
replacement, (n-B)/(B(n-1)) without, 0 for the full batch B = n). Since
E L_{k+1} >= (eta^2/2) v_B tr(Sigma_1 G) >= eta^2 v_B mu ||G||_F^2 E L_k, a stable minimum satisfies

    ||H||_F <= 1 / (eta sqrt(v_B mu)) = sqrt(B / mu) / eta      (with replacement).

B = n is the full batch, GD, whatever `replace` says (docs/conventions.md), as in the flows: its criterion
is GD's, eta lambda_max(G) <= 2.

`min_alignment` is the mu of that argument at a minimum (the worst direction of the linearised model).
Mean-square stability is the strict criterion; a typical run follows the top Lyapunov exponent of the random
products instead, which is smaller (Jensen), so typical runs stay at some minima that are not mean-square
stable. `lyapunov_exponent` measures it. The SGD SDE (`flows.sgd_sde`) linearised at the minimum has its own
mean-square generator, which lacks the eta^2 K R K / n^2 term of the discrete map: `sde_rate` gives its
growth per step, and it does not see the discrete threshold.

`threshold` finds both thresholds without a search: T = I + eta (D + eta N) and the SDE's generator
D + eta P are a stable Lyapunov part D plus eta times a map that keeps PSD matrices PSD, so each turns
unstable exactly at eta = 1 / rho(-D^{-1} N) (or P), a Perron root (`_closed_threshold`).
"""

import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from flows import _brownian as brownian
from flows._numerics import GRAM_RCOND
from models import Problem, checks

__all__ = [
    "Criterion",
    "gram",
    "batch_covariance_factor",
    "mean_square_rate",
    "sde_rate",
    "lyapunov_exponent",
    "threshold",
    "gauss_newton_norms",
    "alignment",
    "min_alignment",
    "wu_bound",
    "second_moments",
    "label_noise_stationary_loss",
]

Criterion = Literal["mean_square", "sde", "lyapunov"]


# -- the pieces: Gram matrix, batch coefficients, the map on the range of K ------------------------------
def gram(problem: Problem, params: PyTree) -> Float[Array, "N N"]:
    """K = J J^T, the (N, N) Gram matrix of the per-output gradients (N = n k rows, example-major). Memory
    N p + N^2, cost N^2 p.

    **Arguments:** `problem`, `params`.

    **Returns:** K (N, N).

    **Raises:** `ValueError` for a problem without residuals (cross-entropy)."""
    problem.require_square("analysis.stability")
    J = problem.jacobian(params)
    return J @ J.T


def batch_covariance_factor(batch_size: int, n: int, replace: bool = True) -> float:
    """v_B = c_B^2 / B: the minibatch gradient's covariance is v_B Sigma_1. 1/B with replacement,
    (n-B)/(B(n-1)) without, 0 for the full batch B = n (GD, either way).

    **Arguments:** `batch_size` B, the number of examples `n`, `replace`.

    **Returns:** v_B, a Python float."""
    if replace and batch_size < n:
        return 1.0 / batch_size
    return 0.0 if n == 1 else (n - batch_size) / (batch_size * (n - 1))


def _batch_moments(batch_size: int, n: int, replace: bool) -> tuple[float, float]:
    """(alpha, beta) with E[c_i c_j] = alpha + beta [i = j] for the counts c of a minibatch (B = n: the full
    batch, every count 1)."""
    B = batch_size
    replace = replace and B < n
    alpha = B * (B - 1) / n**2 if replace else (B * (B - 1) / (n * (n - 1)) if n > 1 else 0.0)
    beta = B / n if replace else B / n - alpha
    return alpha, beta


class _Linearised:
    """The linearised dynamics at a minimum in the eigenbasis of K restricted to its range (host, float64).

    K = U diag(lam) U^T with lam > 0 kept; a residual second moment R = U X U^T is held as X (q, q).
    """

    def __init__(self, problem, params, batch_size, replace, rcond=GRAM_RCOND):
        K = np.asarray(gram(problem, params), np.float64)
        lam, U = np.linalg.eigh(K)
        keep = lam > rcond * max(lam.max(), 0.0)
        if not keep.any():
            raise ValueError("the Jacobian is zero at params: there is nothing to linearise")
        self.lam, self.U = lam[keep], U[:, keep]
        self.n = problem.n
        k = K.shape[0] // self.n
        self.example = np.repeat(np.arange(self.n), k)
        self.B = checks.batch_size(batch_size, self.n)
        self.replace = replace and self.B < self.n  # B = n is the full batch
        self.alpha, self.beta = _batch_moments(self.B, self.n, replace)
        self.same = (self.example[:, None] == self.example[None, :]).astype(np.float64)
        self.normK2 = float(np.sum(lam[keep] ** 2))  # ||K||_F^2

    def noise(self, X):
        """(1/B^2) Lam U^T (C o (U X U^T)) U Lam, the second-moment term of the minibatch (one matrix)."""
        Y = self.U @ X @ self.U.T
        CY = self.alpha * Y + self.beta * self.same * Y
        L = self.lam
        return L[:, None] * (self.U.T @ CY @ self.U) * L[None, :] / self.B**2

    def drift(self, X):
        L = self.lam
        return -(L[:, None] * X + X * L[None, :]) / self.n

    def gd_square(self, X):
        L = self.lam
        return L[:, None] * X * L[None, :] / self.n**2

    def discrete(self, eta):
        """X -> T(X), the exact one-step map of E r r^T."""
        return lambda X: X + eta * self.drift(X) + eta**2 * self.noise(X)

    def diffusion(self, X):
        """X -> P(X) = noise(X) - gd_square(X): the covariance of the minibatch gradient about the full one
        (PSD to PSD); zero for the full batch, whose gradient is GD's (exactly, not to round-off)."""
        if self.B == self.n:
            return np.zeros_like(X)
        return self.noise(X) - self.gd_square(X)

    def generator(self, eta):
        """X -> A(X) = drift(X) + eta P(X), the SDE's generator d E r r^T / dt: the discrete map less its GD
        term, over eta."""
        return lambda X: self.drift(X) + eta * self.diffusion(X)

    def matrix(self, linear_map):
        """The (q^2, q^2) matrix of a linear map on (q, q) matrices, column by column."""
        q = self.lam.shape[0]
        E = np.eye(q * q).reshape(q * q, q, q)
        return np.stack([linear_map(e).ravel() for e in E], axis=1)


def _check_minimum(problem: Problem, params: PyTree, rtol: float) -> None:
    problem.require_square("analysis.stability")
    loss = float(problem.loss(params))
    scale = float(jnp.mean(problem.y**2)) / 2 or 1.0
    if not np.isfinite(loss) or loss > rtol * scale:
        raise ValueError(
            f"params is not a global minimum: loss {loss:.3g} > {rtol:g} x mean(y^2)/2; the linear "
            "stability analysis assumes zero residuals (train further, or use `alignment` along the path)"
        )


# -- rates ------------------------------------------------------------------------------------------------
def mean_square_rate(
    problem: Problem,
    params: PyTree,
    *,
    eta,
    batch_size: int | None = None,
    replace: bool = True,
    method: Literal["dense", "power"] | None = None,
    num_iter: int = 5000,
    tol: float = 1e-10,
    min_loss_rtol: float = 1e-4,
    return_mode: bool = False,
):
    """rho(T): the factor by which E L (and E ||r||^2) of linearised SGD grows per step, asymptotically.

    The minimum is mean-square stable iff rho <= 1. `batch_size=None` is the full batch; with
    `replace=False` and B = n this is GD, rho = max_i (1 - eta lambda_i(G))^2. `method="dense"` takes the
    eigenvalues of the (q^2, q^2) matrix of T (q = rank K); `"power"` is matrix-free: T = I + eta A with
    A = D + eta N resolvent-positive, so rho(T) = 1 + eta a(A), and the abscissa a(A) is the root in s of a
    Perron root (`_abscissa`), which gives 1 - rho to within `tol` times 2 eta lambda_min(K) / n (power
    iteration on T itself would crawl: its spectrum crowds at 1 for small eta). Default: dense for q <= 24.

    **Arguments:** `problem`, `params` (a minimum), `eta`, `batch_size`, `replace`, `method`, and the power
    method's `num_iter` and `tol`; `min_loss_rtol` (how small the loss must be to count as a minimum);
    `return_mode`.

    **Returns:** rho, a Python float; with `return_mode`, `(rho, R)`: R (N, N), trace one, the second moment
    of the residuals that grows (or decays slowest) at exactly rho per step, T(R) = rho R. Started there,
    E L_k = rho^k E L_0.

    **Raises:** `ValueError` when `params` is not a minimum (its loss above `min_loss_rtol`
    mean(y^2) / 2), a problem without residuals, or a bad argument; `equinox.EquinoxRuntimeError` when the
    power method's two-sided bounds have not met.
    """
    eta = checks.positive_float("eta", eta)
    _check_minimum(problem, params, min_loss_rtol)
    lin = _Linearised(problem, params, batch_size, replace)
    rho, X = _mean_square_mode(lin, eta, method, checks.positive_int("num_iter", num_iter), tol)
    if not return_mode:
        return rho
    R = lin.U @ X @ lin.U.T
    return rho, R / np.trace(R)


def _mean_square_rate(lin, eta) -> float:
    return _mean_square_mode(lin, eta)[0]


def _mean_square_mode(lin, eta, method=None, num_iter=5000, tol=1e-10) -> tuple[float, np.ndarray]:
    q = lin.lam.shape[0]
    method = method or ("dense" if q <= 24 else "power")
    if method == "dense":
        w, V = np.linalg.eig(lin.matrix(lin.discrete(eta)))
        top = np.argmax(np.abs(w))
        X = np.real(V[:, top]).reshape(q, q)
        X = (X + X.T) / 2
        return float(np.abs(w[top])), X / np.trace(X)
    if method != "power":
        raise ValueError(f"method must be 'dense' or 'power', got {method!r}")
    a, X = _abscissa(lin, lambda X: eta * lin.noise(X), num_iter, tol)
    return 1 + eta * a, X


def _abscissa(lin, M, num_iter=5000, tol=1e-10) -> tuple[float, np.ndarray]:
    """(a, X): the spectral abscissa a of D + M, D(X) = -(Lam X + X Lam) / n and M mapping PSD matrices to
    PSD matrices (so D + M is resolvent-positive), and its PSD eigenvector X (trace one), (D + M)(X) = a X.

    For s > a(D) = -2 lam_min / n, (sI - D)^{-1} acts entrywise, X_ij -> X_ij / (s + (lam_i + lam_j) / n),
    and maps PSD matrices to PSD matrices; a(D + M) < s iff rho((sI - D)^{-1} M) < 1, and that Perron root
    falls as s grows (Damm & Hinrichsen 2001). So a is the root in s of rho((sI - D)^{-1} M) = 1, found by
    bisection, each side decided by `_perron`'s two-sided bounds. The mean-square rate is
    rho(T) = 1 + eta a(D + eta N): this gives 1 - rho to within `tol` times 2 eta lam_min / n (GD's own
    1 - rho at small eta), however crowded T's spectrum is at 1."""
    L = lin.lam
    low = -2 * L.min() / lin.n  # a(D): the bracket's bottom
    scale = abs(low)
    summed = (L[:, None] + L[None, :]) / lin.n

    def side(s):
        """(-1, X) if a < s, (1, X) if a > s, (0, X) if rho((sI - D)^{-1} M) is 1 to round-off."""
        rho, X, (lo, hi) = _perron(lambda Y: M(Y) / (s + summed), L.shape[0], num_iter, 1e-9, decide=1.0)
        return (-1 if hi < 1 else 1 if lo > 1 else 0), X

    high = 0.0
    sign, X = side(high)
    while sign > 0:
        high = 2 * high if high > 0 else scale
        sign, X = side(high)
    while sign and high - low > tol * scale:
        mid = (low + high) / 2
        sign, Y = side(mid)
        if sign > 0:
            low = mid
        else:
            high, X = mid, Y
    return high, X


def _perron(linear_map, q, num_iter=5000, tol=1e-10, decide=None) -> tuple[float, np.ndarray, tuple]:
    """(rho, X, (lo, hi)): the spectral radius of a linear map M on (q, q) matrices that maps PSD matrices to
    PSD matrices, its PSD eigenvector X (trace one), and two-sided bounds lo <= rho <= hi.

    Power iteration X <- M(X) / tr M(X) from ARPACK's estimate of the top eigenvector (`_krylov_start`;
    power iteration alone crawls where the spectrum is crowded), with Collatz-Wielandt's bounds for the
    PSD cone, checked every 8 steps: for Z positive definite, hi Z - M(Z) is PSD at
    hi = lambda_max(Z^{-1/2} M(Z) Z^{-1/2}), so rho <= hi (Z: the iterate, lifted by 1e-12 of its largest
    eigenvalue where it is singular); for any PSD Z != 0, M(Z) - a Z PSD gives rho >= a (Z: the iterate,
    and the iterate with its eigenvalues below 1e-8 of its largest dropped, which bounds rho from below
    where the Perron vector is singular). It stops when hi - lo <= `tol` hi, or, given `decide`, as soon as
    decide lies outside [lo, hi]. Cost O(q^3) a step. Raises `equinox.EquinoxRuntimeError` when the bounds
    have not met within `num_iter` steps, rather than return an unconverged ratio."""
    X = _krylov_start(linear_map, q)
    lo, hi = 0.0, np.inf
    for i in range(num_iter):
        Y = linear_map(X)
        Y = (Y + Y.T) / 2
        rate = np.trace(Y)
        if rate <= 0:  # the map sends I to 0 (e.g. no noise): its radius is 0
            return 0.0, X, (0.0, 0.0)
        if i % 8 == 7:
            w, V = np.linalg.eigh(X)
            lift = max(1e-12 * w[-1] - w[0], 0.0)
            Z, MZ = (
                (X, Y) if lift == 0 else (X + lift * np.eye(q), Y + lift * _symmetric(linear_map(np.eye(q))))
            )
            wz, Vz = np.linalg.eigh(Z)
            inv_root = (Vz / np.sqrt(wz)) @ Vz.T
            bounds = np.linalg.eigvalsh(inv_root @ MZ @ inv_root)
            hi = min(hi, bounds[-1])
            lo = max(lo, bounds[0] if lift == 0 else 0.0)
            if hi - lo > tol * hi:
                T = (V * np.where(w > 1e-8 * w[-1], w, 0.0)) @ V.T
                lo = max(lo, _subinvariance(linear_map(T), T, hi))
            if hi - lo <= tol * hi or (decide is not None and not lo <= decide <= hi):
                return float((lo + hi) / 2), Y / rate, (lo, hi)
        X = Y / rate
    raise eqx.EquinoxRuntimeError(
        f"stability: power iteration for a Perron root did not converge in num_iter = {num_iter} steps "
        f"(bounds {lo:.6g} <= rho <= {hi:.6g}); raise num_iter, or use method='dense' where q is small"
    )


def _symmetric(Y):
    return (Y + Y.T) / 2


def _krylov_start(linear_map, q) -> np.ndarray:
    """A start for `_perron`: the eigenvector of M's largest eigenvalue in magnitude (its Perron root) by
    ARPACK on the (q^2)-dimensional space, symmetrised and pushed into the interior of the PSD cone (the
    power iteration and its bounds then certify it); I / q where ARPACK does not converge."""
    flat = np.eye(q) / q
    if q < 3:
        return flat
    op = scipy.sparse.linalg.LinearOperator(
        (q * q, q * q), matvec=lambda v: linear_map(np.real(v).reshape(q, q)).ravel(), dtype=np.float64
    )
    try:
        _, V = scipy.sparse.linalg.eigs(op, k=1, which="LM", v0=flat.ravel(), tol=1e-10, maxiter=20 * q * q)
    except (scipy.sparse.linalg.ArpackNoConvergence, scipy.sparse.linalg.ArpackError):  # e.g. M = 0
        return flat
    X = np.real(V[:, 0]).reshape(q, q)
    X = (X + X.T) / 2
    X = X * np.sign(np.trace(X))
    w, U = np.linalg.eigh(X)
    if w[-1] <= 0:
        return flat
    X = (U * np.maximum(w, 1e-10 * w[-1])) @ U.T
    return X / np.trace(X)


def _subinvariance(Y, Z, hi) -> float:
    """The largest a in [0, hi] with Y - a Z PSD (to round-off, 1e-13 of |Y|), by bisection: for Y = M(Z),
    Z PSD, a lower bound on rho(M)."""
    Y = (Y + Y.T) / 2
    slack = 1e-13 * np.abs(Y).max()
    low, high = 0.0, hi
    for _ in range(60):
        mid = (low + high) / 2
        if np.linalg.eigvalsh(Y - mid * Z)[0] >= -slack:
            low = mid
        else:
            high = mid
    return low


def sde_rate(
    problem: Problem,
    params: PyTree,
    *,
    eta,
    batch_size: int | None = None,
    replace: bool = True,
    min_loss_rtol: float = 1e-4,
) -> float:
    """exp(eta a(A)): the growth of E L per step (time eta) for the minibatch-SGD SDE linearised at the
    minimum, a(A) the spectral abscissa of its mean-square generator
    A(R) = -(1/n)(K R + R K) + eta [(1/B^2) K (C o R) K - (1/n^2) K R K].
    Compare with `mean_square_rate`: T = I + eta A + eta^2 K R K / n^2. (Dense; q <= ~40.)

    **Arguments:** as `mean_square_rate`.

    **Returns:** the growth per step, a Python float.

    **Raises:** `ValueError` when `params` is not a minimum (its loss above `min_loss_rtol`
    mean(y^2) / 2), a problem without residuals, or a bad argument."""
    eta = checks.positive_float("eta", eta)
    _check_minimum(problem, params, min_loss_rtol)
    return _sde_rate(_Linearised(problem, params, batch_size, replace), eta)


def _sde_rate(lin, eta) -> float:
    abscissa = np.max(np.linalg.eigvals(lin.matrix(lin.generator(eta))).real)
    return float(np.exp(min(eta * abscissa, 700.0)))


def _closed_threshold(lin, criterion) -> float:
    """The eta at which the minimum turns unstable, in closed form, for the two criteria whose operators are
    affine in eta past the identity: the SDE's generator A = D + eta P (P = `_Linearised.diffusion`), and
    the discrete map T = I + eta (D + eta N) (N = `_Linearised.noise`), where rho(T) = 1 + eta a(D + eta N).
    D(X) = -(Lam X + X Lam) / n is stable and -D^{-1}, X_ij -> n X_ij / (lam_i + lam_j)
    = n int_0^inf e^{-s Lam/n} X e^{-s Lam/n} ds, maps PSD matrices to PSD matrices, as P and N do. For such
    a resolvent-positive operator a(D + eta M) < 0 iff eta rho(-D^{-1} M) < 1 (Damm & Hinrichsen 2001), so
    the threshold is 1 / rho(-D^{-1} M), a Perron root found by power iteration (`_perron`): matrix-free,
    O(q^3) a step, and its spectrum is not crowded at 1 as T's is for small eta. The dense abscissa would be
    O(q^6)."""
    L = lin.lam
    M = lin.diffusion if criterion == "sde" else lin.noise
    rho, _, _ = _perron(lambda X: lin.n * M(X) / (L[:, None] + L[None, :]), L.shape[0], tol=1e-8)
    return 1 / rho if rho > 0 else float("inf")


def lyapunov_exponent(
    problem: Problem,
    params: PyTree,
    *,
    eta,
    key: PRNGKeyArray,
    batch_size: int | None = None,
    replace: bool = True,
    steps: int = 20_000,
    min_loss_rtol: float = 1e-4,
) -> float:
    """The top Lyapunov exponent (1/k) log ||r_k|| of the random products r_{k+1} = (I - (eta/B) K S_k) r_k
    (per step, natural log), estimated over `steps` steps with renormalisation. A typical run escapes iff it
    is > 0; Jensen gives exponent <= (1/2) log rho(T), so this threshold lies above the mean-square one.

    **Arguments:** `problem`, `params` (a minimum), `eta`, the batches' `key`, `batch_size`, `replace`,
    `steps`, `min_loss_rtol`.

    **Returns:** the exponent, a Python float.

    **Raises:** `ValueError` when `params` is not a minimum (its loss above `min_loss_rtol`
    mean(y^2) / 2), a problem without residuals, or a bad argument."""
    eta = checks.positive("eta", eta)
    _check_minimum(problem, params, min_loss_rtol)
    lin = _Linearised(problem, params, batch_size, replace)
    return _lyapunov_exponent(lin, eta, key, checks.positive_int("steps", steps))


def _lyapunov_exponent(lin, eta, key, steps) -> float:
    K = jnp.asarray(lin.U * lin.lam @ lin.U.T)
    r0 = jnp.asarray(lin.U @ np.ones(lin.lam.shape[0]))
    example = jnp.asarray(lin.example)
    return float(_lyapunov(K, r0, example, key, jnp.asarray(eta), lin.B, lin.n, lin.replace, steps))


@functools.partial(jax.jit, static_argnames=("B", "n", "replace", "steps"))
def _lyapunov(K, r0, example, key, eta, B, n, replace, steps):
    def step(carry, k):
        r, total = carry
        kb = jax.random.fold_in(key, k)
        idx = brownian.batch_indices(kb, n, B, replace)
        counts = jnp.zeros(n, r.dtype).at[idx].add(1.0)[example]
        r = r - (eta / B) * K @ (counts * r)
        norm = jnp.linalg.norm(r)
        return (r / norm, total + jnp.log(norm)), None

    (_, total), _ = lax.scan(step, (r0 / jnp.linalg.norm(r0), 0.0), jnp.arange(steps))
    return total / steps


def threshold(
    problem: Problem,
    params: PyTree,
    *,
    batch_size: int | None = None,
    replace: bool = True,
    criterion: Criterion = "mean_square",
    key: PRNGKeyArray | None = None,
    steps: int = 20_000,
    rtol: float = 1e-4,
    eta_max: float | None = None,
) -> float:
    """The step size at which the minimum stops being stable: the root in eta of rho(T) = 1
    (`"mean_square"`) or of `sde_rate` = 1 (`"sde"`), both in closed form (`_closed_threshold`), or of the
    Lyapunov exponent = 0 (`"lyapunov"`, common random numbers from `key` for every eta), by bisection in
    log eta to relative `rtol`.

    The bracket's top is `eta_max`, by default 2 / lambda_max(G) (GD's threshold, above which no batch is
    mean-square stable) for the mean-square criterion and 20 times that for the others; `inf` is returned
    when the minimum is still stable there (gradient flow is stable at every eta).

    Cost, for N = n k outputs and p parameters: the Jacobian J (memory O(N p), never p x p), K = J J^T
    (O(N^2 p)) and its eigendecomposition (O(N^3)); then O(q^3) per power-iteration step on (q, q) matrices
    (q = rank K <= N) for the closed forms, or `steps` steps of O(N^2) per bisection point (Lyapunov).

    **Arguments:** `problem`, `params` (a minimum), `batch_size`, `replace`, `criterion` (`"mean_square"`,
    `"sde"` or `"lyapunov"`), `key` (for `"lyapunov"`), `steps`, `rtol`, `eta_max`.

    **Returns:** the threshold eta, a Python float (inf where the minimum is stable at `eta_max`).

    **Raises:** `ValueError` for another criterion, `"lyapunov"` without a key, or a point that is not a
    minimum."""
    _check_minimum(problem, params, 1e-4)
    lin = _Linearised(problem, params, batch_size, replace)
    gd_eta = 2 * lin.n / lin.lam.max()
    if criterion not in ("mean_square", "sde", "lyapunov"):
        raise ValueError(f"criterion must be 'mean_square', 'sde' or 'lyapunov', got {criterion!r}")
    if criterion == "lyapunov" and key is None:
        raise ValueError("criterion='lyapunov' needs a PRNG key")
    if eta_max is None:
        hi = gd_eta * (1 + 1e-9) if criterion == "mean_square" else 20 * gd_eta
    else:
        hi = checks.positive_float("eta_max", eta_max)
    steps = checks.positive_int("steps", steps)

    if lin.B == lin.n:  # the full batch is GD: stable up to 2 / lambda_max(G), and its SDE has no noise
        return float("inf") if criterion == "sde" or gd_eta >= hi else gd_eta
    if criterion != "lyapunov":
        eta = _closed_threshold(lin, criterion)
        return eta if eta < hi else float("inf")

    def unstable(eta) -> bool:
        return _lyapunov_exponent(lin, eta, key, steps) > 0

    if not unstable(hi):
        return float("inf")
    lo = hi
    while unstable(lo):
        lo /= 2
        if lo < 1e-12 * hi:
            raise ValueError("no stable step size found: is params a minimum?")
    while hi / lo - 1 > rtol:
        mid = np.sqrt(lo * hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return float(np.sqrt(lo * hi))


# -- the bound and the alignment of the noise -------------------------------------------------------------
def gauss_newton_norms(problem: Problem, params: PyTree) -> tuple[float, float]:
    """(||G||_F, lambda_max(G)) of G = (1/n) J^T J from the Gram matrix: ||K||_F / n and lambda_max(K) / n.
    At a global minimum G = H.

    **Arguments:** `problem`, `params`.

    **Returns:** (||G||_F, lambda_max(G)), Python floats."""
    lam = np.linalg.eigvalsh(np.asarray(gram(problem, params), np.float64))
    return float(np.sqrt(np.sum(lam**2)) / problem.n), float(lam[-1] / problem.n)


def alignment(problem: Problem, params: PyTree) -> Float[Array, ""]:
    """mu(theta) = tr(Sigma_1 G) / (2 L ||G||_F^2), the noise-alignment ratio of Wu et al. at any theta.

    Sigma_1 = (1/n) sum_i g_i g_i^T - gbar gbar^T is the covariance of one example's gradient g_i = J_i^T r_i,
    G = (1/n) J^T J. Computed through the (N, N) Gram matrix K = J J^T when N <= p
    (mu = [n sum_i ||K_{:,i} r_i||^2 - ||K r||^2] / (||r||^2 ||K||_F^2)), through G (p, p) otherwise.

    mu is 0/0 at a zero-loss point: raises (also under `jax.jit`) where ||r|| <= 1e3 eps ||y||, where the
    ratio would be one of round-off; `min_alignment` gives the constant at a minimum.

    **Arguments:** `problem`, `params` (off the zero-loss set).

    **Returns:** mu, a scalar.

    **Raises:** `equinox.EquinoxRuntimeError` (eagerly and traced) at a zero-loss point."""
    J = problem.jacobian(params)
    r = problem.residuals(params).reshape(-1)
    floor = (1e3 * jnp.finfo(r.dtype).eps) ** 2 * jnp.maximum(jnp.sum(problem.y**2), jnp.finfo(r.dtype).tiny)
    r = eqx.error_if(
        r,
        jnp.sum(r**2) <= floor,
        "stability.alignment is 0/0 at a zero-loss point (the residuals are round-off): use min_alignment",
    )
    n = problem.n
    N, p = J.shape
    k = N // n
    if N <= p:
        K = J @ J.T
        v = jnp.einsum("aib,ib->ia", K.reshape(N, n, k), r.reshape(n, k))  # v_i = K[:, rows_i] r_i
        num = n * jnp.sum(v**2) - jnp.sum((K @ r) ** 2)
        return num / (jnp.sum(r**2) * jnp.sum(K**2))
    G = J.T @ J / n
    g = jnp.einsum("ibp,ib->ip", J.reshape(n, k, p), r.reshape(n, k))  # per-example gradients
    gbar = g.mean(0)
    tr_sigma_g = jnp.mean(jnp.einsum("ip,pq,iq->i", g, G, g)) - gbar @ G @ gbar
    return tr_sigma_g / (jnp.sum(r**2) / n * jnp.sum(G**2))


def min_alignment(problem: Problem, params: PyTree, *, min_loss_rtol: float = 1e-4) -> float:
    """mu* = min over linearised residuals r in range(K) of [n sum_i ||K_{:,i} r_i||^2 - ||K r||^2] /
    (||r||^2 ||K||_F^2): the alignment constant of Wu et al.'s argument at a minimum, exactly (the smallest
    eigenvalue of (n blockdiag(K^2) - K^2) / ||K||_F^2 on the range of K).

    **Arguments:** `problem`, `params` (a minimum), `min_loss_rtol`.

    **Returns:** mu*, a Python float.

    **Raises:** `ValueError` when `params` is not a minimum (its loss above `min_loss_rtol`
    mean(y^2) / 2), a problem without residuals, or a bad argument."""
    _check_minimum(problem, params, min_loss_rtol)
    lin = _Linearised(problem, params, None, True)
    K = lin.U * lin.lam @ lin.U.T
    K2 = K @ K
    M = lin.n * lin.same * K2 - K2
    return float(np.linalg.eigvalsh(lin.U.T @ M @ lin.U)[0] / lin.normK2)


def wu_bound(eta, batch_size: int, *, mu, n: int | None = None, replace: bool = True) -> float:
    """The largest ||H||_F of a mean-square stable minimum: 1 / (eta sqrt(v_B mu)), i.e. sqrt(B / mu) / eta
    with replacement; without replacement v_B = (n-B)/(B(n-1)) needs `n` (`batch_covariance_factor`).

    **Arguments:** `eta`, `batch_size`, the alignment constant `mu`, `n`, `replace`.

    **Returns:** the bound, a Python float (inf for the full batch without replacement).

    **Raises:** `ValueError` for a bad `eta` or `mu`, or sampling without replacement without `n`."""
    eta = checks.positive_float("eta", eta)
    mu = checks.positive_float("mu", mu)
    if not replace and n is None:
        raise ValueError("wu_bound without replacement needs n")
    batch_size = checks.positive_int("batch_size", batch_size)
    if n is None:
        c = 1.0 / batch_size
    else:
        c = batch_covariance_factor(batch_size, n, replace)
    return float("inf") if c == 0 else 1.0 / (eta * np.sqrt(c * mu))


# -- second moments: the recursion in parameter space, and label noise's stationary level --------------------
def second_moments(
    problem: Problem,
    params: PyTree,
    cov0: Float[Array, "p p"],
    *,
    eta,
    steps: int,
    batch_size: int | None = None,
    replace: bool = True,
) -> Float[Array, "T p p"]:
    """M_k = E[(theta_k - theta*)(theta_k - theta*)^T] of linearised SGD from M_0 = `cov0`, exactly:
    M_{k+1} = M - eta (G M + M G) + (eta^2/B^2) J^T (C o (J M J^T)) J, symmetrised each step (the map
    preserves symmetry, but would amplify the antisymmetric part of its round-off). Parameter space (memory
    p^2, small p): the check against Monte Carlo; the stability analysis itself works with
    `mean_square_rate`.

    **Arguments:** `problem`, `params` (the minimum theta*), `cov0` (p, p), `eta`, `steps`, `batch_size`,
    `replace`.

    **Returns:** M_0, ..., M_steps, (steps + 1, p, p).

    **Raises:** `ValueError` for a `cov0` that is not (p, p), or a bad `eta`, `steps` or `batch_size`."""
    eta = checks.positive("eta", eta)
    B = checks.batch_size(batch_size, problem.n)
    J = problem.jacobian(params)
    n = problem.n
    example = jnp.repeat(jnp.arange(n), J.shape[0] // n)
    alpha, beta = _batch_moments(B, n, replace)
    C = alpha + beta * (example[:, None] == example[None, :]).astype(J.dtype)
    cov0 = jnp.asarray(cov0, J.dtype)
    if cov0.shape != (J.shape[1],) * 2:
        raise ValueError(f"cov0 must have shape (p, p) = {(J.shape[1],) * 2}, got {cov0.shape}")

    def step(M, _):
        JM = J @ M
        M = M - (eta / n) * (J.T @ JM + JM.T @ J) + (eta**2 / B**2) * J.T @ (C * (JM @ J.T)) @ J
        M = (M + M.T) / 2  # the map keeps M symmetric; its round-off is not damped, and grows, unless removed
        return M, M

    _, Ms = lax.scan(step, cov0, None, length=checks.positive_int("steps", steps))
    return jnp.concatenate([cov0[None], Ms])


def label_noise_stationary_loss(
    problem: Problem,
    params: PyTree,
    *,
    eta,
    sigma,
    batch_size: int | None = None,
    replace: bool = True,
    min_loss_rtol: float = 1e-4,
) -> float:
    """E L at stationarity of linearised label-noise SGD at a minimum (`flows.label_noise_sgd`, labels
    y_i + eps_i, eps ~ N(0, sigma^2) per drawn example): R* = T(R*) + (eta^2 sigma^2 / (B n)) K^2 and
    E L = tr R* / (2n).
    Finite iff the minimum is mean-square stable (rho(T) < 1): label noise keeps SGD hovering at a stable
    minimum and does not move its threshold. A dense solve on the range of K (q^2 unknowns, q = rank K).

    **Arguments:** `problem`, `params` (a minimum), `eta`, `sigma`, `batch_size`, `replace`,
    `min_loss_rtol`.

    **Returns:** E L, a Python float (inf where the minimum is not mean-square stable).

    **Raises:** `ValueError` when `params` is not a minimum (its loss above `min_loss_rtol`
    mean(y^2) / 2), a problem without residuals, or a bad argument."""
    eta = checks.positive_float("eta", eta)
    sigma = float(checks.non_negative("sigma", sigma))
    _check_minimum(problem, params, min_loss_rtol)
    lin = _Linearised(problem, params, batch_size, replace)
    if _mean_square_rate(lin, eta) >= 1:
        return float("inf")
    q = lin.lam.shape[0]
    Q = np.diag(eta**2 * sigma**2 / (lin.B * lin.n) * lin.lam**2)
    X = np.linalg.solve(np.eye(q * q) - lin.matrix(lin.discrete(eta)), Q.ravel()).reshape(q, q)
    return float(np.trace(X) / (2 * lin.n))
