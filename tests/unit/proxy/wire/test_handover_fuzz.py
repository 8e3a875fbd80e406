"""colo_proxy.wire.handover under fuzzing: any file content gives offsets the datapath can
load, or DamagedHandover (which the handover file reports and drops), never another
exception; and every list of offsets round-trips."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colo_proxy.wire.handover import DamagedHandover, decode, encode
from colo_proxy.wire.offset import Offset
from tests.support.strategies import json_values, nested

U32 = st.integers(0, 2**32 - 1)
SIGNED32 = st.integers(-(2**31), 2**32 - 1)  # a 32-bit field, either reading
IPS = st.ip_addresses().map(str)
OFFSETS = st.builds(Offset, IPS, st.integers(0, 65535), IPS, st.integers(0, 65535), U32, U32,
                    SIGNED32, st.just(True), st.none() | SIGNED32)
GOOD = {"vm_ip": "10.99.0.10", "vm_port": 80, "peer_ip": "10.99.0.100", "peer_port": 40000,
        "pvm_isn": 1000, "svm_isn": 5000, "offset": 4000, "ts_offset": 7}


def _loadable(o: Offset) -> None:
    """What Datapath.carry needs of an offset: addresses, 16-bit ports, 32-bit numbers."""
    ipaddress.ip_address(o.vm_ip)
    ipaddress.ip_address(o.peer_ip)
    assert 0 <= o.vm_port < 2**16 and 0 <= o.peer_port < 2**16
    assert 0 <= o.pvm_isn < 2**32 and 0 <= o.svm_isn < 2**32
    assert -(2**31) <= o.offset < 2**32
    assert o.ts_offset is None or -(2**31) <= o.ts_offset < 2**32


def _decoded_or_damaged(text: str) -> None:
    try:
        offsets = decode(text)
    except DamagedHandover:
        return
    for o in offsets:
        _loadable(o)


@given(st.lists(OFFSETS, max_size=4))
def test_every_list_of_offsets_round_trips(offsets: list[Offset]) -> None:
    assert decode(encode(offsets)) == offsets


@given(st.text(max_size=200) | nested())
def test_any_text_decodes_or_is_damaged(text: str) -> None:
    _decoded_or_damaged(text)


@given(st.sampled_from(sorted(GOOD)), json_values)
def test_any_value_in_any_field_decodes_loadable_or_is_damaged(key: str, value: object) -> None:
    _decoded_or_damaged(json.dumps({"version": 1, "offsets": [{**GOOD, key: value}]}))


@pytest.mark.parametrize("text", [
    "[" * 100_000,  # was RecursionError out of json.loads
    # was OverflowError out of int(); JSON allows Infinity
    json.dumps({"version": 1, "offsets": [{**GOOD, "vm_port": float("inf")}]}),
    # were decoded, then crashed Datapath.carry at the proxy's start
    json.dumps({"version": 1, "offsets": [{**GOOD, "peer_ip": None}]}),
    json.dumps({"version": 1, "offsets": [{**GOOD, "vm_port": 70000}]}),
])
def test_what_crashed_the_decoder_is_damaged(text: str) -> None:
    with pytest.raises(DamagedHandover):
        decode(text)
