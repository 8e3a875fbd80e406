"""etcd for the orchestrator's tests: a colo-orch config that uses it, and users for
authentication tests."""

from __future__ import annotations

import os
from pathlib import Path

from colo_lab.etcd import EtcdCluster, free_port

ORCH_CFG = """
name = "{pair}"
role = "primary"
qmp = "{d}/vm.qmp"
qmp_events = "{d}/vm-events.qmp"
heartbeat_listen = "127.0.0.1:{hb}"
peer_heartbeat = "127.0.0.1:{peer}"
incoming_uri = "tcp:127.0.0.1:4444"
peer_incoming_uri = "tcp:127.0.0.1:4445"
heartbeat_key_file = "{d}/hb.key"
api_listen = "127.0.0.1:{api}"
arbiter = "etcd"
etcd_endpoints = {endpoints}
on_fence = ["true"]
"""


def orch_config(tmp_path: Path, pair: str, endpoints: list[str], extra: str = "") -> Path:
    """A primary's config with the etcd arbiter and no VM (its QMP socket never exists),
    written to tmp_path/orch.toml with a heartbeat key beside it."""
    (tmp_path / "hb.key").write_bytes(os.urandom(32).hex().encode())
    (tmp_path / "hb.key").chmod(0o600)
    cfg = tmp_path / "orch.toml"
    eps = "[" + ", ".join(f'"{e}"' for e in endpoints) + "]"
    cfg.write_text(ORCH_CFG.format(pair=pair, d=tmp_path, hb=free_port(), peer=free_port(),
                                   api=free_port(), endpoints=eps) + extra)
    return cfg


def add_users(c: EtcdCluster) -> None:
    """Users root:rootpw, orch:orchpw (read-write on /colo/), reader:readerpw (read on
    /colo/) and nobody:nobodypw (no role), then authentication on."""
    c.ctl(["user", "add", "root:rootpw"])
    c.ctl(["user", "grant-role", "root", "root"])
    c.ctl(["role", "add", "colo"])
    c.ctl(["role", "grant-permission", "colo", "--prefix=true", "readwrite", "/colo/"])
    c.ctl(["user", "add", "orch:orchpw"])
    c.ctl(["user", "grant-role", "orch", "colo"])
    c.ctl(["user", "add", "nobody:nobodypw"])  # no role
    c.ctl(["role", "add", "colo-reader"])
    c.ctl(["role", "grant-permission", "colo-reader", "--prefix=true", "read", "/colo/"])
    c.ctl(["user", "add", "reader:readerpw"])
    c.ctl(["user", "grant-role", "reader", "colo-reader"])
    c.ctl(["auth", "enable"])
