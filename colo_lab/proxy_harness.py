"""Run a pair of proxies in a lab's host namespaces (system tests, benchmark, demo).

Works with `colo_lab.lab.Lab` and `colo_lab.standin.Standin` alike: both name their host
namespaces in `.hosts[role].ns` and taps in `.hosts[role].tap`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from colo_lab.lab import FWD_MACS
from colo_lab.wait import wait_until
from colo_proxy.service import control_socket as control
from colo_proxy.wire.control import LineDecoder

REPO = Path(__file__).resolve().parent.parent
ROLES = ("secondary", "primary")  # secondary first: its filters must steer before mirroring
RUN_ROOT = Path("/run/colo-proxy-test")
_serial = itertools.count()


def unique_name(prefix: str) -> str:
    """A lab name no other test process uses (lab names are at most 10 characters)."""
    return f"{prefix}{os.getpid() % 10000}{next(_serial)}"[:10]


def in_ns(ns: str, argv: list[str], timeout: float = 30.0, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {proc.stderr.strip()}")
    return proc.stdout


def nstat(ns: str, *keys: str) -> dict[str, int]:
    """Kernel network counters of a namespace (`nstat -az`); absent ones read as missing."""
    out = in_ns(ns, ["nstat", "-az", *keys])
    return {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines()[1:] if ln.strip()}


class ProxyPair:
    def __init__(self, lab: Any, run_dir: Path, *, extra: list[str] | None = None,
                 queue: int = 5, uplink: str = "lan0") -> None:
        self.lab = lab
        self.run_dir = run_dir
        self.extra = extra or []
        self.uplink = uplink  # the primary host's port to the LAN (both labs: lan0)
        self.queue = queue
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        # The pair's key (the orchestrators' heartbeat key in a real pair): authenticates
        # the carried-flow announcements on the forward link.
        self.key_file = run_dir / "pair.key"
        if not self.key_file.exists():
            self.key_file.write_bytes(base64.b64encode(secrets.token_bytes(32)))
            self.key_file.chmod(0o600)

    def sock(self, role: str) -> str:
        return str(self.run_dir / f"{role}.sock")

    def log(self, role: str) -> Path:
        return self.run_dir / f"{role}.log"

    def ns(self, role: str) -> str:
        return str(self.lab.hosts[role].ns)

    def argv(self, role: str) -> list[str]:
        """The command line of this pair's proxy in `role` (run in its host's namespace)."""
        return [sys.executable, "-m", "colo_proxy.cli.main", role,
                "--tap", self.lab.hosts[role].tap,
                "--peer-mac", FWD_MACS["secondary" if role == "primary" else "primary"],
                "--key-file", str(self.key_file),
                "--control-socket", self.sock(role), "--queue", str(self.queue),
                # One instance per host, each locked in a directory of its host's own, as
                # on two machines (the namespaces share one /run).
                "--instance", f"t{os.getpid()}{role[:3]}",
                "--lock-dir", str(self.run_dir / f"locks-{role[:3]}"),
                *(["--uplink", self.uplink] if role == "primary" and self.uplink else []),
                *self.extra]  # last: extra flags win (e.g. --uplink "" for none)

    def start(self, role: str | None = None, timeout: float = 60.0,
              env: dict[str, str] | None = None) -> None:
        """Start the proxies (`env`: variables added to their environment)."""
        for r in [role] if role else ROLES:
            h = self.lab.hosts[r]
            with open(self.log(r), "ab") as log:
                self.procs[r] = subprocess.Popen(["ip", "netns", "exec", h.ns, *self.argv(r)],
                                                 stdout=log, stderr=log, cwd=str(REPO),
                                                 env={**os.environ, **(env or {})})
            wait_until(functools.partial(self._hello, r), timeout, f"the {r} proxy to answer")

    def _hello(self, role: str) -> bool:
        proc = self.procs[role]
        if proc.poll() is not None:
            raise RuntimeError(f"{role} proxy exited {proc.returncode}: "
                               f"{self.log(role).read_text()[-2000:]}")
        try:
            reply = control.request(self.sock(role), {"type": "hello"}, 2.0)
            return bool(reply["type"] == "hello")
        except OSError:
            return False

    def status(self, role: str) -> dict[str, Any]:
        return control.request(self.sock(role), {"type": "status"})

    def tell(self, msg_type: str, roles: tuple[str, ...] = ROLES) -> None:
        for r in roles:
            reply = control.request(self.sock(r), {"type": msg_type})
            if reply.get("type") != "ok":
                raise RuntimeError(f"{r} proxy refused {msg_type}: {reply}")

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(role)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def stop(self) -> None:
        for r in ("primary", "secondary"):
            self.kill(r, signal.SIGTERM)

    def cleanup(self) -> dict[str, str]:
        """`colo-proxy cleanup` in both host namespaces; their output per role."""
        return {r: in_ns(self.ns(r), [sys.executable, "-m", "colo_proxy.cli.main", "cleanup",
                                      "--control-socket", self.sock(r)])
                for r in ("primary", "secondary") if _ns_exists(self.ns(r))}

    def leftovers(self) -> list[str]:
        """Filters, clsact qdiscs and iptables rules of colo-proxy still in the host ns."""
        left = []
        for r in ("primary", "secondary"):
            ns = self.ns(r)
            if not _ns_exists(ns):
                continue
            for dev in ("tapP" if r == "primary" else "tapS", "fwd0"):
                for hook in ("ingress", "egress"):
                    out = in_ns(ns, ["tc", "filter", "show", "dev", dev, hook], check=False)
                    if out.strip():
                        left.append(f"{r} {dev} {hook}: {out.strip()}")
                qd = in_ns(ns, ["tc", "qdisc", "show", "dev", dev], check=False)
                if "clsact" in qd:
                    left.append(f"{r} {dev}: clsact qdisc")
            for tool in ("iptables", "ip6tables"):
                rules = in_ns(ns, [tool, "-w", "-S", "FORWARD"], check=False)
                left += [f"{r} {tool}: {ln}" for ln in rules.splitlines() if "colo-proxy" in ln]
        return left

    @contextlib.contextmanager
    def running(self) -> Iterator[ProxyPair]:
        """Both proxies started, and afterwards stopped, cleaned up and their run
        directory removed (a test's pair)."""
        try:
            self.start()
            yield self
        finally:
            self.stop()
            self.cleanup()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def prog_ids(self) -> list[int]:
        code = ("import json; from colo_proxy.kernel.datapath import attached; "
                "print(json.dumps([a['prog_id'] for a in attached()]))")
        ids: list[int] = []
        for r in ("primary", "secondary"):
            ids += json.loads(in_ns(self.ns(r), [sys.executable, "-c", code]))
        return ids


def _ns_exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


class Orchestrator:
    """A stand-in orchestrator: collects the primary's checkpoint requests on a thread."""

    def __init__(self, sock_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock_path)
        self.requests: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        dec = LineDecoder()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for item in dec.feed(data):
                if isinstance(item, dict):
                    with self._lock:
                        if item["type"] == "checkpoint_request":
                            self.requests.append(dict(item, at=time.monotonic()))
                        else:
                            self.replies.append(item)

    def taken(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self.requests = self.requests, []
        return out

    def close(self) -> None:
        self.sock.close()
