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
digits, 3 vs 8 as a +-1 regression target, (iv) a CNN (`models.CNN`, tanh, 3 x 3 convolutions and average
pools) on the digits 0-3 as 8 x 8 images with one-hot targets (square loss, the theorem's setting; the
paper preset on CIFAR-10's first 4 classes, read from `--set cifar10=PATH` or $SHARPFLOW_CIFAR10). Step
sizes are multiples of 1 / lambda_max(G) at the initialisation.

The CNN's ||H||_F is Hutchinson's estimate (`hessian.frobenius_norm_hutchinson`, `probes` Rademacher probes,
its standard error drawn as an error bar) and its lambda_max Lanczos's (`hessian.lambda_max`): products with
H only, as on a network too large for its Gram matrix; the summary holds the estimate against the exact
||G||_F from the Gram matrix (at a minimum G = H). mu* and eta_ms come from the Gram matrix (N = 4n) for
every problem.

Estimators: for (i)-(iii), ||H||_F and lambda_max exactly from the Gram matrix; for the CNN, as above,
Hutchinson's ||H||_F (`hessian.frobenius_norm_hutchinson`, its standard error drawn) and Lanczos's
lambda_max (`hessian.lambda_max`); mu* and eta_ms from the Gram matrix for every problem
(`analysis.stability.threshold`). Each minimum is one run: there are no ensemble bands.
"""

import jax
import jax.numpy as jnp
import numpy as np
from common import Figure, images, main

from analysis import hessian, plots, stability
from flows import sgd
from models import CNN, MLP, Problem, RandomFeatures, TwoLayerNet, data

PRESETS = {
    "smoke": dict(
        n=8, d=3, digits_n=12, width=6, rf_width=16, mlp_width=4, steps=400, seeds=1,
        eta_factors=[0.5, 1.0], batch_sizes=[2, 8],
        cnn_data="digits", cifar10=None, cnn_n=8, cnn_channels=(2,), cnn_steps=400, probes=4,
    ),
    "quick": dict(
        n=32, d=8, digits_n=64, width=32, rf_width=512, mlp_width=16, steps=6000, seeds=2,
        eta_factors=[0.25, 0.5, 1.0, 2.0, 3.0], batch_sizes=[2, 8, 32],
        cnn_data="digits", cifar10=None, cnn_n=32, cnn_channels=(8, 16), cnn_steps=10000, probes=20,
    ),
    "paper": dict(
        n=128, d=16, digits_n=256, width=128, rf_width=2048, mlp_width=32, steps=20000, seeds=5,
        eta_factors=[0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0], batch_sizes=[1, 4, 16, 64],
        cnn_data="cifar10", cifar10=None, cnn_n=256, cnn_channels=(16, 32), cnn_steps=50000, probes=50,
    ),
}  # fmt: skip
PROBLEMS = {
    "rf": "random features",
    "net": "two-layer tanh net",
    "mlp": "MLP on digits (3 vs 8)",
    "cnn": "CNN on digit images (4 classes)",
}


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
        "cnn": cnn(cfg),
    }


def cnn(cfg) -> Problem:
    """The CNN on one-hot targets of the first 4 classes (square loss)."""
    X, y = images(cfg["cnn_data"], cfg["cnn_n"], folder=cfg["cifar10"])
    model = CNN(X.shape[1:], cfg["cnn_channels"], outputs=4, activation="tanh", key=jax.random.key(1))
    return Problem(model, X, jax.nn.one_hot(y, 4, dtype=X.dtype))


def compute(cfg, progress, part):
    """Stored in parts (`common.main`): each (problem, B, eta), all seeds."""
    out = {}
    for name, P in problems(cfg).items():
        eta0 = 1.0 / stability.gauss_newton_norms(P, P.params)[1]
        rows = [
            part(f"{name}-B{B}-eta{f}", lambda B=B, f=f: {"rows": runs(cfg, name, P, f * eta0, B)})["rows"]
            for B in cfg["batch_sizes"]
            for f in cfg["eta_factors"]
        ]
        if progress:
            print(f"{name}: done", flush=True)
        out[name] = {"rows": np.concatenate(rows), "eta0": eta0, "loss0": P.loss(P.params)}
    return out


def runs(cfg, name, P, eta, B):
    """SGD from the net's initialisation for each seed: one row of `COLUMNS` per seed; at the minimum, where
    the run reached loss < 5e-5 mean(y^2) / 2 (else NaN): ||H||_F and its standard error (0 where exact),
    lambda_max, the exact ||G||_F of the Gram matrix, mu* and eta_ms."""
    tol = 5e-5 * float(jnp.mean(P.y**2)) / 2
    steps = cfg["cnn_steps"] if name == "cnn" else cfg["steps"]
    rows = []
    for seed in range(cfg["seeds"]):
        tr = sgd(P, P.params, steps=steps, eta=eta, batch_size=B, key=jax.random.key(seed), save_every=steps,
                 throw=False)  # fmt: skip
        loss = float(tr.stats["loss"][-1])
        row = [B, eta, seed, loss] + [np.nan] * 6
        if np.isfinite(loss) and loss < tol:
            theta = tr.final
            gram_fro, lmax = stability.gauss_newton_norms(P, theta)
            fro, fro_se = gram_fro, 0.0
            if name == "cnn":  # products with H only (the estimators of a network too large for its Gram)
                key = jax.random.key(100 + seed)
                fro, fro_se = map(float, hessian.frobenius_norm_hutchinson(P, theta, key, cfg["probes"]))
                lmax = float(hessian.lambda_max(P, theta))
            mu = stability.min_alignment(P, theta, min_loss_rtol=1e-4)
            eta_ms = stability.threshold(P, theta, batch_size=B)
            row[4:] = [fro, fro_se, lmax, gram_fro, mu, eta_ms]
        rows.append(row)
    return np.asarray(rows, dtype=float)


COLUMNS = ("B", "eta", "seed", "loss", "fro", "fro_se", "lmax", "gram_fro", "mu", "eta_ms")


def examples(cfg, name) -> int:
    """n of problem `name`: the digits subsets for the MLP and the CNN, the synthetic set for the others."""
    return {"mlp": cfg["digits_n"], "cnn": cfg["cnn_n"]}.get(name, cfg["n"])


def table(r, name):
    return {c: r[name]["rows"][:, i] for i, c in enumerate(COLUMNS)}


def draw(cfg, r, path):
    fig, axes = plots.figure(len(PROBLEMS), 2, width=3.8)
    for col, (name, title) in enumerate(PROBLEMS.items()):
        t = table(r, name)
        found = np.isfinite(t["fro"])
        x = np.sqrt(t["B"]) / t["eta"]
        n = examples(cfg, name)
        for row, (key, label) in enumerate((("fro", "‖H‖_F"), ("lmax", "λ_max(H)"))):
            ax = axes[len(PROBLEMS) * row + col]
            for B in cfg["batch_sizes"]:
                sel = found & (t["B"] == B)
                stable = sel & (t["eta"] <= t["eta_ms"])
                name_B = f"B={B} = n (GD: no noise, no bound)" if B == n else f"B={B}"
                err = 1.96 * t["fro_se"] if key == "fro" else np.zeros_like(x)  # 95%: the CNN's Hutchinson
                color = None
                for marker, keep in (("o", stable), ("x", sel & ~stable)):
                    if keep.any():
                        line = ax.errorbar(x[keep], t[key][keep], yerr=err[keep], fmt=marker, color=color,
                                           label=name_B if color is None else None)[0]  # fmt: skip
                        color = line.get_color()
            ax.set(xscale="log", yscale="log")
            if found.any():
                mu = np.nanmin(t["mu"])
                grid = np.geomspace(x.min(), x.max(), 50)
                ax.loglog(grid, grid / np.sqrt(mu), "k--", label=f"√(B/μ*)/η, μ* = {mu:.2f}")
            diverged = int((~np.isfinite(t["loss"]) | (t["loss"] > r[name]["loss0"])).sum())
            slow = int((~found).sum()) - diverged
            ax.set(
                xlabel="√B / η",
                ylabel=label,
                title=f"{title}\n{diverged} diverged, {slow} not yet converged",
            )
            if ax.get_legend_handles_labels()[0]:
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
        if not found.any():
            print(f"{title}: 0/{found.size} runs converged")
            continue
        print(
            f"{title}: {found.sum()}/{found.size} runs converged; ||H||_F / bound max "
            f"{np.nanmax(t['fro'] / bound):.2f} (<= 1: the bound holds); "
            f"{int((found & (t['eta'] > t['eta_ms'])).sum())} minima found are not mean-square stable "
            f"(max eta / eta_ms {np.nanmax(t['eta'] / t['eta_ms']):.4f})"
        )
        if name == "cnn":
            z = np.abs(t["fro"] - t["gram_fro"])[found] / t["fro_se"][found]
            rel = np.abs(t["fro"] / t["gram_fro"] - 1)[found]
            print(
                f"  Hutchinson's ||H||_F ({cfg['probes']} probes) against the Gram matrix's: at most "
                f"{rel.max():.1%} off, {z.max():.2f} standard errors"
            )


FIGURE = Figure(
    "sharpness_vs_lr_batch", __doc__, PRESETS, compute, draw, summary,
    parts=lambda cfg: len(PROBLEMS) * len(cfg["batch_sizes"]) * len(cfg["eta_factors"]),
)  # fmt: skip

if __name__ == "__main__":
    main(FIGURE)
