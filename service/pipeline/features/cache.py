"""Content-addressed on-disk cache of extracted features (service/ARCHITECTURE.md, "Feature cache").

One entry holds the features of one backbone x one dataset x one layer, so a backbone's forward
pass over a dataset is never paid twice. The key is the sha256 of a canonical JSON of everything
that determines the features (:func:`~service.pipeline.features.cache_key.feature_cache_key`); the value is
one ``.safetensors`` file (never pickle, so a cache directory shared between users cannot execute code on load).

Layout::

    root/.lock                          filelock guarding eviction and size accounting
    root/ab/abcdef....safetensors       one entry, sharded by the first two hex chars of its key
    root/ab/.abcdef....<pid>.<rnd>.tmp  an entry being written (never read; stale ones are reaped)

Concurrency model (several worker processes, possibly on one shared directory):

* writers write a private temp file in the entry's directory, fsync it and ``os.replace`` it into
  place, so a reader opens either the old complete file or the new complete file, never a partial
  one. Two writers of the same key both succeed; the last rename wins, and since a key determines
  its content both versions are equal anyway. Writers take no lock, so extraction is never
  serialised by the cache.
* eviction, size accounting and ``clear`` take ``root/.lock`` so two evictors do not race on their
  byte counts; every file operation tolerates the file having vanished in between (another
  evictor, a ``clear``), which is reported as a miss, never as an error.
* readers take no lock either; a file that fails to parse or whose content digest does not match
  is treated as a miss, deleted and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from filelock import FileLock
from filelock import Timeout as LockTimeout
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from service.atomic import atomic_path
from service.pipeline.features.cache_key import _KEY_RE, CACHE_SCHEMA_VERSION, _check_key, _dumps

__all__ = [
    "CachedFeatures",
    "FeatureCache",
]

logger = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_SUFFIX = ".safetensors"
_TMP_SUFFIX = ".tmp"

# Header keys (safetensors metadata is a flat str -> str map).
_H_SCHEMA = "backbone_rank.cache.schema"
_H_KEY = "backbone_rank.cache.key"
_H_DIGEST = "backbone_rank.cache.content_sha256"
_H_METADATA = "backbone_rank.metadata"

# The dtypes numpy can hand to safetensors (bfloat16/float8 have no numpy dtype here).
_SUPPORTED_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        np.bool_,
        np.int8,
        np.uint8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
    )
)


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@dataclass
class CachedFeatures:
    """One cache entry as read back.

    Attributes
    ----------
    arrays : dict[str, np.ndarray]
        E.g. ``"features"`` (N, D) float32, ``"labels"`` (N,) int64, ``"indices"`` (N,) int64 and
        optionally ``"source_probs"``. Fresh, writable arrays with the dtypes and shapes written.
    metadata : dict[str, Any]
        The JSON-able metadata given to :meth:`FeatureCache.put` (tuples come back as lists).
    """

    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any]


def _normalise_arrays(arrays: Any) -> dict[str, np.ndarray]:
    """Validate ``arrays`` and return C-contiguous little-endian copies/views, ready to write."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of name -> np.ndarray, got {type(arrays).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"invalid array name {name!r}: a non-empty str other than '__metadata__'")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"arrays[{name!r}] must be a np.ndarray, got {type(arr).__name__}")
        if arr.dtype.newbyteorder("=") not in _SUPPORTED_DTYPES:
            raise ValueError(f"arrays[{name!r}] has dtype {arr.dtype}, which safetensors cannot store")
        # safetensors.numpy writes a non-contiguous array's buffer in memory order, i.e. silently
        # scrambles a transposed array; and it stores little-endian, so make both explicit here.
        # (Not np.ascontiguousarray: it turns a 0-d array into shape (1,).)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        out[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    return out


def _content_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``arrays`` (order-independent).

    safetensors only validates its header, so without this a flipped bit in the data would be
    served as a silently wrong feature matrix.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = arrays[name]
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder != "|" else arr.dtype
        h.update(_dumps([name, dtype.str, list(arr.shape)]).encode("utf-8"))
        # reshape(-1) copies only if the array is not contiguous; view(uint8) is a no-copy byte view
        h.update(arr.astype(dtype, copy=False).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


class _CorruptEntry(Exception):
    """A cache file that exists but cannot be trusted (internal)."""


class _FileInfo(NamedTuple):
    path: Path
    size: int
    mtime_ns: int
    is_tmp: bool


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


class FeatureCache:
    """Size-bounded, process-safe, content-addressed store of feature arrays.

    Parameters
    ----------
    root : str or Path
        Cache directory; created on the first :meth:`put`, never before.
    max_bytes : int
        Bound on the total size of the entries; after every :meth:`put` least-recently-used
        entries are evicted until the total is within it (the entry just written excepted).
    """

    #: Seconds to wait for ``root/.lock`` before giving up (an eviction after ``put`` then only
    #: logs; explicit ``evict``/``size_bytes``/``clear``/``stats`` raise ``filelock.Timeout``).
    lock_timeout_s: float = 120.0
    #: Temp files older than this belong to a writer that died; eviction deletes them. An
    #: in-flight write lasts seconds, so an hour cannot hit a live writer.
    stale_tmp_s: float = 3600.0
    #: Verify each entry's content digest on :meth:`get` (about 0.3 s per GB).
    verify_on_get: bool = True

    def __init__(self, root: str | Path, max_bytes: int = 20 * 2**30) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int | np.integer) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._hits = 0
        self._misses = 0
        # Counters only; threads of one process may share an instance.
        self._counter_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r}, max_bytes={self.max_bytes})"

    # -- paths ---------------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        """Return the file path of ``key`` (whether or not it exists); validates the key."""
        key = _check_key(key)
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    def _lock(self) -> FileLock:
        # A fresh FileLock per use keeps instances picklable (spawned workers) and the lock
        # non-reentrant across unrelated callers; flock is released if the holder dies.
        return FileLock(self.root / ".lock", timeout=self.lock_timeout_s)

    # -- read ----------------------------------------------------------------------------------

    def get(self, key: str) -> CachedFeatures | None:
        """Return the entry for ``key``, or ``None`` on a miss.

        A corrupt, truncated or foreign file counts as a miss: it is deleted and logged, and no
        exception escapes (only an invalid key raises ``ValueError``, and ``MemoryError`` passes
        through, the file being kept: running out of memory says nothing about the file). A hit refreshes the entry's
        mtime, which is what LRU eviction orders by (atime is unreliable under noatime/relatime).
        """
        path = self.path_for(key)
        try:
            before = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return self._count(None)
        except OSError as exc:
            logger.warning("feature cache: cannot stat %s (%s); treating as a miss", path, exc)
            return self._count(None)
        try:
            entry = self._read(path, key)
        except (FileNotFoundError, NotADirectoryError):
            # Evicted or replaced-then-evicted by another process since the stat: a plain miss.
            return self._count(None)
        except PermissionError as exc:
            # Not ours to delete (shared cache, other user); report and move on.
            logger.warning("feature cache: cannot read %s (%s); treating as a miss", path, exc)
            return self._count(None)
        except MemoryError:
            raise  # not a cache problem, and the file is probably fine: keep it
        except (_CorruptEntry, SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            self._discard_corrupt(path, before, exc)
            return self._count(None)
        except Exception:  # get() must never raise on bad cache content
            logger.exception("feature cache: unexpected error reading %s; treating as a miss", path)
            return self._count(None)
        try:
            os.utime(path)  # LRU clock; it may have been evicted meanwhile, or be read-only to us
        except OSError:
            pass
        return self._count(entry)

    def _read(self, path: Path, key: str) -> CachedFeatures:
        """Load and validate one file; raises on anything untrustworthy."""
        with _open_safetensors(path) as f:
            header = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
        schema = header.get(_H_SCHEMA)
        if schema != str(CACHE_SCHEMA_VERSION):
            raise _CorruptEntry(f"schema {schema!r} != {CACHE_SCHEMA_VERSION}")
        if header.get(_H_KEY) != key:
            raise _CorruptEntry(f"file holds key {header.get(_H_KEY)!r}")
        metadata = json.loads(header[_H_METADATA])
        if not isinstance(metadata, dict):
            raise _CorruptEntry("metadata is not a JSON object")
        if self.verify_on_get and _content_digest(arrays) != header.get(_H_DIGEST):
            raise _CorruptEntry("content digest mismatch")
        return CachedFeatures(arrays=arrays, metadata=metadata)

    def _discard_corrupt(self, path: Path, before: os.stat_result, exc: BaseException) -> None:
        # Only delete the very file we found bad: a concurrent writer may have os.replace'd a good
        # one into place since, and deleting that would throw away a fresh extraction.
        try:
            now = path.stat()
            if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
                path.unlink()
                logger.warning("feature cache: corrupt entry %s (%s); deleted", path, exc)
            else:
                logger.warning("feature cache: corrupt entry %s (%s); already replaced", path, exc)
        except FileNotFoundError:
            logger.warning("feature cache: corrupt entry %s (%s); already gone", path, exc)
        except OSError as err:
            logger.warning("feature cache: corrupt entry %s (%s); could not delete it: %s", path, exc, err)

    def _count(self, entry: CachedFeatures | None) -> CachedFeatures | None:
        with self._counter_lock:
            if entry is None:
                self._misses += 1
            else:
                self._hits += 1
        return entry

    def __contains__(self, key: object) -> bool:
        """Whether a file for ``key`` exists (cheap: no validation, no hit/miss, no LRU touch)."""
        return self.path_for(_check_key(key)).is_file()

    # -- write ---------------------------------------------------------------------------------

    def put(self, key: str, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
        """Store ``arrays`` and ``metadata`` under ``key`` atomically; return the file path.

        Overwrites an existing entry. Then evicts least-recently-used entries until the cache is
        within ``max_bytes`` (never this entry; if it alone exceeds the bound it is kept and a
        warning is logged). Eviction problems (lock timeout, I/O) are logged, not raised: the
        entry is written by then.

        Raises
        ------
        ValueError, TypeError
            Invalid key, array name, dtype, or metadata that is not JSON-serialisable; nothing is
            written then.
        OSError
            The file could not be written (no partial file is left behind).
        """
        path = self.path_for(key)
        tensors = _normalise_arrays(arrays)
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
        try:
            metadata_json = json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
        header = {
            _H_SCHEMA: str(CACHE_SCHEMA_VERSION),
            _H_KEY: key,
            _H_DIGEST: _content_digest(tensors),
            _H_METADATA: metadata_json,
        }
        # fsync: the data is on disk before the rename makes it visible; a per-writer temp name (atomic_path),
        # so concurrent writers of one key never share a temp file.
        with atomic_path(path, fsync=True, suffix=_TMP_SUFFIX) as tmp:
            save_file(tensors, str(tmp), metadata=header)
            size = tmp.stat().st_size  # before the rename: once visible, another process may evict or clear it
        logger.debug("feature cache: wrote %s (%d bytes)", path, size)
        if size > self.max_bytes:
            logger.warning(
                "feature cache: entry %s is %d bytes, larger than max_bytes=%d on its own; kept anyway",
                path,
                size,
                self.max_bytes,
            )
        try:
            self._evict(self.max_bytes, keep=path)
        except LockTimeout:
            logger.warning(
                "feature cache: %s busy for %.0f s; eviction skipped", self.root / ".lock", self.lock_timeout_s
            )
        except OSError as exc:
            logger.warning("feature cache: eviction after writing %s failed: %s", path, exc)
        return path

    # -- size and eviction --------------------------------------------------------------------

    def _scan(self) -> Iterator[_FileInfo]:
        """Yield the entries and temp files under root, skipping anything that vanishes."""
        try:
            shards = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return
        for shard in shards:
            if not _SHARD_RE.fullmatch(shard.name):
                continue
            try:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                files = list(os.scandir(shard.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for f in files:
                name = f.name
                if name.endswith(_SUFFIX) and _KEY_RE.fullmatch(name[: -len(_SUFFIX)]):
                    is_tmp = False
                elif name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    is_tmp = True
                else:
                    continue  # not ours: never count or delete foreign files
                try:
                    st = f.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # renamed or deleted by another process since the listing
                yield _FileInfo(Path(f.path), st.st_size, st.st_mtime_ns, is_tmp)

    def size_bytes(self) -> int:
        """Total size in bytes of the complete entries (temp files of writers excluded)."""
        if not self.root.is_dir():
            return 0
        with self._lock():
            return sum(f.size for f in self._scan() if not f.is_tmp)

    def evict(self, max_bytes: int | None = None) -> int:
        """Delete least-recently-used entries until the total is within ``max_bytes``.

        ``max_bytes`` defaults to the cache's bound; ``evict(0)`` empties the cache. Also deletes
        temp files abandoned by dead writers. Returns the number of bytes freed.
        """
        bound = self.max_bytes if max_bytes is None else max_bytes
        if isinstance(bound, bool) or not isinstance(bound, int | np.integer) or bound < 0:
            raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
        return self._evict(int(bound), keep=None)

    def _evict(self, bound: int, keep: Path | None) -> int:
        if not self.root.is_dir():
            return 0
        freed = 0
        with self._lock():
            files = list(self._scan())
            stale_before = time.time_ns() - int(self.stale_tmp_s * 1e9)
            for f in files:
                if f.is_tmp and f.mtime_ns < stale_before:
                    freed += _unlink(f.path, f.size, "abandoned temp file")
            entries = sorted((f for f in files if not f.is_tmp), key=lambda f: (f.mtime_ns, f.path.name))
            total = sum(f.size for f in entries)
            for f in entries:  # oldest first
                if total <= bound:
                    break
                if keep is not None and f.path == keep:
                    continue
                total -= f.size  # gone either way: by us, or by whoever beat us to it
                freed += _unlink(f.path, f.size, "LRU eviction")
        if freed:
            logger.info("feature cache: evicted %d bytes from %s (bound %d)", freed, self.root, bound)
        return freed

    def clear(self) -> None:
        """Delete every entry (and abandoned temp files); in-flight writes are left alone."""
        self._evict(0, keep=None)

    def stats(self) -> dict:
        """``{"entries", "bytes", "hits", "misses"}``; hits/misses count this instance's gets."""
        entries = 0
        size = 0
        if self.root.is_dir():
            with self._lock():
                for f in self._scan():
                    if not f.is_tmp:
                        entries += 1
                        size += f.size
        with self._counter_lock:
            return {"entries": entries, "bytes": size, "hits": self._hits, "misses": self._misses}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_PREAD_OK = True


def _open_safetensors(path: Path) -> Any:
    """``safe_open`` with the pread backend where available.

    pread rather than mmap: a file truncated in place by something outside this cache while
    mapped would kill the reader with SIGBUS instead of raising. safetensors < 0.8 has no
    ``backend`` argument; fall back to its default there.
    """
    global _PREAD_OK
    if _PREAD_OK:
        try:
            return safe_open(str(path), framework="np", backend="pread")
        except TypeError:
            _PREAD_OK = False
    return safe_open(str(path), framework="np")


def _unlink(path: Path, size: int, why: str) -> int:
    """Delete ``path``; return ``size`` if this call deleted it, 0 if it was already gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    logger.debug("feature cache: deleted %s (%d bytes, %s)", path, size, why)
    return size
