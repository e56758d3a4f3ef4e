"""backbone-rank service: CLI, pipeline (datasets, backbones, features) and, later, the HTTP API."""
