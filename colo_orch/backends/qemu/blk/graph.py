"""The block graph of the protected disks, driven over QMP.

QEMU 7.2 facts used here (docs/block-replication.txt, docs/COLO-FT.txt, and
measured in the lab, see notes/MEASURED.md):
- The secondary exports its image writable over NBD before the primary's
  `migrate`; the primary adds `replication,mode=primary` over an NBD client with
  HMP `drive_add -n buddy` and makes it the quorum's second child with
  `x-blockdev-change`. From then on every guest write completes only after both
  quorum children completed it (quorum waits for all children, then counts
  successes against vote-threshold=1).
- With TLS (colo_orch.backends.qemu.tls) the export takes `tls-creds` and every NBD
  client (mirror target, replication child) `tls-creds` and `tls-hostname`.
- Secondary failover: `nbd-server-stop` before `x-colo-lost-heartbeat`; the
  replication driver then commits the active and hidden layers into the image
  with an internal active-commit job, after which the qcow2 layers leave the graph.
- Primary failover: the replication child is removed (`x-blockdev-change` with
  the child's name, then `drive_del`). An NBD client stuck on a cut link would
  make that drain hang, so its node is yanked first (`yank` block-node, QEMU >= 6).
- Re-protection: `drive-mirror` (sync=full, mode=existing) of the quorum to the
  new secondary's export while the VM runs (its target a `json:` filename: an NBD URL
  cannot carry TLS options); once ready, the VM is stopped, the
  mirror cancelled (a ready mirror cancelled without force finishes the copy and
  leaves the target equal to the source), the replication child attached, and
  COLO's migration starts the VM again.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from colo_orch.backends.qemu.blk.spec import QemuDisk
from colo_orch.backends.qemu.tls import SERVER_ID, QemuTls, add_creds
from colo_orch.core.disks import Disk, DiskStatus


class Qmp(Protocol):
    def cmd(self, name: str, **args: Any) -> Any: ...


class DiskError(Exception):
    """A disk replication step failed; str() names the disk, the step and the likely cause."""


def _refused(exc: Exception) -> bool:
    text = str(exc).lower()
    return "refused" in text or "no route" in text or "connect" in text


class Replication:
    """All protected disks of one VM. Methods run on the action thread, `poll` on the observer."""

    def __init__(self, mon: Qmp, disks: Sequence[Disk], nbd_port: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 connect: Callable[[str, int, float], None] | None = None,
                 tls: QemuTls | None = None) -> None:
        self.mon = mon
        self.disks = tuple(map(QemuDisk.of, disks))
        self.port = nbd_port
        self.tls = tls
        self.clock = clock
        self.sleep = sleep
        self._connect = connect or _tcp_probe
        self.state = "none"
        self.problem = ""
        self.peer = ""  # the secondary's host while we replicate to it
        self.bytes_replicated = 0
        self.errors = 0
        self._written_at_attach = 0
        self._link_down_since: float | None = None
        self._probe: threading.Thread | None = None
        self._probe_stop = threading.Event()

    def status(self) -> DiskStatus:
        return DiskStatus(self.state, self.problem, self.bytes_replicated, self.errors)

    def reset(self) -> None:
        """A new QEMU: nothing exported or attached yet."""
        self._stop_probe()
        self.state, self.problem, self.peer = "none", "", ""
        self._link_down_since = None

    # Secondary -------------------------------------------------------------------
    def export(self, host: str) -> str:
        """Start the NBD server on host:port and export each disk's image writable (to TLS
        clients of the pair's CA or key only, when configured)."""
        addr = {"type": "inet", "data": {"host": host, "port": str(self.port)}}
        tls: dict[str, str] = {}
        try:
            if self.tls is not None:
                add_creds(self.mon, self.tls, "server")
                tls["tls-creds"] = SERVER_ID
            self.mon.cmd("nbd-server-start", addr=addr, **tls)
        except Exception as exc:
            if "already" not in str(exc).lower():
                raise DiskError(f"NBD server on {host}:{self.port} did not start: {exc}") from exc
        for d in self.disks:
            try:
                self.mon.cmd("nbd-server-add", device=d.parent, writable=True)
            except Exception as exc:
                if "already" not in str(exc).lower():
                    raise DiskError(f"{d.id}: NBD export of {d.image} failed: {exc}") from exc
        self.state = "exported"
        return (f"exported {len(self.disks)} disk(s) on {host}:{self.port}"
                + (f" (TLS {self.tls.kind})" if self.tls else ""))

    def stop_export(self) -> str:
        """Failover: no more writes from the (dead) primary may reach our image."""
        try:
            self.mon.cmd("nbd-server-stop")
        except Exception as exc:
            if "not running" not in str(exc).lower():
                raise DiskError(f"nbd-server-stop failed: {exc}") from exc
        return "NBD export stopped"

    def wait_committed(self, timeout: float) -> str:
        """Failover: wait until replication has committed the active/hidden layers."""
        start = self.clock()
        actives = {d.active for d in self.disks}
        while True:
            nodes = self.mon.cmd("query-named-block-nodes", flat=True)
            left = sorted({n.get("file") for n in nodes
                           if n.get("drv") == "file" and n.get("file") in actives})
            if not left:
                self.state = "committed"
                return f"disk committed in {1000 * (self.clock() - start):.0f} ms"
            if self.clock() - start > timeout:
                self.state, self.problem = "broken", f"commit of {', '.join(left)} not done"
                raise DiskError(f"the active layer(s) {', '.join(left)} were not committed "
                                f"within {timeout:.0f} s")
            self.sleep(0.02)

    # Primary ---------------------------------------------------------------------
    def _url(self, d: QemuDisk, peer: str) -> str:
        """The secondary's export, as people read it."""
        return f"nbd://{peer}:{self.port}/{d.parent}"

    def _target(self, d: QemuDisk, peer: str) -> str:
        """The mirror's target: the export as a raw image, over TLS when configured."""
        nbd = {"driver": "nbd", "server": {"type": "inet", "host": peer, "port": str(self.port)},
               "export": d.parent, **(self.tls.nbd_client() if self.tls else {})}
        return "json:" + json.dumps({"driver": "raw", "file": nbd}, separators=(",", ":"))

    def resync(self, peer: str, *, connect_timeout: float = 10.0, timeout: float = 1800.0,
               progress: Callable[[int, int], None] = lambda done, total: None) -> str:
        """Mirror each disk to the secondary's export while the VM runs; return once ready."""
        self.state, self.problem, self.peer = "resyncing", "", peer
        start = self.clock()
        if self.tls is not None:
            try:
                add_creds(self.mon, self.tls, "client")
            except Exception as exc:
                self._fail(f"TLS credentials ({self.tls.kind}, {self.tls.dir}): {exc}")
        for d in self.disks:
            self._cancel_job(d.resync_job)
            while True:
                try:
                    self.mon.cmd("drive-mirror", device=d.top, target=self._target(d, peer),
                                 **{"job-id": d.resync_job}, mode="existing", format="raw",
                                 sync="full")
                    break
                except Exception as exc:
                    if "size" in str(exc).lower():
                        self._fail(f"{d.id}: the secondary's image differs in size from ours "
                                   f"({exc}); prepare it with coloctl disk prepare")
                    if not _refused(exc) or self.clock() - start > connect_timeout:
                        self._fail(f"{d.id}: the secondary's NBD export {self._url(d, peer)} "
                                   f"does not answer ({exc}): is the secondary VM waiting "
                                   "with its disk exported"
                                   + (" over TLS with the same CA or key?" if self.tls else "?"))
                    self.sleep(0.2)
        copied = 0
        while True:
            jobs = {j["device"]: j for j in self.mon.cmd("query-block-jobs")}
            missing = [d.id for d in self.disks if d.resync_job not in jobs]
            if missing:
                self._fail(f"resync of {', '.join(missing)} ended before it was ready "
                           "(the NBD link to the secondary failed?)")
            progress(sum(int(jobs[d.resync_job].get("offset", 0)) for d in self.disks),
                     sum(int(jobs[d.resync_job].get("len", 0)) for d in self.disks))
            if all(jobs[d.resync_job].get("ready") for d in self.disks):
                copied = sum(int(jobs[d.resync_job].get("offset", 0)) for d in self.disks)
                break
            if self.clock() - start > timeout:
                for d in self.disks:
                    self._cancel_job(d.resync_job)
                self._fail(f"resync to {peer} not ready within {timeout:.0f} s "
                           "(timing.resync_timeout)")
            self.sleep(0.05)
        return f"resynced {copied} bytes in {self.clock() - start:.2f} s"

    def attach(self, peer: str) -> str:
        """With the VM stopped: finish the resync and add the replication children."""
        for d in self.disks:
            self._finish_job(d.resync_job)
        tls = "".join(f",file.{k}={v}" for k, v in (self.tls.nbd_client() if self.tls else {}).items())
        for d in self.disks:
            self._remove_child(d)
            line = (f"drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,"
                    f"file.host={peer},file.port={self.port},file.export={d.parent},"
                    f"node-name={d.replication},file.node-name={d.nbd}{tls}")
            out = str(self.mon.cmd("human-monitor-command", **{"command-line": line})).strip()
            if out and out != "OK":
                self._fail(f"{d.id}: adding the replication child failed: {out}")
            try:
                self.mon.cmd("x-blockdev-change", parent=d.top, node=d.replication)
            except Exception as exc:
                self._fail(f"{d.id}: x-blockdev-change failed: {exc}")
        self.state, self.peer = "replicating", peer
        self.errors = 0
        self._written_at_attach = sum(
            int(e.get("stats", {}).get("wr_bytes", 0))
            for e in self.mon.cmd("query-blockstats") if e.get("device") in {d.top for d in self.disks})
        self._start_probe(peer)
        return f"replicating {len(self.disks)} disk(s) to {peer}:{self.port}"

    def detach(self) -> str:
        """Stop replicating: the local image alone is the disk. Safe to repeat."""
        self._stop_probe()
        removed = 0
        for d in self.disks:
            self._cancel_job(d.resync_job)
            try:
                # A write stuck on a cut link would block the drain below forever.
                self.mon.cmd("yank", instances=[{"type": "block-node", "node-name": d.nbd}])
            except Exception:
                pass  # no such node (not attached) or nothing to yank
            removed += self._remove_child(d)
        if self.state != "none":
            self.state = "alone"
        return f"replication child removed from {removed} disk(s)"

    def _remove_child(self, d: QemuDisk) -> int:
        child = self._child_name(d)
        if child is None:
            return 0
        self.mon.cmd("x-blockdev-change", parent=d.top, child=child)
        try:
            self.mon.cmd("human-monitor-command", **{"command-line": f"drive_del {d.replication}"})
        except Exception:
            pass  # already gone with its last reference
        return 1

    def _child_name(self, d: QemuDisk) -> str | None:
        """The quorum's name for the replication child ("children.N"; N grows on each add)."""
        graph = self.mon.cmd("x-debug-query-block-graph")
        rep = next((n["id"] for n in graph.get("nodes", []) if n.get("name") == d.replication),
                   None)
        if rep is None:
            return None
        for e in graph.get("edges", []):
            if e.get("child") == rep and str(e.get("name", "")).startswith("children."):
                return str(e["name"])
        return None

    def _cancel_job(self, job: str) -> None:
        try:
            self.mon.cmd("block-job-cancel", device=job, force=True)
        except Exception:
            return  # no such job
        self._wait_gone(job, 10.0)

    def _finish_job(self, job: str) -> None:
        try:
            self.mon.cmd("block-job-cancel", device=job)
        except Exception as exc:
            self._fail(f"resync job {job} is gone before completion: {exc}")
        self._wait_gone(job, 30.0)

    def _wait_gone(self, job: str, timeout: float) -> None:
        start = self.clock()
        while any(j["device"] == job for j in self.mon.cmd("query-block-jobs")):
            if self.clock() - start > timeout:
                self._fail(f"block job {job} did not end within {timeout:.0f} s")
            self.sleep(0.02)

    def _fail(self, problem: str) -> None:
        self.state, self.problem = "broken", problem
        raise DiskError(problem)

    # Health (observer thread) ---------------------------------------------------
    def poll(self) -> str:
        """While replicating: "" if healthy, else why the secondary's disk is no longer a copy.

        A failed write or flush on the NBD child means a write reached only our
        image (quorum counts it a success with vote-threshold=1); a link that
        stopped accepting connections means writes are about to hang. Either way
        the secondary's disk can no longer be trusted to equal ours.
        """
        if self.state != "replicating":
            return self.problem if self.state == "broken" else ""
        # I/O is accounted per BlockBackend, not per node: while the replication child
        # is attached every write of the guest's drive goes to the secondary too.
        tops = {d.top for d in self.disks}
        written = sum(int(e.get("stats", {}).get("wr_bytes", 0))
                      for e in self.mon.cmd("query-blockstats") if e.get("device") in tops)
        self.bytes_replicated = max(0, written - self._written_at_attach)
        failed = self.errors
        if failed:
            self.state = "broken"
            self.problem = f"{failed} write(s) to the secondary's disk failed"
        elif self._link_down_since is not None and self.clock() - self._link_down_since > 1.0:
            self.state = "broken"
            self.problem = f"NBD link to {self.peer}:{self.port} is cut"
        return self.problem if self.state == "broken" else ""

    def note_event(self, event: dict[str, Any]) -> None:
        """A QMP event seen by the backend: QUORUM_REPORT_BAD on our child is a lost write."""
        data = event.get("data", {})
        if (event.get("event") == "QUORUM_REPORT_BAD" and self.state == "replicating"
                and data.get("node-name") in {d.replication for d in self.disks}):
            self.errors += 1

    def _start_probe(self, peer: str) -> None:
        self._stop_probe()
        self._probe_stop = threading.Event()
        self._link_down_since = None
        stop = self._probe_stop

        def run() -> None:
            while not stop.wait(0.5):
                try:
                    self._connect(peer, self.port, 1.0)
                    self._link_down_since = None
                except OSError:
                    if self._link_down_since is None:
                        self._link_down_since = self.clock()

        self._probe = threading.Thread(target=run, name="nbd-probe", daemon=True)
        self._probe.start()

    def _stop_probe(self) -> None:
        self._probe_stop.set()
        self._probe = None


# NBD fixed-newstyle handshake (the NBD protocol, doc/proto.md): the server greets with
# NBDMAGIC, IHAVEOPT and 16 bits of flags; the client answers with 32 bits of flags and
# may then end the negotiation with NBD_OPT_ABORT, which the server acknowledges.
NBD_GREETING = struct.Struct("!QQH")
NBDMAGIC, IHAVEOPT = 0x4E42444D41474943, 0x49484156454F5054
NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_ABORT = 1, 2


def _tcp_probe(host: str, port: int, timeout: float) -> None:
    """Check that the NBD server answers, and leave politely.

    A plain connect-and-close would do for reachability, but QEMU's server logs "option
    negotiation failed: ... Unexpected end-of-file" for every client that leaves before
    negotiating: two lines a second in the VM's log. A client that sends NBD_OPT_ABORT
    is let go silently (nbd/server.c).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        greeting = b""
        while len(greeting) < NBD_GREETING.size:
            chunk = sock.recv(NBD_GREETING.size - len(greeting))
            if not chunk:
                raise ConnectionError(f"{host}:{port} closed before its NBD greeting")
            greeting += chunk
        magic, opt, _ = NBD_GREETING.unpack(greeting)
        if (magic, opt) != (NBDMAGIC, IHAVEOPT):
            raise ConnectionError(f"{host}:{port} is not a (newstyle) NBD server")
        sock.sendall(struct.pack("!IQII", NBD_FLAG_C_FIXED_NEWSTYLE, IHAVEOPT, NBD_OPT_ABORT, 0))
        try:
            sock.recv(20)  # the server's NBD_REP_ACK; it may also just close
        except OSError:
            pass
