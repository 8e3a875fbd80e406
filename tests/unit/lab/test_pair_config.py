"""The arbiter lines of the lab pair's orchestrator configs."""

from __future__ import annotations

import tomllib

import pytest

from colo_lab import etcd_net, pair
from colo_lab.errors import LabError
from colo_lab.lab import Lab


def test_etcd_arbiter_config_has_the_cluster_and_no_lease_file() -> None:
    lab = Lab("unit")
    cfg = tomllib.loads(pair.arbiter_toml(lab, "etcd"))
    assert cfg == {"arbiter": "etcd", "etcd_endpoints": etcd_net.endpoints(lab),
                   "etcd_prefix": pair.ETCD_PREFIX}


def test_local_arbiter_config_keeps_its_lease_file_in_the_run_dir() -> None:
    lab = Lab("unit")
    cfg = tomllib.loads(pair.arbiter_toml(lab, "local"))
    assert cfg == {"arbiter": "local", "arbiter_path": str(lab.run_dir / "arbiter.lease")}
    with pytest.raises(LabError, match="use one of etcd, local"):
        pair.arbiter_toml(lab, "zookeeper")


def test_default_arbiter_is_etcd_unless_the_environment_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLO_LAB_ARBITER", raising=False)
    assert pair.default_arbiter() == "etcd"
    monkeypatch.setenv("COLO_LAB_ARBITER", "local")
    assert pair.default_arbiter() == "local"
    monkeypatch.setenv("COLO_LAB_ARBITER", "file")
    with pytest.raises(LabError, match="COLO_LAB_ARBITER='file'"):
        pair.default_arbiter()
