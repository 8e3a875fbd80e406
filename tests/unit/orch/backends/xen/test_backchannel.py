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
from tests.support.libxl_sim import (
    RestoreBackChannel,
    checkpoint_state_record,
    dirty_pfn_list_record,
)

FIRST = [CHECKPOINT_SVM_READY, CHECKPOINT_SVM_RESUMED]
LATER = [CHECKPOINT_SVM_SUSPENDED, CHECKPOINT_SVM_READY, CHECKPOINT_SVM_RESUMED]


def wire() -> bytes:
    sim = RestoreBackChannel()
    # The first checkpoint's dirty-pfn list as Xen 4.17 wrote it in run G (empty), the
    # second's with pages.
    return sim.start() + sim.initial_sync() + sim.checkpoint(dirty=()) + sim.checkpoint()


def test_banner_then_the_checkpoint_states_in_libxls_order_however_split() -> None:
    data = wire()
    assert BackChannelDecoder().feed(data) == FIRST + LATER + LATER
    for cut in range(1, len(data)):
        d = BackChannelDecoder()
        assert d.feed(data[:cut]) + d.feed(data[cut:]) == FIRST + LATER + LATER, cut
    d = BackChannelDecoder()
    assert [s for i in range(len(data)) for s in d.feed(data[i:i + 1])] == FIRST + LATER + LATER


def test_libxcs_dirty_pfn_lists_between_the_states_are_skipped() -> None:
    # Run G's bytes after the first SVM_SUSPENDED: "record type 15 length 0", which the
    # first decoder refused, so the secondary stopped counting SVM resumes.
    sim = RestoreBackChannel()
    head = sim.start() + sim.initial_sync()
    d = BackChannelDecoder()
    assert d.feed(head + checkpoint_state_record(CHECKPOINT_SVM_SUSPENDED)
                  + dirty_pfn_list_record([])) == [*FIRST, CHECKPOINT_SVM_SUSPENDED]
    big = dirty_pfn_list_record(list(range(0, 65536, 3)))
    assert d.feed(big[:5]) == []
    assert (d.dirty_lists, d.dirty_pfns) == (1, 0)
    assert d.feed(big[5:] + checkpoint_state_record(CHECKPOINT_SVM_READY)) == [
        CHECKPOINT_SVM_READY]
    assert (d.dirty_lists, d.dirty_pfns) == (2, len(range(0, 65536, 3)))


@pytest.mark.parametrize(("data", "what"), [
    (b"Parsing config from web.cfg\n", "banner"),
    (RestoreBackChannel().start() + b"\x04\0\0\0\0\0\0\0", "record type 4"),
    (RestoreBackChannel().start() + checkpoint_state_record(9), "unknown checkpoint state 9"),
    (RestoreBackChannel().start() + b"\x0f\0\0\0\x04\0\0\0", "record type 15 length 4"),
])
def test_what_libxl_does_not_write_there_is_an_error(data: bytes, what: str) -> None:
    with pytest.raises(BackChannelError, match=what):
        BackChannelDecoder().feed(data)
