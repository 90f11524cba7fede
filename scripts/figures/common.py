"""What every figure script shares: its command line, its presets, its stored results and its report.

A figure script declares a `Figure` (its presets, `compute`, `draw` and `summary`) and calls `main(FIGURE)`.
The command line is the same for all of them:

    python scripts/figures/NAME.py [--preset smoke|quick|paper] [--seeds N] [--set KEY=VALUE ...]
                                   [--out DIR] [--results DIR] [--recompute] [--no-progress]

- `--preset`: `smoke` runs in seconds (the test suite draws every figure at it), `quick` in minutes on a
  laptop CPU (`make figures`), `paper` at the paper's sizes (hours on a CPU, or a GPU).
- `--seeds N`: the number of independent random replicates, the preset's `seeds` (seeds of an ensemble,
  random starts, random initialisations: each script's docstring says which). Refused by a figure whose
  presets have no `seeds`: it is deterministic.
- `--set KEY=VALUE` (repeatable): override one entry of the preset, e.g. `--set t1=100 --set
  "etas=(0.2,)"`. VALUE is a Python literal of the entry's type (an int where a float is, a list where a
  tuple is, are accepted); an unknown key or a wrong type is refused, naming the preset's keys. Overrides are
  part of the config, so a narrowed run is stored apart from the preset's.
- `--out`: the folder for the PNG; `--results`: the folder of stored results (`analysis.store`), keyed by
  the preset's config and `code_version` (the code that computes them), reused unless `--recompute`. A
  long figure stores each independent part (a sweep row, a start, a step size) as it finishes
  (`store.part`), and a long part its pieces inside it (each run of an ensemble comparison, each chunk of
  saves mapped by Phi), so a run killed or crashed re-runs with the same command and goes on from the piece
  it was in. A progress bar over the parts shows each part's label, the time each took, and (for a figure
  that declares how many parts it has) the estimated time left; `--no-progress` turns it off.
"""

import argparse
import ast
import dataclasses
import functools
import hashlib
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from analysis import store

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("smoke", "quick", "paper")


@dataclasses.dataclass(frozen=True)
class Figure:
    """One figure: `compute(cfg, progress, part) -> arrays` (stored under `name`, keyed by the preset's
    config), `draw(cfg, arrays, path) -> path` and `summary(cfg, arrays)`, which prints the headline numbers.
    `part(label, fn) -> arrays` is `fn()` stored under `label` as soon as it returns (`store.part`): compute
    runs each independent part through it, and a long part its own pieces (checkpoints: a run, an ensemble,
    a chunk of saves), each with a label of its own.
    `x64` turns on float64 before anything is computed (say why in the script). `parts(cfg)`, where given, is
    how many parts compute stores: the progress bar over parts then shows the estimated time left."""

    name: str
    doc: str
    presets: Mapping[str, dict]
    compute: Callable[[dict, bool, Callable], Mapping[str, np.ndarray]]
    draw: Callable[[dict, dict, Path], Path]
    summary: Callable[[dict, dict], None]
    x64: bool = False
    parts: Callable[[dict], int] | None = None


LIBRARY = ("models", "flows", "analysis")
DRAWING = {"analysis/plots.py"}  # draws, computes nothing stored


def code_version(script) -> str:
    """The first 16 hex digits of the SHA-256 of the code that computes a figure's stored results: every
    module of models/, flows/ and analysis/ (but the plotting one) and the figure's script, each parsed and
    dumped without its docstrings, so comments, docstrings and formatting do not count and any change to
    what runs does. Part of every stored result's config (`cfg["code"]`): a changed library computes anew
    rather than redraw numbers an older one produced."""
    files = sorted(f for pkg in LIBRARY for f in (ROOT / pkg).rglob("*.py"))
    digest = hashlib.sha256()
    for path in [*(f for f in files if f.relative_to(ROOT).as_posix() not in DRAWING), Path(script)]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
        digest.update(path.relative_to(path.parent.parent).as_posix().encode() + ast.dump(tree).encode())
    return digest.hexdigest()[:16]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="quick",
        help="smoke: seconds (the tests); quick: minutes on a laptop CPU; paper: the paper's sizes",
    )
    p.add_argument(
        "--seeds", type=int, default=None, help="independent random replicates (default: the preset's)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset entry (a Python literal of its type); repeatable",
    )
    p.add_argument("--out", type=Path, default=ROOT / "figures", help="folder for the PNG")
    p.add_argument("--results", type=Path, default=ROOT / "results", help="folder of stored results")
    p.add_argument("--recompute", action="store_true", help="ignore stored results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def override(cfg: Mapping, assignments) -> dict:
    """`cfg` with each "KEY=VALUE" of `assignments` applied: VALUE parsed by `ast.literal_eval` (a bare word
    is a string) and checked against the type of cfg[KEY] (int for float and list for tuple accepted, and
    converted). Raises SystemExit naming the key, the value and the preset's keys."""
    cfg = dict(cfg)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or key not in cfg:
            raise SystemExit(f"--set {assignment!r}: KEY must be one of the preset's {sorted(cfg)}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        old = cfg[key]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        if old is not None and type(value) is not type(old):
            raise SystemExit(
                f"--set {assignment!r}: {key} is a {type(old).__name__} in the preset ({old!r}), "
                f"got a {type(value).__name__}"
            )
        cfg[key] = value
    return cfg


def images(source: str, n: int, *, classes: int = 4, folder=None):
    """(X, y) of the real-network figures: the first n images of the first `classes` classes, integer labels.
    `source` "digits": scikit-learn's 8 x 8 digits (1, 8, 8), the first n of a fixed shuffle; "cifar10":
    CIFAR-10 (3, 32, 32), standardised per channel, read from `folder` (or $SHARPFLOW_CIFAR10; nothing is
    downloaded): without it, SystemExit says where to put it."""
    from models import data

    if source == "digits":
        X, y = data.digits(classes=tuple(range(classes)), images=True, labels=True)
        order = jax.random.permutation(jax.random.key(0), X.shape[0])[:n]
        return X[order], y[order]
    if source != "cifar10":
        raise SystemExit(f"images: source must be 'digits' or 'cifar10', got {source!r}")
    try:
        return data.cifar10(folder, classes=classes, n=n)
    except ValueError as e:
        raise SystemExit(
            f"{e}\nThe paper preset reads CIFAR-10 from a folder: unpack the 'CIFAR-10 python version' "
            "archive and pass --set cifar10=PATH (or set SHARPFLOW_CIFAR10=PATH)"
        ) from e


CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sharpflow" / "jax"


def tanh_cnn(cfg: Mapping, loss: str):
    """The edge-of-stability figures' problem: the first n images of 4 classes (`images`, from cfg's `data`,
    `n`, `cifar10`), a fraction `flip` of the labels moved to the next class (a fixed draw), and a tanh CNN
    (`models.CNN`, cfg's `channels`) with one output per class; one-hot targets for square loss."""
    from models import CNN, Problem, data

    X, y = images(cfg["data"], cfg["n"], folder=cfg["cifar10"])
    y = data.flip_labels(jax.random.key(3), y, cfg["flip"], num_classes=4)
    if loss == "square":
        y = jax.nn.one_hot(y, 4, dtype=X.dtype)
    model = CNN(X.shape[1:], cfg["channels"], outputs=4, activation="tanh", key=jax.random.key(1))
    return Problem(model, X, y, loss=loss)


def compilation_cache(folder: Path) -> None:
    """JAX's persistent compilation cache in `folder`: a second run of a script (or a resumed one) reads its
    compiled programs back instead of compiling them again. Every compilation of a second or more is kept.
    In your own code the same is one line: `jax.config.update("jax_compilation_cache_dir", FOLDER)`."""
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(figure: Figure, argv=None) -> dict:
    """Parse the command line, compute (or read the stored result), draw, print the summary and where the
    figure and its data went. Returns the arrays."""
    args = parser(figure.doc).parse_args(argv)
    if argv is None:  # run from the command line: JAX's persistent compilation cache
        compilation_cache(CACHE)
    if figure.x64:
        jax.config.update("jax_enable_x64", True)
    cfg = dict(figure.presets[args.preset])
    if args.seeds is not None:
        if "seeds" not in cfg:
            raise SystemExit(f"{figure.name} is deterministic (no random replicates): drop --seeds")
        if args.seeds < 1:
            raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
        cfg["seeds"] = args.seeds
    cfg = override(cfg, args.set)
    cfg["code"] = code_version(inspect.getsourcefile(figure.compute))
    stored = functools.partial(
        store.part, store.path(args.results, figure.name, cfg), cfg, recompute=args.recompute
    )
    total = figure.parts(cfg) if figure.parts else None
    running = []  # the labels of the parts in progress, outermost first
    with tqdm(total=total, desc=f"{figure.name} parts", unit="part", disable=args.no_progress) as bar:

        def part(label, fn):
            """`store.part`, one step of the bar over parts (its label shown while it runs). Called while
            another part runs, it is a checkpoint inside that part: stored as it finishes, so a stopped
            run loses at most the checkpoint in progress, and not counted on the bar."""
            running.append(label)
            bar.set_postfix_str(" > ".join(running), refresh=True)
            try:
                out = stored(label, fn)
            finally:
                running.pop()
            if not running:
                bar.update(1)
            return out

        arrays = store.cached(
            args.results,
            figure.name,
            cfg,
            lambda: figure.compute(cfg, not args.no_progress, part),
            recompute=args.recompute,
        )
    path = figure.draw(cfg, arrays, args.out / f"{figure.name}.png")
    figure.summary(cfg, arrays)
    print(f"figure: {path}")
    print(f"data:   {store.path(args.results, figure.name, cfg)}")
    return arrays
