"""colo_proxy.service.output_record: only what the SVM sent since the checkpoint it last
resumed from is kept, bounded, and only while a switchover wants it."""

from __future__ import annotations

import pytest

from colo_proxy.service import output_record
from colo_proxy.service.output_record import OutputRecord, Phase


def test_frames_count_only_from_the_resume_of_the_checkpoint_after_arming() -> None:
    r = OutputRecord()
    r.add([(1.0, b"never asked")])
    assert not r.wants_frames and r.take() == []
    r.arm(10.0)
    assert r.wants_frames and r.phase is Phase.ARMED
    r.add([(5.0, b"before the final checkpoint")])  # its state is replaced by the PVM's
    assert r.take() == [] and r.phase is Phase.IDLE
    r.arm(11.0)
    # Read before the message about the checkpoint came: sorted by their arrival.
    r.add([(5.0, b"old"), (7.0, b"sent as the SVM resumed")])
    r.checkpoint_done(resumed_at=6.0)
    r.add([(5.5, b"old, still queued"), (8.0, b"a")])
    r.checkpoint_done(resumed_at=9.0)  # another checkpoint: only what follows it counts
    r.add([(9.5, b"c")])
    assert r.take() == [b"c"]
    assert r.phase is Phase.IDLE
    r.add([(10.0, b"after the take-over")])
    assert r.take() == []


def test_without_a_stamp_everything_read_before_the_checkpoint_goes() -> None:
    r = OutputRecord()
    r.arm(0.0)
    r.add([(5.0, b"old"), (7.0, b"maybe new")])
    r.checkpoint_done(resumed_at=None)
    r.add([(8.0, b"new")])
    assert r.take() == [b"new"]


def test_a_recording_is_bounded_and_ends_when_no_take_over_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_record, "MAX_FRAMES", 3)
    r = OutputRecord()
    r.arm(0.0)
    r.checkpoint_done(resumed_at=0.0)
    r.add([(1.0, b"1"), (1.0, b"2"), (1.0, b"3"), (1.0, b"4"), (1.0, b"5")])
    assert r.status()["frames"] == 3 and r.overflowed == 2
    assert not r.expired(output_record.ARMED_FOR)
    assert r.expired(output_record.ARMED_FOR + 0.1)
    assert r.phase is Phase.IDLE and r.take() == []
