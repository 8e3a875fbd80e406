"""Run the orchestrators of a lab pair: their configs, processes and API calls.

Each host's `colo-orch` runs inside that host's namespace, so heartbeats and the API
use the control link, and the COLO migration and NBD the migration link (the host of
`incoming_uri`, which the orchestrator also exports its disks on), exactly as on two
machines. The lease
is held in the lab's etcd cluster (colo_lab.etcd_net), which each host reaches over
its own link; `arbiter="local"` instead gives both a lease file in the run directory
(the single-machine arbiter: both "hosts" then share a file, which two machines cannot).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colo_lab import etcd_net, netns
from colo_lab.errors import LabError
from colo_lab.lab import FWD_MACS, MIGRATION_PORT, TCG_COMPARE_TIMEOUT, Lab
from colo_lab.wait import wait_until

HEARTBEAT_PORT = 7410
API_PORT = 7411  # GET /state and the commands (with the host's token)
PROXY_METRICS_PORT = 7412  # colo-proxy's /metrics, on the host's control IP
METRICS_PORT = 7413  # the orchestrator's read-only listener: /metrics, /healthz, /readyz
PAIR = "web"
ARBITERS = ("etcd", "local")
# The pair's keys in the lab's etcd cluster.
ETCD_PREFIX = "/colo-lab"


def default_arbiter() -> str:
    """etcd, unless COLO_LAB_ARBITER says otherwise (local: the lease file of one machine)."""
    arbiter = os.environ.get("COLO_LAB_ARBITER", "etcd")
    if arbiter not in ARBITERS:
        raise LabError(f"COLO_LAB_ARBITER={arbiter!r} is not an arbiter",
                       f"use one of {', '.join(ARBITERS)}, or unset it")
    return arbiter


def arbiter_toml(lab: Lab, arbiter: str) -> str:
    """The config lines of the pair's arbiter."""
    if arbiter == "etcd":
        return (f'arbiter = "etcd"\netcd_endpoints = {_toml_list(etcd_net.endpoints(lab))}\n'
                f'etcd_prefix = "{ETCD_PREFIX}"')
    if arbiter == "local":
        return f'arbiter = "local"\narbiter_path = "{lab.run_dir / "arbiter.lease"}"'
    raise LabError(f"no arbiter '{arbiter}'", f"use one of {', '.join(ARBITERS)}")


def _toml_list(argv: list[str]) -> str:
    return "[" + ", ".join(json.dumps(a) for a in argv) + "]"


def _disks_toml(lab: Lab, role: str) -> str:
    return "".join(f"""
[[disks]]
id = "{d.id}"
image = "{d.image}"
active = "{d.active}"
hidden = "{d.hidden}"
""" for d in lab.disks(role))


def proxy_command(lab: Lab, host: str, role: str, output: str = "compare") -> list[str]:
    """colo-proxy in `role` on `host` (the tap is the host's, whatever role it plays);
    output="buffer": Remus-style buffering instead of comparing (colo_proxy.service.modes)."""
    h = lab.hosts[host]
    other = "secondary" if host == "primary" else "primary"
    return [sys.executable, "-m", "colo_proxy.cli.main", role, "--tap", h.tap,
            # The forward link's trusted frames come from the other host's end only, and
            # carried-flow announcements are authenticated with the pair's key.
            # (The orchestrator's config, written with this command line, writes the key.)
            "--peer-mac", FWD_MACS[other], "--key-file", str(heartbeat_key_path(lab, host)),
            "--control-socket", str(lab.run_dir / f"proxy-{host[:3]}.sock"),
            "--queue", "5", "--instance", f"{lab.name}{host[:3]}",
            # Each host's own lock directory, as on two machines (and removed with the lab).
            "--lock-dir", str(lab.run_dir / f"locks-{host[:3]}"),
            "--metrics-listen", f"{h.ctl_ip}:{PROXY_METRICS_PORT}",
            # Run by colo-orch, which renews its release permit: nothing released without
            # one, from the first packet (docs/PROXY.md, "Release permit").
            "--release-permit", "required",
            *(["--compare-timeout", str(TCG_COMPARE_TIMEOUT)] if lab.accel == "tcg" else []),
            # The host's port to the LAN: connections carried over a role swap are
            # rewritten there (colo_proxy.wire.handover).
            *(["--uplink", "lan0"] if role == "primary" else []),
            *(["--output", output] if output != "compare" else []),
            # Every packet and its commands in the log: for chasing a false checkpoint.
            *(["--verbose"] if os.environ.get("COLO_LAB_PROXY_VERBOSE") == "1" else []),
            # More options for both proxies, for benchmarks that compare settings
            # (benchmarks/bench_download.py), e.g. "--resegment-after 0".
            *os.environ.get("COLO_LAB_PROXY_ARGS", "").split()]


def heartbeat_key_path(lab: Lab, role: str) -> Path:
    return lab.run_dir / f"heartbeat-{role[:3]}.key"


def heartbeat_key(lab: Lab, role: str) -> Path:
    """This host's copy of the pair's heartbeat key: one secret, a file per host (as on two
    machines, where no file is shared), written when first asked for. The host's colo-proxy
    uses it too."""
    path = heartbeat_key_path(lab, role)
    if not path.exists():
        copies = sorted(lab.run_dir.glob("heartbeat-*.key"))
        secret = copies[0].read_bytes() if copies else base64.b64encode(secrets.token_bytes(32))
        path.write_bytes(secret)
        path.chmod(0o600)
    return path


def _token_path(lab: Lab, role: str) -> Path:
    return lab.run_dir / f"api-{role[:3]}.token"


def api_token(lab: Lab, role: str) -> Path:
    """This host's API token: its own secret (a token opens one orchestrator's commands),
    readable by root alone, as the orchestrator requires."""
    path = _token_path(lab, role)
    if not path.exists():
        path.touch(mode=0o600)
        path.write_bytes(base64.b64encode(secrets.token_bytes(32)) + b"\n")
    return path


def orch_config(lab: Lab, role: str, *, proxy: bool = False, extra: str = "",
                arbiter: str | None = None, output: str = "compare") -> Path:
    """Write the TOML config of one host's orchestrator; returns its path.
    arbiter: "etcd" (the lab's cluster) or "local"; default_arbiter() when None.
    output: the proxies' (proxy_command)."""
    lease = arbiter_toml(lab, arbiter or default_arbiter())
    me = lab.hosts[role]
    peer = lab.hosts["secondary" if role == "primary" else "primary"]
    spec = lab.vm_spec(role, with_disk=False)  # the orchestrator adds the drives per role
    lab._ensure_built()
    assert lab.qemu is not None and lab.guest is not None
    from colo_lab.vm import VM

    vm = VM(spec, lab.run_dir, lab.qemu, lab.guest)
    text = f"""# colo-orch config for the lab's {role} host (generated by colo_lab.pair)
name = "{PAIR}"
role = "{role}"
qmp = "{vm.qmp_path}"
qmp_events = "{vm.events_path}"
heartbeat_listen = "{me.ctl_ip}:{HEARTBEAT_PORT}"
peer_heartbeat = "{peer.ctl_ip}:{HEARTBEAT_PORT}"
incoming_uri = "tcp:{me.mig_ip}:{MIGRATION_PORT}"
peer_incoming_uri = "tcp:{peer.mig_ip}:{MIGRATION_PORT}"
heartbeat_key_file = "{heartbeat_key(lab, role)}"
api_listen = "{me.ctl_ip}:{API_PORT}"
api_token_file = "{api_token(lab, role)}"
metrics_listen = "{me.ctl_ip}:{METRICS_PORT}"
{lease}
proxy_socket = "{lab.run_dir / f"proxy-{role[:3]}.sock" if proxy else ""}"
proxy_primary_command = {_toml_list(proxy_command(lab, role, "primary", output))
                         if proxy else "[]"}
proxy_secondary_command = {_toml_list(proxy_command(lab, role, "secondary", output))
                           if proxy else "[]"}
vm_command = {_toml_list(vm.argv())}
vm_pidfile = "{vm.pid_path}"
vm_log = "{lab.run_dir / f"orch-{role}-vm.log"}"
# Without a proxy the LAN uplink is the lab's stand-in for steering the SVM's output.
on_takeover = ["ip", "link", "set", "lan0", "up"]
on_secondary = ["ip", "link", "set", "lan0", "down"]
# A primary without the arbiter's lease must stop reaching the clients at once.
on_fence = ["ip", "link", "set", "lan0", "down"]
on_unfence = ["ip", "link", "set", "lan0", "up"]
{extra}
{_disks_toml(lab, role)}"""
    path = lab.run_dir / f"orch-{role}.toml"
    path.write_text(text)
    return path


def start_orchestrators(lab: Lab, **kw: Any) -> dict[str, subprocess.Popen[bytes]]:
    return {role: start_orchestrator(lab, role, **kw) for role in ("primary", "secondary")}


def start_orchestrator(lab: Lab, role: str, **kw: Any) -> subprocess.Popen[bytes]:
    """One host's orchestrator, with orch_config's keywords (e.g. an `extra` of its own)."""
    return _start_orchestrator(lab, role, orch_config(lab, role, **kw))


def _start_orchestrator(lab: Lab, role: str, cfg: Path) -> subprocess.Popen[bytes]:
    with open(lab.run_dir / f"orch-{role}.log", "ab") as logf:
        return subprocess.Popen(
            ["ip", "netns", "exec", lab.hosts[role].ns, sys.executable, "-m", "colo_orch.cli.orch",
             "run", "--config", str(cfg), "--host-id", role[:3]],
            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def _pids_with(*parts: bytes) -> list[int]:
    """Processes whose command line holds all of `parts` (each a whole argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(part in args for part in parts):
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat.rpartition(b")")[2].split()[0] == b"Z"


def orchestrator_pid(lab: Lab, host: str) -> int | None:
    """The pid of that host's colo-orch (`ip netns exec` runs it as itself), if it runs."""
    pids = _pids_with(b"colo_orch.cli.orch", str(lab.run_dir / f"orch-{host}.toml").encode())
    if len(pids) > 1:
        raise LabError(f"{len(pids)} orchestrators run for the {host} host: {pids}")
    return pids[0] if pids else None


def proxy_pids(lab: Lab, host: str) -> list[int]:
    """The colo-proxy processes of that host's VM (its instance), whoever started them."""
    return _pids_with(b"colo_proxy.cli.main", b"--instance", f"{lab.name}{host[:3]}".encode())


def kill_proxy(lab: Lab, host: str, sig: int = signal.SIGKILL) -> int:
    """Signal that host's colo-proxy (there must be exactly one); returns its pid."""
    pids = proxy_pids(lab, host)
    if len(pids) != 1:
        raise LabError(f"{len(pids)} colo-proxy processes run for the {host} host: {pids}")
    os.kill(pids[0], sig)
    return pids[0]


def restart_orchestrator(lab: Lab, host: str, sig: int = signal.SIGKILL) -> int:
    """Signal that host's colo-orch, wait until it is gone, and start it again with the
    same config (what it left running stays). Returns the new process's pid."""
    return restart_orchestrator_process(lab, host, sig).pid


def restart_orchestrator_process(lab: Lab, host: str, sig: int = signal.SIGKILL
                                 ) -> subprocess.Popen[bytes]:
    """restart_orchestrator's new process (for a caller that reaps it)."""
    pid = orchestrator_pid(lab, host)
    if pid is None:
        raise LabError(f"no orchestrator runs for the {host} host")
    os.kill(pid, sig)
    wait_until(lambda: _gone(pid), 10, f"the {host} orchestrator to exit")
    return start_orchestrator_again(lab, host)


def start_orchestrator_again(lab: Lab, host: str) -> subprocess.Popen[bytes]:
    """That host's colo-orch started with the config it was first given (after it died)."""
    return _start_orchestrator(lab, host, lab.run_dir / f"orch-{host}.toml")


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet."""
    return _gone(pid)


def api_url(lab: Lab, host: str) -> str:
    return f"http://{lab.hosts[host].ctl_ip}:{API_PORT}"


def coloctl(lab: Lab, host: str, *args: str,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`coloctl --config` that host's orchestrator config, run in its namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", lab.hosts[host].ns, sys.executable, "-m", "colo_orch.cli.ctl",
         "--config", str(lab.run_dir / f"orch-{host}.toml"), *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def metrics_url(lab: Lab, host: str) -> str:
    return f"http://{lab.hosts[host].ctl_ip}:{METRICS_PORT}"


def api(lab: Lab, host: str, method: str, path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Call a host's orchestrator API from inside that host's namespace, with its token
    when it has one (given to curl on stdin: a command line is readable by every local
    user)."""
    h = lab.hosts[host]
    token_file = _token_path(lab, host)
    header = (b"Authorization: Bearer " + token_file.read_bytes().strip() + b"\n"
              if token_file.exists() else b"")
    argv = ["curl", "-sS", "-m", str(timeout), "-X", method, "-H", "@-",
            api_url(lab, host) + path]
    out = netns.sh(h.ns, argv, timeout=timeout + 5, input=header)
    try:
        data = json.loads(out)
    except ValueError as exc:
        raise LabError(f"orchestrator API on {host} answered {out[:80]!r}") from exc
    return data if isinstance(data, dict) else {}


def state(lab: Lab, host: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        return api(lab, host, "GET", "/state", timeout)
    except LabError:
        return {}


def wait_state(lab: Lab, host: str, want: str | set[str], timeout: float = 60.0) -> dict[str, Any]:
    wanted = {want} if isinstance(want, str) else want
    st: dict[str, Any] = {}
    log = lab.run_dir / f"orch-{host}.log"
    start = log.stat().st_size if log.exists() else 0

    def passed() -> bool:
        # A state the host entered and left between two polls counts: since heartbeats go
        # out on a state change, a take-over's ALONE can last 55 ms before the re-protection
        # (CI, test_failover), shorter than one poll and its API round trip.
        try:
            with log.open("rb") as f:
                f.seek(start)
                new = f.read().decode(errors="replace")
        except OSError:
            return False
        return any(f"-> {w}: " in new for w in wanted)

    def reached() -> dict[str, Any] | None:
        nonlocal st
        # The log before the state: a state read before the log line was written may be
        # the one before the change (CI: an ALONE found in the log, returned with the
        # FAILING_OVER state read just before it, and no take-over time yet).
        logged = passed()
        st = state(lab, host)
        return st if st.get("state") in wanted or (st and logged) else None

    def seen() -> str:
        tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else []
        return f"{st.get('state')} ({st.get('recent', [])[-3:]}); log: {' | '.join(tail)}"

    return wait_until(reached, timeout, f"the {host} orchestrator in {sorted(wanted)}",
                      every=0.1, detail=seen)


def kill_vm(lab: Lab, host: str, sig: int = signal.SIGKILL) -> int:
    """Signal the QEMU of a host (by its pid file, whichever process started it)."""
    pid = int((lab.run_dir / ("pvm.pid" if host == "primary" else "svm.pid")).read_text())
    os.kill(pid, sig)
    return pid


def proxy_status(lab: Lab, host: str) -> dict[str, Any]:
    """The status of the colo-proxy that host's orchestrator runs (either role)."""
    from colo_proxy.service import control_socket as control

    return control.request(lab.run_dir / f"proxy-{host[:3]}.sock", {"type": "status"})


def metrics(lab: Lab, host: str) -> dict[str, float]:
    """A host orchestrator's /metrics as {sample with its labels: value} (parse_metrics)."""
    h = lab.hosts[host]
    return parse_metrics(
        netns.sh(h.ns, ["curl", "-sS", "-m", "5", f"{metrics_url(lab, host)}/metrics"]))


def parse_metrics(text: str) -> dict[str, float]:
    """An exposition as {'name{label="value",...}': value}, labels sorted, without the
    `pair` and `host` that every sample of ours carries (the same on all of them)."""
    from prometheus_client.parser import text_string_to_metric_families

    from colo_proxy.service.metrics import IDENTITY_LABELS

    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items())
                              if k not in IDENTITY_LABELS)
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def checkpoint_count(lab: Lab, host: str) -> int:
    return sum(state(lab, host).get("checkpoints", {}).values())


def orchestrator_pids(lab: Lab, host: str) -> list[int]:
    """The colo-orch processes in a host's namespace (whoever started them)."""
    found = []
    for pid in netns.pids(lab.hosts[host].ns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"colo_orch.cli.orch\0run" in cmdline:
            found.append(pid)
    return found


def protect(lab: Lab, *, proxy: bool = False, extra: str = "", arbiter: str | None = None,
            say: Callable[[str], None] | None = None, output: str = "compare") -> None:
    """Start both orchestrators of a lab that is up (its SVM waiting for the migration)
    and wait until they have brought the pair to PROTECTED; `say` hears each state change.
    output="buffer": the proxies buffer (Remus-style) instead of comparing."""
    start_orchestrators(lab, proxy=proxy, extra=extra, arbiter=arbiter, output=output)
    if say is None:
        wait_state(lab, "primary", "PROTECTED", 90)
        wait_state(lab, "secondary", "PROTECTED", 30)
        return
    t0 = time.monotonic()
    seen: dict[str, str] = {}

    def both_protected() -> bool:
        for host in ("primary", "secondary"):
            now = str(state(lab, host, timeout=2).get("state", "not answering yet"))
            if seen.get(host) != now:
                seen[host] = now
                say(f"{time.monotonic() - t0:5.1f} s  {host}: {now}")
        return all(v == "PROTECTED" for v in seen.values())

    wait_until(both_protected, 120, "both orchestrators PROTECTED", every=0.2,
               detail=lambda: f"states: {seen}; logs: {lab.run_dir}/orch-*.log")
