"""Registry of transferability estimators (timm-style: decorator + lookup + listing)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAMILIES", "EstimatorInfo", "register", "get_estimator", "list_estimators"]

#: What an estimator reads of the features, the axis along which a committee of estimators is made diverse
#: (a committee drawn from one family shares that family's blind spot):
#:
#: - ``"moment"``: Gaussian / covariance statistics of the features per class or overall (LogME, H-score,
#:   TransRate, GBC, LDA, SFDA, ETran, PACTran-Gauss, N-LEEP's mixture);
#: - ``"sample"``: fitted on, or compared between, individual samples (kNN, the linear probe, PARC);
#: - ``"class-mean"``: class means and their geometry (the class-mean softmax, NCTI's neural collapse);
#: - ``"source-head"``: the source classifier's predictions (LEEP, NCE, PACTran-Dirichlet).
FAMILIES: tuple[str, ...] = ("moment", "sample", "class-mean", "source-head")


@dataclass(frozen=True)
class EstimatorInfo:
    """What the service and the CLI need to know about one estimator.

    Attributes
    ----------
    name : str
        Lowercase registry name, e.g. ``"logme"``.
    needs : tuple of str
        Inputs the estimator reads: ``"features"`` and/or ``"source_probs"``.
    higher_is_better : bool
        Direction of the score; the ranking step flips lower-is-better scores.
    reference : str
        The paper (and official code) whose definition the value follows.
    family : str
        One of :data:`FAMILIES`.
    pool_free : bool
        True when the score depends on one backbone's features only, never on the other
        candidates (so adding a backbone never changes another's score).
    params : dict
        The estimator's keyword parameters and their defaults.
    summary : str
        First line of the estimator's docstring.
    """

    name: str
    needs: tuple[str, ...]
    higher_is_better: bool
    reference: str
    family: str
    pool_free: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    func: Callable[..., float] = field(repr=False, compare=False, kw_only=True)


_REGISTRY: dict[str, EstimatorInfo] = {}
_INPUTS = ("features", "source_probs")


def register(
    name: str,
    *,
    needs: tuple[str, ...] = ("features",),
    higher_is_better: bool = True,
    reference: str,
    family: str,
    pool_free: bool = True,
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register an estimator function ``fn(features=None, labels=None, *, stats=None, **params)``."""
    unknown = set(needs) - set(_INPUTS)
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)} for estimator {name!r}; use {_INPUTS}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} for estimator {name!r}; use one of {FAMILIES}")

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is registered twice")
        signature = inspect.signature(fn)
        params = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("stats", "source_probs")
        }
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = EstimatorInfo(
            name=name,
            needs=tuple(needs),
            higher_is_better=higher_is_better,
            reference=reference,
            family=family,
            pool_free=pool_free,
            params=params,
            summary=doc.splitlines()[0] if doc else "",
            func=fn,
        )
        return fn

    return decorator


def get_estimator(name: str) -> EstimatorInfo:
    """Look an estimator up by name; the error lists the known names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown estimator {name!r}; known estimators: {known}") from None


def list_estimators() -> list[EstimatorInfo]:
    """All registered estimators, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
