"""The sharpness of the minima SGD finds against sqrt(B)/eta (Wu, Wang & Su 2022, their Figure 1 setting).

For each problem, SGD from one initialisation at every (eta, B) of a grid (and several seeds) runs until
the loss is below 5e-5 of its scale mean(y^2)/2; runs that diverge (or end above the initial loss) or have
not converged yet are counted, not drawn. At each minimum found: ||H||_F and lambda_max (of G = H at the
minimum, from the Gram matrix), the alignment constant mu* and the largest step eta_ms at which the minimum
is mean-square stable (`analysis.stability.threshold`, closed form). Top row: ||H||_F against sqrt(B)/eta
on log-log axes with the bound ||H||_F <= sqrt(B/mu)/eta drawn for the smallest mu* found; bottom:
lambda_max. Filled markers: minima the exact criterion calls stable (eta <= eta_ms, i.e. rho(T) <= 1);
crosses: minima SGD converged to although they are not mean-square stable (heavy tails: a typical run
follows the Lyapunov exponent, not the mean square). A batch B = n is the full batch, GD (as everywhere in
the library, docs/conventions.md): its eta_ms is GD's 2 / lambda_max and its Wu bound infinite (no noise).

Problems: (i) random-features regression (tanh features, only the outer layer trained, so H is the same at
every minimum and the sweep shows which (eta, B) converge), (ii) a two-layer tanh net (trainable outer
layer, init scale 2, so GD's minima are sharp), (iii) an MLP (two hidden tanh layers) on scikit-learn's
digits, 3 vs 8 as a +-1 regression target. Step sizes are multiples of 1 / lambda_max(G) at the
initialisation.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, main

from analysis import plots, stability
from flows import sgd
from models import MLP, Problem, RandomFeatures, TwoLayerNet, data

PRESETS = {
    "smoke": dict(
        n=8, d=3, digits_n=12, width=6, rf_width=16, mlp_width=4, steps=400, seeds=1,
        eta_factors=[0.5, 1.0], batch_sizes=[2, 8],
    ),
    "quick": dict(
        n=32, d=8, digits_n=64, width=32, rf_width=512, mlp_width=16, steps=6000, seeds=2,
        eta_factors=[0.25, 0.5, 1.0, 2.0, 3.0], batch_sizes=[2, 8, 32],
    ),
    "paper": dict(
        n=128, d=16, digits_n=256, width=128, rf_width=2048, mlp_width=32, steps=20000, seeds=5,
        eta_factors=[0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0], batch_sizes=[1, 4, 16, 64],
    ),
}  # fmt: skip
PROBLEMS = {"rf": "random features", "net": "two-layer tanh net", "mlp": "MLP on digits (3 vs 8)"}


def problems(cfg) -> dict[str, Problem]:
    kx, kr, kn, km, ks = jax.random.split(jax.random.key(0), 5)
    X = data.gaussian(kx, cfg["n"], cfg["d"])
    y = jnp.sin(2 * X[:, 0]) + 0.5 * X[:, 1]
    Xd, yd = data.digits(classes=(3, 8))
    idx = jax.random.permutation(ks, Xd.shape[0])[: cfg["digits_n"]]
    return {
        "rf": Problem(RandomFeatures(cfg["d"], cfg["rf_width"], key=kr, activation="tanh"), X, y),
        "net": Problem(TwoLayerNet(cfg["d"], cfg["width"], key=kn, activation="tanh", init_scale=2.0), X, y),
        "mlp": Problem(MLP(Xd.shape[1], cfg["mlp_width"], 2, key=km), Xd[idx], yd[idx]),
    }


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each (problem, B, eta), all seeds."""
    out = {}
    for name, P in problems(cfg).items():
        eta0 = 1.0 / stability.gauss_newton_norms(P, P.params)[1]
        rows = [
            part(f"{name}-B{B}-eta{f}", lambda B=B, f=f: {"rows": runs(cfg, P, f * eta0, B)})["rows"]
            for B in cfg["batch_sizes"]
            for f in cfg["eta_factors"]
        ]
        if progress:
            print(f"{name}: done", flush=True)
        out[name] = {"rows": np.concatenate(rows), "eta0": eta0, "loss0": P.loss(P.params)}
    return out


def runs(cfg, P, eta, B):
    """SGD from the net's initialisation for each seed: one row of `COLUMNS` per seed; the minimum's
    ||H||_F, lambda_max, mu and mean-square rate where the run reached loss < 5e-5 mean(y^2) / 2, else
    NaN."""
    tol = 5e-5 * float(jnp.mean(P.y**2)) / 2
    rows = []
    for seed in range(cfg["seeds"]):
        tr = sgd(P, P.params, steps=cfg["steps"], eta=eta, batch_size=B, key=jax.random.key(seed),
                 save_every=cfg["steps"], throw=False)  # fmt: skip
        loss = float(tr.stats["loss"][-1])
        row = [B, eta, seed, loss] + [np.nan] * 4
        if np.isfinite(loss) and loss < tol:
            theta = tr.final
            fro, lmax = stability.gauss_newton_norms(P, theta)
            mu = stability.min_alignment(P, theta, min_loss_rtol=1e-4)
            eta_ms = stability.threshold(P, theta, batch_size=B)
            row[4:] = [fro, lmax, mu, eta_ms]
        rows.append(row)
    return np.asarray(rows, dtype=float)


COLUMNS = ("B", "eta", "seed", "loss", "fro", "lmax", "mu", "eta_ms")


def examples(cfg, name) -> int:
    """n of problem `name`: the digits subset for the MLP, the synthetic set for the others."""
    return cfg["digits_n"] if name == "mlp" else cfg["n"]


def table(r, name):
    return {c: r[name]["rows"][:, i] for i, c in enumerate(COLUMNS)}


def draw(cfg, r, path):
    fig, axes = plots.figure(3, 2, width=3.8)
    for col, (name, title) in enumerate(PROBLEMS.items()):
        t = table(r, name)
        found = np.isfinite(t["fro"])
        x = np.sqrt(t["B"]) / t["eta"]
        n = examples(cfg, name)
        for row, (key, label) in enumerate((("fro", "||H||_F"), ("lmax", "lambda_max(H)"))):
            ax = axes[3 * row + col]
            for B in cfg["batch_sizes"]:
                sel = found & (t["B"] == B)
                stable = sel & (t["eta"] <= t["eta_ms"])
                name_B = f"B={B} = n (GD: no noise, no bound)" if B == n else f"B={B}"
                (line,) = ax.loglog(x[stable], t[key][stable], "o", label=name_B)
                ax.loglog(x[sel & ~stable], t[key][sel & ~stable], "x", color=line.get_color())
            if found.any():
                mu = np.nanmin(t["mu"])
                grid = np.geomspace(x.min(), x.max(), 50)
                ax.loglog(grid, grid / np.sqrt(mu), "k--", label=f"sqrt(B/mu)/eta, mu={mu:.2f}")
            diverged = int((~np.isfinite(t["loss"]) | (t["loss"] > r[name]["loss0"])).sum())
            slow = int((~found).sum()) - diverged
            ax.set(
                xlabel="sqrt(B) / eta",
                ylabel=label,
                title=f"{title}\n{diverged} diverged, {slow} not yet converged",
            )
            ax.legend(fontsize=7)
    return plots.save(fig, path)


def summary(cfg, r):
    for name, title in PROBLEMS.items():
        t = table(r, name)
        found = np.isfinite(t["fro"])
        n = examples(cfg, name)
        bound = np.array(
            [
                stability.wu_bound(e, int(b), mu=m, n=n) if m > 0 else np.nan
                for e, b, m in zip(t["eta"], t["B"], t["mu"])
            ]
        )  # infinite for B = n: GD has no gradient noise, its criterion is eta lambda_max <= 2
        print(
            f"{title}: {found.sum()}/{found.size} runs converged; ||H||_F / bound max "
            f"{np.nanmax(t['fro'] / bound):.2f} (<= 1: the bound holds); "
            f"{int((found & (t['eta'] > t['eta_ms'])).sum())} minima found are not mean-square stable "
            f"(max eta / eta_ms {np.nanmax(t['eta'] / t['eta_ms']):.4f})"
        )


FIGURE = Figure("sharpness_vs_lr_batch", __doc__, PRESETS, compute, draw, summary)

if __name__ == "__main__":
    main(FIGURE)
