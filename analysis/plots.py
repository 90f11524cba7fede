"""Matplotlib helpers: one style for every figure of the library. The backend is the user's (importing this
switches nothing; on a machine without a display matplotlib draws with Agg by itself)."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["STYLE", "figure", "band", "CLOCKS", "trajectory", "save"]

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
    """A figure with `nrows x ncols` panels; returns (fig, flat array of axes). Applies `STYLE` to
    matplotlib's rcParams, so labels and legends drawn afterwards share it."""
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained"
    )
    return fig, axes.ravel()


def band(ax, t, mean, half_width=None, *, label=None, color=None, **kw):
    """A line with a shaded band mean +- half_width (e.g. a 95% confidence half-width)."""
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
    with the clock when it has no label yet. Returns the line."""
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


def save(fig, path) -> Path:
    """Save as PNG (creating the folder), close the figure, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
