#!/usr/bin/env python3
"""Write the Grafana dashboards of colo (dashboards/*.json) from the panel lists below.

    python dashboards/build.py          # (re)write the JSON files
    python dashboards/build.py --check  # exit 1 if a committed file differs

Every query uses only metrics that colo_orch/daemon/metrics.py and colo_proxy/service/metrics.py export,
the labels both put on every series (`pair`, `host`) and the target labels Prometheus adds
(`job`, `instance`); tests/unit/dashboards/test_dashboards.py checks both, and the system test
tests/system/metrics/ runs every query against a real Prometheus scraping the lab.
Template variables in queries: `$pair`, `$host`, `$__rate_interval`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Labels on every series: the exporters' own (colo_proxy.service.metrics.IDENTITY_LABELS:
# a plain scrape configuration gives working dashboards) and Prometheus's target labels.
IDENTITY_LABELS = ("pair", "host")
SERIES_LABELS = (*IDENTITY_LABELS, "job", "instance")
P = '{pair=~"$pair"}'
PH = '{pair=~"$pair", host=~"$host"}'
RI = "$__rate_interval"


RANGE = "$__range"  # the dashboard's time range: counters as "in the range", not "since start"


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    kind: str = "timeseries"  # timeseries, stat, table, bargauge
    unit: str = "short"
    width: int = 8
    height: int = 7
    description: str = ""
    mappings: list[dict[str, Any]] = field(default_factory=list)  # Grafana value mappings
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)  # (from, colour)


# Colours of the orchestrator's states (colo_orch/core/state.py): green while protected,
# orange while serving without a standby or getting one, red where nobody may serve or
# the host is stuck, grey when not running.
_STATE_COLOURS = {
    "PROTECTED": "green", "CHECKPOINTING": "green",
    "ALONE": "orange", "WAITING": "orange", "SYNCING": "orange", "PAUSED": "orange",
    "FAILING_OVER": "red", "DEGRADED": "red", "FENCED": "red", "HOLDING": "red",
    "STOPPED": "text", "STARTING": "text",
}


def state_mappings() -> list[dict[str, Any]]:
    """colo_orch_state_code's numbers as their names, coloured (a panel showed "4")."""
    from colo_orch.core.state import State

    assert set(_STATE_COLOURS) == {s.name for s in State}, "a state without a colour"
    return [{"type": "value", "options": {
        str(int(st)): {"text": st.name, "color": _STATE_COLOURS[st.name], "index": i}
        for i, st in enumerate(State)}}]


# checkpoint_max_interval (10 s by default): green below it, orange past it, red past the
# ColoCheckpointStale alert's threshold (dashboards/colo-alerts.yml).
CHECKPOINT_AGE: list[tuple[float | None, str]] = [(None, "green"), (10.0, "orange"),
                                                  (30.0, "red")]


def _hq(q: float, metric: str, sel: str, by: str = "") -> str:
    grp = f"le, {by}" if by else "le"
    return (f"histogram_quantile({q}, sum by ({grp}) "
            f"(rate({metric}_bucket{sel}[{RI}])))")


PAIR = [
    Panel("State", [(f"max by (host) (colo_orch_state_code{P})", "{{host}}")],
          kind="stat", width=4, height=5, mappings=state_mappings(),
          description="Each host's orchestrator state: green protected, orange without a "
                      "standby, red stuck or fenced"),
    Panel("Role", [(f"colo_orch_role{P} == 1", "{{host}}: {{colo_orch_role}}")],
          kind="stat", width=4, height=5),
    Panel("Peer heartbeat", [(f"colo_peer_up{P}", "{{host}} sees peer"),
                             (f"colo_heartbeat_rtt_seconds{P}", "{{host}} RTT")],
          unit="s", width=8, height=5,
          description="1 while the peer's heartbeat is current; round trip of the last echo"),
    Panel("Since last checkpoint",
          [(f"time() - max(colo_last_checkpoint_timestamp_seconds{P} > 0)", "seconds")],
          kind="stat", unit="s", width=8, height=5, thresholds=CHECKPOINT_AGE,
          description="Orange past checkpoint_max_interval (10 s by default), red past "
                      "the ColoCheckpointStale alert's 30 s"),
    Panel("Checkpoints by reason",
          [(f"sum by (reason) (increase(colo_checkpoints_total{P}[{RANGE}]))", "{{reason}}")],
          kind="bargauge", width=8,
          description="Completed checkpoints in the selected time range"),
    Panel("Checkpoint rate by reason",
          [(f"sum by (reason) (rate(colo_checkpoints_total{P}[{RI}]))", "{{reason}}"),
           (f"sum(rate(colo_checkpoint_failures_total{P}[{RI}]))", "failed")],
          unit="ops", width=8),
    Panel("Checkpoint PVM pause and duration",
          [(_hq(0.5, "colo_checkpoint_pvm_pause_seconds", P), "pause p50"),
           (_hq(0.99, "colo_checkpoint_pvm_pause_seconds", P), "pause p99"),
           (_hq(0.99, "colo_checkpoint_duration_seconds", P), "duration p99")],
          unit="s", width=8),
    Panel("Divergences by reason",
          [(f"sum by (reason) (increase(colo_proxy_divergences_total{P}[{RANGE}]))",
            "{{reason}}")],
          kind="bargauge", width=8,
          description="First differing output of a flow, as the primary's proxy found it, "
                      "in the selected time range"),
    Panel("Checkpoint requests by reason",
          [(f"sum by (reason) (rate(colo_checkpoint_requests_total{P}[{RI}]))", "{{reason}}")],
          unit="ops", width=8),
    Panel("Held-packet latency (added by COLO)",
          [(_hq(0.5, "colo_proxy_hold_seconds", P), "p50"),
           (_hq(0.99, "colo_proxy_hold_seconds", P), "p99"),
           (f"sum(rate(colo_proxy_hold_seconds_sum{P}[{RI}])) / "
            f"sum(rate(colo_proxy_hold_seconds_count{P}[{RI}]))", "mean")],
          unit="s", width=8),
    Panel("Held now", [(f"sum(colo_proxy_held_packets{P})", "packets"),
                       (f"sum(colo_proxy_held_bytes{P})", "bytes")], width=8),
    Panel("Throughput",
          [(f"sum by (side) (rate(colo_proxy_compared_packets_total{P}[{RI}]))",
            "compared {{side}}"),
           (f"sum(rate(colo_proxy_released_packets_total{P}[{RI}]))", "released")],
          unit="pps", width=8),
    Panel("Released bytes", [(f"sum(rate(colo_proxy_released_bytes_total{P}[{RI}]))",
                              "released")], unit="Bps", width=8),
    Panel("Disk replication", [(f"colo_disk_replication_state{P} == 1",
                                "{{host}}: {{colo_disk_replication_state}}"),
                               (f"sum(colo_disks{P})", "disks")], kind="stat", width=8),
    Panel("Disk writes replicated",
          [(f"sum by (host) (rate(colo_disk_replicated_bytes_total{P}[{RI}]))", "{{host}}"),
           (f"sum(rate(colo_disk_replication_errors_total{P}[{RI}]))", "errors")],
          unit="Bps", width=8),
    Panel("Failovers and re-protections",
          [(f"sum(increase(colo_failovers_total{P}[{RANGE}]))", "failovers"),
           (f"sum(increase(colo_reprotections_total{P}[{RANGE}]))", "re-protections"),
           (f"max(increase(colo_takeover_duration_seconds_sum{P}[{RANGE}]) / "
            f"increase(colo_takeover_duration_seconds_count{P}[{RANGE}]))",
            "mean takeover (s)")],
          kind="stat", width=8,
          description="Counts, and the mean takeover of a host, in the selected time range"),
    Panel("Failover durations",
          [(f"sum by (le) (increase(colo_takeover_duration_seconds_bucket{P}[{RANGE}]))",
            "{{le}}")],
          kind="bargauge", width=8,
          description="Failovers in the selected range by how long they took, from peer "
                      "loss to serving alone (cumulative buckets, seconds)"),
]

DATAPATH = [
    Panel("Proxy mode", [(f"colo_proxy_mode{PH} == 1", "{{host}}: {{colo_proxy_mode}}")],
          kind="stat", width=6, height=5),
    Panel("Queue fail-open", [(f"colo_proxy_nfqueue_fail_open{PH}", "{{host}}")],
          kind="stat", width=6, height=5,
          description="1: a full queue passes PVM output uncompared"),
    Panel("Flows tracked", [(f"sum by (host) (colo_proxy_flows{PH})", "{{host}}")],
          width=6, height=5),
    Panel("Checkpoint pending", [(f"max(colo_proxy_checkpoint_pending{PH})", "pending")],
          kind="stat", width=6, height=5),
    Panel("BPF hook packets by path",
          [(f"sum by (host, path) (rate(colo_proxy_datapath_packets_total{PH}[{RI}]))",
            "{{host}} {{path}}")], unit="pps", width=12),
    Panel("BPF hook bytes by path",
          [(f"sum by (host, path) (rate(colo_proxy_datapath_bytes_total{PH}[{RI}]))",
            "{{host}} {{path}}")], unit="Bps", width=12),
    Panel("Redirect failures",
          [(f"sum by (kind) (rate(colo_proxy_datapath_failures_total{PH}[{RI}]))",
            "{{kind}}")], unit="ops", width=8),
    Panel("Sequence rewrites (secondary; primary: carried flows)",
          [(f"sum by (field) (rate(colo_proxy_datapath_rewrites_total{PH}[{RI}]))",
            "{{field}}"),
           (f"sum by (side) (rate(colo_proxy_datapath_isn_learned_total{PH}[{RI}]))",
            "ISN learned {{side}}"),
           (f"sum(rate(colo_proxy_datapath_isn_clones_total{PH}[{RI}]))", "ISN clones")],
          unit="ops", width=8),
    Panel("Non-IP frames, IPv6 not rewritten",
          [(f"sum(rate(colo_proxy_datapath_non_ip_packets_total{PH}[{RI}]))", "non-IP"),
           (f"sum(rate(colo_proxy_datapath_ipv6_ext_header_packets_total{PH}[{RI}]))",
            "IPv6 TCP behind extension headers")], unit="pps", width=8,
          description="IPv6 TCP behind extension headers passes the secondary's sequence "
                      "rewriter unchanged: such flows diverge if the SVM's ISN differs"),
    Panel("Role swap and SVM neighbours",
          [(f"sum by (host) (colo_proxy_carried_flows{PH})", "carried flows {{host}}"),
           (f"sum(rate(colo_proxy_datapath_svm_solicitations_total{PH}[{RI}]))",
            "SVM ARP/ND sent on")], width=8,
          description="Connections carried over the last role swap and still rewritten "
                      "on the new primary's uplink; the SVM's own ARP requests and "
                      "neighbour solicitations the primary sent on to the LAN"),
    Panel("Forward link: refused frames",
          [(f"sum by (path) (rate(colo_proxy_datapath_refused_frames_total{PH}[{RI}]))",
            "{{path}}"),
           (f"sum by (reason) (rate(colo_proxy_carry_refused_frames_total{PH}[{RI}]))",
            "carry {{reason}}")], unit="pps", width=8,
          description="Frames the forward link does not trust (docs/PROXY.md): mirror: not "
                      "client traffic for the VM; fwd_in, svm_out: from a MAC other than "
                      "the peer host's; carry: announcements or challenges with a wrong "
                      "HMAC, nonce or source. Anything but a little mirror noise (LLDP) "
                      "is a forgery or a misconfigured peer_mac"),
    Panel("NFQUEUE drops and overflows",
          [(f"sum by (reason) (rate(colo_proxy_nfqueue_dropped_packets_total{PH}[{RI}]))",
            "dropped {{reason}}"),
           (f"sum by (action) (rate(colo_proxy_nfqueue_overflows_total{PH}[{RI}]))",
            "overflow {{action}}")], unit="ops", width=8),
    Panel("NFQUEUE kernel queue", [(f"sum(colo_proxy_nfqueue_kernel_held_packets{PH})",
                                    "in kernel"),
                                   (f"sum(colo_proxy_held_packets{PH})", "held by proxy")],
          width=8),
    Panel("Comparator packets",
          [(f"sum by (side) (rate(colo_proxy_compared_packets_total{PH}[{RI}]))",
            "compared {{side}}"),
           (f"sum(rate(colo_proxy_svm_consumed_packets_total{PH}[{RI}]))", "SVM consumed"),
           (f"sum(rate(colo_proxy_passed_uncompared_packets_total{PH}[{RI}]))",
            "passed uncompared")], unit="pps", width=8),
    Panel("Flow events",
          [(f"sum by (event) (rate(colo_proxy_flow_events_total{PH}[{RI}]))", "{{event}}")],
          unit="ops", width=8),
    Panel("Uncompared packets and errors",
          [(f"sum by (kind) (rate(colo_proxy_uncompared_packets_total{PH}[{RI}]))",
            "uncompared {{kind}}"),
           (f"sum by (kind) (rate(colo_proxy_errors_total{PH}[{RI}]))", "error {{kind}}")],
          unit="pps", width=12),
    Panel("Checkpoints seen by the proxies",
          [(f"sum by (host) (increase(colo_proxy_checkpoints_done_total{PH}[{RANGE}]))",
            "{{host}}"),
           (f"sum by (reason) (increase(colo_proxy_checkpoint_requests_total{PH}[{RANGE}]))",
            "requested {{reason}}")], kind="bargauge", width=12,
          description="In the selected time range"),
]

FLEET = [
    Panel("Hosts by state",
          [("count by (colo_orch_state) (colo_orch_state == 1)", "{{colo_orch_state}}")],
          kind="bargauge", width=8),
    Panel("Peers lost", [("count(colo_peer_up == 0) or vector(0)", "hosts")],
          kind="stat", width=4, height=5),
    Panel("Disks broken",
          [('count(colo_disk_replication_state{colo_disk_replication_state="broken"} == 1)'
            " or vector(0)", "hosts")], kind="stat", width=4, height=5),
    Panel("Proxies disconnected", [("count(colo_orch_proxy_connected == 0) or vector(0)", "hosts")],
          kind="stat", width=4, height=5),
    Panel("Versions", [("count by (version, component) (colo_build_info)",
                        "{{component}} {{version}}")], kind="stat", width=4, height=5),
    Panel("Pairs", [("max by (pair, host) (colo_orch_state_code)", "{{pair}} {{host}}")],
          kind="table", width=12, mappings=state_mappings(),
          description="State per host; the pair's dashboard has the details"),
    Panel("Checkpoint rate per pair",
          [(f"sum by (pair) (rate(colo_checkpoints_total[{RI}]))", "{{pair}}")],
          unit="ops", width=12),
    Panel("Divergence rate per pair",
          [(f"sum by (pair) (rate(colo_proxy_divergences_total[{RI}]))", "{{pair}}")],
          unit="ops", width=12),
    Panel("Since last checkpoint per pair",
          [("time() - max by (pair) (colo_last_checkpoint_timestamp_seconds > 0)", "{{pair}}")],
          unit="s", width=12, thresholds=CHECKPOINT_AGE),
    Panel("p99 added latency per pair",
          [(_hq(0.99, "colo_proxy_hold_seconds", "", "pair"), "{{pair}}")], unit="s",
          width=12),
    Panel("Failovers per pair",
          [(f"sum by (pair) (increase(colo_failovers_total[{RANGE}]))", "{{pair}}")],
          kind="bargauge", width=12, description="In the selected time range"),
]

DASHBOARDS = {
    "colo-pair": ("COLO protected pair", PAIR, ("pair",)),
    "colo-datapath": ("COLO proxy datapath", DATAPATH, ("pair", "host")),
    "colo-fleet": ("COLO fleet overview", FLEET, ()),
}


def _variable(name: str) -> dict[str, Any]:
    src = f"label_values(colo_build_info, {name})"
    if name == "host":
        src = 'label_values(colo_build_info{pair=~"$pair"}, host)'
    return {"name": name, "label": name, "type": "query", "datasource": _DS,
            "query": {"query": src, "refId": name}, "definition": src, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "sort": 1}


_DS = {"type": "prometheus", "uid": "${datasource}"}


def _panel(i: int, p: Panel, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.mappings:
        defaults["mappings"] = p.mappings
        defaults["color"] = {"mode": "thresholds"}
    if p.thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"value": v, "color": c} for v, c in p.thresholds]}
        defaults["color"] = {"mode": "thresholds"}
    out: dict[str, Any] = {
        "id": i + 1, "type": p.kind, "title": p.title, "datasource": _DS,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [{"refId": chr(ord("A") + n), "expr": e, "legendFormat": legend,
                     "datasource": _DS} for n, (e, legend) in enumerate(p.exprs)],
    }
    if p.description:
        out["description"] = p.description
    if p.kind == "table":
        for t in out["targets"]:
            t.update(instant=True, format="table")
    if p.kind in ("stat", "bargauge"):
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}}
    return out


def dashboard(uid: str) -> dict[str, Any]:
    title, panels, variables = DASHBOARDS[uid]
    laid, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append(_panel(i, p, x, y))
        x, row_h = x + p.width, max(row_h, p.height)
    ds_var = {"name": "datasource", "label": "Prometheus", "type": "datasource",
              "query": "prometheus", "current": {}}
    return {
        "uid": uid, "title": title, "tags": ["colo"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "timezone": "",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [ds_var, *(_variable(v) for v in variables)]},
        "annotations": {"list": _annotations(uid)},
        "links": _links(uid),
        "panels": laid,
    }


def _annotations(uid: str) -> list[dict[str, Any]]:
    """Failovers (and, on the pair's dashboard, failed checkpoints) marked on every graph."""
    sel = P if uid != "colo-fleet" else ""
    out = [{"name": "Failovers", "enable": True, "iconColor": "red", "datasource": _DS,
            "expr": f"changes(colo_failovers_total{sel}[1m]) > 0", "step": "15s",
            "titleFormat": "failover", "textFormat": "{{pair}}: {{host}} took over"}]
    if uid == "colo-pair":
        out.append({"name": "Checkpoint failures", "enable": True, "iconColor": "orange",
                    "datasource": _DS, "step": "15s", "titleFormat": "checkpoint failed",
                    "expr": f"changes(colo_checkpoint_failures_total{P}[1m]) > 0",
                    "textFormat": "{{host}}"})
    return out


def _links(uid: str) -> list[dict[str, Any]]:
    """Fleet -> pair -> datapath, keeping the time range and the chosen pair and host."""
    return [{"title": DASHBOARDS[other][0], "type": "link", "url": f"/d/{other}",
             "includeVars": True, "keepTime": True, "targetBlank": False, "icon": "dashboard"}
            for other in DASHBOARDS if other != uid]


def render(uid: str) -> str:
    return json.dumps(dashboard(uid), indent=1, sort_keys=True) + "\n"


def queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every target in the committed JSON files."""
    out = []
    for uid in DASHBOARDS:
        d = json.loads((HERE / f"{uid}.json").read_text())
        out += [(uid, p["title"], t["expr"]) for p in d["panels"] for t in p["targets"]]
    return out


def instantiate(expr: str, rate_interval: str = "1m") -> str:
    """The query as Grafana sends it with every variable at "All"."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$__range", "1h")
            .replace("$pair", ".*").replace("$host", ".*"))


def main(argv: list[str]) -> int:
    stale = []
    for uid in DASHBOARDS:
        path = HERE / f"{uid}.json"
        text = render(uid)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python dashboards/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
