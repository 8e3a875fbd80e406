"""The QEMU colo-compare wiring of `colo-lab up --qemu-compare` (no root: the arguments)."""

from __future__ import annotations

import itertools

import pytest

from colo_lab import qemu_compare
from colo_lab.errors import LabError
from colo_lab.lab import CTL_PRIMARY, Lab


def _objects(argv: list[str]) -> dict[str, dict[str, str]]:
    """-object arguments by id: {id: {"kind": ..., option: value}}."""
    out = {}
    for flag, value in itertools.pairwise(argv):
        if flag in ("-object", "-chardev"):
            kind, *opts = value.split(",")
            fields = dict(o.split("=", 1) for o in opts)
            out[fields["id"]] = {"kind": kind, **fields}
    return out


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_every_filter_and_the_compare_carry_the_vnet_header(role: str) -> None:
    # Without it colo-compare sees "unsupported packet" on virtio-net and compares nothing.
    objs = _objects(qemu_compare.args(role))
    filters = [o for o in objs.values() if o["kind"].startswith(("filter-", "colo-compare"))]
    assert filters and all(o["vnet_hdr_support"] == "on" for o in filters)
    assert all(o["netdev"] == "hn0" for o in filters if o["kind"].startswith("filter-"))


def test_every_chardev_a_filter_names_is_defined_on_its_side() -> None:
    for role in ("primary", "secondary"):
        objs = _objects(qemu_compare.args(role))
        named = {o[k] for o in objs.values() for k in
                 ("indev", "outdev", "primary_in", "secondary_in") if k in o}
        assert named <= {i for i, o in objs.items() if o["kind"] == "socket"}


def test_the_svm_connects_to_the_pvms_servers_over_the_control_link() -> None:
    pri, sec = _objects(qemu_compare.primary_args()), _objects(qemu_compare.secondary_args())
    servers = {(o["host"], o["port"]) for o in pri.values()
               if o["kind"] == "socket" and o.get("server") == "on"}
    for cid in ("red0", "red1"):
        assert (sec[cid]["host"], sec[cid]["port"]) in servers
        assert sec[cid]["host"] == CTL_PRIMARY and sec[cid]["reconnect"] == "1"
    # The mirror feeds the SVM's input; the SVM's output feeds the compare's secondary_in.
    assert pri["mirror0"]["port"] == sec["red0"]["port"]
    assert pri[pri["comp0"]["secondary_in"]]["port"] == sec["red1"]["port"]


def test_vm_spec_adds_the_wiring_only_when_asked() -> None:
    lab = Lab("unitqc")
    assert "colo-compare" not in " ".join(lab.vm_spec("primary").extra_args)
    lab.qemu_compare = True
    assert any(a.startswith("colo-compare,") for a in lab.vm_spec("primary").extra_args)
    assert any(a.startswith("filter-rewriter,")
               for a in lab.vm_spec("secondary", incoming=True).extra_args)


def test_up_refuses_a_standalone_svm_with_qemu_compare() -> None:
    with pytest.raises(LabError, match="incoming SVM"):
        Lab("unitqc").up(secondary="standalone", qemu_compare=True)
