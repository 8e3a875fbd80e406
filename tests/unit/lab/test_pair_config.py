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


def test_parsed_metrics_leave_out_the_labels_every_sample_carries() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    from colo_lab.pair import parse_metrics
    from colo_proxy.service.metrics import identified

    reg = CollectorRegistry()
    Counter("colo_x", "x", ["reason"], registry=reg).labels("manual").inc(3)
    Gauge("colo_up", "u", registry=reg).set(1)
    got = parse_metrics(generate_latest(identified(reg, "web", "pri")).decode())
    assert got['colo_x_total{reason="manual"}'] == 3
    assert got["colo_up"] == 1
    assert not [k for k in got if "pair=" in k or "host=" in k]
