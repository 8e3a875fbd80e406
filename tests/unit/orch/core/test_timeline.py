"""colo_orch.core.timeline: marks in, the steps between them out."""

from __future__ import annotations

from colo_orch.core.timeline import STEPS, checkpoint_steps


def test_every_step_from_a_full_set_of_marks() -> None:
    marks = {"held_since": 10.0, "detected_at": 10.004, "received": 10.005,
             "decided": 10.006, "stopped": 10.030, "resumed": 10.080, "released": 10.081}
    assert checkpoint_steps(marks) == {
        "detection": 4.0, "proxy_request": 1.0, "orchestrator_wakeup": 1.0,
        "checkpoint_trigger": 24.0, "stop_to_resume": 50.0, "release": 1.0, "total": 81.0,
    }


def test_a_periodic_checkpoint_has_no_proxy_steps() -> None:
    marks = {"decided": 1.0, "stopped": 1.02, "resumed": 1.07, "released": 1.071}
    assert set(checkpoint_steps(marks)) == {"checkpoint_trigger", "stop_to_resume", "release"}


def test_the_steps_chain_from_the_packet_to_the_release() -> None:
    assert [a for _, a, _ in STEPS[:-1]][1:] == [b for _, _, b in STEPS[:-2]]
    assert STEPS[-1][1:] == (STEPS[0][1], STEPS[-2][2])


def test_the_trigger_splits_into_ours_and_qemus_where_marked() -> None:
    marks = {"decided": 1.0, "trigger_sent": 1.0025, "qemu_stopped": 1.004,
             "stopped": 1.0045, "resumed": 1.05, "released": 1.051}
    got = checkpoint_steps(marks)
    assert (got["trigger_command"], got["qemu_command_to_stop"], got["stop_event_seen"]) \
        == (2.5, 1.5, 0.5)
    assert got["checkpoint_trigger"] == 4.5
