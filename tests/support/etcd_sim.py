"""An in-memory etcd for model tests: the v3 JSON gateway calls the arbiter makes.

`EtcdSim` is one store on a simulated clock; `SimClient` is one host's view of it, with
the same `call(path, body, timeout)` as `colo_orch.daemon.etcd_arbiter.EtcdClient`, so
that the real `EtcdArbiter` runs against it unchanged. It follows etcd's documented
semantics (https://etcd.io/docs/v3.5/learning/api/):

- one store revision, raised by every request that writes; a key's `create_revision`,
  `mod_revision` and `version` are 0 while it is absent, and a delete resets them;
- a lease expires TTL seconds after its grant or last keep-alive, and the keys attached to
  it are deleted then (one revision); a keep-alive of an expired or revoked lease answers
  without a TTL, a revoke of one fails with NOT_FOUND;
- a transaction compares (CREATE, MOD, VERSION, VALUE, LEASE targets; a VALUE compare of
  an absent key is false), then runs all of its success or all of its failure requests
  atomically; a put naming a lease that does not exist fails the whole request;
- the gateway's JSON: int64 fields as strings, keys and values base64, false booleans
  and empty lists left out (proto3).

Simplified: etcd checks expiry about every 0.5 s and a leader change extends leases;
here a lease expires exactly at its deadline, the earliest etcd would let it go, which
is the case the holder's `safe_until` must beat. `min_ttl` stands for etcd's minimum
TTL (it grants at least about 1.5 election timeouts).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colo_orch.daemon.etcd_arbiter import EtcdError, EtcdUnreachable

_NOT_FOUND = 5


def _dec(s: str) -> str:
    return base64.b64decode(s).decode()


def _enc(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@dataclass
class _Kv:
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class SimClock:
    """A clock that moves only when told: `t += seconds`."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class EtcdSim:
    """One etcd store; `clock` gives the simulated time in seconds."""

    def __init__(self, clock: Callable[[], float], min_ttl: int = 0) -> None:
        self.clock = clock
        self.min_ttl = min_ttl
        self.revision = 1
        self.kvs: dict[str, _Kv] = {}
        self.leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, expires at)
        self._next_lease = 0x1000

    # Reading the store from a test (no request, no revision) ---------------------------
    def get(self, key: str) -> str | None:
        self.expire()
        kv = self.kvs.get(key)
        return kv.value if kv is not None else None

    def expire(self) -> None:
        """Let every lease past its deadline go, with its keys (one revision if any)."""
        now = self.clock()
        gone = [lid for lid, (_, until) in self.leases.items() if until <= now]
        for lid in gone:
            self._revoke(lid)

    def _revoke(self, lid: int) -> None:
        del self.leases[lid]
        attached = [k for k, kv in self.kvs.items() if kv.lease == lid]
        if attached:
            self.revision += 1
            for k in attached:
                del self.kvs[k]

    # The gateway ----------------------------------------------------------------------
    def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.expire()
        handler = {"kv/range": self._range, "kv/txn": self._txn, "kv/put": self._put_req,
                   "kv/deleterange": self._delete_req, "lease/grant": self._grant,
                   "lease/keepalive": self._keepalive, "lease/revoke": self._revoke_req}.get(path)
        if handler is None:
            raise EtcdError(f"sim: {path} is not simulated", 12)
        out = handler(body)
        out["header"] = {"revision": str(self.revision)}
        return out

    def _grant(self, body: dict[str, Any]) -> dict[str, Any]:
        ttl = max(int(body["TTL"]), self.min_ttl)
        lid = int(body.get("ID", 0)) or self._next_lease
        self._next_lease = max(self._next_lease, lid) + 1
        self.leases[lid] = (ttl, self.clock() + ttl)
        return {"ID": str(lid), "TTL": str(ttl)}

    def _keepalive(self, body: dict[str, Any]) -> dict[str, Any]:
        lid = int(body["ID"])
        if lid not in self.leases:
            return {"result": {"ID": str(lid)}}  # TTL 0: left out
        ttl, _ = self.leases[lid]
        self.leases[lid] = (ttl, self.clock() + ttl)
        return {"result": {"ID": str(lid), "TTL": str(ttl)}}

    def _revoke_req(self, body: dict[str, Any]) -> dict[str, Any]:
        lid = int(body["ID"])
        if lid not in self.leases:
            raise EtcdError("etcdserver: requested lease not found", _NOT_FOUND)
        self._revoke(lid)
        return {}

    def _keys(self, body: dict[str, Any]) -> list[str]:
        key = _dec(body["key"])
        end = _dec(body["range_end"]) if body.get("range_end") else ""
        if not end:
            return [key] if key in self.kvs else []
        return sorted(k for k in self.kvs if key <= k < end)

    def _kv_json(self, key: str) -> dict[str, Any]:
        kv = self.kvs[key]
        out = {"key": _enc(key), "value": _enc(kv.value),
               "create_revision": str(kv.create_revision),
               "mod_revision": str(kv.mod_revision), "version": str(kv.version)}
        if kv.lease:
            out["lease"] = str(kv.lease)
        return out

    def _range(self, body: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys(body)
        out: dict[str, Any] = {}
        if keys:
            out["count"] = str(len(keys))
            if not body.get("count_only"):
                out["kvs"] = [self._kv_json(k) for k in keys]
        return out

    def _put(self, body: dict[str, Any], rev: int) -> None:
        key, lease = _dec(body["key"]), int(body.get("lease", 0))
        old = self.kvs.get(key)
        self.kvs[key] = _Kv(_dec(body.get("value", "")),
                            old.create_revision if old else rev, rev,
                            old.version + 1 if old else 1, lease)

    def _put_req(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_leases([body])
        self.revision += 1
        self._put(body, self.revision)
        return {}

    def _delete_req(self, body: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys(body)
        if keys:
            self.revision += 1
            for k in keys:
                del self.kvs[k]
        return {"deleted": str(len(keys))} if keys else {}

    def _check_leases(self, puts: list[dict[str, Any]]) -> None:
        for p in puts:
            if int(p.get("lease", 0)) and int(p["lease"]) not in self.leases:
                raise EtcdError("etcdserver: requested lease not found", _NOT_FOUND)

    def _compare(self, c: dict[str, Any]) -> bool:
        kv = self.kvs.get(_dec(c["key"]))
        target = c.get("target", "VERSION")
        if target == "VALUE":
            if kv is None:
                return False
            have: Any = kv.value
            want: Any = _dec(c.get("value", ""))
        else:
            field = {"CREATE": "create_revision", "MOD": "mod_revision", "VERSION": "version",
                     "LEASE": "lease"}[target]
            have = getattr(kv, field) if kv is not None else 0
            want = int(c.get(field, 0))
        result = c.get("result", "EQUAL")
        return {"EQUAL": have == want, "NOT_EQUAL": have != want, "GREATER": have > want,
                "LESS": have < want}[result]

    def _txn(self, body: dict[str, Any]) -> dict[str, Any]:
        ok = all(self._compare(c) for c in body.get("compare", []))
        ops = body.get("success" if ok else "failure", [])
        puts = [op["request_put"] for op in ops if "request_put" in op]
        self._check_leases(puts)
        writes = puts or any("request_delete_range" in op for op in ops)
        if writes:
            self.revision += 1
        responses: list[dict[str, Any]] = []
        for op in ops:
            if "request_range" in op:
                responses.append({"response_range": self._range(op["request_range"])})
            elif "request_put" in op:
                self._put(op["request_put"], self.revision)
                responses.append({"response_put": {}})
            elif "request_delete_range" in op:
                for k in self._keys(op["request_delete_range"]):
                    del self.kvs[k]
                responses.append({"response_delete_range": {}})
        out: dict[str, Any] = {"responses": responses} if responses else {}
        if ok:
            out["succeeded"] = True
        return out


class SimClient:
    """One host's client of an `EtcdSim`, with `EtcdClient`'s `call`. `reachable` False:
    every request fails as if no endpoint answered."""

    def __init__(self, sim: EtcdSim, request_timeout: float = 1.0) -> None:
        self.sim = sim
        self.request_timeout = request_timeout
        self.reachable = True
        self.requests = 0

    def call(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        if not self.reachable:
            raise EtcdUnreachable("etcd unreachable: sim: cut off")
        self.requests += 1
        return self.sim.request(path, body)

    def check(self, timeout: float) -> None:
        self.call("kv/range", {"key": _enc("/")}, timeout)
