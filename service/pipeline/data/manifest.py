"""Listing a manifest dataset: a ``.csv`` (header with ``path`` and ``label``) or ``.jsonl``
(``{"path", "label"}`` per line); relative paths resolve against the manifest's directory.

Separate from the folder lister because reading the manifest itself (encoding, CSV/JSON syntax, one label per
file) is most of the work and most of the user's errors, each reported with its line number. One of the
listers that share the :class:`Listing` shape (service/pipeline/data/listing.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Sequence

from service.errors import InvalidDataset, PathOutsideRoots
from service.pipeline.data.decode import ImageDecodeError
from service.pipeline.data.listing import Entry, Limits, Listing, count_skip, natural_sorted, scan_file
from service.pipeline.data.paths import inside, open_regular_file, stat_user_path
from service.pipeline.data.refs import HUB_PREFIX, MANIFEST_SUFFIXES, UPLOAD_PREFIX

__all__ = ["list_manifest"]

_MAX_MANIFEST_BYTES = 1 << 30


def list_manifest(real: str, roots: Sequence[str], split: str | None, user: str, limits: Limits) -> Listing:
    # The name the user gave decides (a hub dataset's sample and an upload are named by their reference: the file's
    # name then)
    suffix = next((s for s in MANIFEST_SUFFIXES if user.lower().endswith(s)), None) or next(
        (s for s in MANIFEST_SUFFIXES if user.startswith((HUB_PREFIX, UPLOAD_PREFIX)) and real.lower().endswith(s)),
        None,
    )
    if suffix is None:
        raise InvalidDataset(f"manifest {user!r} must end in .csv or .jsonl", path=user)
    st = stat_user_path(real, user)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidDataset(
            f"manifest {user!r} is a directory; give the .csv/.jsonl file, or pass the directory as a folder dataset "
            "(without the .csv/.jsonl ending)",
            path=user,
        )
    if not stat.S_ISREG(st.st_mode):
        raise InvalidDataset(f"manifest {user!r} is not a regular file", path=user)
    if st.st_size > _MAX_MANIFEST_BYTES:
        raise InvalidDataset(f"manifest {user!r} is larger than {_MAX_MANIFEST_BYTES} bytes; split it", path=user)
    if split is not None:
        raise InvalidDataset(
            f"manifest {user!r} has no splits; drop the '#{split}' suffix and write one manifest per split",
            path=user,
        )
    try:
        with open_regular_file(real, (os.path.dirname(real),), _MAX_MANIFEST_BYTES) as (fh, _):
            raw = fh.read()
    except ImageDecodeError as err:
        raise InvalidDataset(f"manifest {user!r} cannot be read ({err.reason})", path=user) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InvalidDataset(
            f"manifest {user!r} line {line}: not valid UTF-8; save it as UTF-8", path=user, line=line
        ) from None
    rows = _csv_rows(text, user) if suffix == ".csv" else _jsonl_rows(text, user)

    mdir = os.path.dirname(real)
    skipped: dict[str, int] = {}
    seen: dict[str, tuple[str, int]] = {}
    pending: list[tuple[str, str]] = []  # (real path, class name)
    labels: set[str] = set()
    for line, path, label in rows:
        if "\x00" in path:
            raise InvalidDataset(f"manifest {user!r} line {line}: the path contains a NUL byte", path=user, line=line)
        joined = os.path.join(mdir, path)
        image_real = os.path.realpath(joined)
        labels.add(label)
        if not inside(image_real, roots):
            if inside(os.path.normpath(joined), roots):
                count_skip(skipped, "symlink_outside_root")  # lexically inside: a symlink leads out
                continue
            raise PathOutsideRoots(
                f"manifest {user!r} line {line}: image path {path!r} resolves outside the allowed data roots; "
                "use paths under the data roots (in CLI mode: under the manifest's directory)",
                path=user,
                line=line,
            )
        if image_real in seen:
            first_label, first_line = seen[image_real]
            if first_label != label:
                raise InvalidDataset(
                    f"manifest {user!r} line {line}: {path!r} is labelled {label!r} but line {first_line} labels "
                    f"the same file {first_label!r}; give each image one label",
                    path=user,
                    line=line,
                )
            count_skip(skipped, "duplicate_entry")
            continue
        seen[image_real] = (label, line)
        pending.append((image_real, label))

    classes = natural_sorted(labels)
    index = {name: i for i, name in enumerate(classes)}
    found: list[Entry] = []
    for image_real, label in pending:
        if not os.path.lexists(image_real):
            count_skip(skipped, "missing_file")
            continue
        result = scan_file(image_real, roots, limits, skipped)
        if result is not None:
            source, size, mtime = result
            found.append(Entry(source, index[label], os.path.relpath(source, mdir), size, mtime))
    return Listing(classes, found, skipped)


def _csv_rows(text: str, user: str) -> list[tuple[int, str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise InvalidDataset(
                f"manifest {user!r} is empty; line 1 must be a header with 'path' and 'label'", path=user, line=1
            )
        names = [h.strip().lower() for h in header]
        missing = [c for c in ("path", "label") if c not in names]
        if missing:
            raise InvalidDataset(
                f"manifest {user!r} line 1: header {header} lacks column(s) {missing}; the first line must name "
                "the 'path' and 'label' columns",
                path=user,
                line=1,
            )
        ip, il = names.index("path"), names.index("label")
        rows = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InvalidDataset(
                    f"manifest {user!r} line {line}: expected {len(header)} fields, got {len(row)}; quote fields "
                    "that contain commas",
                    path=user,
                    line=line,
                )
            path, label = row[ip].strip(), row[il].strip()
            _check_row(user, line, path, label)
            rows.append((line, path, label))
    except csv.Error as err:
        line = max(1, reader.line_num)
        raise InvalidDataset(f"manifest {user!r} line {line}: malformed CSV ({err})", path=user, line=line) from None
    return rows


def _jsonl_rows(text: str, user: str) -> list[tuple[int, str, str]]:
    rows = []
    # split("\n"), not splitlines(): JSON strings may legally contain U+2028 and friends.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InvalidDataset(
                f"manifest {user!r} line {line}: invalid JSON ({err.msg})", path=user, line=line
            ) from None
        if not isinstance(obj, dict) or "path" not in obj or "label" not in obj:
            raise InvalidDataset(
                f"manifest {user!r} line {line}: expected an object with 'path' and 'label', e.g. "
                '{"path": "cat/1.jpg", "label": "cat"}',
                path=user,
                line=line,
            )
        path, label = obj["path"], obj["label"]
        if isinstance(label, int) and not isinstance(label, bool):
            label = str(label)
        if not isinstance(path, str) or not isinstance(label, str):
            raise InvalidDataset(
                f"manifest {user!r} line {line}: 'path' must be a string and 'label' a string or integer",
                path=user,
                line=line,
            )
        path, label = path.strip(), label.strip()
        _check_row(user, line, path, label)
        rows.append((line, path, label))
    return rows


def _check_row(user: str, line: int, path: str, label: str) -> None:
    if not path:
        raise InvalidDataset(f"manifest {user!r} line {line}: empty path", path=user, line=line)
    if not label:
        raise InvalidDataset(
            f"manifest {user!r} line {line}: empty label; give every image a class name", path=user, line=line
        )
