"""Results on disk: a config as JSON and a pytree of arrays as .npz, in a folder keyed by the config's hash.

    root/NAME-HASH/config.json   the config, canonical JSON (sorted keys)
    root/NAME-HASH/arrays.npz    the arrays, each under its path in the pytree ("eta/0.1/loss")

A result is any pytree of arrays: nested dicts (keys without '/'), lists, tuples, Equinox modules. `read`
gives nested dicts back, or, given `like` (a pytree of the same structure), that structure itself.

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

import jax
import numpy as np
from jaxtyping import PyTree

__all__ = [
    "canonical",
    "config_hash",
    "path",
    "save",
    "load",
    "flatten",
    "unflatten",
    "write",
    "read",
    "cached",
    "part",
    "resumable",
]


def canonical(config: Mapping) -> str:
    """Canonical JSON: sorted keys, no spaces; tuples become lists, NumPy scalars plain numbers.

    **Arguments:** `config`, a mapping of JSON-serialisable values (NumPy scalars and arrays allowed).

    **Returns:** the JSON text.

    **Raises:** `TypeError` for a value JSON cannot hold."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=_to_json)


def config_hash(config: Mapping) -> str:
    """The first 16 hex digits of the SHA-256 of the canonical JSON: the folder name of a result.

    **Arguments:** `config`, as for `canonical`.

    **Returns:** the 16-character hash."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def path(root, name: str, config: Mapping) -> Path:
    """The folder of the result `name` for `config` under `root`: NAME-HASH (`config_hash`).

    **Arguments:** the results' `root` folder, the result's `name`, its `config` (a JSON-serialisable
    mapping).

    **Returns:** the folder, a `pathlib.Path` (not created).

    **Raises:** `ValueError` for an empty name or one holding '/'."""
    if not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    return Path(root) / f"{name}-{config_hash(config)}"


def save(root, name: str, config: Mapping, result: PyTree) -> Path:
    """Write `result` under the config's folder, atomically; an existing result for it is replaced.

    **Arguments:** the results' `root` folder, the result's `name`, its `config` (a JSON-serialisable
    mapping), the `result` (a pytree of arrays).

    **Returns:** the folder.

    **Raises:** `ValueError` for a bad name or a result key holding '/'."""
    return write(path(root, name, config), config, result)


def load(root, name: str, config: Mapping, *, like: PyTree = None) -> PyTree | None:
    """The stored result for this config (as `read`).

    **Arguments:** the results' `root` folder, the result's `name`, its `config` (a JSON-serialisable
    mapping), `like` (the structure to read it into, or None: nested dicts).

    **Returns:** the result, or None if there is none.

    **Raises:** as `read`."""
    return read(path(root, name, config), config, like=like)


def flatten(result: PyTree) -> dict[str, np.ndarray]:
    """The leaves of a pytree of arrays keyed by their paths, e.g. {"eta": {0.1: {"loss": x}}} ->
    {"eta/0.1/loss": x}.

    **Arguments:** `result`, a pytree of arrays (nested dicts, tuples, Equinox modules).

    **Returns:** a dict path -> NumPy array.

    **Raises:** `ValueError` for a key holding '/' (it would read back as two levels) or an empty one."""
    return dict(zip(_paths(result), (np.asarray(leaf) for leaf in jax.tree.leaves(result)), strict=True))


def _paths(tree: PyTree) -> list[str]:
    """The '/'-joined path of each leaf of `tree`, in `jax.tree.leaves` order (the leaves are not touched)."""
    paths = []
    for keys, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_name(k) for k in keys]
        if any(not n or "/" in n for n in names):
            raise ValueError(f"result keys must be non-empty and hold no '/', got the path {names}")
        paths.append("/".join(names))
    return paths


def unflatten(flat: Mapping[str, np.ndarray], like: PyTree = None) -> PyTree:
    """The inverse of `flatten`.

    **Arguments:** `flat` (path -> array), `like` (a pytree whose structure to rebuild, or None).

    **Returns:** nested dicts split at '/' (`like=None`), or a pytree of `like`'s structure.

    **Raises:** `ValueError` when the paths are not `like`'s."""
    if like is None:
        tree: dict = {}
        for path_, leaf in flat.items():
            *outer, last = path_.split("/")
            node = tree
            for name in outer:
                node = node.setdefault(name, {})
            node[last] = leaf
        return tree
    expected = _paths(like)
    if set(expected) != set(flat):
        raise ValueError(
            f"the stored arrays {sorted(flat)} do not have the structure asked for: {sorted(expected)}"
        )
    return jax.tree.unflatten(jax.tree.structure(like), [flat[k] for k in expected])


def _name(key) -> str:
    for field in ("key", "idx", "name"):  # DictKey, SequenceKey / FlattenedIndexKey, GetAttrKey
        if hasattr(key, field):
            return str(getattr(key, field))
    raise TypeError(f"cannot name the pytree path entry {key!r}")


def write(folder, config: Mapping, result: PyTree) -> Path:
    """Write `config.json`, then `arrays.npz` (`flatten(result)`), into `folder`, each atomically (a temporary
    file beside it, renamed over it): the arrays are there whole or not at all, old or new.

    **Arguments:** the `folder`, the `config`, the `result`.

    **Returns:** the folder, a `pathlib.Path`.

    **Raises:** as `flatten`."""
    return _write_arrays(folder, config, flatten(result))


def _write_arrays(folder, config: Mapping, arrays: Mapping[str, np.ndarray]) -> Path:
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json.loads(canonical(config)), indent=2, sort_keys=True)
    _atomic(target / "config.json", lambda f: f.write(text.encode()))
    _atomic(target / "arrays.npz", lambda f: np.savez(f, **arrays))
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


def read(folder, config: Mapping, *, like: PyTree = None) -> PyTree | None:
    """The result in `folder` (`unflatten`: nested dicts, or the structure of `like`).

    **Arguments:** the `folder`, the `config` it must hold, `like`.

    **Returns:** the result, or None if the folder holds none.

    **Raises:** `ValueError` if it holds another config's result (never returned as this one's), one of
    another structure than `like`, or cannot be read back whole."""
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
    try:
        return unflatten(arrays, like)
    except ValueError as e:
        raise ValueError(f"{target}: {e}") from None


def cached(
    root,
    name: str,
    config: Mapping,
    compute: Callable[[], PyTree],
    *,
    recompute: bool = False,
) -> PyTree:
    """`load` if stored (and not `recompute`), else `compute()`, `save` and return what was saved, as `read`
    returns it (nested dicts of NumPy arrays), so that a first run and a re-run see the same thing.

    **Arguments:** the results' `root` folder, the result's `name`, its `config` (a JSON-serialisable
    mapping), `compute` (no arguments, returns the result), `recompute`.

    **Returns:** the result, as read back.

    **Raises:** as `read` and `flatten`."""
    return _read_or_compute(path(root, name, config), config, compute, recompute)


def _read_or_compute(folder, config, compute, recompute) -> PyTree:
    if not recompute and (hit := read(folder, config)) is not None:
        return hit
    arrays = flatten(compute())  # once: leaves on a device come to the host once
    _write_arrays(folder, config, arrays)
    return unflatten(arrays)


def part(
    folder,
    config: Mapping,
    label: str,
    compute: Callable[[], PyTree],
    *,
    recompute: bool = False,
) -> PyTree:
    """One independent part of the result stored in `folder` (`path(root, name, config)`): the arrays stored
    under `folder/parts/label/` (keyed by the config and the label) if there are any and not `recompute`,
    else `compute()`, written there atomically as soon as it returns.

    **Arguments:** the result's `folder`, its `config`, the part's `label`, `compute`, `recompute`.

    **Returns:** the part's result, as read back (nested dicts of NumPy arrays).

    **Raises:** `ValueError` for an empty label, one holding '/' or starting with '.'; as `read`."""
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
    init: Callable[[], PyTree],
    advance: Callable[[PyTree, int], PyTree],
    chunks: int,
    *,
    progress: bool = False,
    save: bool = True,
) -> PyTree:
    """`state = advance(state, i)` for i = 0 .. chunks - 1 from `state = init()`, writing the state (with
    the number of chunks done) atomically to `folder` after every chunk.

    The state is a pytree of arrays (its structure that of `init()`) holding everything the run needs to go
    on: parameters, keys, the step, the metrics so far. If `folder` already holds this config's state, the
    run resumes after its last chunk (printing where); a pure `advance` then gives the same bits as a run
    that never stopped. A folder holding another config's state, or one that cannot be read back, raises
    `ValueError` and is left as it is. In a multi-process run every process runs this, and one (`save=True`)
    writes.

    **Arguments:** the `folder`, the `config`, `init`, `advance`, the number of `chunks`, `progress` (a tqdm
    bar over the chunks), `save`.

    **Returns:** the state after the last chunk.

    **Raises:** `ValueError` as above, or for a stored state past `chunks`.
    """
    from tqdm.auto import tqdm

    state = init()
    stored = read(folder, config, like={"state": state, "chunks_done": 0})
    done = 0
    if stored is not None:
        state, done = stored["state"], int(stored["chunks_done"])
        if not 0 <= done <= chunks:
            raise ValueError(f"{folder} holds a state after {done} chunks, expected at most {chunks}")
        print(f"resuming {folder} after chunk {done} of {chunks}", flush=True)
    for i in tqdm(range(done, chunks), initial=done, total=chunks, disable=not progress, desc="chunks"):
        state = jax.tree.map(np.asarray, advance(state, i))
        if save:
            write(folder, config, {"state": state, "chunks_done": i + 1})
    return state
