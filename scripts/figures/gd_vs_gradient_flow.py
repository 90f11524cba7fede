"""GD at several step sizes against gradient flow on a two-layer tanh net, in gradient-flow time t = eta k.

Panels: the loss, tr H and the distance ||theta_GD(t) - theta_GF(t)||, which shrinks like eta.

Estimators: the loss and the distance exactly; tr H exactly (`hessian.trace`: N gradients and p
Hessian-vector products a save; p = 96 quick, 2,100 paper). The runs are deterministic, single and without
bands, so an estimator would add noise where there is none.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main

from analysis import hessian, plots
from flows import gd, gradient_flow, timescale
from models import Problem, TwoLayerNet, data

PRESETS = {
    "smoke": dict(n=8, d=3, width=6, teacher_width=2, t1=2.0, dt_save=0.2, etas=[0.2, 0.1]),
    "quick": dict(n=20, d=5, width=16, teacher_width=3, t1=20.0, dt_save=0.2, etas=[0.2, 0.1, 0.05]),
    "paper": dict(
        n=100,
        d=20,
        width=100,
        teacher_width=5,
        t1=100.0,
        dt_save=0.5,
        etas=[0.5, 0.25, 0.125, 0.0625],
    ),
}


def problem(cfg, seed=0):
    kx, kt, kn = jax.random.split(jax.random.key(seed), 3)
    X = data.gaussian(kx, cfg["n"], cfg["d"])
    y, _ = data.two_layer_teacher(kt, X, width=cfg["teacher_width"], activation="tanh")
    net = TwoLayerNet(cfg["d"], cfg["width"], key=kn, activation="tanh")
    return Problem(net, X, y)


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each eta."""
    prob = problem(cfg)
    metrics = {"trace_H": hessian.trace}
    ts = jnp.arange(0, round(cfg["t1"] / cfg["dt_save"]) + 1) * cfg["dt_save"]
    gf = gradient_flow(prob, prob.params, t1=cfg["t1"], ts=ts, metrics=metrics)
    out = {"ts": np.asarray(gf.ts), "gf": gf.stats, "gd": {}}
    gf_flat = jax.vmap(lambda p: prob.ravel(p)[0])(gf.params)

    def at_eta(eta):
        run = gd(
            prob,
            prob.params,
            steps=timescale.steps_for_time(cfg["t1"], eta),
            eta=eta,
            save_every=timescale.steps_for_time(cfg["dt_save"], eta),
            metrics=metrics,
        )
        flat = jax.vmap(lambda p: prob.ravel(p)[0])(run.params)
        return {
            "loss": run.stats["loss"],
            "trace_H": run.stats["trace_H"],
            "dist": jnp.linalg.norm(flat - gf_flat, axis=1),
        }

    for eta in cfg["etas"]:
        out["gd"][str(eta)] = part(f"eta{eta}", lambda eta=eta: at_eta(eta))
    return out


def draw(cfg, r, path):
    fig, (ax_l, ax_t, ax_d) = plots.figure(3)
    ts = r["ts"]
    ax_l.plot(ts, r["gf"]["loss"], "k", lw=2, label="gradient flow")
    ax_t.plot(ts, r["gf"]["trace_H"], "k", lw=2, label="gradient flow")
    for eta in cfg["etas"]:
        gd_eta = r["gd"][str(eta)]
        ax_l.plot(ts, gd_eta["loss"], "--", label=f"GD eta={eta}")
        ax_t.plot(ts, gd_eta["trace_H"], "--", label=f"GD eta={eta}")
        ax_d.plot(ts[1:], gd_eta["dist"][1:], label=f"eta={eta}")
    ax_l.set(yscale="log", xlabel="t = eta k", ylabel="loss", title="loss")
    ax_t.set(xlabel="t = eta k", ylabel="tr H", title="sharpness tr H")
    ax_d.set(yscale="log", xlabel="t = eta k", ylabel="||theta_GD - theta_GF||", title="distance to the flow")
    ax_l.legend()
    ax_d.legend()
    return plots.save(fig, path)


def summary(cfg, r):
    # GD's first-order distance: distance at t1 divided by eta stays roughly constant.
    for eta in cfg["etas"]:
        print(f"eta={eta}: ||theta_GD(t1) - theta_GF(t1)|| / eta = {r['gd'][str(eta)]['dist'][-1] / eta:.4f}")


FIGURE = Figure(
    "gd_vs_gradient_flow", __doc__, PRESETS, compute, draw, summary, parts=lambda cfg: len(cfg["etas"])
)

if __name__ == "__main__":
    main(FIGURE)
