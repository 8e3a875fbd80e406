"""colo-orch's configs for the nested Xen lab's dom0s (no Xen)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from colo_lab import xen_orch
from colo_lab.xen_lab import DOM0_CTL_IP
from colo_orch.core.config import parse
from colo_proxy.cli.main import build_parser
from colo_proxy.cli.service import settings_from
from colo_proxy.service.settings import ProxySettings

ENDPOINTS = ["http://10.99.2.11:2379", "http://10.99.2.12:2379"]


def test_each_dom0s_config_is_what_colo_orch_takes() -> None:
    pri = parse(xen_orch.config_text("primary", ENDPOINTS))
    sec = parse(xen_orch.config_text("secondary", ENDPOINTS))
    assert (pri.role, sec.role) == ("primary", "secondary")
    assert pri.backend == sec.backend == "xen" and pri.xen_create_paused
    assert pri.arbiter == "etcd" and pri.etcd_endpoints == ENDPOINTS
    # Each listens on its own control address and sends to the other's.
    assert pri.heartbeat_listen.startswith(DOM0_CTL_IP["primary"] + ":")
    assert pri.peer_heartbeat == sec.heartbeat_listen
    assert pri.peer_incoming_uri == sec.incoming_uri
    # The hooks take the LAN NIC down for a copy and a fence, with or without a proxy.
    assert pri.on_secondary == pri.on_fence == ["ip", "link", "set", "eth0", "down"]
    assert pri.on_takeover == pri.on_unfence == ["ip", "link", "set", "eth0", "up"]


def test_the_secrets_are_one_key_for_the_pair_and_a_token_per_host(tmp_path: Path) -> None:
    xen_orch.write_configs(tmp_path, ENDPOINTS, disk=False)
    d = tmp_path / xen_orch.SOURCE_DIR
    assert sorted(f.name for f in d.iterdir()) == [
        "api-primary.token", "api-secondary.token", "heartbeat.key", "orch-primary.toml",
        "orch-secondary.toml"]
    assert len(base64.b64decode((d / "heartbeat.key").read_bytes())) == 32
    assert (d / "api-primary.token").read_bytes() != (d / "api-secondary.token").read_bytes()
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert parse((d / "orch-secondary.toml").read_text()).role == "secondary"


def proxy_settings(argv: list[str]) -> ProxySettings:
    """What colo-proxy makes of that command line (its own parser and settings)."""
    assert argv[:3] == ["python3", "-m", "colo_proxy.cli.main"]
    return settings_from(build_parser().parse_args(argv[3:]))


def test_each_dom0s_proxy_has_the_domains_tap_and_the_other_hosts_forward_mac() -> None:
    pri = parse(xen_orch.config_text("primary", ENDPOINTS))
    sec = parse(xen_orch.config_text("secondary", ENDPOINTS))
    for cfg, peer in ((pri, "secondary"), (sec, "primary")):
        assert cfg.proxy_socket == xen_orch.PROXY_SOCKET
        for argv, role in ((cfg.proxy_primary_command, "primary"),
                           (cfg.proxy_secondary_command, "secondary")):
            settings = proxy_settings(argv)
            assert settings.role == role and settings.tap == "colo0-emu"
            assert settings.forward == "eth1" and settings.peer_mac == xen_orch.fwd_mac(peer)
            # Only a primary rewrites carried flows on the uplink (the dom0's LAN NIC).
            assert settings.uplink == ("eth0" if role == "primary" else "")
        # The dom0 compiles the proxy's programs under TCG: minutes, not 20 s.
        assert cfg.timing.proxy_start_timeout >= 120
    # The forward MACs are those the nested hosts' QEMUs give their second NIC.
    assert xen_orch.fwd_mac("primary") != xen_orch.fwd_mac("secondary")


def test_without_proxy_the_hooks_alone_steer_the_output() -> None:
    cfg = parse(xen_orch.config_text("primary", ENDPOINTS, proxy=False))
    assert not cfg.proxy_socket and not cfg.proxy_primary_command
    assert cfg.on_secondary == ["ip", "link", "set", "eth0", "down"]
