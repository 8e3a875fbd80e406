"""The etcd arbiter against a real etcd on loopback: exclusive, expired by etcd alone, the
holder's safe_until before etcd's expiry, keys taken by hand noticed, endpoints tried in
turn, authentication and TLS refused with the fix named."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.etcd import EtcdCluster, free_port, start_cluster, start_single
from colo_lab.wait import wait_until
from colo_orch.daemon.arbiter import LeaseView
from colo_orch.daemon.etcd_arbiter import (
    EtcdArbiter,
    EtcdAuthError,
    EtcdSettings,
    EtcdUnreachable,
)
from tests.support.etcd import orch_config
from tests.support.pki import make_certs

pytestmark = pytest.mark.host

TTL = 3.0
MARGIN = 1.0
PERIOD = TTL / 3


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with start_single(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


class Loop:
    """Stands for the orchestrator's loop: says want(hold) every 50 ms until stopped."""

    def __init__(self, arbiter: EtcdArbiter, hold: bool = True) -> None:
        self.arbiter = arbiter
        self.hold = hold
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.arbiter.want(self.hold, time.monotonic())
            self._stop.wait(0.05)

    def wedge(self) -> None:
        self._stop.set()
        self._thread.join()


_pairs = iter(range(1000))


def _arbiter(endpoints: list[str], who: str, pair: str, **settings: str) -> EtcdArbiter:
    a = EtcdArbiter(EtcdSettings(endpoints=tuple(endpoints), **settings), pair, who, TTL, MARGIN)
    a.start()
    return a


@pytest.fixture
def pair() -> str:
    return f"p{next(_pairs)}-{os.getpid()}"


@pytest.fixture
def arbiters(etcd: EtcdCluster, pair: str) -> Iterator[list[EtcdArbiter]]:
    made = [_arbiter(etcd.endpoints, who, pair) for who in ("hostA", "hostB")]
    yield made
    for a in made:
        a.stop()
        a.release()


def _held(a: EtcdArbiter) -> LeaseView | None:
    v = a.view()
    return v if v.held and time.monotonic() < v.safe_until else None


def test_acquire_is_exclusive(arbiters: list[EtcdArbiter], etcd: EtcdCluster, pair: str) -> None:
    a, b = arbiters
    Loop(a)
    wait_until(lambda: _held(a), 5, "hostA to hold the lease")
    assert not b.acquire_now(1.0)
    wait_until(lambda: b.view().holder == "hostA", 2, "hostB to see hostA as the holder")
    assert not b.view().held
    got = etcd.ctl(["get", f"/colo/{pair}/leader", "--print-value-only"]).stdout.strip()
    assert got == "hostA"


def _stop_and_wait_for_takeover(a: EtcdArbiter, b: EtcdArbiter) -> tuple[float, float, float]:
    """Stop a's keeper; poll until b acquires. Returns (last renewal sent, a's safe_until,
    the time b acquired), all on this machine's monotonic clock."""
    a.stop()
    v = a.view()
    assert v.held
    last_sent = v.safe_until - TTL + MARGIN
    acquired = wait_until(lambda: b.acquire_now(0.5) and time.monotonic(), TTL + 5,
                          "hostB to acquire after hostA stopped renewing", every=0.02)
    return last_sent, v.safe_until, acquired


def test_lease_expires_by_etcd_after_ttl_when_the_holder_stops(
        arbiters: list[EtcdArbiter]) -> None:
    a, b = arbiters
    Loop(a)
    wait_until(lambda: _held(a), 5, "hostA to hold the lease")
    time.sleep(PERIOD * 1.5)  # let a keep-alive happen: measure from a renewal, not the grant
    last_sent, _, acquired = _stop_and_wait_for_takeover(a, b)
    after = acquired - last_sent
    print(f"hostB acquired {after:.3f} s after hostA's last keep-alive was sent (ttl {TTL})")
    assert TTL - 0.3 <= after <= TTL + 1.5


def test_a_restarted_holder_says_nothing_before_it_is_asked_then_adopts(
        arbiters: list[EtcdArbiter], etcd: EtcdCluster, pair: str) -> None:
    # A restarted primary's keeper once read "held by hostA, not by us" before the loop's
    # first want: the loop took that as an answer and fenced its output for a cycle
    # (51 ms, seen in test_restart). Until asked, the view must stay "not checked".
    a, _ = arbiters
    Loop(a)
    wait_until(lambda: _held(a), 5, "hostA to hold the lease")
    a.stop()  # killed: its key lives on in etcd
    again = _arbiter(etcd.endpoints, "hostA", pair)
    try:
        answered = []
        end = time.monotonic() + 4 * PERIOD  # a few keeper rounds, unasked
        while time.monotonic() < end:
            answered.append(again.view().checked_at > 0.0)
            time.sleep(0.01)  # sampling, not synchronisation
        assert not any(answered), "the keeper answered before the loop asked"
        again.want(True, time.monotonic())
        v = wait_until(lambda: _held(again), 5, "the restarted hostA to adopt its key")
        assert v.holder == "hostA"
    finally:
        again.stop()


def test_holders_safe_until_comes_before_etcds_expiry(arbiters: list[EtcdArbiter],
                                                      etcd: EtcdCluster, pair: str) -> None:
    a, b = arbiters
    for i in range(3):
        loop = Loop(a)
        wait_until(lambda: _held(a), 5, "hostA to hold the lease")
        time.sleep(0.3 * i)  # stop at different points of the keep-alive period
        _, safe_until, acquired = _stop_and_wait_for_takeover(a, b)
        loop.wedge()
        print(f"round {i}: safe_until {acquired - safe_until:.3f} s before hostB acquired")
        assert safe_until < acquired
        assert acquired - safe_until >= MARGIN - 0.3
        b.release()
        a.start()


def test_revoke_frees_the_key_at_once(arbiters: list[EtcdArbiter]) -> None:
    a, b = arbiters
    loop = Loop(a)
    wait_until(lambda: _held(a), 5, "hostA to hold the lease")
    loop.wedge()
    a.release()
    assert a.view().held is False
    assert b.acquire_now(0.5)
    # want(False) revokes too.
    loop_b = Loop(b)
    wait_until(lambda: _held(b), 5, "hostB to keep the lease")
    loop_b.hold = False
    wait_until(lambda: a.acquire_now(0.2), 1.0, "the key free as soon as hostB stops wanting it")


def test_a_wedged_loop_loses_the_lease(arbiters: list[EtcdArbiter]) -> None:
    a, b = arbiters
    loop = Loop(a)
    wait_until(lambda: _held(a), 5, "hostA to hold the lease")
    loop.wedge()
    t0 = time.monotonic()
    wait_until(lambda: not a.view().held, TTL, "hostA's keeper to give up the lease")
    took = time.monotonic() - t0
    print(f"a wedged loop lost the lease after {took:.3f} s")
    # Stale after ttl/3; the keeper looks every 0.25 s, then revokes.
    assert took <= TTL / 3 + 0.25 + 0.5
    assert b.acquire_now(0.5)


@pytest.mark.parametrize(("how", "why"), [
    (["del"], "leader key deleted by hand"),
    (["put", "_", "intruder"], "leader key now held by intruder"),
])
def test_key_taken_by_hand_makes_the_holder_step_down(
        arbiters: list[EtcdArbiter], etcd: EtcdCluster, pair: str, how: list[str],
        why: str) -> None:
    a, _ = arbiters
    Loop(a)
    wait_until(lambda: _held(a), 5, "hostA to hold the lease")
    key = f"/colo/{pair}/leader"
    etcd.ctl([how[0], key, *how[2:]])
    t0 = time.monotonic()
    v = wait_until(lambda: (lambda v: v if not v.held else None)(a.view()), PERIOD + 1.0,
                   "hostA to see it lost the key")
    print(f"{' '.join(how[:1])}: noticed after {time.monotonic() - t0:.3f} s: {v.error}")
    assert v.error == why
    # It stays off the key for a TTL, so that its loop sees the loss (and says why).
    time.sleep(0.5)
    assert not a.view().held and a.view().error == why


def test_a_dead_and_a_hung_endpoint_before_a_live_one(etcd: EtcdCluster, pair: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with socket.socket() as hung_sock:  # accepts connections, never answers
        hung_sock.bind(("127.0.0.1", 0))
        hung_sock.listen(16)
        hung = f"http://127.0.0.1:{hung_sock.getsockname()[1]}"
        a = _arbiter([dead, hung, *etcd.endpoints], "hostA", pair)
        b = _arbiter([hung, dead, *etcd.endpoints], "hostB", pair)
        try:
            Loop(a)
            t0 = time.monotonic()
            wait_until(lambda: _held(a), 5, "hostA to hold the lease past two bad endpoints")
            print(f"held after {time.monotonic() - t0:.3f} s")
            time.sleep(2 * PERIOD)
            assert _held(a), a.view()
            b.want(False, time.monotonic())  # as a secondary's loop says every cycle
            wait_until(lambda: b.view().holder == "hostA", 5, "hostB to read the holder")
        finally:
            a.stop()
            b.stop()
            a.release()


def test_unreachable_store_is_said_with_every_endpoint(pair: str) -> None:
    eps = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    a = _arbiter(eps, "hostA", pair)
    try:
        Loop(a)
        v = wait_until(lambda: (lambda v: v if v.checked_at else None)(a.view()), 3,
                       "a first answer")
        assert not v.reachable and not v.held
        for ep in eps:
            assert f"{ep}: connection refused" in v.error, v.error
        with pytest.raises(EtcdUnreachable, match=eps[1]):
            a.check(1.0)
    finally:
        a.stop()


def test_orch_started_with_etcd_down_names_the_endpoints_and_goes_on(
        tmp_path: Path, pair: str) -> None:
    eps = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    cfg = orch_config(tmp_path, pair, eps)
    log = tmp_path / "orch.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "colo_orch.cli.orch", "run", "--config",
                                 str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "etcd unreachable" in log.read_text(), 20, "the error at start",
                   detail=log.read_text)
        text = log.read_text()
        for ep in eps:
            assert ep in text
        assert proc.poll() is None, text  # it keeps going: the keeper retries
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# Authentication --------------------------------------------------------------------
def test_auth_right_credentials_hold_wrong_ones_are_named(
        etcd_auth: EtcdCluster, pair: str, tmp_path: Path) -> None:
    ep = etcd_auth.endpoints
    a = _arbiter(ep, "hostA", pair, user="orch", password="orchpw")
    try:
        a.check(2.0)
        Loop(a)
        wait_until(lambda: _held(a), 5, "hostA to hold the lease with its credentials")
        got = etcd_auth.ctl(["get", f"/colo/{pair}/leader", "--print-value-only"],
                            user="root:rootpw").stdout.strip()
        assert got == "hostA"
    finally:
        a.stop()
        a.release()
    bad = EtcdArbiter(EtcdSettings(endpoints=tuple(ep), user="orch", password="wrong"),
                      pair, "hostB", TTL, MARGIN)
    with pytest.raises(EtcdAuthError) as err:
        bad.check(2.0)
    msg = str(err.value)
    assert "'orch'" in msg and ep[0] in msg and "etcd_password_file" in msg, msg
    anon = EtcdArbiter(EtcdSettings(endpoints=tuple(ep)), pair, "hostB", TTL, MARGIN)
    with pytest.raises(EtcdAuthError, match=r"requires authentication.*set etcd_user"):
        anon.check(2.0)
    roleless = EtcdArbiter(EtcdSettings(endpoints=tuple(ep), user="nobody", password="nobodypw"),
                           pair, "hostB", TTL, MARGIN)
    with pytest.raises(EtcdAuthError, match=r"'nobody' has no read-write permission on "
                                            r"'/colo'.*grant-permission ROLE --prefix=true "
                                            r"readwrite /colo/"):
        roleless.check(2.0)
    # colo-orch run: exit 2 naming the user, the endpoint and the fix.
    pw = tmp_path / "etcd.pw"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    cfg = orch_config(tmp_path, pair, ep, f'etcd_user = "orch"\netcd_password_file = "{pw}"\n')
    res = subprocess.run([sys.executable, "-m", "colo_orch.cli.orch", "run", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    assert "refused user 'orch'" in res.stderr and ep[0] in res.stderr
    assert "etcd_password_file" in res.stderr
    pw.chmod(0o644)
    res = subprocess.run([sys.executable, "-m", "colo_orch.cli.orch", "run", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and f"chmod 600 {pw}" in res.stderr, res.stderr


# TLS ---------------------------------------------------------------------------------
def test_tls_with_client_certificates(tmp_path: Path, pair: str) -> None:
    d = tmp_path / "pki"
    make_certs(d, "good")
    make_certs(d, "other")
    tls = [f"--cert-file={d}/good-server.pem", f"--key-file={d}/good-server.key",
           "--client-cert-auth", f"--trusted-ca-file={d}/good-ca.pem"]
    ctl = [f"--cacert={d}/good-ca.pem", f"--cert={d}/good-client.pem",
           f"--key={d}/good-client.key"]
    with start_single(tmp_path / "tls", scheme="https", extra_args=tls, ctl_args=ctl) as c:
        good = {"ca_file": f"{d}/good-ca.pem", "cert_file": f"{d}/good-client.pem",
                "key_file": f"{d}/good-client.key"}
        a = _arbiter(c.endpoints, "hostA", pair, **good)
        try:
            Loop(a)
            wait_until(lambda: _held(a), 5, "hostA to hold the lease over TLS")
        finally:
            a.stop()
            a.release()
        untrusted = EtcdArbiter(EtcdSettings(endpoints=tuple(c.endpoints),
                                             **{**good, "ca_file": f"{d}/other-ca.pem"}),
                                pair, "hostB", TTL, MARGIN)
        with pytest.raises(EtcdUnreachable, match="certificate is not signed by etcd_ca_file"):
            untrusted.check(2.0)
        no_cert = EtcdArbiter(EtcdSettings(endpoints=tuple(c.endpoints),
                                           ca_file=f"{d}/good-ca.pem"), pair, "hostB", TTL,
                              MARGIN)
        with pytest.raises(EtcdUnreachable) as err:
            no_cert.check(2.0)
        assert c.endpoints[0] in str(err.value) and "etcd_cert_file" in str(err.value)


def test_check_config_asks_etcd(etcd: EtcdCluster, tmp_path: Path, pair: str) -> None:
    check = [sys.executable, "-m", "colo_orch.cli.orch", "check", "--config"]
    cfg = orch_config(tmp_path, pair, etcd.endpoints)
    res = subprocess.run([*check, str(cfg)], capture_output=True, text=True, timeout=60)
    assert "ok   arbiter" in res.stdout, res.stdout
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = orch_config(tmp_path, pair, [dead])
    res = subprocess.run([*check, str(cfg)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert (f"FAIL arbiter: etcd unreachable: {dead}: connection refused; start etcd or fix "
            "etcd_endpoints") in res.stdout, res.stdout


def test_three_members_one_down_holds_two_down_lapses_then_recovers(
        tmp_path: Path, pair: str) -> None:
    with start_cluster(tmp_path / "three", ["e0", "e1", "e2"]) as c:
        a = _arbiter(c.endpoints, "hostA", pair)
        try:
            Loop(a)
            wait_until(lambda: _held(a), 5, "hostA to hold the lease")
            # The first endpoint crashes, as a follower: a crashed leader adds an election,
            # whose length on this loaded two-core machine is etcd's business, not the
            # keeper's (measured once over 4 s, with both other members unanswering).
            c.move_leader("e1")
            c.kill("e0")
            sent = a.view().safe_until
            wait_until(lambda: a.view().safe_until > sent + PERIOD, 2 * PERIOD + 2,
                       "a keep-alive through the other members")
            c.kill("e1")  # no quorum: etcd can neither renew nor expire the lease
            v = wait_until(lambda: (lambda v: v if not v.reachable else None)(a.view()),
                           2 * PERIOD + 2, "the keeper to report etcd unanswering")
            assert c.members["e0"].client_url in v.error, v.error
            wait_until(lambda: not _held(a), TTL, "hostA's hold to lapse at safe_until")
            # Still ours in etcd's eyes, but not certain: a take-over must not count on it.
            a.stop()  # (so that acquire_now does not just find the keeper mid-request)
            assert not a.acquire_now(1.0)
            assert "etcd unreachable" in a.view().error
            a.start()
            for name in ("e0", "e1"):
                c.start(name, wait=False)
            c.wait_healthy()
            t0 = time.monotonic()
            wait_until(lambda: _held(a), 15, "hostA to hold the lease again")
            print(f"held again {time.monotonic() - t0:.3f} s after quorum came back")
        finally:
            a.stop()
            a.release()


class SyncLoop(Loop):
    """A loop that also says, every cycle, what the sync key should say."""

    def __init__(self, arbiter: EtcdArbiter, record: str) -> None:
        self.record = record
        super().__init__(arbiter)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.arbiter.want_sync(self.record)
            self.arbiter.want(self.hold, time.monotonic())
            self._stop.wait(0.05)


def _sync(etcd: EtcdCluster, pair: str) -> str:
    return etcd.ctl(["get", f"/colo/{pair}/sync", "--print-value-only"]).stdout.strip()


def test_a_secondary_refuses_to_take_over_after_the_primary_recorded_alone(
        arbiters: list[EtcdArbiter], etcd: EtcdCluster, pair: str) -> None:
    # S6: the primary served alone, then lost etcd: the secondary's copy is stale.
    a, b = arbiters
    SyncLoop(a, "alone")
    wait_until(lambda: _held(a) and a.view().alone_recorded, 5, "hostA to record alone")
    assert _sync(etcd, pair) == "alone:hostA"
    a.stop()  # cut off from etcd: its lease lapses
    b.want_sync("")
    # (Stale already while hostA holds the key: its copy is stale either way.)
    v = wait_until(lambda: (not b.acquire_now(0.5) and b.view().holder is None
                            and b.view()), TTL + 5,
                   "hostB to find the leader key free", every=0.05)
    assert v.stale and "our copy is stale" in v.error
    assert not b.acquire_now(0.5)
    got = etcd.ctl(["get", f"/colo/{pair}/leader", "--print-value-only"]).stdout.strip()
    assert got == ""


def test_a_secondary_takes_over_once_the_primary_recorded_protected(
        arbiters: list[EtcdArbiter], etcd: EtcdCluster, pair: str) -> None:
    a, b = arbiters
    loop = SyncLoop(a, "alone")
    wait_until(lambda: _held(a) and a.view().alone_recorded, 5, "hostA to record alone")
    loop.record = "protected"  # re-protected: the secondary's copy is current again
    wait_until(lambda: _sync(etcd, pair) == "protected", 5, "hostA to record protected")
    assert not a.view().alone_recorded
    a.stop()
    b.want_sync("")
    wait_until(lambda: b.acquire_now(0.5), TTL + 5, "hostB to take over", every=0.05)
    assert not b.view().stale


def test_a_primary_cut_off_while_its_secondary_took_over_refuses_the_lease(
        arbiters: list[EtcdArbiter], etcd: EtcdCluster, pair: str) -> None:
    # S6, the reverse case: hostB took over (and recorded it) while hostA, the primary,
    # was cut off and holding output. hostB then loses etcd too: hostA's VM is stale and
    # must not serve again on a lease that has come free.
    a, b = arbiters
    SyncLoop(b, "alone")
    wait_until(lambda: _held(b) and b.view().alone_recorded, 5, "hostB to record alone")
    assert _sync(etcd, pair) == "alone:hostB"
    b.stop()
    a.want_sync("")
    v = wait_until(lambda: (not a.acquire_now(0.5) and a.view().holder is None
                            and a.view()), TTL + 5,
                   "hostA to find the leader key free", every=0.05)
    assert v.stale and "our copy is stale" in v.error
    got = etcd.ctl(["get", f"/colo/{pair}/leader", "--print-value-only"]).stdout.strip()
    assert got == ""
    # Its own record does not refuse a host: hostB, back, may hold the lease again.
    b2 = _arbiter(etcd.endpoints, "hostB", pair)
    try:
        assert b2.acquire_now(2.0)
        assert not b2.view().stale
    finally:
        b2.stop()


def test_only_the_holder_of_the_leader_key_can_record_alone(
        arbiters: list[EtcdArbiter], etcd: EtcdCluster, pair: str) -> None:
    a, b = arbiters
    loop = SyncLoop(a, "")
    wait_until(lambda: _held(a), 5, "hostA to hold the lease")
    b.want_sync("alone")  # b holds nothing: its keeper writes nothing
    # The key is taken from a (by hand) just before its keeper records: the record's
    # transaction compares the leader key's value and lease, and fails.
    with a._io:
        etcd.ctl(["put", f"/colo/{pair}/leader", "intruder"])
        loop.record = "alone"
        a.want_sync("alone")
    v = wait_until(lambda: (lambda v: v if not v.held else None)(a.view()), PERIOD + 2,
                   "hostA to see it lost the key")
    assert not v.alone_recorded
    assert _sync(etcd, pair) == ""
