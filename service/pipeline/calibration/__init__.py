"""Calibration of rankings: predicted accuracy with an interval, the fused order and p(best).

Split by when it runs. Request time (what a ranking applies, :mod:`service.pipeline.ranking.rank` imports
only these): :mod:`~service.pipeline.calibration.model` (the calibration file's value types, the fused score,
predicted accuracy, loading) and :mod:`~service.pipeline.calibration.p_best` (resampled p(best), the
source-accuracy prior). Offline, from benchmark results (``backbone-rank calibrate``):
:mod:`~service.pipeline.calibration.samples`, :mod:`~service.pipeline.calibration.selection`,
:mod:`~service.pipeline.calibration.evaluation` (leave-one-target-out) and
:mod:`~service.pipeline.calibration.fit`. Nothing is re-exported here, so that importing the request-time
modules never runs the offline ones.
"""
