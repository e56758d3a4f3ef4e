"""Scoring extracted features, ranks with ties, the calibrated fusion and predicted accuracy."""
