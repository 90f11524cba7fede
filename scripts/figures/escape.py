"""SGD escapes a sharp minimum exponentially fast past the linear-stability threshold, and stays below it.

A two-layer tanh net (init scale 2) is trained to a sharp global minimum theta* by GD with a small step.
`analysis.stability` gives, at batch size B, three thresholds on eta: the exact mean-square one (rho(T) = 1),
the typical-run one (top Lyapunov exponent = 0), and the one the minibatch SDE would predict (its linearised
mean-square generator); below, Wu et al.'s necessary bound 1 / (||H||_F sqrt(v_B mu*)).

- (a) SGD from theta* + a 1e-5 perturbation at three step sizes (below both thresholds, between, above):
  the mean loss over seeds (solid) against L_0 rho^k, and the median (dashed) against L_0 exp(2 lambda k),
  lambda the Lyapunov exponent.
- (b) label-noise SGD at the same minimum: below the threshold it hovers at the predicted stationary loss
  (dotted), above it escapes just the same: label noise does not move the threshold.
- (c) at a step size where SGD escapes, the SGD SDE (Euler, 8 substeps per step, same B) stays: its
  linearised mean square decays. The SDE does not see the discrete threshold.
- (d) the fraction of runs that escaped (loss > 100 L_0 by the end) against eta / eta_ms, measured, with the
  mean-square and typical-run thresholds marked: measured, not tuned to either.
- (e) the thresholds against B, with the bound.

float64: perturbations of 1e-5 around a minimum, losses down to 1e-20. `--seeds`: the ensemble size.

Estimators: the loss exactly along every path; the thresholds in closed form from the Gram matrix
(`stability.threshold`, `stability.mean_square_rate`, `stability.lyapunov_exponent`). The fraction escaped
is a count over seeds, its band binomial.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main

from analysis import ensembles, plots, stability
from flows import gd, label_noise_sgd, sgd, sgd_sde, timescale
from models import Problem, TwoLayerNet, data

PRESETS = {
    "smoke": dict(n=8, d=3, width=6, batch=2, sigma=0.1, steps=40, seeds=4, lyap_steps=200,
                  factors=[0.8, 1.5], sweep=[0.8, 1.25], batch_sizes=[1, 8], gd_eta=0.05, gd_steps=2000),
    "quick": dict(n=32, d=8, width=32, batch=4, sigma=0.1, steps=300, seeds=64, lyap_steps=2000,
                  factors=[0.8, 1.03, 1.5], sweep=[0.8, 0.95, 1.0, 1.05, 1.1, 1.25],
                  batch_sizes=[1, 4, 32], gd_eta=0.05, gd_steps=20000),
    "paper": dict(n=64, d=16, width=64, batch=8, sigma=0.1, steps=1000, seeds=512, lyap_steps=20000,
                  factors=[0.8, 1.03, 1.5], sweep=list(np.round(np.geomspace(0.7, 2, 15), 3)),
                  batch_sizes=[1, 2, 4, 8, 16, 32, 64], gd_eta=0.05, gd_steps=50000),
}  # fmt: skip


def sharp_minimum(cfg):
    kx, kn = jax.random.split(jax.random.key(0))
    X = data.gaussian(kx, cfg["n"], cfg["d"])
    P = Problem(
        TwoLayerNet(cfg["d"], cfg["width"], key=kn, activation="tanh", init_scale=2.0),
        X,
        jnp.sin(2 * X[:, 0]),
    )
    star = gd(P, P.params, steps=cfg["gd_steps"], eta=cfg["gd_eta"], save_every=cfg["gd_steps"]).final
    return P, star


def perturbed(P, star, size=1e-5):
    flat, unravel = P.ravel(star)
    v = jax.random.normal(jax.random.key(99), flat.shape)
    return unravel(flat + size * jnp.linalg.norm(flat) * v / jnp.linalg.norm(v))


def losses(run, keys):
    out = ensembles.ensemble(lambda k: run(k).stats["loss"], keys)
    return np.nan_to_num(np.asarray(out), nan=np.inf)


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): the thresholds, each eta factor, the SDE, each point of the escape
    sweep and each batch size."""
    P, star = sharp_minimum(cfg)
    B, key = cfg["batch"], jax.random.key(1)
    out = {"loss_star": np.asarray(P.loss(star))}
    th = part(
        "thresholds",
        lambda: {
            c: stability.threshold(
                P, star, batch_size=B, criterion=c, key=key, steps=cfg["lyap_steps"], rtol=1e-3
            )
            for c in ("mean_square", "lyapunov", "sde")
        },
    )
    out["threshold"] = th
    eta_ms = float(th["mean_square"])
    start = perturbed(P, star)
    L0 = out["L0"] = np.asarray(P.loss(start))
    keys = jax.random.split(jax.random.key(2), cfg["seeds"])
    kw = dict(steps=cfg["steps"], batch_size=B, save_params=False, throw=False)

    def at_factor(f):
        eta = f * eta_ms
        noise, sigma = dict(eta=eta, batch_size=B), cfg["sigma"]
        return {
            "sgd": losses(lambda k: sgd(P, start, eta=eta, key=k, **kw), keys),
            "label": losses(lambda k: label_noise_sgd(P, start, eta=eta, sigma=sigma, key=k, **kw), keys),
            "rho": stability.mean_square_rate(P, star, **noise),
            "lyap": stability.lyapunov_exponent(P, star, key=key, steps=cfg["lyap_steps"], **noise),
            "stationary": stability.label_noise_stationary_loss(P, star, sigma=sigma, **noise),
        }  # fmt: skip

    for f in cfg["factors"]:
        for k, v in part(f"factor-{f}", lambda f=f: at_factor(f)).items():
            out.setdefault(k, {})[str(f)] = v  # out[kind][factor]
        if progress:
            print(f"eta = {f} eta_ms: rho {float(out['rho'][str(f)]):.4f}", flush=True)

    def sde():
        eta = cfg["factors"][-1] * eta_ms
        ts = timescale.flow_time(np.arange(0, cfg["steps"] + 1, 10), eta)
        paths = losses(
            lambda k: sgd_sde(P, start, t1=float(ts[-1]), eta=eta, batch_size=B, key=k, substeps=8, ts=ts,
                              save_params=False, throw=False),
            keys,
        )  # fmt: skip
        return {"sde": paths, "sde_rate": stability.sde_rate(P, star, eta=eta, batch_size=B)}

    out |= part("sde", sde)

    def escaped(s):
        final = losses(lambda k: sgd(P, start, eta=s * eta_ms, key=k, **kw), keys)[:, -1]
        return {"escaped": np.mean(final > 100 * L0)}

    out["escaped"] = np.asarray([part(f"sweep-{s}", lambda s=s: escaped(s))["escaped"] for s in cfg["sweep"]])
    fro, _ = stability.gauss_newton_norms(P, star)
    mu = stability.min_alignment(P, star)

    def thresholds_at(b):
        kw_b = dict(batch_size=b, key=key, steps=cfg["lyap_steps"], rtol=1e-3)
        row = [b] + [
            stability.threshold(P, star, criterion=c, **kw_b) for c in ("mean_square", "lyapunov", "sde")
        ]
        bound = stability.wu_bound(1.0, b, mu=mu, n=P.n) / fro  # infinite at B = n: GD has no noise
        return {"row": np.asarray(row + [bound], dtype=float)}

    rows = []
    for b in cfg["batch_sizes"]:
        rows.append(part(f"batch-{b}", lambda b=b: thresholds_at(b))["row"])
        if progress:
            print(f"B = {b}: thresholds {rows[-1][1:]}", flush=True)
    out["by_batch"] = np.asarray(rows)
    return out


def draw(cfg, r, path):
    with np.errstate(over="ignore"):  # escaped runs, and rho^k above the threshold, overflow to inf
        return _draw(cfg, r, path)


def _draw(cfg, r, path):
    fig, ax = plots.figure(5, 1, width=3.6, height=3.2)
    k = np.arange(cfg["steps"] + 1)
    L0 = float(r["L0"])
    for f in cfg["factors"]:
        L = r["sgd"][str(f)]
        (line,) = ax[0].semilogy(k, L.mean(0), label=f"eta = {f} eta_ms (rho={float(r['rho'][str(f)]):.3f})")
        ax[0].semilogy(k, np.median(L, 0), "--", color=line.get_color())
        ax[0].semilogy(k, L0 * float(r["rho"][str(f)]) ** k, ":", color=line.get_color(), lw=1)
        ax[0].semilogy(k, L0 * np.exp(2 * float(r["lyap"][str(f)]) * k), "-.", color=line.get_color(), lw=0.8)
        (line,) = ax[1].semilogy(k, np.median(r["label"][str(f)], 0), label=f"eta = {f} eta_ms")
        if np.isfinite(r["stationary"][str(f)]):
            ax[1].axhline(float(r["stationary"][str(f)]), ls=":", color=line.get_color())
    ax[0].set(
        xlabel="step k",
        ylabel="loss",
        title="SGD: mean (solid), median (dashed)\nrho^k (dotted), Lyapunov (dash-dot)",
    )
    ax[1].set(
        xlabel="step k",
        ylabel="median loss",
        title=f"label-noise SGD (sigma={cfg['sigma']})\npredicted stationary loss dotted",
    )
    f = cfg["factors"][-1]
    ax[2].semilogy(k, np.median(r["sgd"][str(f)], 0), label="SGD")
    ax[2].semilogy(
        np.arange(0, cfg["steps"] + 1, 10),
        np.median(r["sde"], 0),
        label=f"SGD SDE (rate {float(r['sde_rate']):.3f}/step)",
    )
    ax[2].set(
        xlabel="step k (t / eta)", ylabel="median loss", title=f"eta = {f} eta_ms: SGD escapes, its SDE stays"
    )
    ax[3].plot(cfg["sweep"], r["escaped"], "o-", label="measured (SGD runs)")
    ms = float(r["threshold"]["mean_square"])
    ax[3].axvline(1.0, color="k", ls="--", label="mean-square threshold")
    ax[3].axvline(float(r["threshold"]["lyapunov"]) / ms, color="C3", ls=":", label="typical-run (Lyapunov)")
    ax[3].set(xlabel="eta / eta_ms", ylabel="fraction escaped", title=f"escape at B = {cfg['batch']}")
    rows = r["by_batch"]
    for j, label in enumerate(("mean-square", "typical run", "SDE", "Wu bound (necessary)")):
        ax[4].loglog(rows[:, 0], rows[:, 1 + j], "o-" if j < 3 else "k--", label=label)
    ax[4].set(xlabel="batch size B", ylabel="largest stable eta", title="thresholds against B")
    for a in ax[::2][:2]:
        a.set_ylim(L0 * 1e-6, L0 * 1e8)  # escaped runs leave the linear regime (and may overflow) above
    ax[1].set_ylim(L0 * 1e-2, 1e2)
    for a in ax:
        a.legend(fontsize=6)
    return plots.save(fig, path)


def summary(cfg, r):
    th = {c: float(r["threshold"][c]) for c in ("mean_square", "lyapunov", "sde")}
    print(
        f"B = {cfg['batch']}: eta thresholds mean-square {th['mean_square']:.4g}, "
        f"typical run {th['lyapunov']:.4g}, SDE {th['sde']:.4g}"
    )
    for f in cfg["factors"]:
        L, rho, lyap = r["sgd"][str(f)][:, -1], float(r["rho"][str(f)]), float(r["lyap"][str(f)])
        print(f"eta = {f} eta_ms: rho {rho:.4f}, Lyapunov {lyap:+.4f}; "
              f"final median loss / L0 {np.median(L) / float(r['L0']):.3g}")  # fmt: skip
    print(
        "escaped fraction at eta / eta_ms = "
        + ", ".join(f"{s:g}: {e:.2f}" for s, e in zip(cfg["sweep"], r["escaped"]))
    )
    print("largest stable eta at B = " + ", ".join(f"{int(b)}" for b in r["by_batch"][:, 0]))
    for j, label in enumerate(("mean-square", "typical run", "SDE", "Wu bound")):
        print(f"{label:>12}: " + " ".join(f"{v:.4g}" for v in r["by_batch"][:, 1 + j]))


FIGURE = Figure(
    "escape",
    __doc__,
    PRESETS,
    compute,
    draw,
    summary,
    parts=lambda cfg: 2 + len(cfg["factors"]) + len(cfg["sweep"]) + len(cfg["batch_sizes"]),
    x64=True,
)

if __name__ == "__main__":
    main(FIGURE)
