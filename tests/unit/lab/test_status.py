"""`colo-lab status`: reading links from `ip -j addr` and the readable form."""

from __future__ import annotations

from typing import Any

from colo_lab.lab import LINKS
from colo_lab.status import links_from_ip, render

IP_JSON: list[dict[str, Any]] = [
    {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "operstate": "UNKNOWN", "addr_info": []},
    {"ifname": "ctl0", "flags": ["BROADCAST", "UP", "LOWER_UP"], "operstate": "UP",
     "addr_info": [{"family": "inet", "local": "10.99.1.1", "prefixlen": 24},
                   {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
    {"ifname": "fwd0", "flags": ["BROADCAST", "UP"], "operstate": "LOWERLAYERDOWN",
     "addr_info": []},
    {"ifname": "mig0", "flags": ["BROADCAST", "UP", "LOWER_UP"], "operstate": "UP",
     "addr_info": [{"family": "inet", "local": "10.99.3.1", "prefixlen": 24}]},
    {"ifname": "lan0", "flags": ["BROADCAST"], "operstate": "DOWN", "addr_info": []},
]


def test_links_by_purpose_with_state_and_ipv4_address() -> None:
    links = links_from_ip(IP_JSON, LINKS)
    assert list(links) == ["control", "forward", "migration", "uplink", "etcd"]
    assert links["control"] == {"name": "ctl0", "up": True, "state": "UP",
                                "address": "10.99.1.1/24"}
    assert links["forward"] == {"name": "fwd0", "up": True, "state": "LOWERLAYERDOWN",
                                "address": None}
    assert links["migration"] == {"name": "mig0", "up": True, "state": "UP",
                                  "address": "10.99.3.1/24"}
    assert links["uplink"]["up"] is False
    assert links["etcd"] == {"name": "etcd0", "up": False, "state": "MISSING", "address": None}


def _status() -> dict[str, Any]:
    links = links_from_ip(IP_JSON, LINKS)
    return {
        "name": "t", "up": True, "accel": "tcg", "namespaces": ["colo-t-pri"],
        "vms": {"primary": {"pid": 10, "running": True},
                "secondary": {"pid": None, "running": False}},
        "hosts": {
            "primary": {"namespace": "colo-t-pri", "api": "http://10.99.1.1:7411",
                        "links": links, "orchestrator": {"state": "PROTECTED",
                                                         "role": "primary"}},
            "secondary": {"namespace": "colo-t-sec", "api": "http://10.99.1.2:7411",
                          "links": links},
        },
        "etcd": [{"name": "etcd1", "namespace": "colo-t-etcd1",
                  "endpoint": "http://10.99.2.11:2379", "running": False}],
    }


def test_render_shows_each_host_its_links_and_the_orchestrator() -> None:
    text = render(_status())
    assert "primary host: namespace colo-t-pri, API http://10.99.1.1:7411" in text
    assert "control   ctl0   up 10.99.1.1/24" in text
    assert "forward   fwd0   up, carrier LOWERLAYERDOWN" in text
    assert "migration mig0   up 10.99.3.1/24" in text
    assert "uplink    lan0   DOWN" in text
    assert "orchestrator: PROTECTED, role primary" in text
    assert "orchestrator: not running" in text  # the secondary's
    assert "etcd1  http://10.99.2.11:2379   NOT running" in text


def test_render_of_a_lab_that_is_down() -> None:
    assert render({"name": "t", "up": False}) == "lab 't': down"
