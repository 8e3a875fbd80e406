"""colo-orch's configs for the nested Xen lab's dom0s (no Xen)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from colo_lab import xen_orch
from colo_lab.xen_lab import DOM0_CTL_IP
from colo_orch.core.config import parse

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
    # No proxy in the dom0: the hooks take the LAN NIC down for a copy and a fence.
    assert not pri.proxy_socket
    assert pri.on_secondary == pri.on_fence == ["ip", "link", "set", "eth0", "down"]
    assert pri.on_takeover == pri.on_unfence == ["ip", "link", "set", "eth0", "up"]


def test_the_secrets_are_one_key_for_the_pair_and_a_token_per_host(tmp_path: Path) -> None:
    xen_orch.write_configs(tmp_path, ENDPOINTS)
    d = tmp_path / xen_orch.SOURCE_DIR
    assert sorted(f.name for f in d.iterdir()) == [
        "api-primary.token", "api-secondary.token", "heartbeat.key", "orch-primary.toml",
        "orch-secondary.toml"]
    assert len(base64.b64decode((d / "heartbeat.key").read_bytes())) == 32
    assert (d / "api-primary.token").read_bytes() != (d / "api-secondary.token").read_bytes()
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert parse((d / "orch-secondary.toml").read_text()).role == "secondary"
