"""The secondary's back channel decoder against the bytes the simulation encodes from xen.git
(not with the product's code)."""

from __future__ import annotations

import pytest

from colo_orch.backends.xen.libxl.backchannel import (
    CHECKPOINT_SVM_READY,
    CHECKPOINT_SVM_RESUMED,
    CHECKPOINT_SVM_SUSPENDED,
    BackChannelDecoder,
    BackChannelError,
)
from tests.support.libxl_sim import RestoreBackChannel, checkpoint_state_record

FIRST = [CHECKPOINT_SVM_READY, CHECKPOINT_SVM_RESUMED]
LATER = [CHECKPOINT_SVM_SUSPENDED, CHECKPOINT_SVM_READY, CHECKPOINT_SVM_RESUMED]


def wire() -> bytes:
    sim = RestoreBackChannel()
    return sim.start() + sim.initial_sync() + sim.checkpoint() + sim.checkpoint()


def test_banner_then_the_checkpoint_states_in_libxls_order_however_split() -> None:
    data = wire()
    assert BackChannelDecoder().feed(data) == FIRST + LATER + LATER
    for cut in range(1, len(data)):
        d = BackChannelDecoder()
        assert d.feed(data[:cut]) + d.feed(data[cut:]) == FIRST + LATER + LATER, cut
    d = BackChannelDecoder()
    assert [s for i in range(len(data)) for s in d.feed(data[i:i + 1])] == FIRST + LATER + LATER


@pytest.mark.parametrize(("data", "what"), [
    (b"Parsing config from web.cfg\n", "banner"),
    (RestoreBackChannel().start() + b"\x04\0\0\0\0\0\0\0", "record type 4"),
    (RestoreBackChannel().start() + checkpoint_state_record(9), "unknown checkpoint state 9"),
])
def test_what_libxl_does_not_write_there_is_an_error(data: bytes, what: str) -> None:
    with pytest.raises(BackChannelError, match=what):
        BackChannelDecoder().feed(data)
