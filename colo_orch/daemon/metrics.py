"""The orchestrator's Prometheus metrics (naming per the Prometheus naming guide).

One `colo_` prefix, base units, `_total` counters, timestamps rather than ages,
no high-cardinality labels, known label values created at 0. Every constructor
takes the registry, so tests use a fresh one.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info

from colo_orch.core.api import REFUSALS as API_REFUSALS
from colo_orch.core.disks import ERROR_EVENTS as DISK_ERROR_EVENTS
from colo_orch.core.disks import STATES as DISK_STATES
from colo_orch.core.disks import DiskStatus
from colo_orch.core.progress import PHASES as PROGRESS_PHASES
from colo_orch.core.progress import Progress
from colo_orch.core.state import State

# The proxy's reasons (colo_proxy.compare.events.Reason, the values of its
# colo_proxy_checkpoint_requests_total) as they are, so that the same cause carries the same
# label value in both; then the orchestrator's own; "other" for anything unknown.
PROXY_REASONS = ("payload", "tcp_flags", "datagram", "timeout", "queue_full", "policy",
                 "unparseable")
CHECKPOINT_REASONS = (*PROXY_REASONS, "periodic", "manual", "resume", "proxy_restart", "other")
# Checkpoints pause the PVM for tens of milliseconds under TCG, a few under KVM.
PAUSE_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class OrchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Enum("colo_orch_state", "Orchestrator state",
                          states=[s.name for s in State], registry=registry)
        self.state_code = Gauge("colo_orch_state_code",
                                "Orchestrator state as its stable number (colo_orch/core/state.py)",
                                registry=registry)
        self.role = Enum("colo_orch_role", "This host's current role",
                         states=["primary", "secondary"], registry=registry)
        self.checkpoints = Counter("colo_checkpoints_total", "Checkpoints completed, by reason",
                                   ["reason"], registry=registry)
        for r in CHECKPOINT_REASONS:
            self.checkpoints.labels(r)
        self.checkpoint_failures = Counter("colo_checkpoint_failures_total",
                                           "Checkpoints that failed", registry=registry)
        self.checkpoint_duration = Histogram(
            "colo_checkpoint_duration_seconds",
            "From the checkpoint command to the PVM running again", buckets=PAUSE_BUCKETS,
            registry=registry)
        self.pvm_pause = Histogram("colo_checkpoint_pvm_pause_seconds",
                                   "How long the PVM was stopped for one checkpoint",
                                   buckets=PAUSE_BUCKETS, registry=registry)
        self.last_checkpoint = Gauge("colo_last_checkpoint_timestamp_seconds",
                                     "Unix time of the last completed checkpoint",
                                     registry=registry)
        self.checkpoint_requests = Counter("colo_checkpoint_requests_total",
                                           "Checkpoint requests received, by reason",
                                           ["reason"], registry=registry)
        for r in CHECKPOINT_REASONS:
            self.checkpoint_requests.labels(r)
        self.peer_up = Gauge("colo_peer_up", "1 while the peer's heartbeat is current",
                             registry=registry)
        self.heartbeat_rtt = Gauge("colo_heartbeat_rtt_seconds",
                                   "Round trip of the last echoed heartbeat (includes up to one "
                                   "heartbeat interval of echo delay)", registry=registry)
        # The receive thread's counts, copied each loop cycle: a datagram on the heartbeat
        # port that is not the peer's authentic heartbeat (wrong source, tag, shape or
        # pair), and an authentic one whose sequence number was already seen (a replay).
        self.heartbeats_received = Counter("colo_heartbeats_received_total",
                                           "Authentic, fresh heartbeats received from the peer",
                                           registry=registry)
        self.heartbeats_rejected = Counter(
            "colo_heartbeat_rejected_total",
            "Datagrams on the heartbeat port dropped as not the peer's authentic heartbeat "
            "(source address, HMAC tag, pair or shape)", registry=registry)
        self.heartbeats_replayed = Counter(
            "colo_heartbeat_replayed_total",
            "Authentic heartbeats dropped because their sequence number was already seen",
            registry=registry)
        self._heartbeats_seen = (0, 0, 0)
        self.failovers = Counter("colo_failovers_total", "Failovers completed (this host took "
                                 "over or continued alone)", registry=registry)
        self.sync_done = Gauge(
            "colo_sync_done_bytes", "Bytes copied so far by the first copy of a protection "
            "under way, by phase: disks (the resync of the replicated disks), memory (the COLO "
            "migration); 0 when none runs", ["phase"], registry=registry)
        self.sync_total = Gauge(
            "colo_sync_total_bytes", "Bytes the first copy of a protection under way has to "
            "copy, by phase (0 when none runs, or QEMU does not know yet)", ["phase"],
            registry=registry)
        for phase in PROGRESS_PHASES:
            self.sync_done.labels(phase)
            self.sync_total.labels(phase)
        self.reprotections = Counter("colo_reprotections_total",
                                     "Re-protections started by this host as primary",
                                     registry=registry)
        # Every failover's duration (colo_last_takeover_seconds, until issue 17, kept only
        # the last one: a second failover between two scrapes was lost).
        self.takeover_hist = Histogram(
            "colo_takeover_duration_seconds", "From peer loss to serving alone, each failover",
            buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60), registry=registry)
        self.lease_held = Gauge("colo_arbiter_lease_held", "1 while this host holds the lease",
                                registry=registry)
        # colo_orch_: the orchestrator exports it (colo_proxy_* are the proxy's own).
        self.proxy_up = Gauge("colo_orch_proxy_connected",
                              "1 while the control channel to colo-proxy is open",
                              registry=registry)
        self.protection_verified = Gauge(
            "colo_protection_verified",
            "1 while PROTECTED and both hosts' proxies are connected in their roles and "
            "compare (the state alone does not show a missing or paused proxy)",
            registry=registry)
        self.disk_state = Enum("colo_disk_replication_state",
                               "Disk replication state of this host's protected disks",
                               states=list(DISK_STATES), registry=registry)
        self.disks = Gauge("colo_disks", "Protected (replicated) disks of this VM",
                           registry=registry)
        self.disk_bytes = Counter("colo_disk_replicated_bytes_total",
                                  "Bytes the guest wrote to the secondary's disks",
                                  registry=registry)
        self.disk_errors = Counter("colo_disk_replication_errors_total",
                                   "Writes to the secondary's disks that failed",
                                   registry=registry)
        self.disk_error_events = Counter(
            "colo_disk_error_events",
            "The hypervisor's disk error events, by event (QEMU: QUORUM_REPORT_BAD, a write "
            "or read of a quorum child failed, e.g. on the secondary's NBD link; "
            "BLOCK_IO_ERROR, a guest request failed), read as they come",
            ["event"], registry=registry)
        for e in DISK_ERROR_EVENTS:
            self.disk_error_events.labels(e)
        # The replication's own figures restart at each attach (re-protection); the
        # counters above must not, so only increases are added.
        self._disk_seen = (0, 0)
        self._disk_events_seen: dict[str, int] = {}
        self.api_refused = Counter(
            "colo_api_requests_refused_total",
            "API requests refused, by reason: unauthorized (no or wrong token), forbidden "
            "(a socket peer not allowed, or commands off), read_only (a command on "
            "metrics_listen), not_found, malformed, too_large, timeout (cut off at "
            "timing.api_timeout), busy (too many connections), not_applicable (a command that "
            "does not apply in this host's state and role: HTTP 409)", ["reason"], registry=registry)
        for r in API_REFUSALS:
            self.api_refused.labels(r)
        self.pair = Info("colo_pair", "The protected pair this orchestrator belongs to",
                         registry=registry)
        info = Info("colo_build", "Build information", registry=registry)
        try:
            ver = version("colo")
        except PackageNotFoundError:
            ver = "unknown"
        info.info({"version": ver, "component": "orchestrator"})

    def reason(self, r: str) -> str:
        return r if r in CHECKPOINT_REASONS else "other"

    def identify(self, pair: str, host: str) -> None:
        # Every series has them as `pair` and `host` too (Orchestrator.exposed); this one
        # says so in the names of an older configuration, for queries written then.
        self.pair.info({"name": pair, "host_id": host})

    def observe_heartbeats(self, received: int, rejected: int, replayed: int) -> None:
        """The heartbeat receiver's running counts (they only grow within one run)."""
        r0, j0, p0 = self._heartbeats_seen
        self.heartbeats_received.inc(max(0, received - r0))
        self.heartbeats_rejected.inc(max(0, rejected - j0))
        self.heartbeats_replayed.inc(max(0, replayed - p0))
        self._heartbeats_seen = (received, rejected, replayed)

    def observe_progress(self, p: Progress | None) -> None:
        """The first copy of a protection under way (0 for each phase otherwise)."""
        for phase in PROGRESS_PHASES:
            here = p is not None and p.phase == phase
            self.sync_done.labels(phase).set(p.done if here and p is not None else 0)
            self.sync_total.labels(phase).set(p.total if here and p is not None else 0)

    def observe_disks(self, st: DiskStatus | None, count: int) -> None:
        """The disk replication's status, read once per loop cycle."""
        self.disks.set(count)
        if st is None:
            return
        self.disk_state.state(st.state if st.state in DISK_STATES else "none")
        last_bytes, last_errors = self._disk_seen
        # A value below the last one is a new replication session counting from 0.
        self.disk_bytes.inc(st.bytes_replicated - last_bytes
                            if st.bytes_replicated >= last_bytes else st.bytes_replicated)
        self.disk_errors.inc(st.errors - last_errors if st.errors >= last_errors else st.errors)
        self._disk_seen = (st.bytes_replicated, st.errors)
        for name, n in st.error_events.items():  # counted since the backend started
            self.disk_error_events.labels(name).inc(max(0, n - self._disk_events_seen.get(name, 0)))
            self._disk_events_seen[name] = n
