"""Tests of the content-addressed feature cache (service/pipeline/features/cache.py), on real files.

The multi-process tests use the spawn context, so the worker functions below live at module level
and import everything they need themselves.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from service.pipeline.features import cache as cache_mod
from service.pipeline.features import cache_key as cache_key_mod
from service.pipeline.features.cache import CachedFeatures, FeatureCache
from service.pipeline.features.cache_key import feature_cache_key

LOGGER = "service.pipeline.features.cache"

BASE_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.95,
    "crop_mode": "center",
}
BASE_KEY_ARGS = {
    "backbone_id": "resnet50.a1_in1k",
    "weights_sha256": "a" * 64,
    "data_config": BASE_CONFIG,
    "dataset_fingerprint": "fp-0001",
    "layer": None,
}


def _key(i: int) -> str:
    return feature_cache_key(**{**BASE_KEY_ARGS, "dataset_fingerprint": f"fp-{i}"})


def _payload(seed: int, n: int = 64, d: int = 16) -> tuple[dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(seed)
    arrays = {
        "features": rng.standard_normal((n, d)).astype(np.float32),
        "labels": rng.integers(0, 10, size=n).astype(np.int64),
        "indices": np.arange(n, dtype=np.int64) + seed,
    }
    return arrays, {"seed": seed, "class_map": ["cat", "dog"], "n": n}


def _assert_entry(entry: CachedFeatures | None, arrays: dict[str, np.ndarray], metadata: dict) -> None:
    assert entry is not None
    assert sorted(entry.arrays) == sorted(arrays)
    for name, expected in arrays.items():
        got = entry.arrays[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert entry.metadata == json.loads(json.dumps(metadata))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")


# --------------------------------------------------------------------------------------------
# Round trip, layout, hits/misses
# --------------------------------------------------------------------------------------------


def test_round_trip_of_many_dtypes_and_metadata(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c")
    rng = np.random.default_rng(0)
    arrays = {
        "features": rng.standard_normal((50, 7)).astype(np.float32),
        "labels": rng.integers(-(2**62), 2**62, size=50, dtype=np.int64),  # beyond float precision
        "indices": np.arange(50, dtype=np.int64),
        "source_probs": rng.dirichlet(np.ones(5), size=50),  # float64
        "scalar": np.array(7, dtype=np.int64),  # 0-d
        "scalar_f": np.array(np.pi),
        "one_d_u8": np.arange(10, dtype=np.uint8),
        "flags": rng.random(9) > 0.5,
        "half": rng.standard_normal(4).astype(np.float16),
        "u64": np.array([0, 2**64 - 1], dtype=np.uint64),
        "i8": np.array([-128, 127], dtype=np.int8),
        "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "specials": np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float64),
    }
    metadata = {
        "backbone_id": "resnet50.a1_in1k",
        "class_map": {"0": "chat", "1": "über-dog"},
        "data_config": {"input_size": (3, 224, 224), "mean": [0.485, 0.456, 0.406]},
        "n_skipped": 0,
        "nested": {"a": [1, 2.5, None, True, "x"]},
    }
    path = cache.put("0" * 64, arrays, metadata)
    assert path.is_file()

    entry = FeatureCache(tmp_path / "c").get("0" * 64)  # a fresh instance: nothing held in memory
    _assert_entry(entry, arrays, metadata)
    assert entry.metadata["data_config"]["input_size"] == [3, 224, 224]  # JSON: tuples come back as lists
    assert np.signbit(entry.arrays["specials"][3])  # -0.0 is bit-exact
    assert all(a.flags.writeable and a.flags.c_contiguous for a in entry.arrays.values())


def test_non_contiguous_and_big_endian_arrays_round_trip_by_value(tmp_path: Path) -> None:
    # safetensors.numpy on its own stores a transposed array's memory order, i.e. wrong values.
    cache = FeatureCache(tmp_path)
    base = np.arange(12, dtype=np.int64).reshape(3, 4)
    arrays = {
        "transposed": base.T,
        "strided": base[:, ::2],
        "big_endian": np.array([1.5, -2.25], dtype=">f8"),
    }
    cache.put("1" * 64, arrays, {})
    got = cache.get("1" * 64).arrays
    np.testing.assert_array_equal(got["transposed"], base.T)
    np.testing.assert_array_equal(got["strided"], base[:, ::2])
    np.testing.assert_array_equal(got["big_endian"], [1.5, -2.25])
    assert got["big_endian"].dtype == np.float64


def test_layout_is_sharded_safetensors_with_json_metadata(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = FeatureCache(root)
    assert not root.exists()  # created lazily
    assert cache.get("ab" + "0" * 62) is None and cache.size_bytes() == 0 and cache.evict() == 0
    assert not root.exists()

    key = "ab" + "c" * 62
    arrays, metadata = _payload(1)
    path = cache.put(key, arrays, metadata)
    assert path == root / "ab" / f"{key}.safetensors"
    assert path == cache.path_for(key)
    # A plain safetensors file, readable without this module (no pickle anywhere).
    plain = load_file(path)
    np.testing.assert_array_equal(plain["features"], arrays["features"])
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        header = f.metadata()
    assert json.loads(header["backbone_rank.metadata"]) == metadata
    assert _files(root) == [path]  # no temp files left


def test_miss_returns_none_and_is_counted(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = _key(1)
    assert cache.get(key) is None
    assert key not in cache
    assert cache.stats() == {"entries": 0, "bytes": 0, "hits": 0, "misses": 1}

    arrays, metadata = _payload(1)
    path = cache.put(key, arrays, metadata)
    assert key in cache
    _assert_entry(cache.get(key), arrays, metadata)
    _assert_entry(cache.get(key), arrays, metadata)
    assert cache.get(_key(2)) is None
    stats = cache.stats()
    assert stats == {"entries": 1, "bytes": path.stat().st_size, "hits": 2, "misses": 2}
    assert cache.size_bytes() == path.stat().st_size


def test_put_overwrites_and_clear_empties(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = _key(1)
    cache.put(key, *_payload(1))
    arrays2, metadata2 = _payload(2, n=5)
    cache.put(key, arrays2, metadata2)
    _assert_entry(cache.get(key), arrays2, metadata2)
    cache.put(_key(2), *_payload(3))
    assert cache.stats()["entries"] == 2
    cache.clear()
    assert cache.stats()["entries"] == 0 and cache.size_bytes() == 0
    assert cache.get(key) is None
    cache.put(key, arrays2, metadata2)  # still usable after clear
    assert key in cache


@pytest.mark.parametrize(
    ("arrays", "metadata", "error"),
    [
        ({"x": [1, 2, 3]}, {}, TypeError),  # not an ndarray
        ({"x": np.array([object()], dtype=object)}, {}, ValueError),
        ({"x": np.array(["a"])}, {}, ValueError),  # unicode
        ({"__metadata__": np.zeros(1)}, {}, ValueError),
        ({"": np.zeros(1)}, {}, ValueError),
        ({"x": np.zeros(1)}, {"bad": object()}, TypeError),
        ({"x": np.zeros(1)}, ["not", "a", "dict"], TypeError),
        ([np.zeros(1)], {}, TypeError),
    ],
)
def test_put_rejects_bad_values_and_writes_nothing(tmp_path: Path, arrays, metadata, error) -> None:
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(error):
        cache.put("2" * 64, arrays, metadata)
    assert not (tmp_path / "c").exists() or _files(tmp_path / "c") == []


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def test_key_is_64_lowercase_hex_and_stable_across_equivalent_inputs() -> None:
    key = feature_cache_key(**BASE_KEY_ARGS)
    assert len(key) == 64 and key == key.lower() and int(key, 16) >= 0

    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in BASE_CONFIG.items()}
    reordered = dict(reversed(list(BASE_CONFIG.items())))
    numpy_scalars = {
        **BASE_CONFIG,
        "input_size": np.array([3, 224, 224]),
        "crop_pct": np.float64(0.95),
        "mean": tuple(np.float64(m) for m in BASE_CONFIG["mean"]),
    }
    from_json = json.loads(json.dumps(BASE_CONFIG))
    noisy = {**BASE_CONFIG, "crop_pct": 0.1 + 0.85}  # 0.9500000000000001 in float arithmetic
    integral_floats = {**BASE_CONFIG, "input_size": (3.0, 224.0, 224.0)}
    for cfg in (as_lists, reordered, numpy_scalars, from_json, noisy, integral_floats):
        assert feature_cache_key(**{**BASE_KEY_ARGS, "data_config": cfg}) == key, cfg

    assert feature_cache_key(**{**BASE_KEY_ARGS, "weights_sha256": "A" * 64}) == key  # hex case
    assert feature_cache_key(**BASE_KEY_ARGS, extra={}) == key  # extra=None == extra={}
    kw_reordered = {k: BASE_KEY_ARGS[k] for k in reversed(list(BASE_KEY_ARGS))}
    assert feature_cache_key(**kw_reordered) == key

    # Nested mappings and key order inside extra.
    e1 = feature_cache_key(**BASE_KEY_ARGS, extra={"b": 1, "a": {"y": (1, 2), "x": None}})
    e2 = feature_cache_key(**BASE_KEY_ARGS, extra={"a": {"x": None, "y": [1, 2]}, "b": 1.0})
    assert e1 == e2


@pytest.mark.parametrize(
    "change",
    [
        {"backbone_id": "resnet50.a2_in1k"},
        {"weights_sha256": "b" * 64},
        {"weights_sha256": None},
        {"dataset_fingerprint": "fp-0002"},
        {"layer": "layer3"},
        {"data_config": {**BASE_CONFIG, "crop_pct": 0.875}},
        {"data_config": {**BASE_CONFIG, "input_size": (3, 256, 256)}},
        {"data_config": {**BASE_CONFIG, "interpolation": "bilinear"}},
        {"data_config": {**BASE_CONFIG, "mean": (0.5, 0.5, 0.5)}},
        {"data_config": {**BASE_CONFIG, "extra_field": None}},
        {"data_config": {k: v for k, v in BASE_CONFIG.items() if k != "crop_mode"}},
        {"extra": {"dtype": "float16"}},
    ],
    ids=lambda c: next(iter(c)) + ":" + str(next(iter(c.values())))[:30],
)
def test_key_changes_with_every_input(change: dict) -> None:
    assert feature_cache_key(**{**BASE_KEY_ARGS, **change}) != feature_cache_key(**BASE_KEY_ARGS)


def test_key_distinguishes_layers_and_bool_from_int() -> None:
    keys = {feature_cache_key(**{**BASE_KEY_ARGS, "layer": layer}) for layer in (None, "layer3", "layer4", "None")}
    assert len(keys) == 4
    assert feature_cache_key(**BASE_KEY_ARGS, extra={"flag": True}) != feature_cache_key(
        **BASE_KEY_ARGS, extra={"flag": 1}
    )


def test_key_includes_schema_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = feature_cache_key(**BASE_KEY_ARGS)
    monkeypatch.setattr(cache_key_mod, "CACHE_SCHEMA_VERSION", cache_key_mod.CACHE_SCHEMA_VERSION + 1)
    assert feature_cache_key(**BASE_KEY_ARGS) != before


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"data_config": {**BASE_CONFIG, "crop_pct": float("nan")}}, ValueError),
        ({"data_config": {**BASE_CONFIG, "fn": print}}, TypeError),
        ({"data_config": {1: "non-str key"}}, TypeError),
        ({"data_config": [("a", 1)]}, TypeError),
        ({"backbone_id": ""}, ValueError),
        ({"dataset_fingerprint": None}, ValueError),
    ],
)
def test_key_rejects_values_without_a_canonical_form(change: dict, error: type) -> None:
    with pytest.raises(error):
        feature_cache_key(**{**BASE_KEY_ARGS, **change})


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "../" + "a" * 61,
        "/" + "a" * 63,
        "A" * 64,  # uppercase
        "a" * 63,
        "a" * 65,
        "a" * 64 + "\n",  # `$` would accept this; fullmatch must not
        "g" * 64,
        "",
        None,
        b"a" * 64,
        12345,
    ],
)
def test_invalid_key_raises_value_error(tmp_path: Path, bad) -> None:
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(ValueError, match="invalid cache key"):
        cache.get(bad)
    with pytest.raises(ValueError, match="invalid cache key"):
        cache.put(bad, {"x": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="invalid cache key"):
        _ = bad in cache
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing escaped the root


def test_constructor_and_evict_validate_max_bytes(tmp_path: Path) -> None:
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(ValueError):
            FeatureCache(tmp_path, max_bytes=bad)
    with pytest.raises(ValueError):
        FeatureCache(tmp_path).evict(-5)


# --------------------------------------------------------------------------------------------
# Eviction
# --------------------------------------------------------------------------------------------


def _age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_lru_evicts_the_least_recently_accessed_entry(tmp_path: Path) -> None:
    probe = FeatureCache(tmp_path / "probe")
    entry_size = probe.put(_key(0), *_payload(0)).stat().st_size
    # Room for exactly three entries (all payloads are the same size).
    cache = FeatureCache(tmp_path / "c", max_bytes=3 * entry_size + entry_size // 2)
    paths = {i: cache.put(_key(i), *_payload(i)) for i in (1, 2, 3)}
    assert all(p.stat().st_size == entry_size for p in paths.values())
    # Make the insertion order unambiguous regardless of filesystem timestamp granularity.
    for i, ago in ((1, 300), (2, 200), (3, 100)):
        _age(paths[i], ago)

    assert cache.get(_key(1)) is not None  # oldest entry touched: now the most recently used
    assert paths[1].stat().st_mtime > time.time() - 60

    paths[4] = cache.put(_key(4), *_payload(4))
    assert _key(2) not in cache  # untouched and oldest: evicted
    assert all(_key(i) in cache for i in (1, 3, 4))
    assert cache.size_bytes() <= cache.max_bytes

    cache.put(_key(5), *_payload(5))  # next victim: 3 (older than 1 and 4)
    assert {i for i in range(1, 6) if _key(i) in cache} == {1, 4, 5}


def test_explicit_evict_returns_bytes_freed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    paths = [cache.put(_key(i), *_payload(i)) for i in range(4)]
    for i, p in enumerate(paths):
        _age(p, 100 - i)
    sizes = [p.stat().st_size for p in paths]
    total = sum(sizes)
    assert cache.evict() == 0  # within the default 20 GiB bound
    assert cache.evict(total - 1) == sizes[0]
    assert [_key(i) in cache for i in range(4)] == [False, True, True, True]
    assert cache.evict(0) == total - sizes[0]
    assert cache.stats()["entries"] == 0


def test_just_written_entry_is_never_evicted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path, max_bytes=100)  # smaller than any entry
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = cache.put(_key(1), *_payload(1))
    assert first.is_file() and _key(1) in cache
    assert any("larger than max_bytes" in r.getMessage() for r in caplog.records)

    # The new entry is kept (the bound cannot be met), the older one goes.
    second = cache.put(_key(2), *_payload(2))
    assert second.is_file()
    assert _key(1) not in cache
    _assert_entry(cache.get(_key(2)), *_payload(2))
    # Explicit eviction has no such exception.
    size = second.stat().st_size
    assert cache.evict() == size
    assert _key(2) not in cache


def test_eviction_tolerates_files_vanishing_between_listing_and_deleting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path)
    paths = [cache.put(_key(i), *_payload(i)) for i in range(3)]
    for i, p in enumerate(paths):
        _age(p, 100 - i)
    sizes = [p.stat().st_size for p in paths]
    real_scan = FeatureCache._scan

    def scan_then_other_process_deletes(self):
        listed = list(real_scan(self))
        paths[0].unlink()  # another evictor got there first
        return iter(listed)

    monkeypatch.setattr(FeatureCache, "_scan", scan_then_other_process_deletes)
    assert cache.evict(0) == sizes[1] + sizes[2]  # only what this call deleted counts as freed
    monkeypatch.undo()
    assert cache.stats()["entries"] == 0


def test_stale_temp_files_are_reaped_but_fresh_ones_left_alone(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    path = cache.put(_key(1), *_payload(1))
    stale = path.parent / f".{_key(9)}.1234.deadbeef.tmp"
    fresh = path.parent / f".{_key(8)}.1234.cafebabe.tmp"
    foreign = path.parent / "README.txt"
    for p in (stale, fresh, foreign):
        p.write_bytes(b"x" * 1000)
    _age(stale, 2 * cache.stale_tmp_s)
    assert cache.size_bytes() == path.stat().st_size  # temp and foreign files are not entries
    assert cache.evict() == 1000
    assert not stale.exists() and fresh.exists() and foreign.exists()
    cache.clear()
    assert fresh.exists() and foreign.exists()  # an in-flight write is never cut off


# --------------------------------------------------------------------------------------------
# Corruption
# --------------------------------------------------------------------------------------------


def _corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    with path.open("r+b") as f:
        f.truncate(len(data) // 2)


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(300))


def _corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def _corrupt_bitflip_in_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # tensor bytes: the safetensors header stays valid
    path.write_bytes(bytes(data))


def _corrupt_foreign_file(path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"features": np.zeros((2, 2), np.float32)}, str(path))  # valid, but not ours


def _corrupt_metadata_json(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="np") as f:
        header = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    header["backbone_rank.metadata"] = "{not json"
    save_file(arrays, str(path), metadata=header)


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_truncate,
        _corrupt_garbage,
        _corrupt_empty,
        _corrupt_bitflip_in_data,
        _corrupt_foreign_file,
        _corrupt_metadata_json,
    ],
)
def test_corrupt_file_is_a_logged_miss_and_is_deleted(tmp_path: Path, caplog: pytest.LogCaptureFixture, corrupt):
    cache = FeatureCache(tmp_path)
    key = _key(1)
    path = cache.put(key, *_payload(1))
    cache.put(_key(2), *_payload(2))
    corrupt(path)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.get(key) is None
    assert not path.exists()
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert cache.stats()["misses"] == 1
    _assert_entry(cache.get(_key(2)), *_payload(2))  # neighbours unaffected
    cache.put(key, *_payload(1))  # and the key can be written again
    _assert_entry(cache.get(key), *_payload(1))


def test_file_deleted_between_stat_and_read_is_a_quiet_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(tmp_path)
    path = cache.put(_key(1), *_payload(1))
    real_open = cache_mod._open_safetensors

    def evicted_meanwhile(p):
        path.unlink()
        return real_open(p)

    monkeypatch.setattr(cache_mod, "_open_safetensors", evicted_meanwhile)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.get(_key(1)) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert cache.stats()["misses"] == 1


def test_corrupt_file_replaced_by_a_writer_is_not_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path)
    key = _key(1)
    path = cache.put(key, *_payload(1))
    _corrupt_garbage(path)
    real_open = cache_mod._open_safetensors

    def open_then_replace(p):
        try:
            return real_open(p)  # raises for the garbage file...
        finally:
            FeatureCache(tmp_path).put(key, *_payload(1))  # ...while a writer renames a good one in

    monkeypatch.setattr(cache_mod, "_open_safetensors", open_then_replace)
    assert cache.get(key) is None
    monkeypatch.undo()
    _assert_entry(cache.get(key), *_payload(1))  # the fresh file survived


# --------------------------------------------------------------------------------------------
# Multiple processes
# --------------------------------------------------------------------------------------------

N_WRITERS = 4
SHARED_SEED = 1000


def _big_payload(seed: int) -> tuple[dict[str, np.ndarray], dict]:
    # ~1.5 MB per entry: large enough that writes and reads genuinely overlap.
    return _payload(seed, n=1500, d=256)


def _writer_main(errors, root: str, worker: int, barrier, rounds: int) -> None:
    try:
        cache = FeatureCache(root)
        shared = _big_payload(SHARED_SEED)
        own = _big_payload(worker)
        barrier.wait(timeout=60)
        for _ in range(rounds):
            cache.put(_key(SHARED_SEED), *shared)  # every writer: same key, same content
            cache.put(_key(worker), *own)
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def _reader_main(errors, results, root: str, barrier, stop) -> None:
    try:
        warnings_seen: list[str] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: warnings_seen.append(record.getMessage())
        logging.getLogger(LOGGER).addHandler(handler)
        cache = FeatureCache(root)
        seeds = [SHARED_SEED, *range(N_WRITERS)]
        expected = {s: _big_payload(s) for s in seeds}
        barrier.wait(timeout=60)
        hits = misses = 0
        final_pass = False
        while True:
            for s in seeds:
                entry = cache.get(_key(s))
                if entry is None:
                    misses += 1
                else:
                    _assert_entry(entry, *expected[s])  # complete and correct, never partial
                    hits += 1
            if final_pass:
                break
            final_pass = stop.is_set()
        results.put((hits, misses, warnings_seen))
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def _evictor_main(errors, root: str, worker: int, barrier, rounds: int) -> None:
    try:
        rng = np.random.default_rng(worker)
        cache = FeatureCache(root, max_bytes=int(rng.integers(20_000, 60_000)))
        barrier.wait(timeout=60)
        for r in range(rounds):
            seed = 100 + worker * rounds + r
            cache.put(_key(seed), *_payload(seed))
            cache.evict(int(rng.integers(0, 80_000)))
            cache.size_bytes()
            cache.stats()
            probe = int(rng.integers(0, 40))
            entry = cache.get(_key(probe))
            if entry is not None:
                _assert_entry(entry, *_payload(probe))
            if r % 7 == 3:
                cache.clear()
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def _drain(q) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def _join_all(procs, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, f"{len(alive)} process(es) hung"


def test_concurrent_writers_and_reader_never_see_partial_entries(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    root = str(tmp_path / "cache")
    errors, results = ctx.Queue(), ctx.Queue()
    barrier, stop = ctx.Barrier(N_WRITERS + 1), ctx.Event()
    writers = [
        ctx.Process(target=_writer_main, args=(errors, root, w, barrier, 12), name=f"writer-{w}")
        for w in range(N_WRITERS)
    ]
    reader = ctx.Process(target=_reader_main, args=(errors, results, root, barrier, stop), name="reader")
    procs = [*writers, reader]
    for p in procs:
        p.start()
    _join_all(writers)
    stop.set()
    _join_all([reader])
    errs = _drain(errors)
    assert not errs, "\n".join(errs)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    hits, _misses, warnings_seen = results.get(timeout=10)
    assert hits > 0  # the final pass at least reads every entry
    # A reader that met a partial file would have logged it as corrupt (and deleted it).
    assert warnings_seen == []

    cache = FeatureCache(root)
    for s in (SHARED_SEED, *range(N_WRITERS)):
        _assert_entry(cache.get(_key(s)), *_big_payload(s))
    assert cache.stats()["entries"] == N_WRITERS + 1
    assert not list(Path(root).rglob("*.tmp"))  # every temp file was renamed or removed


def test_concurrent_evictors_do_not_crash(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    seed_cache = FeatureCache(root)
    for i in range(40):
        seed_cache.put(_key(i), *_payload(i))

    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    n, rounds = 4, 15
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_evictor_main, args=(errors, str(root), w, barrier, rounds)) for w in range(n)]
    for p in procs:
        p.start()
    _join_all(procs)
    errs = _drain(errors)
    assert not errs, "\n".join(errs)
    assert [p.exitcode for p in procs] == [0] * n

    cache = FeatureCache(root, max_bytes=30_000)
    cache.evict()
    assert cache.size_bytes() <= 30_000
    names = [p.name for p in root.rglob("*.safetensors")]
    assert len(names) == cache.stats()["entries"]
    for p in root.rglob("*.safetensors"):
        key = p.name.removesuffix(".safetensors")
        assert cache.get(key) is not None  # whatever survived is intact
    assert cache.stats()["misses"] == 0
