"""`colo-orch firewall`: every port the config opens to other hosts gets a rule that lets
the peer (and, for operator ports, --admin) in and drops everyone else; nft accepts it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import fields, replace
from pathlib import Path

import pytest

from colo_orch.cli.firewall import FirewallError, proxy_metrics, ruleset
from colo_orch.cli.orch import main
from colo_orch.core.config import Config, parse
from colo_orch.core.ports import listeners

BASE = """
name = "web-1"
role = "secondary"
qmp = "/run/svm.qmp"
qmp_events = "/run/svm-events.qmp"
heartbeat_listen = "10.99.1.2:7410"
peer_heartbeat = "10.99.1.1:7410"
incoming_uri = "tcp:10.99.1.2:4444"
peer_incoming_uri = "tcp:10.99.1.1:4445"
heartbeat_key_file = "/etc/colo/web.key"
api_listen = "0.0.0.0:7411"
proxy_socket = "/run/colo/proxy.sock"
proxy_primary_command = ["colo-proxy", "primary", "--metrics-listen", "10.99.1.2:7412"]
proxy_secondary_command = ["colo-proxy", "secondary", "--metrics-listen=10.99.1.2:7413"]
nbd_port = 10888
migration_tls = "x509"
migration_tls_dir = "/etc/colo/tls"
[[disks]]
image = "/var/lib/colo/d.raw"
active = "/var/lib/colo/a.qcow2"
hidden = "/var/lib/colo/h.qcow2"
"""


def _rules(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.startswith("\t\t") and
            not ln.strip().startswith("#")]


def test_each_port_of_the_config_is_kept_to_the_peer() -> None:
    cfg = parse(BASE)
    out = ruleset(cfg)
    rules = _rules(out)
    ports = {("udp", 7410), ("tcp", 4444), ("tcp", 10888), ("tcp", 7411), ("tcp", 7412),
             ("tcp", 7413)}
    for proto, port in ports:
        mine = [r for r in rules if f"{proto} dport {port} " in r]
        assert mine[-1].endswith(f"{proto} dport {port} drop"), (port, mine)
        accepts = [r for r in mine if r.endswith(" accept")]
        # The peer is both hosts of its addresses (here one address, listed once).
        assert accepts and all(" ip saddr 10.99.1.1 accept" in r for r in accepts), mine
    # Bound to one address: matched on it; bound to all: on the port alone.
    assert "ip daddr 10.99.1.2 tcp dport 4444 ip saddr 10.99.1.1 accept" in rules
    assert "tcp dport 7411 ip saddr 10.99.1.1 accept" in rules
    assert rules[1] == 'iifname "lo" accept'
    assert "table inet colo_web_1 {" in out and "delete table inet colo_web_1" in out
    assert "(TLS x509)" in out  # the comment says what protects the port besides


def test_every_listen_field_gets_its_rule_even_one_added_later() -> None:
    """Each *_listen field of Config (an HTTP listener added later too) set to a port of
    its own: each port has its drop rule (xen_checkpoint_listen only with backend xen)."""
    cfg = parse(BASE)
    listen = [f.name for f in fields(Config) if f.name.endswith("_listen")
              and f.name != "xen_checkpoint_listen" and isinstance(getattr(cfg, f.name), str)]
    assert {"heartbeat_listen", "api_listen"} <= set(listen)
    cfg = replace(cfg, **{k: f"10.99.1.2:{20000 + i}" for i, k in enumerate(listen)})
    rules = _rules(ruleset(cfg))
    for i, k in enumerate(listen):
        proto = "udp" if k == "heartbeat_listen" else "tcp"
        assert f"ip daddr 10.99.1.2 {proto} dport {20000 + i} drop" in rules, k


def test_operators_reach_the_api_and_metrics_only() -> None:
    rules = _rules(ruleset(parse(BASE), admins=["10.0.9.0/24", "fd00:9::/64"]))
    admin = [r for r in rules if "10.0.9.0/24" in r or "fd00:9::/64" in r]
    assert {re.search(r"dport (\d+)", r).group(1) for r in admin} == {"7411", "7412", "7413"}  # type: ignore[union-attr]
    assert "tcp dport 7411 ip6 saddr fd00:9::/64 accept" in rules
    with pytest.raises(FirewallError, match="--admin 'lan' is not an address"):
        ruleset(parse(BASE), admins=["lan"])


def test_loopback_and_local_listeners() -> None:
    text = BASE.replace('"0.0.0.0:7411"', '"127.0.0.1:7411"')
    out = ruleset(parse(text))
    assert "dport 7411" not in "\n".join(_rules(out))
    assert "api (TCP 7411, api_listen)" in out and "bound to loopback" in out
    xen = (text.replace("[[disks]]", 'backend = "xen"\nxen_domain = "web"\n'
                        'xen_config = "/etc/xen/web.cfg"\n'
                        'xen_checkpoint_listen = "10.99.1.2:9911"\n[[disks]]'))
    rules = _rules(ruleset(parse(xen)))
    # libxl is on this host: nobody else reaches the bridge; xl's receiver is the peer's.
    assert [r for r in rules if "9911" in r] == ["ip daddr 10.99.1.2 tcp dport 9911 drop"]
    assert "ip daddr 10.99.1.2 tcp dport 4444 ip saddr 10.99.1.1 accept" in rules
    assert not [r for r in rules if "10888" in r]  # libxl drives the disk's NBD on Xen


def test_proxy_metrics_from_its_command_or_its_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "proxy.toml"
    conf.write_text('[proxy]\nmetrics_listen = "10.99.1.2:9400"\n')
    cfg = parse(BASE.replace('"--metrics-listen", "10.99.1.2:7412"', f'"-c", "{conf}"'))
    assert proxy_metrics(cfg) == [("proxy_primary_command", "10.99.1.2:9400"),
                                  ("proxy_secondary_command", "10.99.1.2:7413")]
    cfg = parse(BASE.replace('"--metrics-listen", "10.99.1.2:7412"', '"-c", "/nonexistent"'))
    with pytest.raises(FirewallError, match="cannot read the proxy's config /nonexistent"):
        proxy_metrics(cfg)


def test_a_peer_name_that_does_not_resolve_asks_for_addresses(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "web.toml"
    path.write_text(BASE.replace("10.99.1.1:7410", "peer.invalid:7410"))
    assert main(["firewall", "--config", str(path)]) == 2
    assert "peer_heartbeat: 'peer.invalid' does not resolve" in capsys.readouterr().err
    assert main(["firewall", "--config", str(path), "--peer", "10.99.1.1"]) == 0
    assert "ip saddr 10.99.1.1 accept" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0,
                    reason="nft -c needs nftables and root")
def test_nft_accepts_the_ruleset(tmp_path: Path) -> None:
    for text in (BASE, BASE.replace('"0.0.0.0:7411"', '"[fd00:1::2]:7411"')):
        path = tmp_path / "web.nft"
        path.write_text(ruleset(parse(text), admins=["10.0.9.0/24", "fd00:9::/64"]))
        res = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True,
                             check=False)
        assert res.returncode == 0, res.stderr


def test_listeners_name_their_config_keys() -> None:
    keys = {ln.key for ln in listeners(parse(BASE), [("proxy_primary_command", "1.2.3.4:5")])}
    assert keys == {"heartbeat_listen", "incoming_uri", "nbd_port", "api_listen",
                    "metrics_listen", "proxy_primary_command"}
