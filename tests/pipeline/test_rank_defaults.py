"""The default estimator list: every registered estimator, minus the slow ones on large datasets."""

from __future__ import annotations

from estimators import list_estimators
from service.pipeline.ranking.rank import default_estimators

ALL = {info.name for info in list_estimators()}


def test_defaults_are_every_estimator_but_the_iterative_fits():
    assert set(default_estimators()) == ALL - {"nleep", "pactran_gauss", "linear_probe"}
    assert set(default_estimators(400, 10)) == ALL - {"nleep", "pactran_gauss", "linear_probe"}
    assert {"nleep", "parc", "pactran_gauss", "pactran_dirichlet", "etran_energy", "ncti"} <= ALL


def test_quadratic_estimators_stop_at_their_sample_limits():
    assert {"knn", "parc"} <= set(default_estimators(5_000, 2))
    assert "parc" not in default_estimators(5_001, 2) and "knn" in default_estimators(5_001, 2)
    assert "knn" not in default_estimators(20_001, 2)
