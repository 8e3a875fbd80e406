"""Where the time goes from a diverging packet to its release: one checkpoint's steps.

Pure: marks in (CLOCK_MONOTONIC seconds, the same clock for the proxy and the
orchestrator of one host), step durations out. A mark that is missing (no proxy
request behind a periodic checkpoint, a backend that reports no STOP) leaves out the
steps that need it rather than inventing them.
"""

from __future__ import annotations

# Each step: its name and the marks it runs between, in the order they happen.
# held_since   the proxy queued the first PVM packet still held when it found the divergence
# detected_at  the proxy found the divergence and sent its checkpoint request
# received     the orchestrator's link read the request
# decided      the loop decided to checkpoint
# stopped      QEMU reported the PVM's STOP
# resumed      QEMU reported the PVM's RESUME (the SVM has loaded the state)
# released     the proxy acknowledged checkpoint_done: the held output is on its way
STEPS: tuple[tuple[str, str, str], ...] = (
    ("detection", "held_since", "detected_at"),
    ("proxy_request", "detected_at", "received"),
    ("orchestrator_wakeup", "received", "decided"),
    ("checkpoint_trigger", "decided", "stopped"),
    ("stop_to_resume", "stopped", "resumed"),
    ("release", "resumed", "released"),
    ("total", "held_since", "released"),
)
# The checkpoint trigger, split where the QEMU backend can mark it:
# trigger_sent  the orchestrator wrote the QMP command that starts the checkpoint
# qemu_stopped  QEMU's own stamp on its STOP event (its wall clock, read as monotonic)
# What is ours is before trigger_sent and after qemu_stopped; between them is QEMU's
# (its timer, the CHECKPOINT_REQUEST round trip to the secondary, vm_stop).
TRIGGER_STEPS: tuple[tuple[str, str, str], ...] = (
    ("trigger_command", "decided", "trigger_sent"),
    ("qemu_command_to_stop", "trigger_sent", "qemu_stopped"),
    ("stop_event_seen", "qemu_stopped", "stopped"),
)


def checkpoint_steps(marks: dict[str, float]) -> dict[str, float]:
    """Each step whose two marks are known, in milliseconds."""
    return {name: round(1000 * (marks[b] - marks[a]), 1)
            for name, a, b in STEPS + TRIGGER_STEPS if a in marks and b in marks}
