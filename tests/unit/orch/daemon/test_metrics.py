"""The orchestrator's metrics: disk replication counters survive re-protection, heartbeat
counters follow the receiver."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from colo_orch.core.disks import DiskStatus
from colo_orch.daemon.metrics import OrchMetrics


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_disk_counters_only_grow_across_replication_sessions() -> None:
    reg = CollectorRegistry()
    m = OrchMetrics(reg)
    m.observe_disks(DiskStatus("replicating", bytes_replicated=4096, errors=0), 1)
    m.observe_disks(DiskStatus("replicating", bytes_replicated=8192, errors=1), 1)
    # Re-protection: the replication counts from 0 again.
    m.observe_disks(DiskStatus("replicating", bytes_replicated=1000, errors=0), 1)
    assert _value(reg, "colo_disk_replicated_bytes_total") == 9192
    assert _value(reg, "colo_disk_replication_errors_total") == 1
    assert _value(reg, "colo_disk_replication_state",
                  colo_disk_replication_state="replicating") == 1
    assert _value(reg, "colo_disk_replication_state", colo_disk_replication_state="broken") == 0
    assert _value(reg, "colo_disks") == 1


def test_no_disks_keeps_state_none_and_counters_zero() -> None:
    reg = CollectorRegistry()
    m = OrchMetrics(reg)
    m.observe_disks(None, 0)
    assert _value(reg, "colo_disk_replication_state", colo_disk_replication_state="none") == 1
    assert _value(reg, "colo_disk_replicated_bytes_total") == 0
    assert _value(reg, "colo_checkpoints_total", reason="payload") == 0


def test_pair_and_build_info() -> None:
    reg = CollectorRegistry()
    m = OrchMetrics(reg)
    m.identify("web", "pri")
    assert reg.get_sample_value("colo_pair_info", {"name": "web", "host_id": "pri"}) == 1
    assert any(s.name == "colo_build_info" for f in reg.collect() for s in f.samples)


def test_heartbeat_counters_follow_the_receiver() -> None:
    reg = CollectorRegistry()
    m = OrchMetrics(reg)
    assert _value(reg, "colo_heartbeat_rejected_total") == 0
    m.observe_heartbeats(received=10, rejected=2, replayed=0)
    m.observe_heartbeats(received=12, rejected=5, replayed=1)
    m.observe_heartbeats(received=12, rejected=5, replayed=1)  # a cycle with nothing new
    assert _value(reg, "colo_heartbeats_received_total") == 12
    assert _value(reg, "colo_heartbeat_rejected_total") == 5
    assert _value(reg, "colo_heartbeat_replayed_total") == 1


def test_disk_error_events_are_counted_by_event() -> None:
    reg = CollectorRegistry()
    m = OrchMetrics(reg)
    assert _value(reg, "colo_disk_error_events_total", event="QUORUM_REPORT_BAD") == 0
    assert _value(reg, "colo_disk_error_events_total", event="BLOCK_IO_ERROR") == 0
    m.observe_disks(DiskStatus("replicating", error_events={"QUORUM_REPORT_BAD": 2,
                                                            "BLOCK_IO_ERROR": 0}), 1)
    m.observe_disks(DiskStatus("broken", errors=2, error_events={"QUORUM_REPORT_BAD": 3,
                                                                 "BLOCK_IO_ERROR": 1}), 1)
    assert _value(reg, "colo_disk_error_events_total", event="QUORUM_REPORT_BAD") == 3
    assert _value(reg, "colo_disk_error_events_total", event="BLOCK_IO_ERROR") == 1


def test_a_proxy_reason_keeps_its_label_value_in_the_orchestrators_metrics() -> None:
    """Issue 17: the proxy's "policy" and "unparseable" requests were counted as "other" by
    the orchestrator, so the two exporters' `reason` values disagreed."""
    from colo_proxy.compare.events import REASONS

    reg = CollectorRegistry()
    m = OrchMetrics(reg)
    for r in REASONS:
        assert m.reason(r) == r
        assert _value(reg, "colo_checkpoint_requests_total", reason=r) == 0
    assert m.reason("something new") == "other"


def test_renamed_metrics_are_exported_under_their_new_names_only() -> None:
    reg = CollectorRegistry()
    OrchMetrics(reg)
    names = {metric.name for metric in reg.collect()}
    assert "colo_orch_proxy_connected" in names and "colo_proxy_connected" not in names
    # The histogram replaces the gauge that kept only the last failover's duration.
    assert "colo_takeover_duration_seconds" in names and "colo_last_takeover_seconds" not in names
