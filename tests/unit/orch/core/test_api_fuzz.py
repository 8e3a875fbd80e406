"""colo_orch.core.api under fuzzing: any request head gives "more, please", a request or a
refusal, never an exception; a request it accepts is made of the characters HTTP allows;
and routing any request on any listener gives a read, a command or a refusal."""

from __future__ import annotations

import pytest

from colo_orch.core.api import Reply, parse_head


@pytest.mark.parametrize("raw", [
    # was ValueError out of int(): "²" is a digit to str.isdigit(), not to int()
    b"GET /state HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
])
def test_what_crashed_the_parser_is_refused(raw: bytes) -> None:
    reply = parse_head(raw)
    assert isinstance(reply, Reply) and reply.status == 400 and reply.refused == "malformed"
