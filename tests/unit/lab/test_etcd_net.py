"""The lab's etcd cluster and its fault helpers, without starting anything."""

from __future__ import annotations

import pytest

from colo_lab import etcd_net, faults
from colo_lab.errors import LabError
from colo_lab.lab import Lab


def test_three_members_on_a_subnet_apart_from_the_lan_and_the_control_link() -> None:
    lab = Lab("unit")
    assert etcd_net.endpoints(lab) == [f"http://10.99.2.{10 + i}:2379" for i in (1, 2, 3)]
    assert [etcd_net.member_ns(lab, i) for i in (1, 2, 3)] == [
        "colo-unit-etcd1", "colo-unit-etcd2", "colo-unit-etcd3"]
    assert etcd_net.net_ns(lab).startswith(lab.prefix)  # down() finds it by the prefix
    member_ips = {etcd_net.member_ip(i) for i in etcd_net.MEMBERS}
    assert member_ips.isdisjoint(etcd_net.HOST_IPS.values())
    assert len(set(etcd_net.HOST_IPS.values())) == 2  # each host its own address


def test_member_argv_names_every_peer_and_the_chosen_timing() -> None:
    lab = Lab("unit")
    argv = etcd_net.member_argv(lab, 2)
    opts = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert opts["--name"] == "etcd2"
    assert opts["--listen-client-urls"] == "http://10.99.2.12:2379"
    assert opts["--initial-cluster"].count("=http://10.99.2.") == 3
    assert opts["--data-dir"].startswith(str(lab.run_dir) + "/")  # down() kills by run dir
    assert opts["--heartbeat-interval"] == str(etcd_net.HEARTBEAT_MS)
    assert int(opts["--election-timeout"]) >= 10 * etcd_net.HEARTBEAT_MS
    assert "--pre-vote" in argv


@pytest.mark.parametrize("i", [0, 4])
def test_no_such_member_says_which_exist(i: int) -> None:
    with pytest.raises(LabError, match=r"the lab's members are \[1, 2, 3\]"):
        etcd_net.member_ip(i)


def test_unknown_link_names_the_links() -> None:
    with pytest.raises(LabError, match="control, forward, migration, uplink, etcd"):
        faults.link_name("wan")
