"""colo_orch.core.progress: how far a resync or the first memory copy has come."""

from __future__ import annotations

from colo_orch.core.progress import Progress, Ticker


def test_progress_says_how_far_how_fast_and_how_long_is_left() -> None:
    p = Progress("memory", 1_200_000_000, 2_700_000_000, started=100.0, now=110.0)
    assert p.describe() == "memory 44% (1.2 GB of 2.7 GB, 120.0 MB/s, about 12 s left)"
    assert p.view() == {"phase": "memory", "done_bytes": 1_200_000_000,
                        "total_bytes": 2_700_000_000, "percent": 44.4, "elapsed_s": 10.0,
                        "bytes_per_s": 120_000_000}


def test_progress_before_the_total_or_a_rate_is_known() -> None:
    assert Progress("disks", 0, 0, 5.0, 5.0).describe() == "disks: starting (0 B so far)"
    early = Progress("disks", 4096, 8192, 5.0, 5.1)  # too soon for a rate
    assert early.describe() == "disks 50% (4.1 kB of 8.2 kB)"
    assert early.view()["bytes_per_s"] is None
    done = Progress("disks", 9000, 8192, 5.0, 7.0)  # QEMU's offset may pass len
    assert done.fraction == 1.0 and "left" not in done.describe()


def test_the_ticker_is_due_at_once_then_every_period() -> None:
    t = Ticker(5.0)
    assert [t.due(x) for x in (0.0, 1.0, 4.9, 5.0, 7.0, 10.1)] == [
        True, False, False, True, False, True]
