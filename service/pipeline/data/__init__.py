"""Datasets: references, listing, decoding limits, the built-in dataset registry.

``datasets`` is the entry point (``load_dataset``, ``Dataset``); ``refs`` the reference grammar; ``paths`` root
confinement; ``decode`` the image limits; ``listing`` what every lister returns; ``folder``, ``manifest`` and
``hf_disk`` one lister per kind of dataset; ``builtin`` the built-in dataset registry; ``upload`` where a dataset
uploaded to the service is stored.
"""
