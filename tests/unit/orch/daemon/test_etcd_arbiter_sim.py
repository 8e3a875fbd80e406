"""The etcd arbiter against the simulated etcd (tests/support/etcd_sim.py): the lease, its
expiry, and the sync key's refusal, on a simulated clock."""

from __future__ import annotations

from colo_orch.daemon.etcd_arbiter import EtcdArbiter, EtcdSettings
from tests.support.etcd_sim import EtcdSim, SimClient, SimClock


def _arbiter(sim: EtcdSim, who: str) -> tuple[EtcdArbiter, SimClient]:
    arb = EtcdArbiter(EtcdSettings(endpoints=("http://etcd.sim:2379",)), "pair", who,
                      ttl=3.0, margin=1.0, clock=sim.clock)
    client = SimClient(sim)
    arb.client = client  # type: ignore[assignment]
    return arb, client


def _pair() -> tuple[SimClock, EtcdSim, EtcdArbiter, SimClient, EtcdArbiter]:
    clock = SimClock()
    sim = EtcdSim(clock)
    a, a_link = _arbiter(sim, "a")
    b, _ = _arbiter(sim, "b")
    a.want(True, clock.t)
    _round(a)
    return clock, sim, a, a_link, b


def _round(arb: EtcdArbiter) -> None:
    with arb._io:
        arb._step()


def test_one_holder_until_its_lease_expires_at_the_store() -> None:
    clock, sim, a, a_link, b = _pair()
    v = a.view()
    assert (v.held, v.safe_until) == (True, 100.0 + 3 - 1.0)
    assert sim.get("/colo/pair/leader") == "a"
    assert not b.acquire_now(1.0) and b.view().holder == "a"
    a_link.reachable = False  # a's renewals fail from here on
    clock.t = 102.9
    _round(a)
    assert not a.view().reachable and not b.acquire_now(1.0)
    clock.t = 103.0  # the store lets a's lease go, with the key bound to it
    assert sim.get("/colo/pair/leader") is None
    assert b.acquire_now(1.0) and sim.get("/colo/pair/leader") == "b"
    assert a.view().safe_until < 103.0  # a stopped counting on its hold before that


def test_alone_recorded_by_one_host_refuses_the_other() -> None:
    _, sim, a, _, b = _pair()
    a.want_sync("alone")
    _round(a)
    assert sim.get("/colo/pair/sync") == "alone:a" and a.view().alone_recorded
    a.release()
    assert sim.get("/colo/pair/leader") is None
    assert not b.acquire_now(1.0) and b.view().stale
    assert a.acquire_now(1.0)  # its own record does not refuse it


def test_a_transaction_compares_then_writes_atomically() -> None:
    clock = SimClock()
    sim = EtcdSim(clock)
    client = SimClient(sim)
    key = "L2s="  # base64 of "/k"
    absent = [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}]
    put = [{"request_put": {"key": key, "value": "dg=="}}]
    assert client.call("kv/txn", {"compare": absent, "success": put})["succeeded"]
    rev = int(client.call("kv/range", {"key": key})["kvs"][0]["mod_revision"])
    again = client.call("kv/txn", {"compare": absent, "success": put,
                                   "failure": [{"request_range": {"key": key}}]})
    assert "succeeded" not in again  # proto3 leaves false out
    assert int(again["responses"][0]["response_range"]["kvs"][0]["mod_revision"]) == rev
    lease = client.call("lease/grant", {"TTL": 2})
    client.call("kv/put", {"key": key, "value": "dg==", "lease": lease["ID"]})
    clock.t += 2.0
    assert sim.get("/k") is None and sim.revision == rev + 2
    assert "TTL" not in client.call("lease/keepalive", {"ID": lease["ID"]})["result"]


def test_a_change_of_hold_or_record_is_told_at_once_a_renewal_is_not() -> None:
    clock, _, a, _, b = _pair()
    told: list[str] = []
    a.on_change = lambda: told.append("a")
    b.on_change = lambda: told.append("b")
    clock.t += 1.0
    _round(a)  # a renewal: nothing changed that the loop acts on
    assert told == []
    a.release()  # a hands over: its hold ends
    b.want(True, clock.t)
    _round(b)  # b acquires: its loop may take over now, without waiting for loop_wait
    assert told == ["a", "b"] and b.view().held
    b.want_sync("alone")
    _round(b)
    assert told == ["a", "b", "b"] and b.view().alone_recorded
