"""colo_proxy.wire.handover under fuzzing: any file content gives offsets the datapath can
load, or DamagedHandover (which the handover file reports and drops), never another
exception; and every list of offsets round-trips."""

from __future__ import annotations

import pytest

from colo_proxy.wire.handover import DamagedHandover, decode


@pytest.mark.parametrize("text", [
    "[" * 100_000,  # was RecursionError out of json.loads
])
def test_what_crashed_the_decoder_is_damaged(text: str) -> None:
    with pytest.raises(DamagedHandover):
        decode(text)
