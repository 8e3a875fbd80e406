"""The fleet view against a real etcd: publishers of three hosts in two pairs, read by
`coloctl list`; a dead publisher's record expires by its lease; wrong credentials named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colo_lab.etcd import EtcdCluster, start_single
from colo_lab.wait import wait_until
from colo_orch.daemon.etcd_arbiter import EtcdSettings
from colo_orch.daemon.fleet import FleetPublisher
from tests.support.etcd import orch_config

pytestmark = pytest.mark.host

TTL = 3  # the records' lease: short, to see a dead host's record go
PERIOD = 0.2


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with start_single(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


_n = iter(range(1000))


@pytest.fixture
def prefix() -> str:
    return f"/fleet{next(_n)}-{os.getpid()}"


def coloctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "colo_orch.cli.ctl", "list", *args],
                          capture_output=True, text=True, timeout=30)


def listed(etcd: EtcdCluster, prefix: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(pair, host) -> member, from `coloctl list --json`."""
    res = coloctl("--etcd", ",".join(etcd.endpoints), "--prefix", prefix, "--json")
    assert res.returncode in (0, 1), res.stderr
    doc = json.loads(res.stdout)
    return {(p["pair"], m["host"]): {**m, "pair_holder": p["lease_holder"]}
            for p in doc["pairs"] for m in p["members"]}


def publisher(etcd: EtcdCluster, prefix: str, pair: str, host: str, role: str,
              holder: str | None) -> FleetPublisher:
    status = {"name": pair, "host": host, "role": role, "state": "PROTECTED",
              "lease_holder": holder, "last_checkpoint_age_s": 0.25 if role == "primary"
              else None, "peer_seen_s_ago": 0.1, "proxy_connected": True}
    return FleetPublisher(EtcdSettings(endpoints=tuple(etcd.endpoints), prefix=prefix), pair,
                          host, lambda: status, f"127.0.0.1:{7400 + len(host)}", period=PERIOD,
                          ttl=TTL).start()


def test_list_shows_every_host_with_the_leader_from_the_leader_key(
        etcd: EtcdCluster, prefix: str) -> None:
    # h2 believes it holds web's lease; the leader key says h1: the key is the truth.
    pubs = [publisher(etcd, prefix, "web", "h1", "primary", "h1"),
            publisher(etcd, prefix, "web", "h2", "secondary", "h2"),
            publisher(etcd, prefix, "db", "d1", "primary", "d1")]
    try:
        etcd.ctl(["put", f"{prefix}/web/leader", "h1"])
        etcd.ctl(["put", f"{prefix}/db/leader", "d1"])
        got = wait_until(lambda: (lambda g: g if len(g) == 3 else None)(listed(etcd, prefix)),
                         5, "three hosts listed")
        assert sorted(got) == [("db", "d1"), ("web", "h1"), ("web", "h2")]
        assert [k for k, m in sorted(got.items()) if m["leader"]] == [("db", "d1"),
                                                                      ("web", "h1")]
        h1, h2 = got[("web", "h1")], got[("web", "h2")]
        assert h1["pair_holder"] == "h1" and h2["lease_holder"] == "h2"
        assert h1["role"] == "primary" and h1["state"] == "PROTECTED"
        assert h1["checkpoint_age_s"] == 0.25 and h2["checkpoint_age_s"] is None
        assert h1["heartbeat_age_s"] == 0.1 and h1["proxy"] == "connected"
        # The record is refreshed every period: its count goes on.
        seq = h1["seq"]
        wait_until(lambda: listed(etcd, prefix)[("web", "h1")]["seq"] > seq, 5 * PERIOD + 2,
                   "h1's record to be published again")
        res = coloctl("--etcd", etcd.endpoints[0], "--prefix", prefix)
        assert res.returncode == 0, res.stderr
        rows = {tuple(line.split()[:2]): line for line in res.stdout.splitlines()[1:]}
        assert set(rows) == {("db", "d1*"), ("web", "h1*"), ("web", "h2")}, res.stdout
        assert "h1 (sees h2)" in rows[("web", "h2")], res.stdout
    finally:
        for p in pubs:
            p.stop()


def test_a_dead_publishers_record_expires_a_stopped_ones_goes_at_once(
        etcd: EtcdCluster, prefix: str) -> None:
    a = publisher(etcd, prefix, "web", "h1", "primary", "h1")
    b = publisher(etcd, prefix, "web", "h2", "secondary", "h1")
    try:
        wait_until(lambda: len(listed(etcd, prefix)) == 2, 5, "both hosts listed")
        b.stop(revoke=False)  # dies: no keep-alive, no revoke
        died = time.monotonic()
        assert ("web", "h2") in listed(etcd, prefix)  # still there: only etcd expires it
        wait_until(lambda: ("web", "h2") not in listed(etcd, prefix), TTL + 2,
                   "h2's record to expire", every=0.1)
        gone = time.monotonic() - died
        print(f"a dead host's record went {gone:.2f} s after its publisher stopped (ttl {TTL})")
        assert gone >= TTL - TTL / 3 - PERIOD - 0.5  # not before its lease could expire
        assert ("web", "h1") in listed(etcd, prefix)
        a.stop()  # a clean exit revokes its record
        assert listed(etcd, prefix) == {}
    finally:
        a.stop()
        b.stop()


def test_an_empty_prefix_says_so(etcd: EtcdCluster, prefix: str) -> None:
    res = coloctl("--etcd", etcd.endpoints[0], "--prefix", prefix)
    assert res.returncode == 1 and res.stdout == ""
    assert f"no pairs under {prefix} at {etcd.endpoints[0]}" in res.stderr, res.stderr


def test_wrong_credentials_and_missing_permissions_are_named(etcd_auth: EtcdCluster, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    ep = etcd_auth.endpoints[0]
    res = coloctl("--etcd", ep, "--user", "orch", "--password-file", str(pw))
    assert res.returncode == 2
    assert f"etcd at {ep} refused user 'orch'" in res.stderr, res.stderr
    assert "--password-file" in res.stderr and "etcd_password_file" not in res.stderr
    res = coloctl("--etcd", ep)
    assert res.returncode == 2 and "requires authentication" in res.stderr, res.stderr
    assert "set --user and --password-file" in res.stderr, res.stderr
    pw.write_text("nobodypw\n")
    res = coloctl("--etcd", ep, "--user", "nobody", "--password-file", str(pw))
    assert res.returncode == 2, res.stderr
    assert ("user 'nobody' has no read permission on '/colo'" in res.stderr
            and "grant-permission ROLE --prefix=true read /colo/" in res.stderr), res.stderr
    # Reading is enough: a reader lists what the orchestrators (read-write) published.
    etcd_auth.ctl(["put", "/colo/web/leader", "h1"], user="root:rootpw")
    pw.write_text("readerpw\n")
    res = coloctl("--etcd", ep, "--user", "reader", "--password-file", str(pw), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pairs"] == [{"pair": "web", "lease_holder": "h1",
                                                "members": []}]


def test_colo_orch_publishes_its_record_and_removes_it_on_exit(
        etcd: EtcdCluster, tmp_path: Path, prefix: str) -> None:
    cfg = orch_config(tmp_path, "web", etcd.endpoints, f'etcd_prefix = "{prefix}"\n')
    log = tmp_path / "orch.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "colo_orch.cli.orch", "run", "--config",
                                 str(cfg), "--host-id", "hostA"], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        got = wait_until(lambda: listed(etcd, prefix).get(("web", "hostA")), 20,
                         "colo-orch's record", detail=log.read_text)
        assert got["role"] == "primary" and got["period_s"] == 1.0 and got["ttl_s"] == 10.0
        assert got["api"].startswith("127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert ("web", "hostA") not in listed(etcd, prefix), log.read_text()


def test_bad_values_are_rows_saying_so(etcd: EtcdCluster, prefix: str) -> None:
    etcd.ctl(["put", f"{prefix}/web/members/h1", "[]"])
    etcd.ctl(["put", f"{prefix}/web/members/h2", '{"format": 1, "pair": "web", "host": 7}'])
    etcd.ctl(["put", f"{prefix}/web/leader", "h2"])
    res = coloctl("--etcd", etcd.endpoints[0], "--prefix", prefix)
    assert res.returncode == 0, res.stderr
    rows = res.stdout.splitlines()[1:]
    assert rows[0].split()[:5] == ["web", "h1", "?", "BAD", "RECORD:"], res.stdout
    assert "a JSON list, not an object" in rows[0]
    assert rows[1].split()[:2] == ["web", "h2*"] and "field 'host' is 7" in rows[1], res.stdout
    got = listed(etcd, prefix)
    assert got[("web", "h1")]["bad"] and got[("web", "h2")]["leader"]
