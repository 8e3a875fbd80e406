"""Playbook: closing behaviours that can never match diverge at once with `tcp_flags`.

Both VMs first send the same three bytes; then each closes its side in one of the ways
below. Every pair of different behaviours that can never match requests a `tcp_flags`
checkpoint as soon as the second side's packets arrive, whichever VM comes first, without
waiting for the compare timeout. The pairs that may still match (the same behaviour, or a
FIN whose RST may yet follow) request nothing.
"""

from __future__ import annotations

import itertools

import pytest

from colo_proxy.compare import Comparator, CompareConfig, RequestCheckpoint
from tests.support.packets import ACK, FIN, PSH, RST
from tests.unit.proxy.compare.test_tcp import CACK, FLOW, P, S, established, pdata, sdata

# (offset, payload, flags) after the common b"hel".
BEHAVIOURS: dict[str, list[tuple[int, bytes, int]]] = {
    "FIN at 5": [(3, b"lo", ACK | PSH | FIN)],
    "FIN at 3": [(3, b"", ACK | FIN)],
    "more data": [(3, b"lo, world", ACK | PSH)],
    "RST at 5": [(3, b"lo", ACK | PSH), (5, b"", RST | ACK)],
    "RST at 3": [(3, b"", RST | ACK)],
    "FIN then RST": [(3, b"lo", ACK | PSH | FIN), (6, b"", RST | ACK)],
}
# Different behaviours that may still match: the other side's RST may be on its way.
MAY_MATCH = {frozenset({"FIN at 5", "FIN then RST"})}
NEVER = [
    (a, b)
    for a, b in itertools.permutations(BEHAVIOURS, 2)
    if frozenset({a, b}) not in MAY_MATCH
]
TIMEOUT = 5.0


def play(pvm: str, svm: str, pvm_first: bool) -> list[RequestCheckpoint]:
    """Every checkpoint request the two closes get, before any timeout could fire."""
    c = Comparator(CompareConfig(compare_timeout=TIMEOUT))
    established(c)
    assert c.packet(P, 2, pdata(0, b"hel"), 0.1) == []
    c.packet(S, 2, sdata(0, b"hel"), 0.1)
    p = [(P, pdata(off, data, CACK, flags)) for off, data, flags in BEHAVIOURS[pvm]]
    s = [(S, sdata(off, data, CACK, flags)) for off, data, flags in BEHAVIOURS[svm]]
    out = []
    for i, (side, pkt) in enumerate(p + s if pvm_first else s + p):
        out += c.packet(side, 3 + i, pkt, 0.2 + 0.01 * i)
    return [cmd for cmd in out if isinstance(cmd, RequestCheckpoint)]


@pytest.mark.parametrize("pvm_first", [True, False], ids=["pvm first", "svm first"])
@pytest.mark.parametrize(("pvm", "svm"), NEVER, ids=[f"PVM {a} vs SVM {b}" for a, b in NEVER])
def test_a_close_that_can_never_match_diverges_at_once(pvm: str, svm: str,
                                                       pvm_first: bool) -> None:
    reqs = play(pvm, svm, pvm_first)
    assert [(r.reason, r.flow) for r in reqs] == [("tcp_flags", FLOW)]
    assert reqs[0].offset is not None and 3 <= reqs[0].offset <= 5


MATCHING = [(b, b) for b in BEHAVIOURS] + [
    (a, b) for a, b in itertools.permutations(BEHAVIOURS, 2) if frozenset({a, b}) in MAY_MATCH
]


@pytest.mark.parametrize("pvm_first", [True, False], ids=["pvm first", "svm first"])
@pytest.mark.parametrize(("pvm", "svm"), MATCHING, ids=[f"PVM {a} vs SVM {b}" for a, b in MATCHING])
def test_a_close_that_may_match_requests_nothing(pvm: str, svm: str, pvm_first: bool) -> None:
    assert play(pvm, svm, pvm_first) == []


def test_every_pair_is_in_one_table() -> None:
    pairs = set(NEVER) | set(MATCHING)
    assert pairs == set(itertools.product(BEHAVIOURS, repeat=2))
    assert not set(NEVER) & set(MATCHING)


def test_the_svm_restored_after_a_pvm_reset_keeps_only_the_pvms_close() -> None:
    # The SVM closed with a FIN, the PVM reset without one: a divergence. After the
    # checkpoint the SVM holds the PVM's reset socket; its next RST is no new divergence.
    c = Comparator(CompareConfig(compare_timeout=TIMEOUT))
    established(c)
    c.packet(S, 2, sdata(0, b"", flags=ACK | FIN), 0.1)
    assert c.packet(P, 2, pdata(0, b"", flags=RST | ACK), 0.1) == [
        RequestCheckpoint("tcp_flags", FLOW, 0)
    ]
    c.checkpoint_done(0.2)
    # In the PVM's sequence space now, as the restored SVM is.
    out = c.packet(S, 3, pdata(0, b"", flags=RST | ACK), 0.3)
    assert not [cmd for cmd in out if isinstance(cmd, RequestCheckpoint)]
