"""The feature cache's key: the sha256 of a canonical JSON of everything that determines a backbone's features
on a dataset (:func:`feature_cache_key`), and the check that a key is one before it becomes a file name.

Separate from the store (:mod:`service.pipeline.features.cache`) because deriving a key touches no file and needs
neither filelock nor safetensors: the canonicalisation rules (what makes two configs one key) read and test on
their own, and the extraction (:mod:`service.pipeline.features.extract`) derives the key it asks the store for.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Set
from typing import Any

import numpy as np

__all__ = ["CACHE_SCHEMA_VERSION", "feature_cache_key"]

#: Bump on any change to the key recipe or the file layout/header: it is hashed into every key
#: (old entries are then simply never looked up and age out by LRU) and written into every file
#: header (a file with another version is treated as corrupt).
CACHE_SCHEMA_VERSION = 1

_KEY_RE = re.compile(r"[0-9a-f]{64}")

# Float config values are rounded to this many significant digits before hashing, so that
# arithmetic noise (0.1 + 0.2) and a JSON round trip cannot split one config into two keys.
_FLOAT_SIG_DIGITS = 12


def _canonical(value: Any, where: str) -> Any:
    """Return a JSON-ready, canonical form of ``value`` (see :func:`feature_cache_key`)."""
    # bool before int: bool is an int subclass, and True must not hash like 1.
    if value is None or isinstance(value, bool | np.bool_):
        return None if value is None else bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"{where}: non-finite float {x!r} cannot be part of a cache key")
        x = float(f"{x:.{_FLOAT_SIG_DIGITS}g}") + 0.0  # "+ 0.0" folds -0.0 into 0.0
        # 224.0 and 224 configure the same preprocessing, so they must give the same key.
        return int(x) if x.is_integer() and abs(x) < 2**53 else x
    if isinstance(value, str):
        return str.__str__(value)  # a (str, Enum) member hashes as its value, not "Cls.NAME"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                # Refuse rather than str() it: {1: x} and {"1": x} must not collide silently.
                raise TypeError(f"{where}: mapping keys must be str, got {type(k).__name__} {k!r}")
            out[str(k)] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        # Tuples and lists are the same thing once written to JSON (a config read back from a
        # file has lists where timm returned tuples).
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Set):
        items = [_canonical(v, f"{where}{{}}") for v in value]
        return sorted(items, key=_dumps)
    raise TypeError(f"{where}: {type(value).__name__} is not allowed in a cache key (use JSON-like values)")


def _dumps(value: Any) -> str:
    """Canonical JSON text: sorted keys, no whitespace, ASCII only, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _nonempty_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def feature_cache_key(
    *,
    backbone_id: str,
    weights_sha256: str | None,
    data_config: dict,
    dataset_fingerprint: str,
    layer: str | None = None,
    extra: dict | None = None,
) -> str:
    """Return the cache key (64 lowercase hex chars) of one backbone x dataset x layer extraction.

    The key is the sha256 of a canonical JSON document holding :data:`CACHE_SCHEMA_VERSION` and
    every argument. Canonicalisation makes equivalent inputs hash alike: mapping keys are sorted,
    tuples become lists, numpy scalars/arrays become Python values, floats are rounded to 12
    significant digits (and integral floats become ints, ``224.0 == 224``), ``-0.0`` becomes
    ``0.0``, a hex ``weights_sha256`` is lower-cased, and ``extra=None`` equals ``extra={}``.
    Any real change of any argument changes the key.

    Parameters
    ----------
    backbone_id : str
        timm ``arch.tag`` or ``zoo:<name>``.
    weights_sha256 : str or None
        Hash of the resolved weights file; ``None`` when there is none (e.g. random-init zoo
        models), which is then part of the key like any other value.
    data_config : dict
        The preprocessing config (``timm.data.resolve_model_data_config``), JSON-like values only.
    dataset_fingerprint : str
        Content fingerprint of the dataset (files, labels, split).
    layer : str or None
        The feature layer; ``None`` means the default pooled pre-logits.
    extra : dict or None
        Anything else that changes the features (e.g. batch-norm mode, dtype, TTA).

    Raises
    ------
    TypeError
        A value that has no canonical JSON form (objects, non-str mapping keys).
    ValueError
        An empty id/fingerprint, or a non-finite float.
    """
    _nonempty_str(backbone_id, "backbone_id")
    _nonempty_str(dataset_fingerprint, "dataset_fingerprint")
    if weights_sha256 is not None:
        weights_sha256 = _nonempty_str(weights_sha256, "weights_sha256").strip()
        if re.fullmatch(r"[0-9a-fA-F]+", weights_sha256):
            weights_sha256 = weights_sha256.lower()  # hex digests are case-insensitive
    if layer is not None:
        _nonempty_str(layer, "layer")
    if not isinstance(data_config, Mapping):
        raise TypeError(f"data_config must be a mapping, got {type(data_config).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping or None, got {type(extra).__name__}")
    document = {
        "schema": CACHE_SCHEMA_VERSION,
        "backbone_id": backbone_id,
        "weights_sha256": weights_sha256,
        "data_config": _canonical(data_config, "data_config"),
        "dataset_fingerprint": dataset_fingerprint,
        "layer": layer,
        "extra": _canonical(extra or {}, "extra"),
    }
    return hashlib.sha256(_dumps(document).encode("ascii")).hexdigest()


def _check_key(key: Any) -> str:
    """Return ``key`` if it is 64 lowercase hex chars, else raise ``ValueError``.

    Keys become file names, so this is what stops ``"../../etc/passwd"`` from escaping the root.
    ``re.fullmatch`` (not ``match`` with ``$``) so that a trailing newline is rejected too.
    """
    if not isinstance(key, str) or _KEY_RE.fullmatch(key) is None:
        raise ValueError(f"invalid cache key {key!r}: expected 64 lowercase hex chars (see feature_cache_key)")
    return key
