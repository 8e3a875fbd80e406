"""The campaign checker on hand-made histories: each violates one invariant, and a clean
history passes them all."""

from __future__ import annotations

from typing import Any

from colo_lab.chaos import checker, clients
from colo_lab.chaos.history import Record, parse

STREAM = bytes(range(256)) * 64
DIGEST = checker.prefix_digest(STREAM)


def _op(proc: str, op: int, f: str, t0: float, t1: float, outcome: str = "ok",
        **done: Any) -> list[Record]:
    inv: Record = {"type": "invoke", "proc": proc, "op": op, "f": f, "t": t0}
    for k in ("key", "value"):
        if k in done and (f == "put" or k == "key"):
            inv[k] = done.pop(k) if k == "value" else done[k]
    end: Record = {"type": outcome, "proc": proc, "op": op, "f": f, "t": t1, "conn": 1, **done}
    end.pop("key", None)
    return [inv, end]


def _put(op: int, t: float, key: str, value: str, outcome: str = "ok") -> list[Record]:
    return _op("kv0", op, "put", t, t + 0.1, outcome, key=key, value=value)


def _get(op: int, t: float, key: str, value: str | None) -> list[Record]:
    extra: dict[str, Any] = {"absent": True} if value is None else {"value": value}
    return _op("kv1", op, "get", t, t + 0.1, key=key, **extra)


def _stream(op: int, t: float, n: int, data: bytes | None = None, conn: int = 1,
            outcome: str = "ok") -> list[Record]:
    got = STREAM[:n] if data is None else data
    return _op("st0", op, "stream", t, t + 0.1, outcome, n=n, sha=checker.sha256_hex(got),
               conn=conn)


def _fault(i: int, start: float, end: float, recovered: float | None,
           kind: str = "kill-qemu", **params: Any) -> list[Record]:
    out: list[Record] = [
        {"type": "fault", "phase": "start", "id": i, "kind": kind, "target": "pvm",
         "host": "primary", "t": start, "params": params},
        {"type": "fault", "phase": "end", "id": i, "t": end}]
    out.append({"type": "recovered", "id": i, "t": recovered if recovered is not None else end + 60,
                "ok": recovered is not None})
    return out


def _state(t: float, timeouts: int, pri: str = "PROTECTED", sec: str = "PROTECTED",
           sec_role: str = "secondary") -> Record:
    return {"type": "state", "t": t, "hosts": {
        "primary": {"state": pri, "role": "primary", "timeout_checkpoints": timeouts},
        "secondary": {"state": sec, "role": sec_role, "timeout_checkpoints": 0}}}


def _clean() -> list[Record]:
    return [{"type": "campaign", "seed": 1, "t": 0.0}, {"type": "protected", "t": 1.0},
            *_put(0, 2.0, "k0", "v0"), *_get(0, 2.5, "k0", "v0"),
            *_stream(0, 2.0, 1000), *_stream(1, 2.2, len(STREAM)),
            _state(10.0, 0), *_fault(0, 11.0, 11.0, 15.0), _state(12.0, 1),
            *_put(1, 12.0, "k1", "v1", outcome="info"), *_get(1, 16.0, "k1", None),
            _state(30.0, 1), {"type": "mac", "t": 12.0, "n": {"p-pri": 3}},
            {"type": "end", "t": 31.0}]


def _violations(records: list[Record]) -> list[str]:
    return [v.invariant for v in checker.check(parse(records), DIGEST)]


def test_a_clean_history_has_no_violation() -> None:
    # Includes: an unacknowledged PUT that never took effect, a timeout checkpoint
    # during a fault, a single-host LAN sample.
    assert _violations(_clean()) == []


def test_an_acknowledged_put_no_longer_readable_is_a_lost_write() -> None:
    vs = checker.check(parse([*_clean(), *_get(9, 20.0, "k0", None)]), DIGEST)
    assert [v.invariant for v in vs] == ["kv-lost-write"]
    assert "kv0 op 0" in vs[0].detail


def test_a_get_before_the_put_was_acknowledged_may_miss_it() -> None:
    recs = [*_put(5, 20.0, "k5", "v5"), *_get(5, 19.95, "k5", None)]
    assert _violations([*_clean(), *recs]) == []


def test_a_value_never_written_is_a_phantom_read() -> None:
    assert _violations([*_clean(), *_get(9, 20.0, "k0", "v-other")]) == ["kv-phantom-read"]
    # A value read before its PUT was even invoked: also never written (yet).
    recs = [*_get(10, 20.0, "k7", "v7"), *_put(7, 21.0, "k7", "v7")]
    assert _violations([*_clean(), *recs]) == ["kv-phantom-read"]


def test_a_corrupted_stream_response() -> None:
    bad = bytearray(STREAM[:500])
    bad[300] ^= 1
    assert _violations([*_clean(), *_stream(5, 20.0, 500, bytes(bad))]) == ["stream-corrupt"]


def test_a_gap_or_a_duplicate_in_the_stream_is_corruption() -> None:
    gap = STREAM[:100] + STREAM[101:501]
    dup = STREAM[:100] + STREAM[99:499]
    assert _violations([*_clean(), *_stream(5, 20.0, 500, gap)]) == ["stream-corrupt"]
    assert _violations([*_clean(), *_stream(5, 20.0, 500, dup)]) == ["stream-corrupt"]


def test_a_stream_connection_that_fails_or_is_reopened_is_broken() -> None:
    failed = _stream(5, 20.0, 500, outcome="info")
    failed[1]["error"] = "ConnectionResetError"
    assert _violations([*_clean(), *failed]) == ["stream-broken"]
    assert _violations([*_clean(), *_stream(5, 20.0, 500, conn=2)]) == ["stream-broken"]
    # An outage is one violation however many requests fail in it; another after an
    # answer is another.
    outage = [*failed, *_stream(6, 21.0, 500, outcome="info"),
              *_stream(7, 22.0, 500, outcome="fail")]
    assert _violations([*_clean(), *outage]) == ["stream-broken"]
    again = [*outage, *_stream(8, 23.0, 500), *_stream(9, 24.0, 500, outcome="info")]
    assert _violations([*_clean(), *again]) == ["stream-broken"] * 2


def _udp(op: int, t: float, seq: int, answer: str | None, outcome: str = "ok",
         **done: Any) -> list[Record]:
    req = clients.udp_request("udp0", seq).decode()
    extra: dict[str, Any] = {} if answer is None else {"value": answer}
    return _op("udp0", op, "udp", t, t + 0.1, outcome, key=req, **extra, **done)


def test_udp_answers_must_echo_the_request_sent() -> None:
    good = _udp(0, 20.0, 0, "echo " + clients.udp_request("udp0", 0).decode())
    lost = _udp(1, 21.0, 1, None, outcome="info", error="no answer within 3 s")
    assert _violations([*_clean(), *good, *lost]) == []  # UDP may lose a request
    wrong_seq = _udp(2, 22.0, 2, "echo " + clients.udp_request("udp0", 7).decode())
    assert _violations([*_clean(), *wrong_seq]) == ["udp-wrong-answer"]
    corrupt = _udp(3, 23.0, 3, "echo udp0 3 uuuX")
    assert _violations([*_clean(), *corrupt]) == ["udp-wrong-answer"]
    stray = _udp(4, 24.0, 4, "echo udp0 99 ", outcome="info", error="stray datagram")
    assert _violations([*_clean(), *stray]) == ["udp-wrong-answer"]


def test_two_hosts_serving_in_one_sample() -> None:
    mac = {"type": "mac", "t": 20.0, "n": {"p-pri": 1, "p-sec": 2}}
    assert _violations([*_clean(), mac]) == ["two-serving"]
    both = _state(20.0, 1, pri="ALONE", sec="ALONE", sec_role="primary")
    assert _violations([*_clean(), both]) == ["two-serving"]


def test_a_fault_never_reprotected_or_too_slowly() -> None:
    assert _violations([*_clean(), *_fault(1, 40.0, 45.0, None)]) == ["not-reprotected"]
    slow = _fault(1, 40.0, 45.0, 45.0 + checker.REPROTECT_BOUND_S + 1)
    assert _violations([*_clean(), *slow]) == ["reprotect-slow"]
    ok = _fault(1, 40.0, 45.0, 45.0 + checker.REPROTECT_BOUND_S - 1)
    assert _violations([*_clean(), *ok]) == []


def test_a_timeout_checkpoint_while_no_fault_is_active() -> None:
    # Counted between 30 and 40 s, long after the fault's re-protection settled.
    vs = checker.check(parse([*_clean(), _state(40.0, 2)]), DIGEST)
    assert [v.invariant for v in vs] == ["timeout-checkpoint"]
    assert "primary" in vs[0].detail
    # Within the settle time after a re-protection it is not counted, nor within
    # compare_timeout after it (its packet was held while the pair settled).
    recs = [*_clean(), *_fault(1, 40.0, 41.0, 42.0), _state(42.0 + checker.SETTLE_S - 1, 5)]
    assert _violations(recs) == []
    late = 42.0 + checker.SETTLE_S + checker.COMPARE_TIMEOUT_S
    recs = [*_clean(), *_fault(1, 40.0, 41.0, 42.0), _state(late - 1, 1), _state(late - 0.5, 2)]
    assert _violations(recs) == []
    recs = [*_clean(), *_fault(1, 40.0, 41.0, 42.0), _state(late + 1, 1), _state(late + 2, 2)]
    assert _violations(recs) == ["timeout-checkpoint"]
    # A restarted orchestrator counts from zero: no increase.
    assert _violations([*_clean(), _state(40.0, 0), _state(50.0, 0)]) == []


def test_the_table_counts_per_kind_and_blames_violations_on_their_fault() -> None:
    recs = [*_clean(), *_fault(1, 40.0, 45.0, 50.0, kind="cut-control"),
            *_put(20, 39.0, "k20", "v20"), *_put(21, 46.0, "k21", "v21"),
            *_get(22, 47.0, "k20", None)]
    h = parse(recs)
    vs = checker.check(h, DIGEST)
    rows = {r.kind: r for r in checker.table(h, vs)}
    assert set(rows) == {"kill-qemu", "cut-control"}
    cut = rows["cut-control"]
    assert (cut.count, cut.recovered, cut.violations) == (1, 1, 1)
    assert cut.reprotect_max == 5.0
    # Last ack before the fault at 39.1, next at 46.1 (the GET of k20 too at 47.1).
    assert cut.pause_max is not None and abs(cut.pause_max - 7.0) < 1e-9
    text = checker.render(list(rows.values()), vs)
    assert "| cut-control | 1 | 1 |" in text and "| all | 2 | 2 | | | 1 |" in text


def test_faults_timed_into_a_checkpoint_or_a_reprotection_get_rows_of_their_own() -> None:
    recs = [*_clean(), *_fault(1, 40.0, 41.0, 45.0, kind="host-death", when="checkpoint"),
            *_fault(2, 50.0, 51.0, 55.0, kind="host-death", when="reprotect")]
    h = parse(recs)
    rows = checker.table(h, [])
    assert [r.kind for r in rows] == ["host-death", "kill-qemu", "(any, during a checkpoint)",
                                      "(any, during re-protection)"]
    assert [r.count for r in rows] == [2, 1, 1, 1]
    assert "| all | 3 | 3 |" in checker.render(rows, [])


def _disk(i: int, t: float, equal: bool | None, message: str = "") -> Record:
    return {"type": "disk", "t": t, "id": i, "equal": equal, "message": message}


def test_with_the_disk_every_reprotection_must_leave_equal_images() -> None:
    header = {"type": "campaign", "seed": 1, "t": 0.0, "disk": True}
    clean = [header, *_clean()[1:]]
    # The clean history's fault 0 (recovered at 15 s), verified equal: nothing to say.
    assert _violations([*clean, _disk(0, 16.0, True, "equal")]) == []
    differ = _violations([*clean, _disk(0, 16.0, False, "differ at range 3")])
    assert differ == ["disk-differs"]
    # verify itself failed (exit 2): nothing shows the images equal.
    assert _violations([*clean, _disk(0, 16.0, None, "no such file")]) == ["disk-differs"]
    # A re-protection that was never verified, in a campaign with the disk.
    vs = checker.check(parse(clean), DIGEST)
    assert [v.invariant for v in vs] == ["disk-differs"] and "not verified" in vs[0].detail
    # Without the disk no verify is expected.
    assert _violations(_clean()) == []


def test_a_differing_disk_is_blamed_on_the_fault_it_follows() -> None:
    recs = [*_clean(), *_fault(1, 40.0, 45.0, 50.0, kind="cut-control"),
            _disk(1, 51.0, False, "differ")]
    h = parse(recs)
    vs = checker.check(h, DIGEST)
    rows = {r.kind: r for r in checker.table(h, vs)}
    assert rows["cut-control"].violations == 1 and rows["kill-qemu"].violations == 0
