"""Matplotlib helpers: one style for every figure of the library. The backend is the user's (importing this
switches nothing; on a machine without a display matplotlib draws with Agg by itself)."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["STYLE", "figure", "band", "CLOCKS", "trajectory", "edge_of_stability", "save"]

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 9,
}


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 3.6, height: float = 3.0):
    """A figure with `nrows x ncols` panels. Applies `STYLE` to matplotlib's rcParams, so labels and legends
    drawn afterwards share it.

    **Arguments:** `ncols`, `nrows`, each panel's `width` and `height` in inches.

    **Returns:** (fig, a flat array of the axes)."""
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained"
    )
    return fig, axes.ravel()


def band(ax, t, mean, half_width=None, *, label=None, color=None, **kw):
    """A line with a shaded band mean +- half_width (e.g. a 95% confidence half-width).

    **Arguments:** the axes `ax`, the abscissae `t`, the `mean`, the `half_width` (None: no band), `label`,
    `color` and matplotlib's other line keywords.

    **Returns:** the line."""
    (line,) = ax.plot(t, mean, label=label, color=color, **kw)
    if half_width is not None:
        ax.fill_between(
            t,
            np.asarray(mean) - half_width,
            np.asarray(mean) + half_width,
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    return line


CLOCKS = {"t": "t = eta k", "tau": "tau (slow time)"}


def trajectory(ax, traj, stat: str = "loss", *, label=None, color=None, level: float = 0.95, **kw):
    """`traj.stats[stat]` against its clock: a line for one run; for an ensemble (leading seed axis) the mean
    over seeds with its Student-t band at `level` (`analysis.statistics.ensemble_bands`). Labels the x axis
    with the clock when it has no label yet.

    **Arguments:** the axes `ax`, a `Trajectory` (one run or an ensemble), the `stat`, `label`, `color`, the
    band's `level`, matplotlib's other line keywords.

    **Returns:** the line.

    **Raises:** `ValueError` for a stat the trajectory lacks, or an ensemble saved at different times."""
    from .statistics import ensemble_bands

    if stat not in traj.stats:
        raise ValueError(f"stat must be one of the trajectory's {sorted(traj.stats)}, got {stat!r}")
    ts = np.asarray(traj.ts)
    if ts.ndim == 1:
        line = band(ax, ts, np.asarray(traj.stats[stat]), label=label, color=color, **kw)
    else:
        if not np.all(ts == ts[:1]):
            raise ValueError("the ensemble's seeds were saved at different times: plot them one by one")
        mean, half = ensemble_bands(traj, level)[stat]
        line = band(ax, ts[0], mean, half, label=label, color=color, **kw)
    if not ax.get_xlabel():
        ax.set_xlabel(CLOCKS.get(traj.clock, traj.clock))
    return line


def edge_of_stability(axes, runs, *, name: str = "", tags: str = "abc") -> None:
    """Three panels from `analysis.compare.edge_of_stability` results `runs` (eta -> result), a colour per
    eta shared by GD, gradient flow and the central flow, a line style per method (GD solid, the central
    flow dashed, gradient flow dotted): (a) GD's loss (thin) and its window average, the central flow's
    prediction and gradient flow's loss; (b) eta lambda_max(H) of each with the edge eta lambda = 2, GD's at
    every step it was measured (`gd_sharpness`); (c) each flow's distance from GD's averaged parameters.
    `name` prefixes the titles, `tags` labels the panels. The legends name the colours and the styles.

    **Arguments:** three `axes`, the `runs`, `name`, `tags`.

    **Returns:** None (draws on the axes)."""
    ax_loss, ax_sharp, ax_dist = axes
    for c, (eta, e) in enumerate(runs.items()):
        color = f"C{c}"
        k = np.arange(np.shape(e["gd_loss"])[0]) * eta
        ax_loss.plot(k, e["gd_loss"], color=color, lw=0.4, alpha=0.4)
        ax_loss.plot(e["t"], e["gd_mean_loss"], color=color, lw=2, label=f"η = {eta}")
        ax_loss.plot(e["t"], e["cf_predicted"], "--", color=color, lw=1.4)
        ax_loss.plot(e["t"], e["gf_loss"], ":", color=color, lw=1.4)
        steps = e.get("gd_sharpness_steps")
        gd_t, gd_lambda = (e["t"], e["gd_lambda"]) if steps is None else (steps * eta, e["gd_sharpness"])
        ax_sharp.plot(gd_t, eta * np.asarray(gd_lambda), color=color, lw=1.2, label=f"η = {eta}")
        ax_sharp.plot(e["t"], eta * np.asarray(e["cf_lambda"]), "--", color=color, lw=1.4)
        ax_sharp.plot(e["t"], eta * np.asarray(e["gf_lambda"]), ":", color=color, lw=1.4)
        ax_dist.plot(e["t"], e["cf_distance"], "--", color=color, label=f"η = {eta}")
        ax_dist.plot(e["t"], e["gf_distance"], ":", color=color)
    for ax, what in ((ax_loss, "GD averaged"), (ax_sharp, "GD"), (ax_dist, None)):
        if what:
            ax.plot([], [], "k-", lw=1.2, label=what)
        ax.plot([], [], "k--", lw=1.4, label="central flow" + (" (prediction)" if ax is ax_loss else ""))
        ax.plot([], [], "k:", lw=1.4, label="gradient flow")
    ax_sharp.axhline(2.0, color="0.4", lw=1.0, ls="-.", label="edge: η λ = 2")
    prefix = f"{name}: " if name else ""
    a, b, c = tags
    ax_loss.set(xlabel="t = η k", ylabel="training loss", yscale="log", title=f"({a}) {prefix}loss")
    ax_sharp.set(xlabel="t = η k", ylabel="η λ_max(H)", title=f"({b}) {prefix}sharpness")
    ax_dist.set(xlabel="t = η k", ylabel="‖θ − mean GD θ‖", title=f"({c}) {prefix}distance from mean GD")
    for ax in axes:
        ax.legend(fontsize=6, loc="best", framealpha=0.8)


def save(fig, path) -> Path:
    """Save as PNG (creating the folder) and close the figure.

    **Arguments:** the figure `fig`, the `path`.

    **Returns:** the path, a `pathlib.Path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
