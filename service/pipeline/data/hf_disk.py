"""Listing a HuggingFace ``datasets`` dataset written with ``save_to_disk`` (the ``hf:PATH`` reference), and
reading its images back for :meth:`Dataset.open_image` (service/pipeline/data/datasets.py).

Separate because it is the only lister that needs the optional ``datasets`` package (imported only when such a
dataset is loaded) and that must check a saved directory's own metadata before ``datasets`` reads it. One of
the listers that share the :class:`Listing` shape (service/pipeline/data/listing.py). Besides the common skip
reasons it counts ``missing_image``, ``missing_label`` and ``path_outside_root`` (an image path cell).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
from collections.abc import Sequence
from typing import Any

from service.errors import InvalidDataset
from service.pipeline.data.decode import ImageDecodeError, probe_image
from service.pipeline.data.listing import (
    Entry,
    HFSource,
    Limits,
    Listing,
    count_skip,
    natural_sorted,
    scan_file,
    select_split,
)
from service.pipeline.data.paths import inside, open_regular_file, require_dir

__all__ = ["list_hf", "open_hf_table", "read_hf_image"]

_logger = logging.getLogger(__name__)

#: A split name of a saved DatasetDict: datasets joins it to the directory, so nothing path-like.
_HF_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HF_IMAGE_NAMES = ("image", "img")
_HF_LABEL_NAMES = ("label", "labels")
_HF_BATCH = 512


def _read_json_file(path: str, roots: Sequence[str], user: str) -> Any:
    try:
        with open_regular_file(path, roots, 64 * 2**20) as (fh, _):
            return json.loads(fh.read().decode("utf-8"))
    except (ImageDecodeError, ValueError) as err:
        raise InvalidDataset(
            f"{user!r} is not a dataset saved with datasets' save_to_disk: {os.path.basename(path)} is unreadable "
            f"({getattr(err, 'reason', type(err).__name__)})",
            path=user,
        ) from None


def _check_hf_dataset_dir(directory: str, roots: Sequence[str], user: str) -> list[tuple[str, int, int]]:
    """Validate a saved ``Dataset`` directory before ``datasets`` reads it.

    ``datasets`` joins the file names of ``state.json`` to the directory as they are, so a crafted
    ``state.json`` could make it read any file; every data file must be a plain name inside the roots.
    Returns ``(name, size, mtime_ns)`` of its files, for the fingerprint.
    """
    state_path = os.path.join(directory, "state.json")
    if not os.path.isfile(state_path) or not os.path.isfile(os.path.join(directory, "dataset_info.json")):
        raise InvalidDataset(
            f"{user!r} is not a dataset saved with datasets' save_to_disk (no state.json/dataset_info.json); "
            "save it with Dataset.save_to_disk or DatasetDict.save_to_disk",
            path=user,
        )
    state = _read_json_file(state_path, roots, user)
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not files:
        raise InvalidDataset(f"{user!r}: state.json lists no data files; save the dataset again", path=user)
    stats = []
    for entry in [{"filename": "state.json"}, {"filename": "dataset_info.json"}, *files]:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or name != os.path.basename(name) or name.startswith("."):
            raise InvalidDataset(f"{user!r}: state.json names a data file outside the dataset directory", path=user)
        full = os.path.join(directory, name)
        real = os.path.realpath(full)
        try:
            st = os.stat(real)
        except OSError:
            raise InvalidDataset(
                f"{user!r}: data file {name!r} is missing; save the dataset again", path=user
            ) from None
        if not inside(real, roots) or not stat.S_ISREG(st.st_mode):
            raise InvalidDataset(f"{user!r}: data file {name!r} is not a regular file inside the data roots", path=user)
        stats.append((os.path.relpath(full, directory), st.st_size, st.st_mtime_ns))
    return stats


def _hf_split_dirs(root: str, roots: Sequence[str], user: str) -> dict[str, str]:
    """Split name -> directory for a saved DatasetDict; ``{}`` for a single saved Dataset."""
    dict_json = os.path.join(root, "dataset_dict.json")
    if os.path.isfile(os.path.join(root, "state.json")) or not os.path.isfile(dict_json):
        return {}
    meta = _read_json_file(dict_json, roots, user)
    names = meta.get("splits") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise InvalidDataset(f"{user!r}: dataset_dict.json lists no splits; save the dataset again", path=user)
    for name in names:
        if not isinstance(name, str) or not _HF_SPLIT_NAME.fullmatch(name) or name in (".", ".."):
            raise InvalidDataset(f"{user!r}: dataset_dict.json has an invalid split name {name!r}", path=user)
    return {name: os.path.join(root, name) for name in names}


def _import_hf() -> Any:
    try:
        import datasets  # optional dependency and a heavy import: only when an hf dataset is loaded
    except ImportError:
        raise InvalidDataset("hf datasets need the 'datasets' package; install backbone-rank[hf]") from None
    return datasets


def _load_hf_split(directory: str, roots: Sequence[str], user: str) -> tuple[Any, list[tuple[str, int, int]]]:
    """The split's rows as a ``datasets.Dataset`` in arrow format (slicing gives pyarrow tables), and
    its files' ``(name, size, mtime_ns)``."""
    file_stats = _check_hf_dataset_dir(directory, roots, user)
    hf = _import_hf()
    try:
        ds = hf.load_from_disk(directory)
    except Exception as err:  # any failure here means "not a readable saved dataset"
        # The exception text carries real paths; log it, do not echo it.
        _logger.warning("load_from_disk failed for %s: %r", user, err)
        raise InvalidDataset(
            f"{user!r} could not be read as a dataset saved with save_to_disk ({type(err).__name__}); save it again",
            path=user,
        ) from None
    if not isinstance(ds, hf.Dataset):
        raise InvalidDataset(f"{user!r}: expected a saved Dataset, found {type(ds).__name__}", path=user)
    return ds.with_format("arrow"), file_stats


def list_hf(root: str, roots: Sequence[str], split: str | None, user: str, limits: Limits) -> Listing:
    require_dir(root, user, "hf")
    if "::" in root:
        # fsspec (used by load_from_disk) would read "a::b" as a chained URL.
        raise InvalidDataset(f"hf dataset path {user!r} must not contain '::'", path=user)
    split_dirs = _hf_split_dirs(root, roots, user)
    splits = list(split_dirs)
    chosen: str | None = None
    directory = root
    if splits:
        chosen = select_split(splits, split, user)
        directory = split_dirs[chosen]
    elif split is not None:
        raise InvalidDataset(
            f"hf dataset {user!r} is a single saved Dataset without splits; drop the '#{split}' suffix", path=user
        )
    real_dir = os.path.realpath(directory)
    if not inside(real_dir, roots):
        raise InvalidDataset(f"split {chosen!r} of hf dataset {user!r} leaves the data roots", path=user)
    ds, file_stats = _load_hf_split(real_dir, roots, user)
    hf = _import_hf()
    features = ds.features
    image_col = next((c for c, f in features.items() if isinstance(f, hf.Image)), None)
    image_col = image_col or next((c for c in _HF_IMAGE_NAMES if c in features), None)
    label_col = next((c for c in _HF_LABEL_NAMES if isinstance(features.get(c), hf.ClassLabel)), None)
    label_col = label_col or next((c for c, f in features.items() if isinstance(f, hf.ClassLabel)), None)
    label_col = label_col or next((c for c in _HF_LABEL_NAMES if c in features), None)
    if image_col is None or label_col is None:
        raise InvalidDataset(
            f"hf dataset {user!r} needs an image column (an Image feature, or one named 'image'/'img') and a label "
            f"column (a ClassLabel, or one named 'label'/'labels'); its columns are {list(features)}",
            path=user,
        )
    class_label = features[label_col] if isinstance(features[label_col], hf.ClassLabel) else None

    skipped: dict[str, int] = {}
    rows: list[tuple[str, Any, tuple[int, int | None]]] = []  # (source, raw label, (n bytes, mtime_ns))
    for start in range(0, len(ds), _HF_BATCH):
        table = ds[start : start + _HF_BATCH]
        images = table.column(image_col).to_pylist()
        raw_labels = table.column(label_col).to_pylist()
        for offset, (value, label) in enumerate(zip(images, raw_labels, strict=True)):
            row = start + offset
            source = f"hf:{row}"
            if label is None or (class_label is not None and label == -1):
                count_skip(skipped, "missing_label")
                continue
            stats = _probe_hf_value(value, real_dir, roots, limits, skipped, source)
            if stats is not None:
                rows.append((source, label, stats))

    if class_label is not None:
        classes = list(class_label.names)  # the dataset's own order, not re-sorted
        bad = next((lab for _, lab, _ in rows if not isinstance(lab, int) or not 0 <= lab < len(classes)), None)
        if bad is not None:
            raise InvalidDataset(f"hf dataset {user!r}: label {bad!r} is outside its ClassLabel range", path=user)
        found = [Entry(src, int(lab), src, *stats) for src, lab, stats in rows]
    else:
        names = []
        for _, lab, _ in rows:
            if isinstance(lab, bool) or not isinstance(lab, int | str):
                raise InvalidDataset(
                    f"hf dataset {user!r}: column {label_col!r} holds {type(lab).__name__} values; labels must be "
                    "strings, integers or a ClassLabel",
                    path=user,
                )
            names.append(str(lab))
        classes = natural_sorted(set(names))
        index = {name: i for i, name in enumerate(classes)}
        found = [Entry(src, index[name], src, *stats) for (src, _, stats), name in zip(rows, names, strict=True)]
    extra = {"files": file_stats, "hf_fingerprint": getattr(ds, "_fingerprint", None)}
    return Listing(
        classes,
        found,
        skipped,
        splits=splits,
        split=chosen,
        extra_fingerprint=extra,
        hf=HFSource(directory=real_dir, image_column=image_col),
    )


def _hf_image_value(value: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) of an image cell: an Image struct, raw bytes or a path string."""
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    return None, None


def _hf_image_path(path: str, directory: str, roots: Sequence[str]) -> str:
    """An image cell's file path, anchored to the dataset directory (relative paths are not portable).

    Raises ImageDecodeError ``path_outside_root`` for a path that leaves the roots without any
    symlink's help (a symlink that leads out is caught later as ``symlink_outside_root``).
    """
    if "\x00" in path:
        raise ImageDecodeError("NUL byte in the image path", reason="unreadable_file", source=path)
    joined = os.path.join(directory, path)
    if not inside(os.path.normpath(joined), roots):
        raise ImageDecodeError("image path outside the data roots", reason="path_outside_root", source=path)
    return joined


def _probe_hf_value(
    value: Any, directory: str, roots: Sequence[str], limits: Limits, skipped: dict[str, int], source: str
) -> tuple[int, int | None] | None:
    """Header check of one image cell; ``(n bytes, mtime_ns or None)`` or ``None`` (counted as skipped)."""
    data, path = _hf_image_value(value)
    if data is None and path is not None:
        try:
            full = _hf_image_path(path, directory, roots)
        except ImageDecodeError as err:
            count_skip(skipped, err.reason)
            return None
        result = scan_file(full, roots, limits, skipped)
        return None if result is None else (result[1], result[2])
    if data is None:
        count_skip(skipped, "missing_image")
        return None
    if len(data) > limits.max_image_bytes:
        count_skip(skipped, "too_large_file")
        return None
    try:
        probe_image(io.BytesIO(data), source, limits.max_image_pixels)
    except ImageDecodeError as err:
        count_skip(skipped, err.reason)
        return None
    return len(data), None


def open_hf_table(directory: str, roots: Sequence[str], user: str) -> Any:
    """The listed split's rows again (checked as when listing), for reading images one by one."""
    table, _ = _load_hf_split(directory, roots, user)
    return table


def read_hf_image(table: Any, hf: HFSource, source: str, roots: Sequence[str], max_bytes: int) -> bytes:
    """The encoded image of item ``source`` (``"hf:<row>"``) from ``table`` (:func:`open_hf_table`).

    Raises:
        ImageDecodeError: no image in the row, a path cell that leaves the roots or fails the file checks,
            or more bytes than ``max_bytes``.
    """
    row = int(source.removeprefix("hf:"))
    value = table[row : row + 1].column(hf.image_column).to_pylist()[0]
    data, path = _hf_image_value(value)
    if data is None and path is not None:
        full = _hf_image_path(path, hf.directory, roots)
        with open_regular_file(full, roots, max_bytes) as (fh, _):
            data = fh.read()
    if data is None:
        raise ImageDecodeError(f"row {row} has no image", reason="missing_image", source=source)
    if len(data) > max_bytes:
        raise ImageDecodeError("image larger than the byte cap", reason="too_large_file", source=source)
    return data
