import numpy as np
import pytest

from analysis import store


def test_round_trip_and_key_independent_of_order(tmp_path):
    cfg = {"eta": 0.1, "n": 3, "etas": (0.1, 0.2)}
    path = store.save(tmp_path, "run", cfg, {"a": np.arange(3), "b": np.eye(2)})
    assert path.name.startswith("run-") and (path / "config.json").exists()
    got = store.load(tmp_path, "run", {"n": 3, "etas": [0.1, 0.2], "eta": 0.1})
    np.testing.assert_array_equal(got["a"], np.arange(3))
    assert store.load(tmp_path, "run", {**cfg, "eta": 0.2}) is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left behind


def test_pytrees_round_trip_as_nested_dicts_or_in_their_own_structure(tmp_path):
    """A result is any pytree: nested dicts come back as nested dicts (keys as strings), and `like` gives
    back any structure (tuples, Equinox modules) with the stored leaves."""
    import equinox as eqx

    class Pair(eqx.Module):
        a: np.ndarray
        b: tuple

    result = {"eta": {0.1: {"loss": np.arange(3.0)}}, "pair": Pair(np.ones(2), (np.zeros(1), np.eye(2)))}
    flat = store.flatten(result)
    assert sorted(flat) == ["eta/0.1/loss", "pair/a", "pair/b/0", "pair/b/1"]
    store.save(tmp_path, "tree", {}, result)
    nested = store.load(tmp_path, "tree", {})
    np.testing.assert_array_equal(nested["eta"]["0.1"]["loss"], np.arange(3.0))
    np.testing.assert_array_equal(nested["pair"]["b"]["1"], np.eye(2))
    typed = store.load(tmp_path, "tree", {}, like={"eta": {"0.1": {"loss": 0}}, "pair": Pair(0, (0, 0))})
    assert isinstance(typed["pair"], Pair) and isinstance(typed["pair"].b, tuple)
    np.testing.assert_array_equal(typed["pair"].b[1], np.eye(2))
    with pytest.raises(ValueError, match="do not have the structure asked for"):
        store.load(tmp_path, "tree", {}, like={"eta": 0})
    with pytest.raises(ValueError, match="hold no '/'"):
        store.flatten({"a/b": np.zeros(1)})


def test_cached_computes_once_and_recompute_overwrites(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.full(2, len(calls))}

    cfg = {"seed": 1}
    assert store.cached(tmp_path, "c", cfg, compute)["x"][0] == 1
    assert store.cached(tmp_path, "c", cfg, compute)["x"][0] == 1
    assert len(calls) == 1
    assert store.cached(tmp_path, "c", cfg, compute, recompute=True)["x"][0] == 2
    assert len(list(tmp_path.iterdir())) == 1


def test_parts_are_stored_apart_and_keyed_by_config_and_label(tmp_path):
    folder = store.path(tmp_path, "run", {"n": 1})
    got = store.part(folder, {"n": 1}, "eta0.1", lambda: {"x": np.arange(2)})
    assert (folder / "parts" / "eta0.1" / "arrays.npz").exists()
    np.testing.assert_array_equal(store.part(folder, {"n": 1}, "eta0.1", lambda: 1 / 0)["x"], got["x"])
    assert store.part(folder, {"n": 1}, "eta0.2", lambda: {"x": np.ones(1)})["x"][0] == 1
    with pytest.raises(ValueError, match="holds a result for another config"):
        store.part(folder, {"n": 2}, "eta0.1", lambda: {})  # the folder is the other config's
    with pytest.raises(ValueError, match="label"):
        store.part(folder, {"n": 1}, "a/b", lambda: {})


def test_a_foreign_result_is_refused(tmp_path):
    cfg = {"seed": 1}
    path = store.save(tmp_path, "c", cfg, {"x": np.zeros(1)})
    (path / "config.json").write_text('{"seed": 2}')
    with pytest.raises(ValueError, match="holds a result for another config"):
        store.load(tmp_path, "c", cfg)


def test_a_damaged_result_is_refused_and_left_alone(tmp_path):
    path = store.save(tmp_path, "c", {"seed": 1}, {"x": np.arange(100)})
    torn = (path / "arrays.npz").read_bytes()[:100]
    (path / "arrays.npz").write_bytes(torn)
    with pytest.raises(ValueError, match="is damaged"):
        store.load(tmp_path, "c", {"seed": 1})
    assert (path / "arrays.npz").read_bytes() == torn


def test_bad_config_and_name(tmp_path):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.config_hash({"f": object()})
    with pytest.raises(ValueError, match="name"):
        store.path(tmp_path, "a/b", {})


def test_a_write_killed_at_any_moment_leaves_the_previous_state(tmp_path, monkeypatch):
    """A write interrupted before its rename (a kill, a full disk) leaves the previous arrays readable whole;
    a stale temporary file from a killed writer does not disturb later reads and writes. (A folder swap once
    lost the state, or left a folder that failed every later write, when killed between its steps.)"""
    cfg = {"run": 1}
    folder = store.write(tmp_path / "state", cfg, {"x": np.arange(3)})
    (folder / ".arrays.npz-stale").write_bytes(b"half a file")
    real = store.os.replace

    def killed(src, dst):
        if str(dst).endswith("arrays.npz"):
            raise KeyboardInterrupt  # the process dies just before the rename
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write(folder, cfg, {"x": np.arange(5)})
    monkeypatch.setattr(store.os, "replace", real)
    np.testing.assert_array_equal(store.read(folder, cfg)["x"], np.arange(3))
    store.write(folder, cfg, {"x": np.arange(4)})
    np.testing.assert_array_equal(store.read(folder, cfg)["x"], np.arange(4))
