"""Closed-form transferability estimators on frozen features.

A pure numeric library (numpy, scipy, scikit-learn): each estimator is a function plus a thin
sklearn-style class, registered by name, and all of them can share one :class:`Statistics`
so that the Gram matrix and its eigendecomposition are computed once per backbone.

>>> import numpy as np
>>> from estimators import score, list_estimators, Statistics
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(np.arange(3), 30)
>>> F = rng.normal(size=(90, 16)) + y[:, None]
>>> stats = Statistics(F, y)
>>> {"logme", "sfda", "nleep", "parc"} <= {info.name for info in list_estimators()}
True
>>> 0.0 < score("sfda", stats=stats) <= 1.0
True
"""

from ._api import score
from ._backend import use_backend
from ._base import TransferabilityEstimator
from ._registry import FAMILIES, EstimatorInfo, get_estimator, list_estimators
from ._stats import SamplesRequiredError, Statistics
from ._streaming import StreamingStatistics
from .class_means import ClassMeans, class_means
from .etran import ETranEnergy, etran_energy
from .gbc import GBC, gbc
from .hscore import HScore, ShrinkageHScore, h_score, shrinkage_h_score
from .knn import KNN, knn
from .leep import LEEP, leep
from .linear_probe import LinearProbe, linear_probe
from .logme import LogME, logme
from .nce import NCE, nce
from .ncti import NCTI, ncti
from .nleep import NLEEP, nleep
from .pactran import PACTranDirichlet, PACTranGauss, pactran_dirichlet, pactran_gauss
from .parc import PARC, parc
from .ridge_probe import RidgeProbe, ridge_probe
from .sfda import SFDA, ShrinkageLDA, lda, sfda
from .transrate import TransRate, transrate

__all__ = [
    "GBC",
    "KNN",
    "LEEP",
    "NCE",
    "NCTI",
    "NLEEP",
    "PARC",
    "SFDA",
    "ClassMeans",
    "ETranEnergy",
    "EstimatorInfo",
    "HScore",
    "LinearProbe",
    "LogME",
    "PACTranDirichlet",
    "PACTranGauss",
    "RidgeProbe",
    "ShrinkageHScore",
    "ShrinkageLDA",
    "SamplesRequiredError",
    "Statistics",
    "StreamingStatistics",
    "TransRate",
    "TransferabilityEstimator",
    "class_means",
    "etran_energy",
    "gbc",
    "FAMILIES",
    "get_estimator",
    "h_score",
    "knn",
    "lda",
    "leep",
    "linear_probe",
    "list_estimators",
    "logme",
    "nce",
    "ncti",
    "nleep",
    "pactran_dirichlet",
    "pactran_gauss",
    "parc",
    "ridge_probe",
    "score",
    "sfda",
    "shrinkage_h_score",
    "transrate",
    "use_backend",
]
