"""Discrete dynamics: GD, minibatch SGD and label-noise SGD, each one `lax.scan` over steps.

All three are the step theta_{k+1} = theta_k - eta g_k (an `optax.sgd` update) with

- GD:                g_k = grad L(theta_k), the full-batch gradient.
- SGD:               g_k = (1/B) sum_{i in batch_k} g_i, a minibatch of B examples drawn with
                     replacement (or without, `replace=False`), g_i = J_i^T r_i.
- label-noise SGD:   g_k is the gradient of (1/(2B)) sum_{i in batch_k} (f(x_i) - y_i - eps_i)^2 with
                     fresh eps_i ~ N(0, sigma^2) every step (or +-sigma, `noise="rademacher"`); full batch
                     by default. With `noise_batch_size` = B_eps the label noise falls instead on B_eps
                     examples drawn apart from the gradient batch (with replacement):
                     g_k = grad L_batch - (1/B) sum_{j in noise batch} eps_j grad f_j (the full-batch
                     gradient plus label noise on one random example is B = n, B_eps = 1).
- SVAG:              (Li, Malladi & Arora 2021) theta_{k+1} = theta_k - (eta/l) grad[c1 L_1 + c2 L_2],
                     L_1, L_2 two independent minibatch losses (label-noisy with `sigma`),
                     c_{1,2} = (1 +- sqrt(2l-1))/2:
                     mean (eta/l) grad L and covariance (eta^2/l) Sigma a step, so per unit of t = k eta / l
                     the drift and the diffusion of SGD's SDE; l = 1 is SGD.

Step k draws its randomness from `flows.step_keys(key, k)`: the same key gives the same bits, and an
ensemble is `jax.vmap` over keys. Parameters are
saved every `save_every` steps, at t = eta * k (`flows.timescale`), together with the metrics (the
full-batch loss, and any given). The step's randomness is a validated `flows.StepNoise` and the save
specification a validated `Steps`. A run whose loss becomes non-finite has `result = DIVERGED` and, with
`throw=True` (the default), raises `equinox.EquinoxRuntimeError` naming the step (`flows/_trajectory.py`).
"""

from collections.abc import Callable, Mapping
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, PRNGKeyArray, PyTree

from models import Problem, checks
from models.problem import check_start

from . import _brownian as brownian
from . import timescale
from ._brownian import step_keys
from ._integrate import progress_meter
from ._noise import StepNoise
from ._trajectory import DIVERGED, SUCCESSFUL, Metric, Trajectory, compiled, default_metrics, evaluate, finish

__all__ = ["Steps", "gd", "sgd", "label_noise_sgd", "svag"]


class Steps(eqx.Module):
    """What a discrete run does and keeps, validated when built: `steps` steps (a multiple of `save_every`)
    from step index `first_step` (may be traced), saving the parameters (`save_params`) and the metrics
    every `save_every` steps; `progress` shows a tqdm bar over the steps (diffrax's `TqdmProgressMeter`,
    refreshed about 100 times a run; under `jax.vmap`, the slowest run's progress)."""

    steps: int = eqx.field(static=True, converter=lambda k: checks.positive_int("steps", k))
    save_every: int = eqx.field(static=True, converter=lambda k: checks.positive_int("save_every", k))
    first_step: Array = eqx.field(converter=lambda k: checks.step_index("first_step", k))
    save_params: bool = eqx.field(static=True, default=True)
    progress: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.steps % self.save_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of save_every ({self.save_every})")


def gd(
    problem: Problem,
    params0: PyTree,
    *,
    steps: int,
    eta,
    save_every: int = 1,
    metrics: Mapping[str, Metric] | None = None,
    save_params: bool = True,
    first_step: int = 0,
    optimizer: Callable[..., optax.GradientTransformation] | optax.GradientTransformation | None = None,
    progress: bool = False,
    throw: bool = True,
) -> Trajectory:
    """Full-batch gradient descent theta_{k+1} = theta_k - eta grad L(theta_k), saved at t = eta * k.

    **Arguments:** `problem`, `params0` (a pytree shaped like `problem.params`), `steps` (a multiple of
    `save_every`), step size `eta > 0`, `metrics` (name -> `fn(problem, params)`, the loss is always
    recorded), `save_params` (keep the parameters or only the metrics), `first_step` (the index k of the
    first step: a run continued from step k, e.g. a chunk of a long run, draws the same noise and saves at
    the same times t = eta * k as one that never stopped; `analysis.store.resumable`), `optimizer` (an optax
    optimizer fed the step's gradient, with eta its step size, so that the clock t = eta * k and the
    optimizer's step size are one number: its constructor, called as `optimizer(eta)`, e.g. `optax.adam`
    or `functools.partial(optax.sgd, momentum=0.9)`; or a transformation built by
    `optax.inject_hyperparams`, whose `learning_rate` must equal eta; default `optax.sgd`, the step
    above; the SDEs remain the limits of plain SGD only; its state starts afresh at `first_step`),
    `progress` (a tqdm bar over the steps, as diffrax's `TqdmProgressMeter`; the numbers are the same
    bits), `throw` (raise on divergence, or return the Trajectory with its `result` code;
    `flows/_trajectory.py`).

    **Returns:** a `Trajectory` with `steps // save_every + 1` saved points.

    **Raises:** `ValueError` naming a bad argument (`eta` not > 0, `steps` not a multiple of `save_every`,
    `params0` not shaped like `problem.params` or not finite, an `optimizer` that is not an optax one, or
    one whose step size is not eta or cannot be read: a transformation built with its own step size); with
    `throw=True`, `equinox.EquinoxRuntimeError` naming the step where the loss became non-finite.

    **Example** (doctested, as the other main flows' examples):

    ```pycon
    >>> import jax
    >>> from models import Problem, TwoLayerNet, data
    >>> X = data.gaussian(jax.random.key(0), 16, 3)
    >>> problem = Problem(TwoLayerNet(3, 8, key=jax.random.key(1), activation="tanh"), X, X[:, 0])
    >>> run = gd(problem, problem.params, steps=200, eta=0.1, save_every=100)
    >>> run.ts.tolist(), run.clock  # gradient-flow time t = eta k at steps 0, 100, 200
    ([0.0, 10.0, 20.0], 't')
    >>> bool(run.stats["loss"][-1] < 0.5 * run.stats["loss"][0])
    True

    ```
    """
    noise = StepNoise(batch_size=problem.n)
    save = Steps(steps, save_every, first_step, save_params, progress)
    return _discrete("gd", problem, params0, None, eta, noise, save, metrics, throw, optimizer=optimizer)


def sgd(
    problem: Problem,
    params0: PyTree,
    *,
    steps: int,
    eta,
    batch_size: int,
    key: PRNGKeyArray,
    replace: bool = True,
    save_every: int = 1,
    metrics: Mapping[str, Metric] | None = None,
    save_params: bool = True,
    first_step: int = 0,
    optimizer: Callable[..., optax.GradientTransformation] | optax.GradientTransformation | None = None,
    progress: bool = False,
    throw: bool = True,
) -> Trajectory:
    """Minibatch SGD: g_k = (1/B) sum_{i in batch_k} g_i, B = `batch_size` in 1..n, drawn with replacement
    (or without, `replace=False`) afresh every step from `key`, fed to `optimizer` (as for `gd`; default
    `optax.sgd`).

    **Arguments:** `batch_size` (B in 1..n), `key` (step k draws from `flows.step_keys(key, k)`),
    `replace`; the others as for `gd`.

    **Returns:** a `Trajectory` with `steps // save_every + 1` saved points, recording eta and its
    `StepNoise`.

    **Raises:** as `gd`, and `ValueError` for a `batch_size` outside 1..n or a missing key."""
    noise = StepNoise(batch_size=checks.batch_size(batch_size, problem.n), replace=replace)
    save = Steps(steps, save_every, first_step, save_params, progress)
    return _discrete("sgd", problem, params0, key, eta, noise, save, metrics, throw, optimizer=optimizer)


def label_noise_sgd(
    problem: Problem,
    params0: PyTree,
    *,
    steps: int,
    eta,
    sigma,
    key: PRNGKeyArray,
    batch_size: int | None = None,
    noise_batch_size: int | None = None,
    noise: Literal["gaussian", "rademacher"] = "gaussian",
    replace: bool = True,
    save_every: int = 1,
    metrics: Mapping[str, Metric] | None = None,
    save_params: bool = True,
    first_step: int = 0,
    progress: bool = False,
    throw: bool = True,
) -> Trajectory:
    """Label-noise SGD: every step the labels are y_i + eps_i with fresh eps_i ~ N(0, sigma^2)
    (`noise="gaussian"`) or uniform on {-sigma, +sigma} (`"rademacher"`); both have variance sigma^2.
    Full batch (label-noise GD) unless `batch_size` is given. `noise_batch_size` = B_eps puts the label
    noise on B_eps examples drawn apart from the gradient batch (the module docstring gives the step; its
    slow time is tau = eta^2 sigma^2 B_eps k / B^2, `flows.timescale`).

    **Arguments:** `sigma >= 0`, `noise` (`"gaussian"` or `"rademacher"`), `batch_size` (default n),
    `noise_batch_size` (B_eps, or None: the noise on the gradient batch); the others as for `sgd`.

    **Returns:** a `Trajectory`, recording eta and its `StepNoise` (`Trajectory.slow_time()` gives tau).

    **Raises:** as `sgd`, and `ValueError` for a problem without residuals (cross-entropy has no labels to
    perturb) or a bad `sigma`, `noise` or `noise_batch_size`."""
    step_noise = StepNoise(
        batch_size=checks.batch_size(batch_size, problem.n),
        sigma=checks.non_negative("sigma", sigma),  # required: without it this would be plain GD or SGD
        replace=replace,
        noise=noise,
        noise_batch_size=noise_batch_size,
    )
    save = Steps(steps, save_every, first_step, save_params, progress)
    return _discrete("label_noise_sgd", problem, params0, key, eta, step_noise, save, metrics, throw)


def svag(
    problem: Problem,
    params0: PyTree,
    *,
    steps: int,
    eta,
    batch_size: int,
    l: int,  # noqa: E741 (the paper's name)
    key: PRNGKeyArray,
    sigma=None,
    replace: bool = True,
    save_every: int = 1,
    metrics: Mapping[str, Metric] | None = None,
    save_params: bool = True,
    first_step: int = 0,
    progress: bool = False,
    throw: bool = True,
) -> Trajectory:
    """SVAG (Li, Malladi & Arora 2021, "On the validity of modeling SGD with SDEs"):
    theta_{k+1} = theta_k - (eta/l) grad[c1 L_1 + c2 L_2](theta_k) with two independent minibatches of
    `batch_size` (label-noisy with `sigma`, if given), c_{1,2} = (1 +- sqrt(2l - 1)) / 2, saved at
    t = k eta / l. Its steps have mean -(eta/l) grad L and covariance (eta^2/l) Sigma (Sigma the covariance of
    one minibatch gradient): as l grows it converges weakly to the SDE of SGD at step eta (`sgd_sde`,
    `label_noise_sde`) at rate 1/l; l = 1 is `sgd` (`label_noise_sgd`) bit for bit. Step k draws the first
    batch as SGD does and the second from its bridge key (`flows.step_keys`). Costs two minibatch
    gradients a step.

    **Arguments:** `l >= 1`, the SVAG factor; `sigma` (label noise on both batches, or None); the others
    as for `sgd` (`eta` is the SGD step the limit is taken at).

    **Returns:** a `Trajectory` in t = k eta / l.

    **Raises:** as `sgd`, and `ValueError` for `l` not a positive integer."""
    l = checks.positive_int("l", l)  # noqa: E741
    noise = StepNoise(batch_size=checks.batch_size(batch_size, problem.n), sigma=sigma, replace=replace)
    save = Steps(steps, save_every, first_step, save_params, progress)
    eta = checks.positive("eta", eta)
    return _discrete("svag", problem, params0, key, eta / l, noise, save, metrics, throw, svag_l=l)


def _discrete(
    name,
    problem,
    params0,
    key,
    eta,
    noise: StepNoise,
    save: Steps,
    metrics,
    throw,
    svag_l=None,
    optimizer=None,
):
    params0 = check_start(problem, params0)
    if noise.sigma is not None:
        problem.require_square(f"{name} with label noise")
    eta = checks.positive("eta", eta)
    if key is None and (noise.sigma is not None or noise.batch_size < problem.n):
        raise ValueError(f"{name} needs a PRNG key")
    if optimizer is not None:
        optimizer, params0 = _optimizer(optimizer, eta, params0)
    traj, first_bad = _scan(
        problem, params0, key, eta, noise, save, default_metrics(metrics), svag_l, optimizer
    )
    recorded = None if noise.sigma is None and noise.batch_size == problem.n else noise  # GD: none
    traj = eqx.tree_at(lambda tr: (tr.eta, tr.noise), traj, (eta, recorded), is_leaf=lambda x: x is None)

    def where():
        k = int(first_bad)
        t = float(timescale.flow_time(k, eta))
        step = "eta" if svag_l is None else "eta / l"
        given = "" if svag_l is None else f" (eta = {float(eta) * svag_l:.4g}, l = {svag_l})"
        return f" at step {k} (t = {step} * k = {t:.4g}) with {step} = {float(eta):.4g}{given}; reduce eta"

    return finish(name, traj, throw, where)


def _optimizer(optimizer, eta, params0) -> tuple[optax.GradientTransformation, PyTree]:
    """(The optax optimizer stepping at eta, params0): eta is the run's one step size (`gd`'s `optimizer`).
    `optimizer(eta)` for a constructor; an `optax.inject_hyperparams` transformation as it is, once its
    `learning_rate` is checked to equal eta (eagerly, or traced by `eqx.error_if` on the params0 returned,
    which every step consumes).

    **Raises:** `ValueError` naming `optimizer` for anything else: a transformation built with a step size
    of its own (`optax.adam(1e-3)`), which would run at that step while the clock counts t = eta k."""
    if isinstance(optimizer, optax.GradientTransformation):
        hyperparams = getattr(optimizer.init(params0), "hyperparams", None)
        if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
            raise ValueError(
                "optimizer is an optax transformation built with a step size of its own, which the run "
                "cannot read: its clock t = eta * k would count another step. Pass its constructor, called "
                "with eta (optimizer=optax.adam, or functools.partial(optax.sgd, momentum=0.9)), or build "
                "it with optax.inject_hyperparams(...)(learning_rate=eta)"
            )
        lr = jnp.asarray(hyperparams["learning_rate"], jnp.result_type(eta))
        disagree = jnp.abs(lr - eta) > 1e-6 * jnp.abs(eta)  # one clock to six digits (lr may be float32)
        what = "optimizer's learning_rate differs from eta: the run's clock t = eta * k needs them equal"
        if checks.is_concrete((lr, eta)):
            if bool(disagree):
                raise ValueError(f"{what} (learning_rate = {float(lr):.6g}, eta = {float(eta):.6g})")
            return optimizer, params0
        return optimizer, eqx.error_if(params0, disagree, what)
    if not callable(optimizer):
        raise ValueError(
            f"optimizer must be an optax optimizer's constructor (optax.adam) or an optax.inject_hyperparams "
            f"transformation, got {type(optimizer).__name__}"
        )
    built = optimizer(eta)
    if not isinstance(built, optax.GradientTransformation):
        raise ValueError(
            f"optimizer(eta) must give an optax.GradientTransformation, got {type(built).__name__}"
        )
    return built, params0


@compiled
def _scan(problem, params0, key, eta, noise: StepNoise, save: Steps, metrics, svag_l, optimizer):
    """The run as one `lax.scan` over saves of a `lax.scan` over steps. Returns the Trajectory (its
    `result` DIVERGED if a step's loss, or the last loss, is not finite) and the first such step (-1:
    none)."""
    n, batch_size, sigma, noise_batch_size = problem.n, noise.batch_size, noise.sigma, noise.noise_batch_size
    opt = optax.sgd(eta) if optimizer is None else optimizer
    draw = brownian.normal if noise.noise == "gaussian" else brownian.rademacher

    def noisy_loss(params, k_batch, k_noise):
        """One step's minibatch loss with its label noise, from the step's batch and noise keys."""
        X, y = problem.X, problem.y
        if batch_size < n:
            idx = brownian.batch_indices(k_batch, n, batch_size, noise.replace)
            X, y = X[idx], y[idx]
        if sigma is None:
            return problem.loss(params, X, y)
        if noise_batch_size is None:
            return problem.loss(params, X, y + sigma * draw(k_noise, y.shape, y.dtype))
        k_idx, k_eps = jax.random.split(k_noise)
        j = brownian.batch_indices(k_idx, n, noise_batch_size)
        eps = sigma * draw(k_eps, (noise_batch_size, *y.shape[1:]), y.dtype)
        return problem.loss(params, X, y) - jnp.sum(eps * problem.outputs(params, problem.X[j])) / batch_size

    def minibatch_loss(params, k):
        if key is None:
            return problem.loss(params)
        k_batch, k_noise, k_bridge = step_keys(key, k)
        if svag_l is None:
            return noisy_loss(params, k_batch, k_noise)
        root = (2 * svag_l - 1) ** 0.5
        return (1 + root) / 2 * noisy_loss(params, k_batch, k_noise) + (1 - root) / 2 * noisy_loss(
            params, *jax.random.split(k_bridge)
        )

    def step(carry, _):
        params, state, k, first_bad = carry
        loss, g = jax.value_and_grad(minibatch_loss)(params, k)
        updates, state = opt.update(g, state)
        params = optax.apply_updates(params, updates)
        first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(loss), k, first_bad)
        return (params, state, k + 1, first_bad), None

    def record(params):
        return (params if save.save_params else None), evaluate(problem, params, metrics)

    saves = save.steps // save.save_every
    meter = progress_meter(save.progress, refresh_steps=max(1, saves // 100))

    def chunk(carry, _):
        carry, bar = carry
        carry, _ = lax.scan(step, carry, None, length=save.save_every)
        bar = meter.step(bar, (carry[2] - save.first_step) / save.steps)
        return (carry, bar), record(carry[0])

    init = (params0, opt.init(params0), save.first_step, jnp.asarray(-1))
    ((_, _, _, first_bad), bar), saved = lax.scan(chunk, (init, meter.init()), None, length=saves)
    meter.close(bar)
    saved = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), record(params0), saved)
    last = save.first_step + save.steps  # the loss after the last step, which no step saw
    first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(saved[1]["loss"][-1]), last, first_bad)
    result = jnp.where(first_bad >= 0, DIVERGED, SUCCESSFUL).astype(jnp.int32)
    ts = timescale.flow_time(save.first_step + jnp.arange(0, save.steps + 1, save.save_every), eta)
    return Trajectory(ts=ts, params=saved[0], stats=saved[1], clock="t", result=result), first_bad
