"""The timm model methods the pipeline calls, typed.

timm defines ``forward_features``, ``forward_head``, ``get_classifier``, ... on each architecture, not
on ``torch.nn.Module``, whose stubs type every unknown attribute as ``Tensor | Module`` (so a call on
one is a type error). :func:`timm_api` views a model through :class:`TimmModel` to call them.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch

__all__ = ["TimmModel", "timm_api"]


class TimmModel(Protocol):
    """What every timm classification model provides on top of ``torch.nn.Module``."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    feature_info: Any

    def forward_intermediates(
        self, x: torch.Tensor, *, indices: int | list[int], intermediates_only: bool = False
    ) -> Any:
        """The feature maps at ``indices`` (an int: the last that many); with ``intermediates_only=False``,
        ``(forward_features output, maps)``."""
        ...

    def get_classifier(self) -> Any:
        """The head: a module, or a tuple of them for distilled models."""
        ...

    def reset_classifier(self, num_classes: int) -> None: ...


def timm_api(model: torch.nn.Module) -> TimmModel:
    """``model`` typed as the timm model it is (nothing happens at run time)."""
    return cast(TimmModel, model)
