"""The edge of stability on one CNN for GD, heavy-ball momentum and Adam, each against its limits: gradient
flow, the central flow and Edge Flow for GD; the central flows of momentum and Adam (Cohen, Damian et al.
2024; Marion 2026; the momentum and Adam flows derived in flows/_central.py).

A tanh CNN (`models.CNN`, square loss on one-hot targets) trained by full-batch GD (`optax.sgd(eta)`), heavy
ball (`optax.sgd(eta, momentum=beta)`) and Adam (`optax.adam(eta, b1, b2)`), one column each, in t = eta k:

- (a-c) the loss: the optimizer as it is (thin) and averaged over a centred window of `window` steps, and
  each limit's prediction of that average (the central flows' L + (1/2) <Sigma, H>, Edge Flow's
  (1/2) [L(c + rho u) + L(c - rho u)], gradient flow's loss);
- (d-f) the top eigenvalue each flow holds, over its edge (`threshold`: 2 / eta for GD, 2 (1 + beta) / eta
  for heavy ball; for Adam 2 (1 + b1) / (eta (1 - b1)) on the preconditioned Hessian), and for GD and heavy
  ball the optimizer's own lambda_max(H) over the same edge.

Data: quick, scikit-learn's 8 x 8 digits 0-3 (the first n of a fixed shuffle, a fraction `flip` of the
labels moved to the next class); paper, CIFAR-10's first 4 classes, read from the folder `--set
cifar10=PATH` names (or $SHARPFLOW_CIFAR10; nothing is downloaded). float32.

Estimators: losses exact; the optimizers' lambda_max(H) by 40 Lanczos steps (`hessian.lambda_max`) at the
saves; the flows' eigenvalues are their own tracked ones (`flows.central_flow`, `flows.edge_flow`); single
deterministic runs. The summary prints each limit's mean and largest relative error against the averaged
loss over the stretch where the central flow holds an eigenvalue at the edge, and each run's seconds.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import Figure, main, tanh_cnn

import flows
from analysis import hessian, plots, statistics

PRESETS = {
    "smoke": dict(data="digits", cifar10=None, n=16, channels=(2,), flip=0.2, steps=8, saves=4, window=2,
                  gd=0.5, momentum=(0.3, 0.6), adam=(0.5, 0.99, 0.01), num_eigs=1),
    "quick": dict(data="digits", cifar10=None, n=128, channels=(4, 8), flip=0.2, steps=400, saves=20,
                  window=40, gd=0.7, momentum=(0.3, 0.6), adam=(0.5, 0.99, 0.01), num_eigs=3),
    "paper": dict(data="cifar10", cifar10=None, n=1000, channels=(32, 32), flip=0.0, steps=2000, saves=100,
                  window=100, gd=0.08, momentum=(0.3, 0.07), adam=(0.5, 0.99, 0.0005), num_eigs=3),
}  # fmt: skip
OPTIMIZERS = ("GD", "momentum", "Adam")


def setups(cfg):
    """name -> (eta, the optax optimizer, the central flow's `optimizer`)."""
    beta, eta_m = cfg["momentum"]
    b1, b2, eta_a = cfg["adam"]
    return {
        "GD": (cfg["gd"], None, None),
        "momentum": (eta_m, functools.partial(optax.sgd, momentum=beta), flows.Momentum(beta)),
        "Adam": (eta_a, functools.partial(optax.adam, b1=b1, b2=b2), flows.Adam(b1, b2)),
    }


def timed(fn):
    """(fn(), its wall time in seconds, compilation included)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def run_one(P, cfg, name):
    """One column: the optimizer (every step kept), its central flow and, for GD, gradient flow and Edge Flow,
    read at the saves."""
    eta, optax_optimizer, cf_optimizer = setups(cfg)[name]
    steps = cfg["steps"]
    ks = np.arange(0, steps + 1, steps // cfg["saves"])
    ts = jnp.asarray(ks * eta, P.X.dtype)
    run, run_s = timed(
        lambda: flows.gd(P, P.params, steps=steps, eta=eta, save_every=1, optimizer=optax_optimizer)
    )
    out = {"t": np.asarray(ts), "eta": np.asarray(eta), "loss": np.asarray(run.stats["loss"])}
    out["mean_loss"] = np.asarray(statistics.time_average(run, cfg["window"]).stats["loss"])[ks]
    if name != "Adam":  # Adam's edge is on the preconditioned Hessian, whose nu the run does not keep
        lam = [hessian.lambda_max(P, run.at(int(k))) for k in ks]
        out["lambda"] = np.asarray([float(v) for v in lam])
    seconds = {"optimizer": run_s}
    cf, seconds["central flow"] = timed(
        lambda: flows.central_flow(
            P, P.params, eta=eta, t1=float(ts[-1]), ts=ts, num_eigs=cfg["num_eigs"], optimizer=cf_optimizer,
            save_params=False,
        )
    )  # fmt: skip
    out |= {
        "cf_predicted": np.asarray(cf.stats["predicted_loss"]),
        "cf_lambda": np.asarray(cf.stats["eigenvalues"][:, 0]),
        "threshold": np.asarray(cf.stats["threshold"]),
        "cf_edge_count": np.asarray(cf.stats["edge_count"]),
    }
    if name == "GD":
        gf, seconds["gradient flow"] = timed(
            lambda: flows.gradient_flow(P, P.params, t1=float(ts[-1]), ts=ts, save_params=False)
        )
        ef, seconds["Edge Flow"] = timed(
            lambda: flows.edge_flow(P, P.params, eta=eta, t1=float(ts[-1]), ts=ts, save_params=False)
        )
        out |= {
            "gf_loss": np.asarray(gf.stats["loss"]),
            "ef_predicted": np.asarray(ef.stats["predicted_loss"]),
            "ef_lambda": np.asarray(ef.stats["sharpness"]),
        }
    return out | {f"seconds {k}": np.asarray(v) for k, v in seconds.items()}


def compute(cfg, progress, part):
    P = tanh_cnn(cfg, "square")
    return {name: part(name, lambda name=name: run_one(P, cfg, name)) for name in OPTIMIZERS}


LIMITS = {
    "cf_predicted": ("central flow", "--"),
    "ef_predicted": ("Edge Flow", "-."),
    "gf_loss": ("gradient flow", ":"),
}


def errors(r):
    """limit -> (mean, max) relative error against the averaged loss where the central flow is at the edge."""
    use = (r["cf_edge_count"] > 0) & np.isfinite(r["mean_loss"])
    if not use.any():
        return {}
    target = r["mean_loss"][use]
    return {
        LIMITS[key][0]: (float(np.mean(e)), float(np.max(e)))
        for key in LIMITS
        if key in r
        for e in [np.abs(r[key][use] / target - 1)]
    }


def draw(cfg, r, path):
    fig, axes = plots.figure(len(OPTIMIZERS), 2, width=4.0, height=3.1)
    for c, name in enumerate(OPTIMIZERS):
        e = r[name]
        eta = float(e["eta"])
        ax_loss, ax_sharp = axes[c], axes[len(OPTIMIZERS) + c]
        ax_loss.plot(np.arange(e["loss"].shape[0]) * eta, e["loss"], color="0.6", lw=0.4)
        ax_loss.plot(e["t"], e["mean_loss"], "k-", lw=2, label=f"{name}, averaged")
        for key, (label, style) in LIMITS.items():
            if key in e:
                ax_loss.plot(e["t"], e[key], style, lw=1.4, label=label)
        ax_loss.set(
            xlabel="t = η k", ylabel="training loss", yscale="log", title=f"({'abc'[c]}) {name}, η = {eta}"
        )
        # Adam's first point is its first step's, taken with the bias-corrected nu of one gradient: no edge
        first = 1 if name == "Adam" else 0
        ax_sharp.plot(
            e["t"][first:], (e["cf_lambda"] / e["threshold"])[first:], "--", lw=1.4, label="central flow"
        )
        if "ef_lambda" in e:
            ax_sharp.plot(e["t"], eta * e["ef_lambda"] / 2, "-.", lw=1.4, label="Edge Flow")
        if "lambda" in e:
            ax_sharp.plot(e["t"], e["lambda"] / e["threshold"], "k-", lw=1.2, label=name)
        ax_sharp.axhline(1.0, color="0.4", lw=1.0, ls=":", label="edge")
        what = "λ_max(D^½ H D^½)" if name == "Adam" else "λ_max(H)"
        ax_sharp.set(xlabel="t = η k", ylabel=f"{what} / edge", title=f"({'def'[c]}) {name}: sharpness")
    for ax in axes:
        ax.legend(fontsize=6, loc="best", framealpha=0.8)
    return plots.save(fig, path)


def summary(cfg, r):
    for name in OPTIMIZERS:
        e = r[name]
        errs = ", ".join(f"{k} {m:.1%} on average ({x:.1%} at most)" for k, (m, x) in errors(e).items())
        secs = ", ".join(f"{k[8:]} {float(v):.1f} s" for k, v in e.items() if k.startswith("seconds "))
        where = f"{name} (eta = {float(e['eta'])})"
        print(f"{where}: against the averaged loss at the edge: {errs or 'no edge'}; {secs}")


FIGURE = Figure("edge_flows_cnn", __doc__, PRESETS, compute, draw, summary, parts=lambda cfg: len(OPTIMIZERS))

if __name__ == "__main__":
    main(FIGURE)
