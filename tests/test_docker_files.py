"""The container files, checked by reading (no Docker engine on this project's machines to build them)."""

from __future__ import annotations

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_the_ray_profile_shares_the_api_mounts_and_publishes_no_port():
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    ray = {name: s for name, s in services.items() if "ray" in s.get("profiles", [])}
    assert set(ray) == {"ray-head", "ray-worker", "worker-ray"}
    for name, service in ray.items():
        assert "ports" not in service, name  # Ray talks on the compose network only
        assert service["volumes"] == services["api"]["volumes"], name  # actors read the same data and weights
        assert service["build"]["args"]["EXTRAS"].split(",") == ["ml", "hf", "service", "ray"]
    assert services["worker-ray"]["environment"] == {
        "BACKBONE_RANK_EXECUTOR": "ray",
        "BACKBONE_RANK_RAY_ADDRESS": "ray-head:6379",
    }
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    # the default profile publishes the API on the host's loopback only
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]


def test_the_image_installs_the_extras_it_is_built_with():
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG EXTRAS=ml,hf,service\n" in dockerfile
    assert '".[${EXTRAS}]"' in dockerfile
