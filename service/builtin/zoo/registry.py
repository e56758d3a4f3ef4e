"""The zoo plugged into the engine and listed: weights provider ``"zoo"`` (a ``zoo:NAME`` id resolves to a
built folder whose weights are the ones its card records), the source accuracies and content hashes of built
models, the builder of missing models, and :func:`list_zoo`.

Separate from the build: the web process lists the zoo and checks ids through this module and never trains.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .build import build_zoo
from .cards import read_card
from .entries import _NAME, ZOO_ENTRIES
from .provenance import built_folder, verify_weights, zoo_provenance

_logger = logging.getLogger(__name__)

PROVIDER_NAME = "zoo"


def zoo_provider(zoo_dir: str | os.PathLike[str], model_id: str) -> Path | None:
    """Weights provider ``"zoo"`` once bound to ``zoo_dir`` (:func:`register_zoo`): the built folder of
    ``zoo:<name>`` in ``zoo_dir``, else None.

    Any built folder is served, not only the default entries (a zoo built from custom recipes works too), but
    only with the weights its card records (:func:`~.provenance.verify_weights`: a changed file is refused).
    """
    folder = built_folder(zoo_dir, model_id)
    if folder is None:
        return None
    card = read_card(folder)
    if card is not None:
        verify_weights(folder, card)
    return folder


def zoo_source_info(zoo_dir: str | os.PathLike[str], backbone_id: str) -> tuple[str | None, float | None] | None:
    """``(source task, accuracy on its test split)`` from the card of a model built in ``zoo_dir``; None for
    ids that are not ``zoo:``."""
    if not backbone_id.startswith("zoo:"):
        return None
    folder = built_folder(zoo_dir, backbone_id)
    card = (read_card(folder) if folder is not None else None) or {}
    accuracy = card.get("source_accuracy")
    if isinstance(accuracy, int | float) and math.isfinite(accuracy):
        return card.get("source"), float(accuracy)
    return card.get("source"), None


def build_missing(zoo_dir: str | os.PathLike[str], ids: Sequence[str]) -> None:
    """Build, in ``zoo_dir``, the zoo models among ``ids`` (``zoo:NAME``) not built with the current recipe."""
    wanted = [backbone.removeprefix("zoo:") for backbone in ids if backbone.startswith("zoo:")]
    built = {entry["name"] for entry in list_zoo(zoo_dir) if entry.get("current")}
    missing = [name for name in wanted if name in ZOO_ENTRIES and name not in built]
    if missing:
        _logger.info("building missing zoo models: %s", ", ".join(missing))
        build_zoo(zoo_dir, names=missing)


def register_zoo(zoo_dir: str | os.PathLike[str]) -> None:
    """Plug the zoo in ``zoo_dir`` into the engine: weights provider ``"zoo"`` (:func:`zoo_provider`), its cards'
    source accuracies (:func:`zoo_source_info`) and content hashes (:func:`~.provenance.zoo_provenance`) and the
    builder of missing models (:func:`build_missing`), each bound to ``zoo_dir``. Registering again (with this or
    another directory) replaces all four."""
    from service.pipeline.models.providers import register_weights_provider
    from service.pipeline.plugins import register_backbone_preparer, register_provenance, register_source_info

    folder = Path(zoo_dir)
    register_weights_provider(
        PROVIDER_NAME,
        functools.partial(zoo_provider, folder),
        f"the built-in zoo in {folder} (backbone-rank zoo build)",
        replace=True,
    )
    register_source_info(PROVIDER_NAME, functools.partial(zoo_source_info, folder))
    register_provenance(PROVIDER_NAME, functools.partial(zoo_provenance, folder))
    register_backbone_preparer("zoo:", functools.partial(build_missing, folder))


def unregister_zoo() -> None:
    """Undo :func:`register_zoo` (no error when not registered), e.g. at the end of a test."""
    from service.pipeline.models.providers import unregister_weights_provider
    from service.pipeline.plugins import unregister_backbone_preparer, unregister_provenance, unregister_source_info

    unregister_weights_provider(PROVIDER_NAME)
    unregister_source_info(PROVIDER_NAME)
    unregister_provenance(PROVIDER_NAME)
    unregister_backbone_preparer("zoo:")


def list_zoo(zoo_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every default entry plus any other model built in ``zoo_dir``: ``name``, ``id``, ``arch``, ``source``,
    ``input_size``, ``init``, ``description``, ``built`` (and ``current``: built from today's recipe) and
    ``card`` (None when not built)."""
    root = Path(zoo_dir)
    rows = []
    for entry in ZOO_ENTRIES.values():
        card = read_card(root / entry.name)
        rows.append(
            {
                "name": entry.name,
                "id": entry.id,
                "arch": entry.arch,
                "source": entry.source,
                "input_size": entry.input_size,
                "init": entry.init,
                "description": entry.description,
                "built": card is not None,
                "current": card is not None and card.get("recipe_hash") == entry.recipe_hash(card.get("scale", 1.0)),
                "card": card,
            }
        )
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name in ZOO_ENTRIES or not _NAME.fullmatch(folder.name):
                continue
            card = read_card(folder)
            if card is None:
                continue
            rows.append(
                {
                    "name": folder.name,
                    "id": f"zoo:{folder.name}",
                    "arch": card.get("arch"),
                    "source": card.get("source"),
                    "input_size": (card.get("input_size") or [0, 0, 0])[-1],
                    "init": card.get("init"),
                    "description": card.get("description", ""),
                    "built": True,
                    "current": True,
                    "card": card,
                }
            )
    return rows
