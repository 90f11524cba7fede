"""Results on disk: a config as JSON and arrays as .npz, in a folder keyed by a hash of the config.

    root/NAME-HASH/config.json   the config, canonical JSON (sorted keys)
    root/NAME-HASH/arrays.npz    the arrays

HASH is the first 16 hex digits of the SHA-256 of the canonical JSON. A folder is written in a temporary
sibling and renamed into place (atomic on one file system), so a reader never sees half a result. Reading a
folder whose config differs from the one asked for (a hash collision, a hand edit) raises instead of
returning a foreign result.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np


def canonical(config: Mapping) -> str:
    """Canonical JSON: sorted keys, no spaces; tuples become lists, NumPy scalars plain numbers."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=_to_json)


def key(config: Mapping) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def path(root, name: str, config: Mapping) -> Path:
    if not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    return Path(root) / f"{name}-{key(config)}"


def save(root, name: str, config: Mapping, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` under the config's folder, atomically; an existing result for it is replaced."""
    target = path(root, name, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(json.loads(canonical(config)), indent=2, sort_keys=True))
        np.savez(tmp / "arrays.npz", **{k: np.asarray(v) for k, v in arrays.items()})
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def load(root, name: str, config: Mapping) -> dict[str, np.ndarray] | None:
    """The stored arrays for this config, or None if there are none."""
    target = path(root, name, config)
    if not (target / "arrays.npz").exists():
        return None
    stored = json.loads((target / "config.json").read_text())
    if stored != json.loads(canonical(config)):
        raise ValueError(f"{target} holds a result for another config: {stored} (asked for {dict(config)})")
    with np.load(target / "arrays.npz") as f:
        return {k: f[k] for k in f.files}


def cached(
    root,
    name: str,
    config: Mapping,
    compute: Callable[[], Mapping[str, np.ndarray]],
    *,
    recompute: bool = False,
) -> dict[str, np.ndarray]:
    """`load` if stored (and not `recompute`), else `compute()`, `save` and return what was saved."""
    if not recompute and (hit := load(root, name, config)) is not None:
        return hit
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    save(root, name, config, arrays)
    return arrays


def _to_json(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray | tuple):
        return np.asarray(x).tolist()
    raise TypeError(f"config values must be JSON-serialisable, got {type(x).__name__}: {x!r}")
