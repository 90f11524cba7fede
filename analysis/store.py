"""Results on disk: a config as JSON and arrays as .npz, in a folder keyed by a hash of the config.

    root/NAME-HASH/config.json   the config, canonical JSON (sorted keys)
    root/NAME-HASH/arrays.npz    the arrays

HASH is the first 16 hex digits of the SHA-256 of the canonical JSON. Each file is written to a temporary
file beside it and renamed over it (atomic on one file system): a reader, or a run resumed after a kill at
any moment, sees the old arrays or the new ones, never half of them and never none. (The folder's name is its
config's hash, so its config.json never changes.) Reading a folder whose config differs from the one asked
for (a hash collision, a hand edit) raises instead of returning a foreign result.

`part` stores one independent part of a long result (a sweep row, a start, a step size) as it finishes, in
`root/NAME-HASH/parts/LABEL/`: a figure killed in its fifth part re-runs the first four from disk.
`resumable` runs a long computation chunk by chunk and writes its whole state after each chunk the same
way, so a killed run re-started with the same config goes on from its last chunk.
"""

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np


def canonical(config: Mapping) -> str:
    """Canonical JSON: sorted keys, no spaces; tuples become lists, NumPy scalars plain numbers."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=_to_json)


def config_hash(config: Mapping) -> str:
    """The first 16 hex digits of the SHA-256 of the canonical JSON: the folder name of a result."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def path(root, name: str, config: Mapping) -> Path:
    if not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    return Path(root) / f"{name}-{config_hash(config)}"


def save(root, name: str, config: Mapping, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` under the config's folder, atomically; an existing result for it is replaced."""
    return write(path(root, name, config), config, arrays)


def load(root, name: str, config: Mapping) -> dict[str, np.ndarray] | None:
    """The stored arrays for this config, or None if there are none."""
    return read(path(root, name, config), config)


def write(folder, config: Mapping, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `config.json`, then `arrays.npz`, into `folder`, each atomically (a temporary file beside it,
    renamed over it): the arrays are there whole or not at all, old or new."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json.loads(canonical(config)), indent=2, sort_keys=True)
    _atomic(target / "config.json", lambda f: f.write(text.encode()))
    _atomic(target / "arrays.npz", lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))
    return target


def _atomic(path: Path, fill) -> None:
    """`fill(file)` into a temporary file in path's folder, flushed to disk, then renamed over `path`."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-", delete=False) as f:
        tmp = Path(f.name)
        try:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, path)


def read(folder, config: Mapping) -> dict[str, np.ndarray] | None:
    """The arrays in `folder`, or None if it holds none. Raises `ValueError` if it holds another config's
    result (never returned as this one's) or cannot be read back whole."""
    target = Path(folder)
    if not (target / "arrays.npz").exists():
        return None
    try:
        stored = json.loads((target / "config.json").read_text())
        with np.load(target / "arrays.npz") as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{target} is damaged or not a stored result ({type(e).__name__}: {e}); "
            "move it away to start again"
        ) from e
    if stored != json.loads(canonical(config)):
        raise ValueError(f"{target} holds a result for another config: {stored} (asked for {dict(config)})")
    return arrays


def cached(
    root,
    name: str,
    config: Mapping,
    compute: Callable[[], Mapping[str, np.ndarray]],
    *,
    recompute: bool = False,
) -> dict[str, np.ndarray]:
    """`load` if stored (and not `recompute`), else `compute()`, `save` and return what was saved."""
    return _read_or_compute(path(root, name, config), config, compute, recompute)


def _read_or_compute(folder, config, compute, recompute) -> dict[str, np.ndarray]:
    if not recompute and (hit := read(folder, config)) is not None:
        return hit
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    write(folder, config, arrays)
    return arrays


def part(
    folder,
    config: Mapping,
    label: str,
    compute: Callable[[], Mapping[str, np.ndarray]],
    *,
    recompute: bool = False,
) -> dict[str, np.ndarray]:
    """One independent part of the result stored in `folder` (`path(root, name, config)`): the arrays stored
    under `folder/parts/label/` (keyed by the config and the label) if there are any and not `recompute`,
    else `compute()`, written there atomically as soon as it returns."""
    if not label or "/" in label or label.startswith("."):
        raise ValueError(f"label must be a non-empty file name without '/', got {label!r}")
    return _read_or_compute(Path(folder) / "parts" / label, {**config, "part": label}, compute, recompute)


def _to_json(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray | tuple):
        return np.asarray(x).tolist()
    raise TypeError(f"config values must be JSON-serialisable, got {type(x).__name__}: {x!r}")


def resumable(
    folder,
    config: Mapping,
    init: Callable[[], Mapping[str, np.ndarray]],
    advance: Callable[[dict[str, np.ndarray], int], Mapping[str, np.ndarray]],
    chunks: int,
    *,
    progress: bool = False,
    save: bool = True,
) -> dict[str, np.ndarray]:
    """`state = advance(state, i)` for i = 0 .. chunks - 1 from `state = init()`, writing the state (with
    the number of chunks done, `"chunks_done"`) atomically to `folder` after every chunk.

    The state is a flat dict of arrays holding everything the run needs to go on: parameters, keys, the step,
    the metrics so far. If `folder` already holds this config's state, the run resumes after its last chunk
    (printing where); a pure `advance` then gives the same bits as a run that never stopped. A folder holding
    another config's state, or one that cannot be read back, raises `ValueError` and is left as it is.
    In a multi-process run every process runs this, and one (`save=True`) writes.
    """
    from tqdm.auto import tqdm

    state = read(folder, config)
    if state is None:
        state = {k: np.asarray(v) for k, v in init().items()}
        done = 0
    else:
        done = int(state.pop("chunks_done"))
        expected = init()
        if set(state) != set(expected) or not 0 <= done <= chunks:
            raise ValueError(
                f"{folder} does not hold a state of this run: arrays {sorted(state)} after {done} chunks, "
                f"expected {sorted(expected)} and at most {chunks} chunks"
            )
        print(f"resuming {folder} after chunk {done} of {chunks}", flush=True)
    for i in tqdm(range(done, chunks), initial=done, total=chunks, disable=not progress, desc="chunks"):
        state = {k: np.asarray(v) for k, v in advance(state, i).items()}
        if save:
            write(folder, config, {**state, "chunks_done": np.asarray(i + 1)})
    return state
