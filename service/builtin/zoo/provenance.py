"""Where a built zoo model came from, by content: its weights' sha256 (checked before the model is served) and
its source dataset's sha256, and adding both to a benchmark result recorded before results carried them.

A card is the record of one build (:mod:`.build` writes ``weights_sha256`` and ``source_dataset_sha256``).
Cards written before the source hash was recorded correctly hold ``null`` there; they stay valid without a
rebuild: :func:`card_provenance` then takes the hash from the materialised source dataset's ``dataset.json``
when, and only when, that dataset is the one the card describes (same name, generator version and image
counts), and says that it did (``source_dataset_sha256_from``). The card file itself is never rewritten.

Separate from :mod:`.cards` (what a folder holds) and :mod:`.registry` (what is plugged into the engine): this
module compares a card with other files (the weights, the dataset manifest, a benchmark result).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cards import _CARD, _WEIGHTS, read_card
from .entries import _NAME

#: ``source_dataset_sha256_from`` values: recorded by the build, or read from the dataset's manifest later.
FROM_CARD = "card"
FROM_MANIFEST = "dataset manifest"


def built_folder(zoo_dir: str | os.PathLike[str], backbone_id: str) -> Path | None:
    """The folder of ``zoo:<name>`` in ``zoo_dir`` when it holds a complete build, else None (also for ids that
    are not ``zoo:``)."""
    if not backbone_id.startswith("zoo:"):
        return None
    name = backbone_id.removeprefix("zoo:")
    if not _NAME.fullmatch(name):  # also keeps the name a single path component
        return None
    folder = Path(zoo_dir) / name
    return folder if read_card(folder) is not None else None


@functools.lru_cache(maxsize=256)
def _sha256_at(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 of ``path`` as it was at (size, mtime, inode): a served model is hashed once per process."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_weights(folder: Path, card: Mapping[str, Any]) -> None:
    """Refuse a ``model.safetensors`` whose sha256 is not the one its card recorded at build time.

    Raises
    ------
    WeightsUnavailable
        Naming the file and both hashes.
    """
    from service.errors import WeightsUnavailable

    expected = card.get("weights_sha256")
    if not isinstance(expected, str) or not expected:
        return  # nothing recorded to check against
    weights = folder / _WEIGHTS
    st = os.stat(weights)
    actual = _sha256_at(str(weights), st.st_size, st.st_mtime_ns, st.st_ino)
    if actual != expected.lower():
        raise WeightsUnavailable(
            f"{card.get('id', folder.name)}: weights file {weights} has sha256 {actual}, but its card "
            f"{folder / _CARD} records {expected}: the file changed after the build; rebuild it with "
            f"`backbone-rank zoo build --only {folder.name} --force`",
            backbone=card.get("id", f"zoo:{folder.name}"),
            path=str(weights),
            expected_sha256=expected,
            actual_sha256=actual,
        )


def card_provenance(card: Mapping[str, Any]) -> dict[str, Any]:
    """``{"weights_sha256", "source", "source_dataset_sha256", "source_dataset_sha256_from"}`` of a built model.

    ``source_dataset_sha256_from`` is ``"card"`` (recorded by the build), ``"dataset manifest"`` (a card written
    before it was recorded: read from the source dataset's ``dataset.json`` at the card's ``source_dir``, whose
    name, generator version and train/test image counts are the card's) or None (unknown).
    """
    out = {
        "weights_sha256": card.get("weights_sha256"),
        "source": card.get("source"),
        "source_dataset_sha256": card.get("source_dataset_sha256"),
        "source_dataset_sha256_from": FROM_CARD,
    }
    if out["source_dataset_sha256"]:
        return out
    out["source_dataset_sha256_from"] = None
    manifest = _source_manifest(card)
    if manifest is not None and isinstance(manifest.get("content_sha256"), str):
        out["source_dataset_sha256"] = manifest["content_sha256"]
        out["source_dataset_sha256_from"] = FROM_MANIFEST
    return out


def _source_manifest(card: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest of the dataset the card was trained on, if the one on disk is provably that dataset."""
    from service.builtin.datasets import builtin_dataset_manifest

    source, directory = card.get("source"), card.get("source_dir")
    if not isinstance(source, str) or not isinstance(directory, str) or Path(directory).name != source:
        return None
    manifest = builtin_dataset_manifest(source, Path(directory).parent)  # None unless today's generator version
    if manifest is None:
        return None
    counts = manifest.get("counts") or {}
    same = (
        manifest.get("name") == source
        and manifest.get("generator_version") == (card.get("recipe") or {}).get("dataset_generator_version")
        and counts.get("train") == card.get("train_images")
        and counts.get("test") == card.get("source_test_images")
    )
    return manifest if same else None


def zoo_provenance(zoo_dir: str | os.PathLike[str], backbone_id: str) -> dict[str, Any] | None:
    """:func:`card_provenance` of ``zoo:<name>`` built in ``zoo_dir``; None for other ids and unbuilt models."""
    folder = built_folder(zoo_dir, backbone_id)
    card = read_card(folder) if folder is not None else None
    return card_provenance(card) if card is not None else None


def add_zoo_hashes(result: Mapping[str, Any], zoo_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of a benchmark ``result`` recorded without zoo hashes, with them added from the zoo in ``zoo_dir``:
    ``weights_sha256`` in every ``zoo:`` row and the top-level ``zoo`` block (with a ``note`` saying so).

    Only a zoo that reproduces the result is taken as its zoo: every zoo row's recorded ``source_accuracy``
    must equal the accuracy its card measured (exactly: the benchmark copied it from the card).

    Raises
    ------
    ValueError
        A zoo model is not built in ``zoo_dir``, its card's source accuracy differs from the recorded one, or the
        result already names other weights.
    WeightsUnavailable
        A zoo model's weights file is not the one its card records (:func:`verify_weights`).
    """
    out = copy.deepcopy(dict(result))
    rows = [row for target in out["targets"] for row in target["backbones"] if str(row["id"]).startswith("zoo:")]
    cards: dict[str, Mapping[str, Any]] = {}
    problems: list[str] = []
    for row in rows:
        backbone = row["id"]
        if backbone not in cards:
            folder = built_folder(zoo_dir, backbone)
            found = read_card(folder) if folder is not None else None
            if folder is None or found is None:
                problems.append(f"{backbone} is not built in {zoo_dir}")
                continue
            verify_weights(folder, found)
            cards[backbone] = found
        card = cards[backbone]
        if row.get("source_accuracy") != card.get("source_accuracy"):
            problems.append(
                f"{backbone}: the result recorded source accuracy {row.get('source_accuracy')!r}, the zoo built "
                f"here measured {card.get('source_accuracy')!r}"
            )
        if row.get("weights_sha256") not in (None, card.get("weights_sha256")):
            problems.append(
                f"{backbone}: the result names weights {row['weights_sha256']}, the zoo holds {card['weights_sha256']}"
            )
    if problems:
        raise ValueError(
            "this zoo is not the one the result was run with, so its hashes are not added: "
            + "; ".join(dict.fromkeys(problems))
        )
    if not cards:
        return out
    for row in rows:
        row["weights_sha256"] = cards[row["id"]]["weights_sha256"]
    out["zoo"] = {
        "models": {backbone: card_provenance(card) for backbone, card in cards.items()},
        "note": f"zoo hashes added after the run (benchmarks/add_zoo_hashes.py) from a zoo whose {len(cards)} cards "
        "give exactly the source accuracies the run recorded: the hashes of a build that reproduces the run's zoo, "
        "not read by the run itself",
    }
    return out
