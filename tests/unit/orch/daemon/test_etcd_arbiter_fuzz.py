"""colo_orch.daemon.etcd_arbiter's reading of etcd's error bodies under fuzzing: whatever
the gateway answers, the arbiter gets a code and a message, never an exception (it would
end the lease keeper's thread)."""

from __future__ import annotations

import pytest
from etcd3gw import exceptions as etcd_exc
from hypothesis import given

from colo_orch.daemon.etcd_arbiter import _detail
from tests.support.strategies import json_bytes


@given(json_bytes().map(lambda b: b.decode(errors="replace")))
def test_any_error_body_gives_a_code_and_a_message(text: str) -> None:
    code, message = _detail(etcd_exc.Etcd3Exception(text))
    assert isinstance(code, int) and isinstance(message, str)


@pytest.mark.parametrize("text", [
    "[" * 100_000,  # was RecursionError out of json.loads
    '{"code": 1e999}',  # was OverflowError out of int(inf)
])
def test_what_crashed_the_reader_gives_no_code(text: str) -> None:
    assert _detail(etcd_exc.Etcd3Exception(text))[0] == -1
