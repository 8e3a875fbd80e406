"""The lab's etcd cluster and its links, on the lab's network without VMs (`up(vms=False)`)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from colo_lab import etcd_net, faults
from colo_lab.errors import LabError
from colo_lab.lab import Lab
from colo_lab.proxy_harness import unique_name
from colo_lab.wait import wait_until

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def net() -> Iterator[Lab]:
    lab = Lab(unique_name("et"))
    lab.down()
    try:
        lab.up(vms=False)
        yield lab
    finally:
        lab.down()
    assert lab.leftovers() == [] and etcd_net.all_pids(lab) == []


def test_a_host_cut_off_from_etcd_fails_health_and_the_other_host_does_not(net: Lab) -> None:
    assert etcd_net.healthy(net, "primary") and etcd_net.healthy(net, "secondary")
    faults.cut(net, "primary", "etcd")
    try:
        assert not etcd_net.healthy(net, "primary")
        assert etcd_net.healthy(net, "secondary")
        faults.etcdctl(net, "put", "/cut", "from-secondary", host="secondary")
        with pytest.raises(LabError, match="etcdctl get /cut from primary failed"):
            faults.etcdctl(net, "get", "/cut", timeout=2)
    finally:
        faults.heal(net, "primary", "etcd")
    wait_until(lambda: etcd_net.healthy(net, "primary"), 10, "the primary to reach etcd again")
    assert "from-secondary" in faults.etcdctl(net, "get", "/cut")


def test_two_of_three_members_lost_stops_writes_until_they_return(net: Lab) -> None:
    def put(key: str, value: str) -> bool:
        return etcd_net.etcdctl(net, "put", key, value, timeout=3, check=False).returncode == 0

    faults.etcdctl(net, "put", "/q", "before")
    try:
        faults.kill_etcd_member(net, 1)
        # 2 of 3 are a quorum: writes go on (after an election if member 1 led).
        wait_until(lambda: put("/q", "one-down"), 15, "a write with one member down")
        faults.kill_etcd_member(net, 2)
        assert [m["running"] for m in etcd_net.status(net)] == [False, False, True]
        with pytest.raises(LabError, match="put /q"):
            faults.etcdctl(net, "put", "/q", "no-quorum", timeout=3)
    finally:
        for m in etcd_net.status(net):
            if not m["running"]:
                faults.start_etcd_member(net, int(m["name"][-1]))
    etcd_net.wait_healthy(net, 30)
    faults.etcdctl(net, "put", "/q", "after")
    assert faults.etcdctl(net, "get", "/q", "--print-value-only").strip() == "after"
    # The refused write was not acknowledged, but it may still land: the lone member, if it
    # was leader, had it in its log, and the returning members commit it (raft's rule; a
    # client's timeout means "unknown", not "failed"). 3 or 4 versions, never fewer.
    history = json.loads(faults.etcdctl(net, "get", "/q", "-w", "json"))
    assert history["kvs"][0]["version"] in (3, 4)
