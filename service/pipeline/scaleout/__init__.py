"""Scale-out: feature extraction on a Ray cluster (the executor ``ray``; service/ARCHITECTURE.md, "Packages").

``check.py`` says, without importing Ray or torch, whether the executor can run here (the web process asks it);
``session.py`` connects to the cluster the settings name or starts a local one bound to 127.0.0.1;
``actor.py`` is what runs in each Ray actor (a shard of the dataset through the local path's own code);
``extraction.py`` is the driver: shards, actors, retries, and the FeatureSets reassembled in dataset order.
Nothing outside this package imports Ray, and this package imports it only when the executor ``ray`` runs.
"""
