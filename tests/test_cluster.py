"""cluster.yaml passes Ray's own validation of cluster configs (offline, no AWS access)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _prepared() -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))


def test_cluster_yaml_passes_ray_validation() -> None:
    from ray.autoscaler._private.util import validate_config

    config = _prepared()
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # a CPU head
    gpu_types = {t["node_config"]["InstanceType"] for name, t in types.items() if name != config["head_node_type"]}
    assert {"g5.2xlarge", "p4de.24xlarge"} <= gpu_types  # 24 GB and 80 GB GPU classes
    for name, node_type in types.items():
        if name != config["head_node_type"]:
            assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
            assert any(".[gpu]" in c for c in node_type["worker_setup_commands"])
    assert config["file_mounts"] == {"~/slm-ray": "."}
    assert any("pip install -e ." in c for c in config["head_setup_commands"])


def test_validation_catches_a_broken_copy() -> None:
    """The check is real: the same config with a bad field is refused."""
    from ray.autoscaler._private.util import validate_config

    config = copy.deepcopy(_prepared())
    config["available_node_types"]["gpu_24gb"]["min_workers"] = "one"
    with pytest.raises(Exception):
        validate_config(config)
