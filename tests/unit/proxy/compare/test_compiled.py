"""The compiled (mypyc) build of the comparator: used only when it matches the sources, and
doing exactly what the sources say.

The rest of tests/unit/proxy/compare runs on whichever build this interpreter loaded (the compiled
one under `make test`). Here the interpreted modules are loaded beside it, and both are fed
the same random events: every command, counter and held packet must be the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import colo_proxy
import colo_proxy.compare as compare
from colo_proxy.compare import _compiled, comparator
from tests.support.packets import ACK, FIN, PSH, RST, SYN, icmp_echo_reply, ip4, tcp, udp
from tests.support.paths import REPO as ROOT

PACKAGE = "colo_proxy.compare"


def _probe(env: dict[str, str]) -> str:
    """Which build a fresh interpreter loads under ``env``: 'compiled' or 'pure'."""
    code = (
        "import colo_proxy.compare as c, colo_proxy.compare.comparator as m;"
        "assert c.COMPILED == (not m.__file__.endswith('.py')), m.__file__;"
        "print('compiled' if c.COMPILED else 'pure')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_build_is_used_when_required() -> None:
    # make test sets COLO_REQUIRE_COMPILED: the bootstrap must have built the core.
    if os.environ.get("COLO_COMPARE_PURE", "") not in ("", "0"):
        pytest.skip("COLO_COMPARE_PURE is set")
    if os.environ.get("COLO_REQUIRE_COMPILED") != "1" and _compiled.find() is None:
        pytest.skip("no compiled build for these sources (scripts/build-compare)")
    assert compare.COMPILED
    assert comparator.__file__ is not None and comparator.__file__.endswith(".so")


def test_pure_switch_and_stale_builds_fall_back_to_the_sources(tmp_path: Path) -> None:
    assert _probe({"COLO_COMPARE_PURE": "1"}) == "pure"
    # A build for other sources (another key) is never loaded.
    stale = tmp_path / "0123456789abcdef" / "colo_proxy" / "compare"
    stale.mkdir(parents=True)
    for name in (*_compiled.MODULES, "_native__mypyc"):
        (stale / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a library")
    assert _probe({"COLO_COMPARE_BUILD": str(tmp_path)}) == "pure"
    # The key changes with any byte of any compiled module.
    key = _compiled.source_key()
    assert len(key) == 16 and key != "0123456789abcdef"


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


@pytest.fixture(scope="module")
def interpreted() -> Iterator[ModuleType]:
    """colo_proxy.compare imported again from its sources, beside the loaded build.

    The loaded modules are set aside while the package imports itself afresh with
    COLO_COMPARE_PURE=1, then put back: the fresh modules keep the references they bound
    to each other, so both builds work side by side.
    """
    if not compare.COMPILED:
        pytest.skip("running interpreted: no compiled build to compare with")
    loaded = {name: sys.modules.pop(name) for name in list(sys.modules) if _ours(name)}
    before = os.environ.get("COLO_COMPARE_PURE")
    os.environ["COLO_COMPARE_PURE"] = "1"
    try:
        import colo_proxy.compare as fresh

        for name in _compiled.MODULES:
            __import__(f"{PACKAGE}.{name}")
    finally:
        if before is None:
            del os.environ["COLO_COMPARE_PURE"]
        else:
            os.environ["COLO_COMPARE_PURE"] = before
        for name in [n for n in sys.modules if _ours(n)]:
            del sys.modules[name]
        sys.modules.update(loaded)
        colo_proxy.compare = loaded[PACKAGE]  # type: ignore[attr-defined]
    assert not fresh.COMPILED and fresh.comparator.__file__.endswith(".py")
    yield fresh


# Random traffic of one connection and its neighbours: the two replicas' segments at
# different ISNs, equal or not, in any order, with other protocols and garbage mixed in.
PVM_ISN, SVM_ISN, CLIENT_ACK = 1000, 700_000, 5001
payloads = st.sampled_from([b"", b"hello", b"hellx", b"world", b"x" * 1400, b"\0" * 3])
tcp_flags = st.sampled_from([SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK])


@st.composite
def packets(draw: st.DrawFn, primary: bool) -> bytes:
    kind = draw(st.sampled_from(["tcp", "tcp", "tcp", "udp", "icmp", "other", "junk"]))
    if kind == "tcp":
        isn = PVM_ISN if primary else SVM_ISN
        return tcp(isn + draw(st.integers(0, 3000)), CLIENT_ACK + draw(st.integers(0, 2)),
                   draw(tcp_flags), draw(payloads), sport=draw(st.sampled_from([80, 443])),
                   window=draw(st.sampled_from([502, 1000])))
    if kind == "udp":
        return udp(draw(payloads), sport=draw(st.sampled_from([53, 123])))
    if kind == "icmp":
        return icmp_echo_reply(7, draw(st.integers(0, 3)), draw(payloads))
    if kind == "other":
        return ip4(47, draw(payloads), frag=draw(st.sampled_from([0x4000, 0x2000, 3])))
    return draw(st.binary(max_size=60))


@st.composite
def events(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    now = 0.0
    for i in range(draw(st.integers(1, 60))):
        now += draw(st.sampled_from([0.0, 0.0, 0.01, 0.3, 1.5]))
        what = draw(st.sampled_from(["pvm", "pvm", "svm", "svm", "tick", "checkpoint"]))
        if what in ("pvm", "svm"):
            out.append((what, i, draw(packets(what == "pvm")), now))
        else:
            out.append((what, now))
    return out


def _run(mod: ModuleType, config: dict[str, Any], evs: list[tuple[Any, ...]]) -> list[str]:
    """Everything the comparator said and counted, event by event, as text.

    A checkpoint releases the held packets flow by flow, the flows in the order of a set of
    objects (their addresses): so the packets of a Release or Drop are compared flow by
    flow, each flow's in the order given.
    """
    flow = {ev[1]: repr(mod.flow_of(ev[2])) for ev in evs if ev[0] in ("pvm", "svm")}

    def text(cmd: Any) -> str:
        if not isinstance(cmd, mod.Release | mod.Drop):
            return repr(cmd)
        by_flow: dict[str, list[int]] = {}
        for pid in cmd.packet_ids:
            by_flow.setdefault(flow[pid], []).append(pid)
        return f"{type(cmd).__name__}{sorted(by_flow.items())}"

    c = mod.Comparator(mod.CompareConfig(**config))
    said: list[str] = []
    for ev in evs:
        if ev[0] in ("pvm", "svm"):
            side = mod.Side.PRIMARY if ev[0] == "pvm" else mod.Side.SECONDARY
            cmds = c.packet(side, ev[1], ev[2], ev[3])
        elif ev[0] == "tick":
            cmds = c.tick(ev[1])
        else:
            cmds = c.checkpoint_done(ev[1])
        said.append(f"{[text(cmd) for cmd in cmds]} held={c.held_packets}/{c.held_bytes}")
    said.append(repr(c.stats.as_dict()))
    return said


@given(evs=events(), timeout=st.sampled_from([0.5, 1.0]), window=st.sampled_from([2, 8]))
@settings(max_examples=300, deadline=None)
def test_the_compiled_comparator_does_what_the_sources_say(
        interpreted: ModuleType, evs: list[tuple[Any, ...]], timeout: float,
        window: int) -> None:
    config = {"compare_timeout": timeout, "datagram_window": window}
    assert _run(compare, config, evs) == _run(interpreted, config, evs)
