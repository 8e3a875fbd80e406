"""colo-orch in the nested Xen hosts' dom0s: its configs, its start and its state.

Each dom0 runs the orchestrator itself (`python3 -m colo_orch.cli.orch run`) with the Xen
backend, the lab's etcd cluster as its arbiter (reached through its host's namespace:
colo_lab.xen_lab.wire) and the heartbeats, API and metrics on the control link. The
configs, the pair's heartbeat key and each host's API token are files on the source disk
(`/opt/colo/lab/`), copied to `/run/colo` at start because the orchestrator takes a
secret only from a file that its owner alone may read.

With `proxy` (the default), colo-proxy runs there too, started by the orchestrator in
each role as on any host: its eBPF programs compiled by the dom0's bcc against the dom0
kernel's headers, the PVM's output held in NFQUEUE until the SVM's matches, client
traffic mirrored over the forward link (`eth1`). Its tap is the HVM domain's emulated
NIC's, `colo0-emu` (the domain's `vifname=colo0`), which appears only with the domain
(Backend.tap_comes_with_vm): the orchestrator starts the proxy, creates the domain (the
primary's paused), and the proxy compiles and attaches once the tap is on `xenbr0`.
The hooks take the dom0's LAN NIC (`eth0`, the port of the guests' bridge
`xenbr0`) down while the host is secondary or fenced and up when it serves, as in the
QEMU lab: the SVM, with the PVM's MAC and address, never reaches the LAN while it is a
copy. Without `proxy` they alone steer the output, and nothing holds the PVM's.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

from colo_lab import netns
from colo_lab.errors import LabError
from colo_lab.pair import API_PORT, HEARTBEAT_PORT, METRICS_PORT
from colo_lab.wait import wait_until
from colo_lab.xen_lab import (
    DOM0_CTL_IP,
    LIBXL_BRIDGE,
    SERVICE_CFG_PATH,
    XenHost,
    nic_mac,
    start_in_dom0,
    with_cores,
    write_colo_disk,
    write_service_config,
)

PAIR = "xen"
ETCD_PREFIX = "/colo-xen"
MIGRATION_PORT = 7420  # docs/xen.md's receiver port (the QEMU lab's is lab.MIGRATION_PORT)
SOURCE_DIR = "lab"  # on the source disk: /opt/colo/lab
RUN_DIR = "/run/colo"
LOG = "/tmp/orch.log"
# Nested Xen under TCG: the dom0's two vcpus are busy for seconds at a time (the initial
# sync walks 1044480 frames; a checkpoint takes 1-3 s), so the loop and the heartbeats
# are given room. The lease (etcd: whole seconds) outlasts the longest stall seen; a
# primary's death is noticed after heartbeat_timeout and taken over once its lease lapsed.
TIMING = {
    "loop_wait": 0.2,
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 15.0,
    "lease_ttl": 10,
    "lease_margin": 2.0,
    "checkpoint_min_interval": 1.0,
    "checkpoint_max_interval": 10.0,
    "sync_timeout": 900.0,
    # Both dom0s boot together; the secondary's orchestrator starts within a minute.
    "paused_primary_wait": 600.0,
    # colo-proxy compiles its eBPF programs in the dom0 under TCG before its hello.
    "proxy_start_timeout": 300.0,
}
# The dom0's LAN NIC: the port of xenbr0, the guests' bridge; and its forward link.
LAN_NIC = "eth0"
FWD_NIC = "eth1"
# The domain's vifname with proxy: its emulated NIC's tap is `<vifname>-emu` (libxl).
VIFNAME = "colo0"
TAP = f"{VIFNAME}-emu"
PROXY_SOCKET = f"{RUN_DIR}/proxy.sock"
PROXY_METRICS_PORT = 7412  # as colo_lab.pair's
# The PVM and the SVM both run under nested TCG, each paused by every checkpoint (1-3 s):
# the SVM's answer may come seconds after the PVM's.
COMPARE_TIMEOUT_S = 10.0


def fwd_mac(role: str) -> str:
    """The MAC of that host's dom0 end of the forward link (its QEMU's second NIC)."""
    return nic_mac(role, 1)


def proxy_command(role: str, proxy_role: str) -> list[str]:
    """colo-proxy in `proxy_role` in the dom0 of the host that starts as `role`."""
    peer = "secondary" if role == "primary" else "primary"
    return ["python3", "-m", "colo_proxy.cli.main", proxy_role, "--tap", TAP,
            "--forward", FWD_NIC, "--peer-mac", fwd_mac(peer),
            "--key-file", f"{RUN_DIR}/heartbeat.key", "--control-socket", PROXY_SOCKET,
            "--queue", "5", "--instance", PAIR, "--lock-dir", f"{RUN_DIR}/locks",
            "--metrics-listen", f"{DOM0_CTL_IP[role]}:{PROXY_METRICS_PORT}",
            "--release-permit", "required", "--compare-timeout", str(COMPARE_TIMEOUT_S),
            *(["--uplink", LAN_NIC] if proxy_role == "primary" else [])]


def _toml(value: Any) -> str:
    return json.dumps(value)


def config_text(role: str, endpoints: list[str], *, proxy: bool = True) -> str:
    """The orchestrator's config in the dom0 of the host that starts as `role`."""
    me = DOM0_CTL_IP[role]
    peer = DOM0_CTL_IP["secondary" if role == "primary" else "primary"]
    down = ["ip", "link", "set", LAN_NIC, "down"]
    up = ["ip", "link", "set", LAN_NIC, "up"]
    timing = "".join(f"{k} = {_toml(v)}\n" for k, v in TIMING.items())
    proxied = (f'proxy_socket = "{PROXY_SOCKET}"\n'
               f"proxy_primary_command = {_toml(proxy_command(role, 'primary'))}\n"
               f"proxy_secondary_command = {_toml(proxy_command(role, 'secondary'))}\n"
               if proxy else "# No colo-proxy in the dom0: the hooks alone steer the output.\n")
    return f"""# colo-orch in the nested Xen lab's {role} dom0 (generated by colo_lab.xen_orch)
name = "{PAIR}"
role = "{role}"
backend = "xen"
xen_domain = "service"
xen_config = "{SERVICE_CFG_PATH}"
xen_checkpoint_listen = "{LIBXL_BRIDGE[0]}:{LIBXL_BRIDGE[1]}"
heartbeat_listen = "{me}:{HEARTBEAT_PORT}"
peer_heartbeat = "{peer}:{HEARTBEAT_PORT}"
incoming_uri = "tcp:{me}:{MIGRATION_PORT}"
peer_incoming_uri = "tcp:{peer}:{MIGRATION_PORT}"
heartbeat_key_file = "{RUN_DIR}/heartbeat.key"
api_listen = "{me}:{API_PORT}"
api_token_file = "{RUN_DIR}/api.token"
metrics_listen = "{me}:{METRICS_PORT}"
arbiter = "etcd"
etcd_endpoints = {_toml(endpoints)}
etcd_prefix = "{ETCD_PREFIX}"
{proxied}# The LAN NIC keeps a copy and a fenced primary off the LAN.
on_takeover = {_toml(up)}
on_secondary = {_toml(down)}
on_fence = {_toml(down)}
on_unfence = {_toml(up)}

[timing]
{timing}"""


def write_configs(root: Path, endpoints: list[str], *, proxy: bool = True,
                  disk: bool = True) -> None:
    """The configs and secrets under `root` (the source disk's tree): `lab/orch-ROLE.toml`,
    `lab/heartbeat.key` (one secret, copied by each host) and `lab/api-ROLE.token`; with
    `disk`, the COLO disk's image and overlays (xen_lab.write_colo_disk)."""
    if disk:
        write_colo_disk(root)
    d = root / SOURCE_DIR
    d.mkdir(parents=True, exist_ok=True)
    for role in ("primary", "secondary"):
        (d / f"orch-{role}.toml").write_text(config_text(role, endpoints, proxy=proxy))
        (d / f"api-{role}.token").write_bytes(base64.b64encode(secrets.token_bytes(32)))
    (d / "heartbeat.key").write_bytes(base64.b64encode(secrets.token_bytes(32)))
    for f in d.iterdir():
        f.chmod(0o600)


def start(x: XenHost, *, cores: bool = False) -> None:
    """colo-orch in the dom0 of `x`, in its role, its log in LOG (and its proxy's); with
    `cores`, it and what it starts (xl, libxl's device models) may dump cores where the
    dom0's core_pattern says (run BH: the SVM's device model segfaulted, no core)."""
    src = f"/opt/colo/{SOURCE_DIR}"
    x.console(f"mkdir -p {RUN_DIR} && install -m 600 {src}/heartbeat.key "
              f"{RUN_DIR}/heartbeat.key && install -m 600 {src}/api-{x.role}.token "
              f"{RUN_DIR}/api.token")
    orch = (f"python3 -m colo_orch.cli.orch run --config {src}/orch-{x.role}.toml "
            f"--host-id {x.role[:3]}")
    start_in_dom0(x, with_cores(orch) if cores else orch, LOG)


def state_url(role: str) -> str:
    """The orchestrator's /state on the metrics port (read-only, no token)."""
    return f"http://{DOM0_CTL_IP[role]}:{METRICS_PORT}/state"


def state(x: XenHost, timeout: float = 5.0) -> dict[str, Any] | None:
    """The /state of the orchestrator in the dom0 of `x`, from its host's namespace;
    None while it does not answer."""
    try:
        out = netns.sh(x.ns, ["curl", "-sSf", "--max-time", str(timeout), state_url(x.role)],
                       timeout=timeout + 5, check=False)
    except LabError:  # timed out
        return None
    try:
        got = json.loads(out)
    except ValueError:
        return None
    return got if isinstance(got, dict) else None


# Both dom0s boot (about 130 s), the secondary waits, the primary's initial sync (56-104 s
# in docs/xen.md's runs AF-AI), the first checkpoint.
PROTECT_TIMEOUT_S = 600.0


def describe(xs: dict[str, XenHost]) -> str:
    """Each orchestrator's state, role and last decision, in one line."""
    out = []
    for x in xs.values():
        st = state(x)
        out.append(f"{x.tag}: " + (f"{st['state']} as {st['role']}, {st['decision']}"
                                   if st else "not answering"))
    return "; ".join(out)


def protect(xs: dict[str, XenHost], timeout: float = PROTECT_TIMEOUT_S, *,
            proxy: bool = True, disk: bool = True, cores: bool = False) -> float:
    """The service domain protected by colo-orch in both dom0s: its config written on
    both (with `disk`, libxl's COLO disk: xen_lab.COLO_DISK_SPEC), the secondary's
    orchestrator started, then the primary's; returns the seconds until both say
    PROTECTED. `proxy` and `disk` as the configs were written; `cores` as for start()."""
    for x in xs.values():
        write_service_config(x, vifname=VIFNAME if proxy else "", disk=disk)
    # The secondary first, as docs/xen.md's setup says: the primary's domain, created
    # paused, waits for it.
    start(xs["secondary"], cores=cores)
    start(xs["primary"], cores=cores)
    t0 = time.monotonic()

    def protected() -> bool:
        pri = state(xs["primary"])
        if (pri is not None and pri["state"] == "ALONE" and pri["vm"]["running"]
                and not pri["vm"]["never_ran"]):
            # Its domain has run: libxl's COLO will never take it (docs/xen.md).
            raise LabError("the primary serves alone, its domain run and not protectable: "
                           + " | ".join(pri["recent"]))
        return all((st := state(x)) is not None and st["state"] == "PROTECTED"
                   for x in xs.values())

    wait_until(protected, timeout, "both orchestrators PROTECTED", every=5,
               detail=lambda: describe(xs))
    return time.monotonic() - t0
