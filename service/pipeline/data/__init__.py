"""Datasets: references, listing, decoding limits, the built-in dataset registry."""
