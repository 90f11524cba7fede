"""Label-noise SGD finds rank-one features in two-layer nets (Gatmiry, Li, Reddi & Jegelka 2024, Fig. 1).

Setting of the paper's Figure 1: m = 10 neurons, d = n = 3, inputs i.i.d. U[0, 1]. Not stated there, chosen
inside the theorem: the outer layer fixed at a_j = 1/m, labels i.i.d. U[0.5, 1], activations cubic
z + z^3/3 and sinh (third derivative > 0), with tanh as the contrast. From several random starts (mapped
onto the zero-loss manifold by Phi), the Riemannian flow of F = tr H / 4 and label-noise GD (iterates mapped
by Phi), against the slow time tau = eta^2 sigma^2 k / n:

- (a) tr H minus its minimum on the manifold, computed without any flow (`features.min_trace_fixed_outer`;
  for tanh, which has no minimum, tr H itself);
- (b) the singular values of the feature matrix W X^T (cubic); (c) their ratio s2 / s1, every activation;
- (d) the smallest eigenvalue of the Riemannian Hessian of F against ||grad_Gamma F||, at every saved point
  of the flows: the paper's local geodesic convexity at approximate stationary points, observed;
- (e) cubic, (f) tanh: |cosine| between the neurons' features at the end, the flow's above the diagonal
  and SGD's (mapped by Phi) below.

The paper's eta = 0.05, sigma = 0.03 advance tau by 7.5e-7 a step, and with this normalisation the features
collapse over tau ~ 1e4-1e5: SGD gets there at eta = 1, sigma = 0.3 (eta lambda_max(H) ~ 0.25). The paper
preset also runs the paper's eta and sigma, over the first stretch of tau they reach in 2e7 steps.

float64: the flows run to tau ~ 1e5-1e6 and are compared with the minimum at 1e-6. `--seeds`: the number of
random starts.

Printed: the final tr H against the minimum, s2/s1, the Riemannian Hessian's smallest eigenvalue at the ends
and the gradient norm below which it stays positive; the same for SGD; then a sweep over width, n/d (n > d
is outside the theorem) and activation of the flow's final s2/s1.

Estimators: tr H = tr G on the manifold, exact from per-example gradients
(`Problem.gauss_newton_trace`), the feature matrix's singular values and the Riemannian Hessian exactly
(p = m d = 30, dense): nothing here is sampled but the label noise, so the spread over starts is all there is.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main
from tqdm import tqdm

from analysis import features, plots, riemannian
from flows import SUCCESSFUL, label_noise_sgd, limit_map, riemannian_flow, timescale
from models import Problem, TwoLayerNet

ACTIVATIONS = ("cubic", "sinh", "tanh")
TRACE = {"trace_H": Problem.gauss_newton_trace}  # tr G = tr H on the zero-loss manifold, where the flow runs
PRESETS = {
    "smoke": dict(
        activations=["cubic"],
        m=4,
        n=2,
        d=3,
        seeds=1,
        tau1=1e2,
        saves=4,
        sgd=[[1.0, 0.3, 10.0]],
        sgd_saves=4,
        sweep_m=[4],  # the shapes of the main problem: nothing compiles again
        sweep_nd=[[2, 3]],
        sweep_tau=1e2,
    ),
    "quick": dict(
        activations=list(ACTIVATIONS),
        m=10,
        n=3,
        d=3,
        seeds=3,
        tau1=1e5,
        saves=40,
        sgd=[[1.0, 0.3, 1e5]],  # [eta, sigma, tau]
        sgd_saves=30,
        sweep_m=[5, 20],
        sweep_nd=[[3, 6], [6, 3]],
        sweep_tau=1e5,
    ),
    "paper": dict(
        activations=list(ACTIVATIONS),
        m=10,
        n=3,
        d=3,
        seeds=8,
        tau1=1e6,
        saves=60,
        sgd=[[0.05, 0.03, 15.0], [1.0, 0.3, 3e5]],
        sgd_saves=40,
        sweep_m=[5, 10, 40],
        sweep_nd=[[3, 3], [3, 10], [10, 30], [6, 3], [20, 10]],
        sweep_tau=1e5,
    ),
}


def problem(activation, m, n, d, seed=0):
    kx, ky, kn = jax.random.split(jax.random.key(seed), 3)
    X = jax.random.uniform(kx, (n, d))
    y = jax.random.uniform(ky, (n,), minval=0.5, maxval=1.0)
    net = TwoLayerNet(d, m, key=kn, activation=activation, train_outer=False, outer="ones")
    return Problem(net, X, y)


def start(P, i):
    """Start i: W_jk ~ N(0, 1/d) drawn from key 100 + i (start 0: the net's own), mapped onto the manifold."""
    W = P.params.W
    if i:
        W = jax.random.normal(jax.random.key(100 + i), W.shape) / jnp.sqrt(W.shape[1])
    return limit_map(P, eqx.tree_at(lambda net: net.W, P.params, W))


def ratio(P, p):
    s = features.singular_values(P, p)
    return s[1] / s[0]


def at(params, k):
    return jax.tree.map(lambda x: x[k], params)


def convexity(P, params, count):
    """(||grad_Gamma F||, smallest eigenvalue of Hess_Gamma F) at each of `count` saved points."""
    pts = [at(params, k) for k in range(count)]
    return (
        np.array([float(riemannian.grad_norm(P, p)) for p in pts]),
        np.array([float(riemannian.min_eigenvalue(P, p)) for p in pts]),
    )


def label_noise_runs(P, starts, eta, sigma, tau, saves, key, grid=4000):
    """Label-noise GD from every start to slow time tau, saved on a grid of `grid` even steps; about `saves`
    of those, log-spaced in tau, are mapped onto Gamma by Phi. Returns (their tau, steps, mapped)."""
    every = -(-timescale.steps_for_slow_time(tau, eta, sigma, P.n) // grid)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *starts)

    def run(p0, k):
        return label_noise_sgd(
            P, p0, steps=grid * every, eta=eta, sigma=sigma, key=k, save_every=every
        ).params

    runs = jax.vmap(run)(stacked, jax.random.split(key, len(starts)))
    keep = np.unique(np.concatenate([[0], np.geomspace(1, grid, saves).round().astype(int)]))
    mapped = jax.vmap(jax.vmap(lambda p: limit_map(P, p)))(jax.tree.map(lambda x: x[:, keep], runs))
    return timescale.slow_time(keep * every, eta, sigma, P.n), grid * every, mapped


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each activation's flows, each of its label-noise GD settings and
    each sweep row."""
    out = {}
    taus = jnp.concatenate([jnp.zeros(1), jnp.logspace(-1, np.log10(cfg["tau1"]), cfg["saves"])])
    for act in tqdm(cfg["activations"], disable=not progress, desc="activations"):
        P = problem(act, cfg["m"], cfg["n"], cfg["d"])
        starts = [start(P, i) for i in range(cfg["seeds"])]
        out[act] = part(f"{act}-flow", lambda: flows_of(cfg, act, P, starts, taus))
        for j, setting in enumerate(cfg["sgd"]):
            out[act][f"sgd{j}"] = part(f"{act}-sgd{j}", lambda: label_noise_of(cfg, P, starts, setting, j))
    rows = [
        part(f"sweep-{act}-m{m}-n{n}-d{d}", lambda: {"row": sweep_row(cfg, act, m, n, d)})["row"]
        for act in [a for a in ("cubic", "tanh") if a in cfg["activations"]]
        for m in cfg["sweep_m"]
        for n, d in cfg["sweep_nd"]
    ]  # fmt: skip
    out["sweep"] = np.array(rows)
    return out


def flows_of(cfg, act, P, starts, taus):
    """The Riemannian flow from each start: tr H, singular values, convexity along it, the first flow's
    alignment at the end, and the minimum of tr H (SLSQP; not for tanh)."""
    flows = [riemannian_flow(P, s, t1=cfg["tau1"], ts=taus, rtol=1e-10, metrics=TRACE) for s in starts]
    grads, eigs = zip(*(convexity(P, f.params, len(taus)) for f in flows))
    return {
        "tau": np.asarray(taus),
        "flow_trace_H": np.stack([f.stats["trace_H"] for f in flows]),
        "flow_sv": np.stack([jax.vmap(lambda p: features.singular_values(P, p))(f.params) for f in flows]),
        "flow_grad": np.stack(grads),
        "flow_min_eig": np.stack(eigs),
        "flow_alignment": np.abs(np.asarray(features.feature_cosines(P, flows[0].final))),
        "minimum": np.asarray(features.min_trace_fixed_outer(P) if act != "tanh" else np.nan),
    }


def label_noise_of(cfg, P, starts, setting, j):
    """Label-noise GD at one (eta, sigma, tau) from every start, mapped by Phi: tr H, singular values and
    the first run's alignment at the end."""
    eta, sigma, tau = setting
    ts, steps, mapped = label_noise_runs(P, starts, eta, sigma, tau, cfg["sgd_saves"], jax.random.key(7 + j))
    return {
        "tau": ts,
        "steps": np.asarray(steps),
        "trace_H": np.asarray(jax.vmap(jax.vmap(P.gauss_newton_trace))(mapped)),
        "sv": np.asarray(jax.vmap(jax.vmap(lambda p: features.singular_values(P, p)))(mapped)),
        "alignment": np.abs(np.asarray(features.feature_cosines(P, at(at(mapped, 0), -1)))),
    }


def sweep_row(cfg, act, m, n, d):
    """[activation, m, n, d, s2/s1 at sweep_tau, relative gap of tr H to its minimum, status]; status 1:
    reached sweep_tau; 0: the solver's step budget ran out on the way; -1: Phi found no zero-loss point
    from the start (the paper sweep's tanh row m = 40, n = 20, d = 10: its gradient flow crawls toward a
    label of 0.987, near the edge of tanh's range), or one where J J^T is singular."""
    P = problem(act, m, n, d)
    try:
        p0 = start(P, 0)
    except (eqx.EquinoxRuntimeError, ValueError):  # limit_map did not settle, or J J^T is singular there
        return np.array([ACTIVATIONS.index(act), m, n, d, np.nan, np.nan, -1])
    tau = cfg["sweep_tau"]
    end = riemannian_flow(P, p0, t1=tau, ts=[0.0, tau], rtol=1e-10, metrics=TRACE, throw=False)
    if int(end.result) != SUCCESSFUL:
        return np.array([ACTIVATIONS.index(act), m, n, d, np.nan, np.nan, 0])
    gap = np.nan
    if act != "tanh" and n <= d:
        best = features.min_trace_fixed_outer(P)
        gap = (float(end.stats["trace_H"][-1]) - best) / best
    return np.array([ACTIVATIONS.index(act), m, n, d, float(ratio(P, end.final)), gap, 1])


def convex_below(grad, eig):
    """The smallest ||grad|| at a saved point where the smallest eigenvalue is <= 0 (every point with a
    smaller gradient is locally geodesically convex), and how many saved points lie below it."""
    bad = grad[eig <= 0]
    eps = bad.min() if bad.size else np.inf
    return eps, int(np.sum(grad < eps))


def draw(cfg, r, path):
    fig, axes = plots.figure(3, 2)
    ax_t, ax_s, ax_r, ax_c, ax_af, ax_as = axes
    markers = "os"
    for act in cfg["activations"]:
        tau, minimum = r[act]["tau"][1:], float(r[act]["minimum"])
        shift = minimum if np.isfinite(minimum) else 0.0
        color = f"C{ACTIVATIONS.index(act)}"
        label = f"{act}: flow, tr H - min" if np.isfinite(minimum) else f"{act}: flow, tr H"
        for i, (tr, sv) in enumerate(zip(r[act]["flow_trace_H"], r[act]["flow_sv"])):
            ax_t.loglog(tau, tr[1:] - shift, color=color, lw=1, label=label if i == 0 else None)
            ax_r.loglog(
                tau, sv[1:, 1] / sv[1:, 0], color=color, lw=1, label=f"{act}: flow" if i == 0 else None
            )
            if act == "cubic":
                for q in range(sv.shape[1]):
                    ax_s.loglog(
                        tau, sv[1:, q], color=f"C{q}", lw=1, label=f"s{q + 1}: flow" if i == 0 else None
                    )
        for j, (eta, sigma, _) in enumerate(cfg["sgd"]):
            st, sv = r[act][f"sgd{j}"]["tau"][1:], r[act][f"sgd{j}"]["sv"][:, 1:]
            kw = dict(ls="none", marker=markers[j], ms=3, mfc="none", color=color)
            sgd = f"SGD eta={eta:g}, sigma={sigma:g}"
            for i, tr in enumerate(r[act][f"sgd{j}"]["trace_H"][:, 1:] - shift):
                ax_t.loglog(st, np.abs(tr), **kw, label=f"{act}: {sgd}" if i == 0 else None)
            ax_r.loglog(st, (sv[..., 1] / sv[..., 0]).T, **kw)
            if act == "cubic":
                for q in range(sv.shape[-1]):
                    ax_s.loglog(st, sv[..., q].T, **{**kw, "color": f"C{q}"})
        for i, (g, e) in enumerate(zip(r[act]["flow_grad"], r[act]["flow_min_eig"])):
            ax_c.plot(g, e, ".-", color=color, ms=3, lw=0.5, label=act if i == 0 else None)
    ax_t.set(xlabel="tau = eta^2 sigma^2 k / n", ylabel="tr H (minus its minimum)", title="(a) sharpness")
    ax_s.set(xlabel="tau", ylabel="singular value of W X^T", title="(b) features, cubic (marks: SGD, Phi)")
    ax_r.set(xlabel="tau", ylabel="s2 / s1", title="(c) rank of the features (marks: SGD, Phi)")
    ax_c.set_xscale("log")
    ax_c.set_yscale("symlog", linthresh=1e-5)
    ax_c.axhline(0, color="k", lw=0.5)
    ax_c.set(
        xlabel="||grad_Gamma F||, F = tr H / 4",
        ylabel="min eigenvalue of Hess_Gamma F",
        title="(d) convexity along the flows",
    )
    for ax in (ax_t, ax_s, ax_r, ax_c):
        ax.legend(fontsize=6)
    last = len(cfg["sgd"]) - 1
    eta, sigma, tau = cfg["sgd"][last]
    upper = np.triu(np.ones((cfg["m"], cfg["m"]), bool))
    for ax, act in ((ax_af, "cubic"), (ax_as, "tanh")):
        if act not in cfg["activations"]:
            ax.set_visible(False)
            continue
        both = np.where(upper, r[act]["flow_alignment"], r[act][f"sgd{last}"]["alignment"])
        im = ax.imshow(both, vmin=0, vmax=1, cmap="viridis")
        ax.set(
            title=f"({'e' if act == 'cubic' else 'f'}) |cos| between neurons, {act}, end",
            xlabel=f"neuron (upper: flow; lower: SGD, eta = {eta:g})",
            ylabel="neuron",
        )
        ax.grid(False)
    fig.colorbar(im, ax=[ax_af, ax_as], shrink=0.8)
    return plots.save(fig, path)


def summary(cfg, r):
    for act in cfg["activations"]:
        trace, sv = r[act]["flow_trace_H"][:, -1], r[act]["flow_sv"][:, -1]
        minimum = float(r[act]["minimum"])
        eps, below = convex_below(r[act]["flow_grad"].ravel(), r[act]["flow_min_eig"].ravel())
        print(
            f"{act:5s}: flow to tau {cfg['tau1']:g}: tr H {trace.min():.6g}..{trace.max():.6g}"
            f" (minimum {minimum:.6g}), s2/s1 <= {np.max(sv[:, 1] / sv[:, 0]):.2e};"
            f" min eig of Hess_Gamma F at the ends >= {np.min(r[act]['flow_min_eig'][:, -1]):.2e},"
            + (
                f" > 0 at all {below} saved points with ||grad|| < {eps:.2e}"
                if below
                else f" <= 0 at a point with ||grad|| = {eps:.2e}, the smallest saved"
            )
        )
        for j, (eta, sigma, tau) in enumerate(cfg["sgd"]):
            tr, sv = r[act][f"sgd{j}"]["trace_H"][:, -1], r[act][f"sgd{j}"]["sv"][:, -1]
            print(
                f"       SGD eta={eta:g} sigma={sigma:g}, {float(r[act][f'sgd{j}']['steps']):.3g} steps"
                f" to tau {tau:g}:"
                f" tr H {tr.min():.6g}..{tr.max():.6g}, s2/s1 <= {np.max(sv[:, 1] / sv[:, 0]):.2e},"
                f" min |cos| {np.min(r[act][f'sgd{j}']['alignment']):.4f}"
            )
    print(
        "sweep (flow to tau = {:g}): activation, m, n, d, s2/s1, tr H gap to the minimum".format(
            cfg["sweep_tau"]
        )
    )
    for a, m, n, d, rt, gap, status in r["sweep"]:
        note = " (n > d: outside the theorem)" if n > d else ""
        head = f"  {ACTIVATIONS[int(a)]:5s} m={int(m):3d} n={int(n):3d} d={int(d):3d}"
        if status == -1:
            print(f"{head}  Phi found no point of zero loss from the start{note}")
        elif status == 0:
            print(f"{head}  the flow used up its solver steps before tau = {cfg['sweep_tau']:g}{note}")
        else:
            print(f"{head}  s2/s1 {rt:.2e}  gap {gap:.1e}{note}")


def parts(cfg) -> int:
    """compute's stored parts: each activation's flows and label-noise settings, and the sweep rows."""
    swept = len([a for a in ("cubic", "tanh") if a in cfg["activations"]])
    return len(cfg["activations"]) * (1 + len(cfg["sgd"])) + swept * len(cfg["sweep_m"]) * len(
        cfg["sweep_nd"]
    )


FIGURE = Figure("rank_one_features", __doc__, PRESETS, compute, draw, summary, x64=True, parts=parts)

if __name__ == "__main__":
    main(FIGURE)
