"""Label-noise SGD finds rank-one features in two-layer nets (Gatmiry, Li, Reddi & Jegelka 2024, Fig. 1).

Setting of the paper's Figure 1: m = 10 neurons, d = n = 3, inputs i.i.d. U[0, 1], label-noise SGD at
eta = 0.05 (sigma = 0.03 in the paper preset). Not stated there, chosen inside the theorem: the outer layer
fixed at a_j = 1/m, labels i.i.d. U[0.5, 1], activations cubic z + z^3/3 and sinh (sigma''' > 0), with tanh
as the contrast. From several random starts (mapped onto the zero-loss manifold by Phi), the Riemannian
flow of tr H / 4 and label-noise GD (iterates mapped by Phi), against the slow time tau:

- left: tr H minus its minimum on the manifold (computed without any flow, `features.min_trace_fixed_outer`;
  for tanh, tr H itself);
- middle: s2 / s1 of the feature matrix W X^T;
- right: |cosine| between the neurons' features at the flow's end (cubic).

Printed: the final tr H against the minimum, s2/s1, and the smallest eigenvalue of the Riemannian Hessian at
the end points (> 0: locally geodesically convex); then a sweep over width, n/d (n > d is outside the
theorem) and activation of the flow's final s2/s1.
"""

import jax

jax.config.update("jax_enable_x64", True)  # the flows run to tau ~ 1e4-1e6 and are compared at 1e-6

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import parser, report  # noqa: E402

from analysis import features, plots, riemannian, store  # noqa: E402
from flows import label_noise_sgd, limit_map, riemannian_flow, timescale  # noqa: E402
from models import Problem, TwoLayerNet  # noqa: E402

ACTIVATIONS = ("cubic", "sinh", "tanh")
PRESETS = {
    "quick": dict(
        m=10,
        n=3,
        d=3,
        starts=2,
        tau1=1e4,
        eta=0.05,
        sigma=0.3,
        sgd_tau=15.0,
        sweep_m=[5, 20],
        sweep_nd=[[3, 3], [3, 6], [6, 3]],
        sweep_tau=1e4,
    ),
    "paper": dict(
        m=10,
        n=3,
        d=3,
        starts=8,
        tau1=1e6,
        eta=0.05,
        sigma=0.03,
        sgd_tau=1.0,
        sweep_m=[5, 10, 40],
        sweep_nd=[[3, 3], [3, 10], [10, 30], [6, 3], [20, 10]],
        sweep_tau=1e6,
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


def compute(cfg):
    out = {}
    taus = jnp.concatenate([jnp.zeros(1), jnp.logspace(-1, np.log10(cfg["tau1"]), 25)])
    for act in ACTIVATIONS:
        P = problem(act, cfg["m"], cfg["n"], cfg["d"])
        starts = [start(P, i) for i in range(cfg["starts"])]
        flows = [riemannian_flow(P, s, t1=cfg["tau1"], ts=taus, rtol=1e-10) for s in starts]
        out[f"{act}/tau"] = np.asarray(taus)
        out[f"{act}/flow_trace"] = np.stack([4 * f.stats["objective"] for f in flows])
        out[f"{act}/flow_ratio"] = np.stack([jax.vmap(lambda p: ratio(P, p))(f.params) for f in flows])
        out[f"{act}/flow_min_eig"] = np.array([riemannian.min_eigenvalue(P, f.final) for f in flows])
        out[f"{act}/alignment"] = np.abs(np.asarray(features.alignment(P, flows[0].final)))
        out[f"{act}/minimum"] = np.asarray(features.min_trace_fixed_outer(P) if act != "tanh" else np.nan)
        # label-noise GD from the same starts, iterates mapped by Phi
        steps = timescale.steps_for_slow_time(cfg["sgd_tau"], cfg["eta"], cfg["sigma"], P.n)
        every = -(-steps // 10)
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *starts)
        runs = jax.vmap(
            lambda p0, k: (
                label_noise_sgd(
                    P, p0, steps=10 * every, eta=cfg["eta"], sigma=cfg["sigma"], key=k, save_every=every
                ).params
            )
        )(stacked, jax.random.split(jax.random.key(7), cfg["starts"]))
        mapped = jax.vmap(jax.vmap(lambda p: limit_map(P, p)))(runs)
        out[f"{act}/sgd_tau"] = timescale.slow_time(np.arange(11) * every, cfg["eta"], cfg["sigma"], P.n)
        out[f"{act}/sgd_trace"] = np.asarray(jax.vmap(jax.vmap(P.gauss_newton_trace))(mapped))
        out[f"{act}/sgd_ratio"] = np.asarray(jax.vmap(jax.vmap(lambda p: ratio(P, p)))(mapped))
    rows = []
    for act in ("cubic", "tanh"):
        for m in cfg["sweep_m"]:
            for n, d in cfg["sweep_nd"]:
                P = problem(act, m, n, d)
                end = riemannian_flow(
                    P, start(P, 0), t1=cfg["sweep_tau"], ts=[0.0, cfg["sweep_tau"]], rtol=1e-10
                )
                gap = np.nan
                if act != "tanh" and n <= d:
                    best = features.min_trace_fixed_outer(P)
                    gap = (4 * float(end.stats["objective"][-1]) - best) / best
                rows.append([ACTIVATIONS.index(act), m, n, d, float(ratio(P, end.final)), gap])
    out["sweep"] = np.array(rows)
    return out


def draw(cfg, r, path):
    fig, (ax_t, ax_r, ax_a) = plots.figure(3)
    for act in ACTIVATIONS:
        tau, minimum = r[f"{act}/tau"][1:], float(r[f"{act}/minimum"])
        excess = (lambda x: x - minimum) if np.isfinite(minimum) else (lambda x: x)  # noqa: E731
        label = "tr H - min" if np.isfinite(minimum) else "tr H"
        color = f"C{ACTIVATIONS.index(act)}"
        for i, (tr, rt) in enumerate(zip(r[f"{act}/flow_trace"], r[f"{act}/flow_ratio"])):
            ax_t.loglog(tau, excess(tr[1:]), color=color, label=f"{act}: flow, {label}" if i == 0 else None)
            ax_r.loglog(tau, rt[1:], color=color, label=f"{act}: flow" if i == 0 else None)
        st = r[f"{act}/sgd_tau"][1:]
        ax_t.loglog(st, np.abs(excess(r[f"{act}/sgd_trace"][:, 1:])).T, "o", ms=3, color=color)
        ax_r.loglog(st, r[f"{act}/sgd_ratio"][:, 1:].T, "o", ms=3, color=color)
    ax_t.set(
        xlabel="tau = eta^2 sigma^2 k / n",
        ylabel="tr H (minus its minimum)",
        title="sharpness (dots: SGD, Phi)",
    )
    ax_r.set(xlabel="tau", ylabel="s2 / s1 of W X^T", title="rank of the features")
    ax_t.legend(fontsize=7)
    ax_r.legend(fontsize=7)
    im = ax_a.imshow(r["cubic/alignment"], vmin=0, vmax=1, cmap="viridis")
    ax_a.set(title="|cos| between neurons, cubic, end", xlabel="neuron", ylabel="neuron")
    ax_a.grid(False)
    fig.colorbar(im, ax=ax_a)
    return plots.save(fig, path)


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    if args.seeds:
        cfg["starts"] = args.seeds
    r = store.cached(args.results, "rank_one_features", cfg, lambda: compute(cfg), recompute=args.recompute)
    fig = draw(cfg, r, args.out / "rank_one_features.png")
    for act in ACTIVATIONS:
        trace, ratios = r[f"{act}/flow_trace"][:, -1], r[f"{act}/flow_ratio"][:, -1]
        minimum = float(r[f"{act}/minimum"])
        print(
            f"{act:5s}: flow tr H {trace.min():.6g}..{trace.max():.6g} (minimum {minimum:.6g}),"
            f" s2/s1 <= {ratios.max():.2e}, SGD s2/s1 <= {np.max(r[f'{act}/sgd_ratio'][:, -1]):.2e},"
            f" min eig of the Riemannian Hessian >= {np.min(r[f'{act}/flow_min_eig']):.2e}"
        )
    print(
        "sweep (flow to tau = {:g}): activation, m, n, d, s2/s1, tr H gap to the minimum".format(
            cfg["sweep_tau"]
        )
    )
    for a, m, n, d, rt, gap in r["sweep"]:
        note = " (n > d: outside the theorem)" if n > d else ""
        name = ACTIVATIONS[int(a)]
        print(f"  {name:5s} m={int(m):3d} n={int(n):3d} d={int(d):3d}  s2/s1 {rt:.2e}  gap {gap:.1e}{note}")
    report(fig, [store.path(args.results, "rank_one_features", cfg)])


if __name__ == "__main__":
    main()
