"""Scoring extracted features, ranks with ties, and the calibrated fusion and predicted accuracy applied to them
(the calibration itself, and its offline fitting: :mod:`service.pipeline.calibration`)."""
