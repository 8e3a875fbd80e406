"""colo_orch.backends.qemu.qmp's reader under fuzzing: whatever the monitor sends, each read
gives a JSON object, or QmpError (then the client is closed), never another exception."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colo_orch.backends.qemu.qmp import QmpClient, QmpError
from tests.support.strategies import json_bytes


def _read_all(sent: bytes) -> list[dict[str, object]]:
    """Every message the client reads from a monitor that sent `sent` and hung up."""
    ours, monitor = socket.socketpair()
    client = QmpClient("fuzz.qmp", timeout=1.0)
    client._sock = ours  # the connected state, without a greeting
    def speak() -> None:  # from a thread: more than the socket buffer holds may be sent
        with monitor, contextlib.suppress(OSError):  # the client hung up first
            monitor.sendall(sent)

    speaker = threading.Thread(target=speak)
    speaker.start()
    out = []
    try:
        while True:
            msg = client._read(time.monotonic() + 1.0)
            assert isinstance(msg, dict)
            out.append(msg)
    except QmpError:
        assert not client.connected
    finally:
        client.close()
        speaker.join()
    return out


@given(st.lists(json_bytes(), max_size=4))
def test_any_lines_give_objects_or_a_qmp_error(lines: list[bytes]) -> None:
    _read_all(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("sent", [
    b"[" * 100_000 + b"\n",  # was RecursionError out of json.loads
])
def test_what_crashed_the_reader_is_a_qmp_error(sent: bytes) -> None:
    assert _read_all(sent) == []
