"""Feature extraction (decode once per preprocessing, batched forward passes) and the feature cache."""
