"""The proxy's collector over a PrimaryProxy driven with in-memory queue and SVM source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from colo_proxy.compare import CompareConfig
from colo_proxy.compare.events import REASONS
from colo_proxy.kernel.datapath import COUNTERS
from colo_proxy.service.metrics import (
    HOLD_BUCKETS,
    HoldTimer,
    ProxyCollector,
    nfqueue_stats,
    registry_for,
)
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.settings import ProxySettings
from tests.support.fakes import FakeQueue, FakeSource
from tests.support.packets import ACK, PSH, SYN, tcp


def _pair() -> tuple[PrimaryProxy, FakeQueue, FakeSource]:
    q, s = FakeQueue(), FakeSource()
    proxy = PrimaryProxy(ProxySettings(compare=CompareConfig(compare_timeout=0.5)), q, s,
                         notify=lambda m: 1)
    return proxy, q, s


def _send(proxy: PrimaryProxy, q: FakeQueue, s: FakeSource, pid: int, pvm: bytes,
          svm: bytes) -> None:
    q.push(pid, pvm)
    proxy.on_pvm_readable()
    s.push(svm)
    proxy.on_svm_readable()


def _samples(coll: ProxyCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in coll.collect() for s in fam.samples}


def test_fresh_collector_has_every_known_label_at_zero() -> None:
    got = _samples(ProxyCollector(None, "primary", queue=5))
    for r in REASONS:
        assert got[("colo_proxy_divergences_total", (("reason", r),))] == 0
        assert got[("colo_proxy_checkpoint_requests_total", (("reason", r),))] == 0
    assert got[("colo_proxy_compared_packets_total", (("side", "secondary"),))] == 0
    assert got[("colo_proxy_mode", (("colo_proxy_mode", "protected"),))] == 1
    assert got[("colo_proxy_hold_seconds_count", ())] == 0


def test_divergence_and_comparator_restart_keep_counters_monotonic() -> None:
    proxy, q, s = _pair()
    coll = ProxyCollector(proxy, "primary")
    _send(proxy, q, s, 1, tcp(5000, 1000, SYN | ACK), tcp(9000, 1000, SYN | ACK))
    _send(proxy, q, s, 2, tcp(5001, 1000, PSH | ACK, b"same"), tcp(9001, 1000, PSH | ACK, b"same"))
    _send(proxy, q, s, 3, tcp(5005, 1000, PSH | ACK, b"mine"), tcp(9005, 1000, PSH | ACK, b"your"))
    got = _samples(coll)
    assert got[("colo_proxy_divergences_total", (("reason", "payload"),))] == 1
    assert got[("colo_proxy_checkpoint_requests_total", (("reason", "payload"),))] == 1
    assert got[("colo_proxy_compared_packets_total", (("side", "primary"),))] == 3
    assert got[("colo_proxy_held_packets", ())] == 1
    # resume builds a new comparator: its counts start at 0, the exported ones must not.
    proxy.on_control({"type": "resume"})
    _send(proxy, q, s, 4, tcp(7000, 1000, SYN | ACK), tcp(8000, 1000, SYN | ACK))
    after = _samples(coll)
    assert after[("colo_proxy_divergences_total", (("reason", "payload"),))] == 1
    assert after[("colo_proxy_compared_packets_total", (("side", "primary"),))] == 4


def test_hold_timer_buckets_and_release_all() -> None:
    h = HoldTimer()
    h.queued(1, 10.0, 100)
    h.queued(2, 10.0, 50)
    h.queued(3, 10.0, 10)
    h.released([1, 99], 10.0004)  # 99 was never timed: ignored
    h.release_all(12.0)
    cum = dict(h.cumulative())
    assert cum["0.0005"] == 1 and cum["+Inf"] == 3 and cum[repr(HOLD_BUCKETS[-1])] == 3
    assert cum["1.0"] == 1 and cum["2.5"] == 3
    assert (h.count, h.released_packets, h.released_bytes) == (3, 3, 160)


def test_every_bpf_counter_is_exported() -> None:
    class Dp:
        def status(self) -> dict[str, Any]:
            return {"datapath": {name: 1 << i for i, name in enumerate(COUNTERS)}}

    got = _samples(ProxyCollector(Dp(), "secondary"))
    total = sum(v for (n, _), v in got.items() if n.startswith("colo_proxy_datapath_"))
    assert total == (1 << len(COUNTERS)) - 1


def test_nfqueue_stats_reads_the_kernel_line(tmp_path: Path) -> None:
    f = tmp_path / "nfnetlink_queue"
    f.write_text("    0  12345     0 2 65531     0     0        0  1\n"
                 "    5  23456     3 2 65531     7     2      812  1\n")
    assert nfqueue_stats(5, f) == {"held": 3, "queue_full": 7, "socket_full": 2, "queued": 812}
    assert nfqueue_stats(6, f) == {}
    got = _samples(ProxyCollector(None, "primary", queue=5, nfqueue_proc=f))
    assert got[("colo_proxy_nfqueue_dropped_packets_total", (("reason", "queue_full"),))] == 7


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_exposition() -> None:
    proxy, _q, _s = _pair()
    text = generate_latest(registry_for(proxy, "primary", queue=5, pair="web", host="pri"))
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                         timeout=30, check=False)
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()


def test_metrics_listen_setting_is_checked() -> None:
    from colo_proxy.service.settings import ConfigError, load

    peer = {"peer_mac": "02:c0:10:f0:00:02"}
    assert load(None, {"metrics_listen": "10.0.0.1:7412", **peer}).metrics_listen == \
        "10.0.0.1:7412"
    with pytest.raises(ConfigError, match=r"--metrics-listen: '10\.0\.0\.1' is not ADDR:PORT"):
        load(None, {"metrics_listen": "10.0.0.1", **peer})


def test_serve_answers_a_scrape() -> None:
    import urllib.request

    from colo_proxy.service.metrics import serve

    proxy, _q, _s = _pair()
    endpoint = serve("127.0.0.1:0", proxy, "primary", pair="web", host="pri")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics") as r:
            text = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    finally:
        endpoint.stop()
    assert 'colo_proxy_divergences_total{host="pri",pair="web",reason="payload"} 0.0' in text
    # Every series, histograms' and info's too, carries both (no scrape config adds them).
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(series) > 100
    assert [line for line in series
            if 'pair="web"' not in line or 'host="pri"' not in line] == []


def test_identity_is_added_only_when_given() -> None:
    from colo_proxy.service.metrics import identified

    inner = CollectorRegistry()
    Counter("colo_x", "x", ["reason"], registry=inner).labels("a").inc()
    assert identified(inner, "web", "sec").get_sample_value(
        "colo_x_total", {"reason": "a", "pair": "web", "host": "sec"}) == 1
    plain = registry_for(None, "secondary")
    assert plain.get_sample_value("colo_proxy_checkpoints_done_total") == 0


def test_released_packets_are_timed() -> None:
    proxy, q, s = _pair()
    coll = ProxyCollector(proxy, "primary")
    _send(proxy, q, s, 1, tcp(5000, 1000, SYN | ACK), tcp(9000, 1000, SYN | ACK))
    _send(proxy, q, s, 2, tcp(5001, 1000, PSH | ACK, b"same"), tcp(9001, 1000, PSH | ACK, b"same"))
    _send(proxy, q, s, 3, tcp(5005, 1000, PSH | ACK, b"mine"), tcp(9005, 1000, PSH | ACK, b"your"))
    got = _samples(coll)
    assert got[("colo_proxy_hold_seconds_count", ())] == 2  # SYN-ACK and the matched segment
    assert got[("colo_proxy_released_bytes_total", ())] == 40 + 44
    proxy.on_control({"type": "checkpoint_done"})  # the diverged segment goes out too
    assert _samples(coll)[("colo_proxy_hold_seconds_count", ())] == 3


def test_secondary_proxy_is_collected_through_its_control_status() -> None:
    from colo_proxy.service.secondary import SecondaryProxy

    class Datapath:
        def offsets(self) -> list[Any]:
            return []

        def carried(self) -> int:
            return 0

        def counters(self) -> dict[str, int]:
            return {"fwd_in_packets": 7, "ack_rewrites": 3}

    proxy = SecondaryProxy(Datapath())
    got = _samples(ProxyCollector(proxy, "secondary"))
    assert got[("colo_proxy_datapath_packets_total", (("path", "fwd_in"),))] == 7
    assert got[("colo_proxy_datapath_rewrites_total", (("field", "ack"),))] == 3
    assert ("colo_proxy_divergences_total", (("reason", "payload"),)) not in got
