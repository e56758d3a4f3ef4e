"""sklearn-style wrapper shared by the estimator classes."""

from __future__ import annotations

from typing import Any, ClassVar

from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator

__all__ = ["TransferabilityEstimator"]


class TransferabilityEstimator(BaseEstimator):  # type: ignore[misc]  # sklearn ships no type information: BaseEstimator is Any
    """Base class: ``__init__`` stores keyword parameters only; ``fit`` validates and scores.

    Subclasses set ``_estimator_name`` to a registry name and declare their parameters in
    ``__init__`` (sklearn's ``get_params`` introspects that signature).

    Attributes
    ----------
    score_ : float
        The transferability score of the last ``fit`` (higher is better unless the registry
        entry says otherwise).
    """

    _estimator_name: ClassVar[str]

    def fit(
        self,
        features: ArrayLike,
        labels: ArrayLike,
        *,
        source_probs: ArrayLike | None = None,
    ) -> TransferabilityEstimator:
        """Score ``features`` against ``labels``; the value is stored in ``score_``."""
        from ._api import score  # late import: the registry is filled by the estimator modules

        self.score_ = score(
            self._estimator_name, features, labels, source_probs=source_probs, **self.get_params()
        )
        return self

    def score(self, features: ArrayLike, labels: ArrayLike, **fit_params: Any) -> float:
        """Fit and return the score (sklearn's ``score(X, y)`` convention: higher is better)."""
        return float(self.fit(features, labels, **fit_params).score_)
