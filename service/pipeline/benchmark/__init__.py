"""Benchmarks: suites, the run (ranking + fine-tuned ground truth), and the rank-correlation metrics."""
