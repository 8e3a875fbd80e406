"""The proxy's Prometheus metrics: a custom collector over the running proxy's state.

Everything is read at scrape time from what the proxy keeps anyway (the comparator's
`CompareStats`, the held-packet counts, the BPF per-CPU counter maps, the kernel's
NFQUEUE statistics), so the packet path pays nothing for metrics except the held-time
observation (`HoldTimer`). Naming per the Prometheus guide: `colo_proxy_` prefix, base
units, `_total` counters, no IP/port/flow labels, every known label value present from
the first scrape (at 0).

`serve(listen, proxy, ...)` starts the HTTP endpoint (`colo-proxy primary|secondary
--metrics-listen ADDR:PORT`) in a thread; the collector only reads, the proxy's loop
stays single-threaded.
"""

from __future__ import annotations

import bisect
import socket
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from colo_proxy.compare.events import REASONS
from colo_proxy.service.modes import Mode
from colo_proxy.wire.carry import REFUSALS as CARRY_REFUSALS

# BPF hook paths (the `path` label): where a packet was counted.
PATHS = {
    "mirror": "primary: client packets cloned onto the forward link",
    "svm_out": "primary: SVM output arriving on the forward link",
    "fwd_in": "secondary: mirrored input redirected into the SVM's tap",
    "tap_out": "secondary: SVM output taken off its tap",
}
MODES = tuple(dict.fromkeys(m.label for m in Mode))  # ("protected", "passthrough")
SIDES = ("primary", "secondary")
# How long a PVM packet waits for its SVM twin: the latency COLO adds. Matches are
# sub-millisecond under KVM; a checkpoint release takes tens to hundreds of ms.
HOLD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0)
NFQUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")


class HoldTimer:
    """Per PVM packet: when it was queued and its size; at release, how long it was held.

    Fed by the proxy's loop (one dict insert per PVM packet, one pop per release) and
    read by the collector; plain ints and a list, so a scrape never blocks the loop.
    """

    __slots__ = ("_arrived", "buckets", "count", "released_bytes", "released_packets", "sum")

    def __init__(self) -> None:
        self._arrived: dict[int, tuple[float, int]] = {}
        self.buckets = [0] * (len(HOLD_BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0
        self.released_packets = 0
        self.released_bytes = 0

    def queued(self, packet_id: int, now: float, nbytes: int) -> None:
        self._arrived[packet_id] = (now, nbytes)

    def oldest(self) -> float | None:
        """When the longest-held PVM packet still held was queued."""
        return next(iter(self._arrived.values()))[0] if self._arrived else None

    def released(self, packet_ids: Iterable[int], now: float) -> None:
        pop = self._arrived.pop
        buckets = self.buckets
        for pid in packet_ids:
            got = pop(pid, None)
            if got is None:
                continue  # queued before we counted (not protected then)
            held = now - got[0]
            buckets[bisect.bisect_left(HOLD_BUCKETS, held)] += 1
            self.count += 1
            self.sum += held
            self.released_packets += 1
            self.released_bytes += got[1]

    def held_ids(self) -> list[int]:
        """The ids of every PVM packet still held, oldest first."""
        return list(self._arrived)

    def release_all(self, now: float) -> None:
        """Everything held went out at once (pass-through after failover or pause)."""
        self.released(list(self._arrived), now)

    def forget(self, packet_ids: Iterable[int]) -> None:
        """These left the queue without a release (sent to the segmenting queue; their
        segments are timed from their own arrival)."""
        pop = self._arrived.pop
        for pid in packet_ids:
            pop(pid, None)

    def forget_all(self) -> None:
        """Everything held was dropped (fenced): it was never released, so not timed."""
        self._arrived.clear()

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*HOLD_BUCKETS, float("inf")), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class StatusSource(Protocol):
    """PrimaryProxy (status()) or SecondaryProxy (on_control({"type": "status"}))."""

    def on_control(self, msg: dict[str, Any]) -> dict[str, Any]: ...


def nfqueue_stats(num: int, path: Path = NFQUEUE_PROC) -> dict[str, int]:
    """The kernel's counters of NFQUEUE `num` in this namespace ({} if it is not bound).

    Line format (net/netfilter/nfnetlink_queue.c, seq_show): queue_number peer_portid
    queue_total copy_mode copy_range queue_dropped queue_user_dropped id_sequence 1.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        f = line.split()
        if len(f) >= 8 and f[0] == str(num):
            return {"held": int(f[2]), "queue_full": int(f[5]), "socket_full": int(f[6]),
                    "queued": int(f[7])}
    return {}


def _build_version() -> str:
    try:
        return version("colo")
    except PackageNotFoundError:
        return "unknown"


class ProxyCollector(Collector):
    """Metric families of one colo-proxy (primary or secondary), built at each scrape."""

    def __init__(self, proxy: StatusSource | None, role: str, *, queue: int | None = None,
                 fail_open: bool = False, nfqueue_proc: Path = NFQUEUE_PROC) -> None:
        self.proxy = proxy
        self.role = role
        self.queue = queue
        self.fail_open = fail_open
        self.nfqueue_proc = nfqueue_proc
        # The proxy replaces its comparator at resume and pass-through, which restarts
        # the comparator's counts; counters must not go down, so retired comparators'
        # final counts are carried here.
        self._lock = threading.Lock()
        self._cmp: Any = None
        self._carried: dict[str, int] = {}

    def _compare_stats(self) -> dict[str, int]:
        cmp = getattr(self.proxy, "cmp", None)
        if cmp is None:
            return dict(self._carried)
        with self._lock:
            if self._cmp is not None and cmp is not self._cmp:
                for k, v in self._cmp.stats.as_dict().items():
                    self._carried[k] = self._carried.get(k, 0) + v
            self._cmp = cmp
            now = cmp.stats.as_dict()
            return {k: now.get(k, 0) + self._carried.get(k, 0)
                    for k in set(now) | set(self._carried)}

    def _status(self) -> dict[str, Any]:
        if self.proxy is None:
            return {}
        if hasattr(self.proxy, "status"):
            own: dict[str, Any] = self.proxy.status()
            return own
        # SecondaryProxy answers status only as a control message.
        reply: dict[str, Any] = self.proxy.on_control({"type": "status"})
        return reply

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        yield from self._common(st)
        if self.role == "primary":
            from colo_proxy.service.primary import with_fast_path

            fast = st.get("fast_path")
            yield from self._compare(st, with_fast_path(self._compare_stats(), fast))
            yield from self._fast_path(fast or {})
            yield from self._nfqueue(st)
        yield from self._datapath(st.get("datapath", {}))
        yield from self._carry(st.get("carry", {}))

    def _carry(self, st: dict[str, Any]) -> Iterator[Metric]:
        yield _by("colo_proxy_carry_frames",
                  "The carried-flow exchange on the forward link: sent (primary: "
                  "announcements; secondary: challenges), accepted (primary: challenges "
                  "answered; secondary: announcements written into its carried map)",
                  "event", [(e, st.get(e, 0)) for e in ("sent", "accepted")])
        refused = st.get("refused", {})
        yield _by("colo_proxy_carry_refused_frames",
                  "Frames of the carried-flow exchange refused (forged, stale or malformed: "
                  "another source MAC, a wrong HMAC, an old nonce), by reason", "reason",
                  [(r, refused.get(r, 0)) for r in CARRY_REFUSALS])

    def _common(self, st: dict[str, Any]) -> Iterator[Metric]:
        info = InfoMetricFamily("colo_build", "Build information")
        info.add_metric([], {"version": _build_version(), "component": "proxy",
                             "role": self.role})
        yield info
        mode = GaugeMetricFamily("colo_proxy_mode",
                                 "1 for the proxy's current mode (protected: comparing or "
                                 "steering; passthrough: after failover or while paused)",
                                 labels=["colo_proxy_mode"])
        cur = st.get("mode", "protected")
        for m in MODES:
            mode.add_metric([m], 1.0 if m == cur else 0.0)
        yield mode
        yield _counter("colo_proxy_checkpoints_done",
                       "Checkpoints the orchestrator reported done to this proxy",
                       st.get("checkpoints_done", 0))
        pm = st.get("permit", {})
        yield _gauge("colo_proxy_release_permit_enforced",
                     "1 while this proxy releases output only under an unexpired release "
                     "permit from its orchestrator (release_permit: required, or auto after "
                     "the first permit)", 1 if pm.get("enforced") else 0)
        yield _gauge("colo_proxy_release_permit_remaining_seconds",
                     "Seconds left on the release permit (0 when it lapsed or none came; "
                     "0 too while it is not enforced)", pm.get("remaining_s") or 0.0)
        yield _counter("colo_proxy_release_permit_lapses",
                       "Times the release permit ran out before the orchestrator renewed it "
                       "(output held until it renews or fences)", pm.get("lapses", 0))
        yield _gauge("colo_proxy_release_permit_withheld_packets",
                     "PVM packets free to go that wait for a release permit (primary)",
                     pm.get("withheld_packets", 0))

    def _compare(self, st: dict[str, Any], cs: dict[str, int]) -> Iterator[Metric]:
        hold = getattr(self.proxy, "hold", None)
        yield _by("colo_proxy_compared_packets",
                  "Packets given to the comparator, by the VM that sent them", "side",
                  [(side, cs.get(f"{side}_packets", 0)) for side in SIDES])
        cb = st.get("compared_bytes", {})
        yield _by("colo_proxy_compared_bytes",
                  "IP bytes given to the comparator, by the VM that sent them", "side",
                  [(side, cb.get(side, 0)) for side in SIDES])
        yield _counter("colo_proxy_released_packets",
                       "PVM packets released to the clients (matched, or by a checkpoint)",
                       cs.get("released_packets", 0))
        yield _counter("colo_proxy_released_bytes",
                       "IP bytes of the PVM packets released to the clients",
                       hold.released_bytes if isinstance(hold, HoldTimer) else 0)
        yield _counter("colo_proxy_resegmented_packets",
                       "Held PVM packets sent to the segmenting queue: GSO packets the SVM "
                       "lagged inside, and packets held behind them",
                       cs.get("resegmented_packets", 0))
        yield _counter("colo_proxy_svm_consumed_packets",
                       "SVM packets consumed: compared, superseded or discarded by a checkpoint",
                       cs.get("dropped_packets", 0))
        yield _counter("colo_proxy_passed_uncompared_packets",
                       "PVM packets passed without comparison (pass-through mode)",
                       st.get("passed_uncompared", 0))
        div = CounterMetricFamily("colo_proxy_divergences",
                                  "Divergences found (each asks for a checkpoint), by reason",
                                  labels=["reason"])
        req = CounterMetricFamily("colo_proxy_checkpoint_requests",
                                  "Checkpoint requests sent to the orchestrator, by reason",
                                  labels=["reason"])
        sent = st.get("checkpoint_requests", {})
        for r in REASONS:
            div.add_metric([r], cs.get(f"divergences_{r}", 0))
            req.add_metric([r], sent.get(r, 0))
        yield div
        yield req
        yield _gauge("colo_proxy_held_packets", "PVM packets held now (waiting for the SVM)",
                     st.get("held_packets", 0))
        cmp = getattr(self.proxy, "cmp", None)
        yield _gauge("colo_proxy_held_bytes", "IP bytes of the PVM packets held now",
                     getattr(cmp, "held_bytes", 0))
        yield _gauge("colo_proxy_flows", "Flows the comparator tracks now", st.get("flows", 0))
        yield _gauge("colo_proxy_carried_flows",
                     "Connections carried over a role swap, still shifted (primary: on its "
                     "uplink; secondary: after its next failover)",
                     st.get("carried_flows", 0))
        yield _gauge("colo_proxy_checkpoint_pending",
                     "1 while a requested checkpoint has not been reported done",
                     1 if st.get("checkpoint_pending") else 0)
        yield _by("colo_proxy_flow_events",
                  "Flow table events (created; evicted when idle or full; over_limit: "
                  "created while the table was full)", "event",
                  [(ev, cs.get(f"flows_{ev}", 0)) for ev in ("created", "evicted", "over_limit")])
        yield _by("colo_proxy_uncompared_packets",
                  "Packets the comparator did not compare byte by byte, by kind", "kind",
                  [("pass_through_rule", cs.get("pass_through_packets", 0)),
                   ("fragment", cs.get("fragments", 0)),
                   ("other_protocol", cs.get("other_protocol", 0)),
                   ("svm_non_ip", st.get("svm_non_ip", 0))])
        yield _by("colo_proxy_errors", "Packets the proxy could not handle normally, by kind",
                  "kind",
                  [("parse", cs.get("parse_errors", 0)),
                   ("internal", cs.get("internal_errors", 0)),
                   ("truncated_copy", st.get("truncated_copies", 0)),
                   ("svm_socket_drop", st.get("svm_socket_drops", 0)),
                   # read errors on the SVM's packet socket (ENETDOWN when the forward
                   # link loses carrier): counted, and the proxy reads on
                   ("svm_socket_error", st.get("svm_socket_errors", 0))])
        h = HistogramMetricFamily("colo_proxy_hold_seconds",
                                  "How long each PVM packet was held before its release "
                                  "(the latency COLO adds)")
        if isinstance(hold, HoldTimer):
            h.add_metric([], hold.cumulative(), hold.sum)
        else:
            h.add_metric([], [(repr(b), 0.0) for b in HOLD_BUCKETS] + [("+Inf", 0.0)], 0.0)
        yield h

    def _fast_path(self, st: dict[str, Any]) -> Iterator[Metric]:
        from colo_proxy.fastpath import BACK_REASONS

        yield _by("colo_proxy_fast_path_packets",
                  "Packets the C fast path took (pvm, svm; released: PVM packets it released) "
                  "or handed to the Python loop (slow_pvm, slow_svm)", "event",
                  [(e, st.get(k, 0)) for e, k in (("pvm", "pvm_packets"),
                                                   ("svm", "svm_packets"),
                                                   ("released", "released"),
                                                   ("slow_pvm", "slow_pvm"),
                                                   ("slow_svm", "slow_svm"))])
        yield _by("colo_proxy_fast_path_handbacks",
                  "Flows the fast path gave back to the comparator, by reason", "reason",
                  [(r, st.get(f"handbacks_{r}", 0)) for r in BACK_REASONS])
        yield _gauge("colo_proxy_fast_path_lent_flows",
                     "Flows lent to the fast path now", st.get("lent_flows", 0))

    def _nfqueue(self, st: dict[str, Any]) -> Iterator[Metric]:
        k = nfqueue_stats(self.queue, self.nfqueue_proc) if self.queue is not None else {}
        drops = CounterMetricFamily(
            "colo_proxy_nfqueue_dropped_packets",
            "PVM packets the kernel dropped instead of queueing them to the proxy "
            "(queue_full: queue at its maximum length; socket_full: our socket's buffer)",
            labels=["reason"])
        drops.add_metric(["queue_full"], k.get("queue_full", 0))
        drops.add_metric(["socket_full"], k.get("socket_full", 0))
        yield drops
        yield _gauge("colo_proxy_nfqueue_kernel_held_packets",
                     "Packets waiting in the kernel's NFQUEUE for a verdict", k.get("held", 0))
        yield _gauge("colo_proxy_nfqueue_fail_open",
                     "1 when a full queue passes PVM output uncompared (on_queue_full = "
                     "accept) instead of dropping it", 1 if self.fail_open else 0)
        # The kernel counts no packet it passed fail-open; each overflow of our socket
        # while fail-open is one such event (one or more packets passed uncompared).
        over = CounterMetricFamily(
            "colo_proxy_nfqueue_overflows",
            "Times the NFQUEUE socket overflowed, by what happened to the lost packets "
            "(dropped: fail-closed; passed: fail-open, released uncompared)",
            labels=["action"])
        n = int(st.get("queue_overflows", 0))
        over.add_metric(["dropped"], 0 if self.fail_open else n)
        over.add_metric(["passed"], n if self.fail_open else 0)
        yield over

    def _datapath(self, counters: dict[str, int]) -> Iterator[Metric]:
        pk = CounterMetricFamily("colo_proxy_datapath_packets",
                                 "Packets through each BPF hook path (mirror, svm_out: "
                                 "primary host; fwd_in, tap_out: secondary host)",
                                 labels=["path"])
        by = CounterMetricFamily("colo_proxy_datapath_bytes",
                                 "Bytes through each BPF hook path", labels=["path"])
        for path in PATHS:
            pk.add_metric([path], counters.get(f"{path}_packets", 0))
            by.add_metric([path], counters.get(f"{path}_bytes", 0))
        yield pk
        yield by
        yield _by("colo_proxy_datapath_failures",
                  "BPF redirects that failed (clone: a mirrored copy lost; redirect: into "
                  "the SVM's tap)", "kind",
                  [(k, counters.get(f"{k}_failures", 0)) for k in ("clone", "redirect")])
        yield _by("colo_proxy_datapath_rewrites",
                  "TCP sequence and timestamp rewrites, by field (secondary host; primary "
                  "host: connections carried over a role swap)",
                  "field", [(f, counters.get(f"{f}_rewrites", 0))
                            for f in ("ack", "sack", "seq", "tsecr", "tsval")])
        yield _by("colo_proxy_datapath_isn_learned",
                  "Initial sequence numbers learned for offsets, by VM", "side",
                  [("primary", counters.get("pvm_isn_learned", 0)),
                   ("secondary", counters.get("svm_isn_learned", 0))])
        yield _counter("colo_proxy_datapath_isn_clones",
                       "PVM SYN/SYN-ACK copies sent to the secondary for offset learning",
                       counters.get("isn_clones", 0))
        yield _counter("colo_proxy_datapath_non_ip_packets",
                       "Frames that are not IP (passed, never compared or rewritten)",
                       counters.get("non_ip", 0))
        yield _counter("colo_proxy_datapath_svm_solicitations",
                       "The SVM's ARP requests and IPv6 neighbour solicitations sent on to "
                       "the LAN by the primary host (it resolves its neighbours itself)",
                       counters.get("svm_solicits", 0))
        yield _by("colo_proxy_datapath_refused_frames",
                  "Frames kept off a path because they are not what it carries (mirror: "
                  "not client traffic for the VM, not mirrored; fwd_in: claims to be the "
                  "primary host's own but comes from another MAC; svm_out: not from the "
                  "secondary host's MAC, not compared): forged or stray", "path",
                  [("mirror", counters.get("mirror_refused", 0)),
                   ("fwd_in", counters.get("fwd_foreign", 0)),
                   ("svm_out", counters.get("svm_foreign", 0))])
        yield _counter("colo_proxy_datapath_ipv6_ext_header_packets",
                       "IPv6 TCP segments behind extension headers on the secondary host "
                       "(passed, never sequence-rewritten)",
                       counters.get("ip6_ext_headers", 0))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _by(name: str, doc: str, label: str,
        values: Iterable[tuple[str, float]]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for value, n in values:
        fam.add_metric([value], n)
    return fam


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


# The labels every series of ours carries, set by the exporter from its own configuration
# (issue 17: the dashboards and alerts were empty unless the scrape configuration added
# them by hand). The scrape configuration sets `honor_labels: true`, so that one which adds
# them too never turns ours into `exported_pair`/`exported_host` (docs/metrics.md).
IDENTITY_LABELS = ("pair", "host")


class Identified(Collector):
    """Every sample of `inner` with the pair's name and the host's id as labels."""

    def __init__(self, inner: Collector, pair: str, host: str) -> None:
        self.inner = inner
        self.labels = dict(zip(IDENTITY_LABELS, (pair, host), strict=True))

    def collect(self) -> Iterator[Metric]:
        for fam in self.inner.collect():
            # Families are built afresh at each collect (client_python's and ours): ours
            # to change.
            fam.samples = [s._replace(labels={**s.labels, **self.labels})
                           for s in fam.samples]
            yield fam


def identified(inner: Collector, pair: str, host: str) -> CollectorRegistry:
    """A registry to serve: `inner`'s metrics, each with `pair` and `host`."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Identified(inner, pair, host))
    return reg


def registry_for(proxy: StatusSource | None, role: str, *, pair: str = "", host: str = "",
                 **kw: Any) -> CollectorRegistry:
    """The proxy's metrics; with `pair` and `host` on every series when both are given."""
    collector = ProxyCollector(proxy, role, **kw)
    if pair and host:
        return identified(collector, pair, host)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


# What generate_latest writes, in every prometheus_client version: the text format 0.0.4
# (newer ones name a later version in CONTENT_TYPE_LATEST, for their negotiated formats).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


class Endpoint:
    """The running /metrics HTTP server, in a thread of its own.

    The standard library's server over `generate_latest`, not prometheus_client's
    `start_http_server`: that returns its server and thread only since 0.17, and Debian
    12's python3-prometheus-client is 0.16 (a nested Xen dom0's proxy died of it)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", TEXT_FORMAT)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is no news

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self._server = Server((host, int(port)), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(listen: str, proxy: StatusSource, role: str, *, pair: str, host: str,
          **kw: Any) -> Endpoint:
    """Serve /metrics on ADDR:PORT (port 0: any free one) until `stop()`, every series
    labelled with `pair` and `host`."""
    return Endpoint(listen, registry_for(proxy, role, pair=pair, host=host, **kw))
