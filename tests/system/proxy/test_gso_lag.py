"""A lagging SVM inside a GSO super-packet: segmented where it lags, no stall.

docs/PROXY.md, "Bulk transfers". The SVM's congestion window is clamped to 4 segments (a
route with `cwnd 4 lock` in its namespace), the PVM's is not: the PVM's super-packets hold
more bytes than the SVM sends before it waits for the client's ACKs, which come only for
released output. Queued whole (`--gso`) such a packet would wait for the compare timeout
(5 s here, and no orchestrator to checkpoint); resegmenting releases it segment by segment
as far as the SVM matched. The second test is the negative control: the same scene with
`--resegment-after 0` stalls.
"""

from __future__ import annotations

import json
import time

import pytest

from colo_lab import netns
from colo_lab.lab import CLIENT_IP, VM_IP
from colo_lab.proxy_harness import ProxyPair
from colo_lab.standin import Standin
from colo_lab.wait import wait_until

BLOB = 1_000_000
GSO = ["--gso", "--compare-timeout", "5"]


def _clamp_svm_cwnd(lab: Standin) -> None:
    """From the second connection on: a locked route cwnd reaches a socket through the TCP
    metrics cache (tcp_init_metrics), whose entry the first connection's close creates."""
    svm = lab.vm_ns["secondary"]
    netns.ip(svm, "route", "add", f"{CLIENT_IP}/32", "dev", "eth0", "cwnd", "lock", "4")
    got, _ = _download(lab, 10.0)  # not yet clamped: no stall either way
    assert got == BLOB
    metrics = wait_until(lambda: netns.ip(svm, "tcp_metrics", "show", CLIENT_IP), 5,
                         "the SVM's TCP metrics entry for the client")
    assert "cwnd 4" in metrics, metrics


def _download(lab: Standin, limit: float) -> tuple[int, float]:
    """Bytes of /blob/BLOB the client got within `limit` seconds, and how long it took."""
    t0 = time.monotonic()
    out = lab.client(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "-m",
                      str(limit), f"http://{VM_IP}/blob/{BLOB}"], timeout=limit + 10,
                     check=False)
    return int(out.strip() or 0), time.monotonic() - t0


@pytest.mark.parametrize("pair", [GSO, [*GSO, "--no-fast-path"]], ids=["fast-path", "python"],
                         indirect=True)
def test_a_lagging_svm_inside_a_super_packet_no_longer_stalls(
        standin: Standin, pair: ProxyPair) -> None:
    _clamp_svm_cwnd(standin)
    for _ in range(3):
        got, took = _download(standin, 4.0)
        pri = pair.status("primary")
        assert got == BLOB, json.dumps([got, took, pri])
    pri = pair.status("primary")
    assert pri["checkpoint_requests"] == {}, pri
    # The super-packets were queued whole, and those the SVM lagged inside were segmented.
    assert pri["compare"]["resegmented_packets"] > 0, pri["compare"]
    assert pri["compare"]["internal_errors"] == 0
    wait_until(lambda: pair.status("primary")["held_packets"] == 0, 5, "nothing held")


@pytest.mark.parametrize("pair", [[*GSO, "--resegment-after", "0"]], ids=["no-resegment"],
                         indirect=True)
def test_without_resegmenting_the_same_lag_stalls(standin: Standin, pair: ProxyPair) -> None:
    _clamp_svm_cwnd(standin)
    got, took = _download(standin, 3.0)
    pri = pair.status("primary")
    assert got < BLOB, json.dumps([got, took, pri])
    assert pri["held_packets"] > 0
    assert pri["compare"]["resegmented_packets"] == 0
