"""The lab's etcd cluster and its links, on the lab's network without VMs (`up(vms=False)`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from colo_lab import etcd_net, faults, netns
from colo_lab.errors import LabError
from colo_lab.lab import Lab
from colo_lab.proxy_harness import unique_name
from colo_lab.wait import wait_until

pytestmark = pytest.mark.host
COLO_LAB = [sys.executable, "-m", "colo_lab.cli"]


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


@pytest.mark.parametrize("link", ["control", "forward", "migration", "uplink", "etcd"])
def test_status_json_shows_each_link_of_each_host_and_a_cut(net: Lab, link: str) -> None:
    def status() -> dict[str, object]:
        res = subprocess.run([*COLO_LAB, "status", "--json", "--name", net.name],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)  # type: ignore[no-any-return]

    host = "secondary" if link == "uplink" else "primary"  # the secondary's uplink starts down
    if link == "uplink":
        faults.heal(net, host, link)
    before = status()
    faults.cut(net, host, link)
    try:
        after = status()
    finally:
        faults.heal(net, host, link)
        if link == "uplink":
            faults.cut(net, host, link)
    links = before["hosts"][host]["links"]  # type: ignore[index]
    assert set(links) == {"control", "forward", "migration", "uplink", "etcd"}
    assert links[link]["up"] is True
    assert after["hosts"][host]["links"][link]["up"] is False  # type: ignore[index]
    assert before["hosts"]["primary"]["links"]["etcd"]["address"] == "10.99.2.1/24"  # type: ignore[index]
    assert before["hosts"]["secondary"]["links"]["control"]["address"] == "10.99.1.2/24"  # type: ignore[index]
    assert before["hosts"]["secondary"]["links"]["migration"]["address"] == "10.99.3.2/24"  # type: ignore[index]
    assert "orchestrator" not in before["hosts"]["primary"]  # type: ignore[index]
    assert [m["running"] for m in before["etcd"]] == [True, True, True]  # type: ignore[attr-defined]


def test_down_after_a_killed_up_leaves_no_namespace_and_no_etcd() -> None:
    lab = Lab(unique_name("ek"))
    lab.down()
    proc = subprocess.Popen([*COLO_LAB, "up", "--no-vms", "--name", lab.name],
                            stderr=subprocess.PIPE)
    try:
        # Killed while the members run and `up` waits for them to be healthy or has just
        # seen them so: either way nothing of etcd may outlive `down`.
        wait_until(lambda: len(etcd_net.all_pids(lab)) == 3 or proc.poll() is not None, 30,
                   "the etcd members to start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(etcd_net.all_pids(lab)) == 3, "etcd outlives its `colo-lab up` until `down`"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    down = subprocess.run([*COLO_LAB, "down", "--name", lab.name], capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "removed namespace colo-" in down.stdout and "-etcd1" in down.stdout
    assert lab.leftovers() == []
    assert netns.list_ns(lab.prefix) == []
    assert etcd_net.all_pids(lab) == []
