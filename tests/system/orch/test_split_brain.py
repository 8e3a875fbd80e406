"""Split-brain safety of a real QEMU COLO pair with the lab's real 3-member etcd cluster.

Each test injects one fault while a client works on ONE persistent connection (PUT/GET of
unique keys, every answer checked; every acknowledged key is read back at the end, and a
request that errored counts as unknown, not lost) and a sampler on the LAN bridge counts
the VM's MAC per host port: no sampling interval may see it from both hosts.

Measured per scenario, and printed (and appended as a JSON line to the file named by
COLO_FAULT_REPORT, when set): the client's pause (the longest gap between two successive
successful requests from the fault to the end) and the time from the heal to both hosts
PROTECTED again.

The SIGKILL/restart scenarios of colo-orch and colo-proxy are in test_restart.py.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from colo_lab import etcd_net, faults, pair
from colo_lab.lab import Lab
from colo_lab.wait import wait_until
from colo_orch.core.config import Timing, load
from colo_orch.core.heartbeat_msg import encode
from colo_orch.core.state import State
from tests.support import datagrams
from tests.support.workload import PORTS, Workload

# A test that spoils the lab boots the next one's (25-30 s under TCG), and a fault case
# takes 35-50 s more here: 60 s, the suite's default, ran out on a loaded machine.
pytestmark = [pytest.mark.lab(proxy=True), pytest.mark.timeout(180)]

# The states of a healthy pair: a checkpoint passes through CHECKPOINTING.
HEALTHY = {"PROTECTED", "CHECKPOINTING"}
REPROTECT_S = 30.0  # the bound for re-protection after a heal, unattended
REPORT_ENV = "COLO_FAULT_REPORT"
THIRD_ADDRESS = "10.99.1.7"  # on the control network, but no host's


def _timing(lab: Lab) -> Timing:
    return load(lab.run_dir / "orch-primary.toml").timing


def _report(scenario: str, **values: Any) -> None:
    rec = {"scenario": scenario, **{k: round(v, 3) if isinstance(v, float) else v
                                    for k, v in values.items()}}
    line = json.dumps(rec)
    print(f"\nFAULT REPORT {line}")
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _hold(work: Workload, seconds: float) -> None:
    """Keep the fault for `seconds` while checking that the client goes on."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= end, seconds + 5, f"{seconds} s of fault")
    work.watch.wait_more(5, 60)


def _handed_over(work: Workload, samples: int) -> tuple[float, float]:
    """In the first `samples` LAN samples: the last with the VM's output on the primary
    host's port, and the first on the secondary's, the one strictly after the other."""
    taken = work.sampler.samples[:samples]
    last_pri = max(s["t"] for s in taken if PORTS["primary"] in s["n"])
    first_sec = min(s["t"] for s in taken if PORTS["secondary"] in s["n"])
    assert last_pri < first_sec
    return last_pri, first_sec


def _wait_protected(lab: Lab, roles: tuple[str, str], timeout: float) -> float:
    """Until both hosts are PROTECTED in `roles` (primary host's, secondary host's);
    returns how long that took."""
    t0 = time.monotonic()

    def both() -> bool:
        got = [pair.state(lab, h, timeout=2) for h in ("primary", "secondary")]
        return all(g.get("state") == "PROTECTED" for g in got) and tuple(
            g.get("role") for g in got) == roles

    wait_until(both, timeout, f"both hosts PROTECTED as {roles}", every=0.1,
               detail=lambda: str([(h, pair.state(lab, h).get("state"))
                                   for h in ("primary", "secondary")]))
    return time.monotonic() - t0


@pytest.fixture
def work_factory(lab: Lab) -> Any:
    made: list[Workload] = []

    def make(name: str, random_every: int = 0) -> Workload:
        w = Workload(lab, name, random_every)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


# 5. Forged, replayed and garbage heartbeats -----------------------------------------------
def _heartbeat_counts(lab: Lab, host: str) -> dict[str, int]:
    return dict(pair.state(lab, host)["heartbeats"])


def test_forged_replayed_and_garbage_heartbeats_change_nothing(lab: Lab, work_factory: Any
                                                               ) -> None:
    work = work_factory("hb")
    port = pair.HEARTBEAT_PORT
    before = {h: pair.state(lab, h) for h in ("primary", "secondary")}
    counts = {h: _heartbeat_counts(lab, h) for h in ("primary", "secondary")}
    since = time.monotonic()
    start = work.mark()
    expected = {}
    for target, peer in (("secondary", "primary"), ("primary", "secondary")):
        dst = lab.hosts[target].ctl_ip
        src = lab.hosts[peer].ctl_ip
        # A real heartbeat of the peer, as the peer's orchestrator sent it.
        real = bytes.fromhex(json.loads(datagrams.in_ns(
            lab.hosts[target].ns, "capture", "--dev", "ctl0", "--src", src,
            "--dport", str(port)))["hex"])
        claim = {"state": int(State.ALONE), "role": "primary", "vm_ok": True,
                 "incoming": "tcp:203.0.113.9:4444", "proxy_ready": True}
        wrong_key = encode(b"k" * 32, pair.PAIR, 1, 10**9, claim, None)
        from_peer = [b"[]", b"", b"x", os.urandom(datagrams.RAW_MAX),
                     bytes(32) + b'{"v": 1}', wrong_key]
        from_third = [b"[]", real, wrong_key, os.urandom(60_000)]
        for source, payloads in ((src, from_peer), (THIRD_ADDRESS, from_third)):
            datagrams.in_ns(lab.hosts[peer].ns, "send", "--src", source, "--sport", str(port),
                            "--dst", dst, "--dport", str(port),
                            *[a for p in payloads for a in ("--hex", p.hex())])
        # The replay from the peer's own address and port: authentic, but an old number.
        datagrams.in_ns(lab.hosts[peer].ns, "send", "--src", src, "--sport", str(port),
                        "--dst", dst, "--dport", str(port), "--hex", real.hex())
        expected[target] = (len(from_peer) + len(from_third), 1)

    for host, (rejected, replayed) in expected.items():
        def counted(host: str = host, rejected: int = rejected, replayed: int = replayed
                    ) -> bool:
            now = _heartbeat_counts(lab, host)
            return (now["rejected"] - counts[host]["rejected"] >= rejected
                    and now["replayed"] - counts[host]["replayed"] >= replayed)

        wait_until(counted, 10, f"{host} to count the forged heartbeats",
                   detail=lambda host=host: str(_heartbeat_counts(lab, host)))
        now = _heartbeat_counts(lab, host)
        assert now["rejected"] - counts[host]["rejected"] == rejected
        assert now["replayed"] - counts[host]["replayed"] == replayed
        m = pair.metrics(lab, host)
        assert m["colo_heartbeat_rejected_total"] == now["rejected"]
        assert m["colo_heartbeat_replayed_total"] == now["replayed"]
        assert m["colo_peer_up"] == 1
    # Some heartbeats later, still nothing changed.
    _hold(work, 2 * _timing(lab).heartbeat_timeout)
    for host in ("primary", "secondary"):
        assert work.poller.states(host, since) <= HEALTHY, work.poller.states(host, since)
        st = pair.state(lab, host)
        assert st["role"] == before[host]["role"]
        assert st["failovers"] == before[host]["failovers"]
        assert st["reprotections"] == before[host]["reprotections"]
    pause = work.pause(start)
    summary = work.finish()
    assert summary["errors"] == 0 and summary["connections"] == 1, (summary, work.watch.errors())
    _report("forged heartbeats", client_pause_s=pause, reprotect_s=0.0,
            requests=summary["ok"], rejected={h: e[0] for h, e in expected.items()})


# 3. The secondary cut off from etcd --------------------------------------------------------
def test_secondary_cut_from_etcd_is_invisible(lab: Lab, work_factory: Any) -> None:
    t = _timing(lab)
    hold = t.lease_ttl + t.heartbeat_timeout + 2
    work = work_factory("secetcd")
    # The healthy pair's own slowest request, over as long a window with a checkpoint in
    # it: a checkpoint pauses the PVM, so that is the slowest a request gets unfaulted.
    base = work.mark()
    before = pair.checkpoint_count(lab, "primary")
    pair.api(lab, "primary", "POST", "/checkpoint")
    wait_until(lambda: pair.checkpoint_count(lab, "primary") > before, 20, "a checkpoint")
    _hold(work, hold)
    baseline = work.slowest(base)
    # Twice the slowest healthy request (measured here: 0.19 to 0.35 s under TCG on two
    # shared cores, a checkpoint's PVM pause being about 50 ms of it), and never less
    # than 0.5 s against that noise; but at most heartbeat_timeout: anything the fault
    # could cost clients (a fence, a take-over attempt, a failsafe ending) stops output
    # for at least that long, so a request within the bound saw none of it.
    bound = min(max(2 * baseline, 0.5), t.heartbeat_timeout)
    since = time.monotonic()
    start = work.mark()
    faults.cut(lab, "secondary", "etcd")
    try:
        wait_until(lambda: not etcd_net.healthy(lab, "secondary"), 10,
                   "etcd unreachable from the secondary")
        _hold(work, hold)
    finally:
        faults.heal(lab, "secondary", "etcd")
    end = work.mark()
    slowest = work.slowest(start, end)
    pause = work.pause(start, end)
    for host in ("primary", "secondary"):
        assert work.poller.states(host, since) <= HEALTHY, work.poller.states(host, since)
    assert work.watch.errors() == []
    assert slowest <= bound, f"a request took {slowest:.3f} s (bound {bound:.3f} s)"
    summary = work.finish()
    assert summary["errors"] == 0 and summary["connections"] == 1, (summary, work.watch.errors())
    _report("secondary cut from etcd", client_pause_s=pause, slowest_request_s=slowest,
            bound_s=bound, healthy_slowest_s=baseline, reprotect_s=0.0,
            requests=summary["ok"])


# 4. Two of three etcd members killed -------------------------------------------------------
def test_etcd_quorum_loss_keeps_service_and_protection(lab: Lab, work_factory: Any) -> None:
    t = _timing(lab)
    work = work_factory("quorum")
    since = time.monotonic()
    start = work.mark()
    killed = (2, 3)
    try:
        for i in killed:
            faults.kill_etcd_member(lab, i)
        wait_until(lambda: pair.state(lab, "primary").get("lease_reachable") is False,
                   3 * t.lease_ttl, "the primary to see etcd without quorum")
        # Longer than the lease could have lasted: the pair goes on by the failsafe alone.
        _hold(work, t.lease_ttl + t.heartbeat_timeout + 1)
        # A divergence still checkpoints: /random answers differently on the two VMs.
        payload = pair.state(lab, "primary")["checkpoints"].get("payload", 0)
        assert lab.http("/random")[0] == 200
        wait_until(lambda: pair.state(lab, "primary")["checkpoints"].get("payload", 0)
                   > payload, 20, "a checkpoint for the divergence")
        for host in ("primary", "secondary"):
            assert work.poller.states(host, since) <= HEALTHY, work.poller.states(host, since)
        assert pair.state(lab, "primary")["lease_reachable"] is False
    finally:
        for i in killed:
            if not etcd_net.member_pids(lab, i):
                faults.start_etcd_member(lab, i)
    healed = time.monotonic()
    etcd_net.wait_healthy(lab, 30)

    def held() -> bool:
        st = pair.state(lab, "primary")
        return (bool(st.get("lease_reachable")) and st.get("lease_holder") == "pri"
                and pair.metrics(lab, "primary")["colo_arbiter_lease_held"] == 1)

    wait_until(held, 30, "the primary to hold the lease again",
               detail=lambda: f"{pair.state(lab, 'primary')}; lease_held "
               f"{pair.metrics(lab, 'primary')['colo_arbiter_lease_held']}")
    relet = time.monotonic() - healed
    for host in ("primary", "secondary"):
        assert work.poller.states(host, since) <= HEALTHY, work.poller.states(host, since)
    pause = work.pause(start)
    summary = work.finish()
    assert summary["errors"] == 0 and summary["connections"] == 1, (summary, work.watch.errors())
    _report("2 of 3 etcd members killed", client_pause_s=pause, reprotect_s=0.0,
            lease_again_s=relet, requests=summary["ok"])


# 1. The control link cut -------------------------------------------------------------------
def _control_link_cut(lab: Lab, work: Workload, scenario: str) -> None:
    t = _timing(lab)
    p_sec = work.sampler.seen(PORTS["secondary"])
    p_pri = work.sampler.seen(PORTS["primary"])
    since = time.monotonic()
    start = work.mark()
    faults.cut(lab, "primary", "control")  # the veth pair: both ends lose their carrier
    try:
        pair.wait_state(lab, "primary", "ALONE", t.heartbeat_timeout + 10)
        # Long enough for the secondary to take over, were it going to.
        _hold(work, t.lease_ttl + t.heartbeat_timeout + 2)
        # S6: the primary recorded "alone" before serving: the secondary finds its copy
        # stale when it tries to take over, and fences it at once (FENCED) instead of
        # waiting in PROTECTED for the heal.
        assert work.poller.states("secondary", since) <= HEALTHY | {"FENCED"}
        assert work.sampler.seen(PORTS["secondary"]) == p_sec, "the secondary served"
        assert work.sampler.seen(PORTS["primary"]) > p_pri, "the primary did not serve"
    finally:
        faults.heal(lab, "primary", "control")
    healed = work.mark()
    reprotect = _wait_protected(lab, ("primary", "secondary"), REPROTECT_S)
    # The secondary fenced its stale VM and started a new one.
    recent = pair.state(lab, "secondary")["recent"]
    assert any("stale" in s and "fencing" in s for s in recent), recent
    work.watch.wait_more(10, 60)
    pause, after = work.pause(start, healed), work.pause(healed)
    summary = work.finish()
    assert summary["errors"] == 0 and summary["connections"] == 1, (summary, work.watch.errors())
    _report(scenario, client_pause_s=pause, reprotect_s=reprotect,
            client_pause_after_heal_s=after, requests=summary["ok"])


def test_a_checkpoint_stuck_on_a_cut_control_link_is_abandoned(lab: Lab, work_factory: Any
                                                               ) -> None:
    # Seen in a run of the test below: the cut came just before a periodic checkpoint,
    # whose COLO stream then blocked on the dead link, and the primary sat in
    # CHECKPOINTING past the 11 s the test allows. Here the checkpoint is asked for just
    # after the cut, on purpose. The COLO stream has a link of its own now (mig0): both
    # go down, as when one cable or switch carries them between two real hosts; with the
    # migration link up the checkpoint simply completes.
    t = _timing(lab)
    work = work_factory("ckcut")
    since = time.monotonic()
    start = work.mark()
    faults.cut(lab, "primary", "control")
    faults.cut(lab, "primary", "migration")
    try:
        pair.api(lab, "primary", "POST", "/checkpoint")
        pair.wait_state(lab, "primary", "ALONE", t.heartbeat_timeout + 5)
        alone_after = time.monotonic() - since
        assert "CHECKPOINTING" in work.poller.states("primary", since)
        work.watch.wait_more(5, 60)
    finally:
        faults.heal(lab, "primary", "migration")
        faults.heal(lab, "primary", "control")
    healed = work.mark()
    reprotect = _wait_protected(lab, ("primary", "secondary"), REPROTECT_S)
    work.watch.wait_more(5, 60)
    pause = work.pause(start, healed)
    summary = work.finish()
    assert summary["errors"] == 0 and summary["connections"] == 1, (summary, work.watch.errors())
    _report("checkpoint on a cut control link", client_pause_s=pause, alone_s=alone_after,
            reprotect_s=reprotect, requests=summary["ok"])


def test_control_link_cut_one_host_serves_then_reprotects(lab: Lab, work_factory: Any
                                                          ) -> None:
    _control_link_cut(lab, work_factory("ctl"), "control link cut (proxy)")


# 2. The primary isolated from the peer and from etcd -------------------------------------
@pytest.mark.lab(spoils=True)  # the roles end swapped: the next test needs a fresh lab
def test_isolated_primary_holds_output_before_the_secondary_takes_over(
        lab: Lab, work_factory: Any) -> None:
    t = _timing(lab)
    work = work_factory("iso")
    since = time.monotonic()
    start = work.mark()
    # etcd first: the three cuts take tens of ms, and a keep-alive answered between the
    # control cut and the etcd cut is a second, later fault (the store lost after the
    # primary went alone, S6): the next test covers that order.
    links = ("etcd", "control", "forward")
    cut_at = time.monotonic()
    for link in links:
        faults.cut(lab, "primary", link)
    try:
        pair.wait_state(lab, "secondary", "ALONE", t.lease_ttl + t.heartbeat_timeout + 10)
        took = time.monotonic() - cut_at
        held = work.poller.first("primary", "HOLDING", since)
        assert held is not None, work.poller.states("primary", since)
        taken = work.poller.first("secondary", "ALONE", since) or time.monotonic()
        assert held < taken
        work.watch.wait_more(10, 60)
        healed_samples = len(work.sampler.samples)
    finally:
        for link in links:
            faults.heal(lab, "primary", link)
    healed = work.mark()
    assert took <= t.lease_ttl + t.heartbeat_timeout + 1, f"took over after {took:.2f} s"
    last_pri, first_sec = _handed_over(work, healed_samples)
    reprotect = _wait_protected(lab, ("secondary", "primary"), REPROTECT_S)
    work.watch.wait_more(10, 60)
    pause, after = work.pause(start, healed), work.pause(healed)
    summary = work.finish()
    assert summary["errors"] == 0, (summary, work.watch.errors())
    _report("primary isolated (control, forward, etcd)", client_pause_s=pause,
            client_pause_after_heal_s=after,
            takeover_s=took, reprotect_s=reprotect, output_gap_s=first_sec - last_pri,
            requests=summary["ok"], connections=summary["connections"])


# 2 again, the control link cut first: the store lost after the primary may have gone alone.
@pytest.mark.lab(spoils=True)  # the roles may end swapped: the next test needs a fresh lab
def test_primary_losing_etcd_after_it_went_alone_loses_no_acknowledged_write(
        lab: Lab, work_factory: Any) -> None:
    # The old order: the primary may renew (S5) and serve alone in the tens of ms before
    # its etcd link goes (5 acknowledged PUTs lost in one CI run before S6). Now either
    # the etcd cut came first and the secondary takes over as in the test above, or the
    # primary recorded "alone" first and the secondary, its copy stale, fences instead of
    # taking over; the pair then waits for the heal, and nothing acknowledged is lost.
    t = _timing(lab)
    work = work_factory("iso2")
    since = time.monotonic()
    start = work.mark()
    links = ("control", "forward", "etcd")
    for link in links:
        faults.cut(lab, "primary", link)
    try:
        got = pair.wait_state(lab, "secondary", {"ALONE", "FENCED"},
                              t.lease_ttl + t.heartbeat_timeout + 10)
        took_over = got["state"] == "ALONE"
        held = work.poller.first("primary", "HOLDING", since)
        if not took_over:  # the primary fences once its hold ends, without etcd
            wait_until(lambda: work.poller.first("primary", "HOLDING", since), t.lease_ttl + 10,
                       "the primary to hold its output", every=0.1)
            held = work.poller.first("primary", "HOLDING", since)
        assert held is not None, work.poller.states("primary", since)
        if took_over:
            taken = work.poller.first("secondary", "ALONE", since) or time.monotonic()
            assert held < taken
            work.watch.wait_more(10, 60)
    finally:
        for link in links:
            faults.heal(lab, "primary", link)
    roles = ("secondary", "primary") if took_over else ("primary", "secondary")
    reprotect = _wait_protected(lab, roles, REPROTECT_S)
    work.watch.wait_more(10, 60)
    pause = work.pause(start)
    summary = work.finish()
    assert summary["errors"] == 0, (summary, work.watch.errors())
    _report("primary isolated (control, forward, then etcd)", took_over=took_over,
            client_pause_s=pause, reprotect_s=reprotect, requests=summary["ok"],
            connections=summary["connections"])


# 2 reversed: the new primary loses etcd while the old one, still cut off, holds output.
@pytest.mark.lab(spoils=True)  # the roles end swapped: the next test needs a fresh lab
def test_old_primary_never_serves_its_stale_copy_when_the_new_one_loses_etcd(
        lab: Lab, work_factory: Any) -> None:
    # S6's reverse case: the secondary takes over and acknowledges writes the old
    # primary's VM never saw; then it loses etcd, and the old primary gets etcd back
    # (its peer links still cut: it cannot see the new primary). The leader key comes
    # free once the new primary's lease lapses; taking it, the old primary would serve
    # its stale copy. The sync key says alone:<secondary>, so it fences for good.
    t = _timing(lab)
    work = work_factory("rev")
    since = time.monotonic()
    start = work.mark()
    pri_links = ("etcd", "control", "forward")
    for link in pri_links:
        faults.cut(lab, "primary", link)
    sec_cut = False
    try:
        pair.wait_state(lab, "secondary", "ALONE", t.lease_ttl + t.heartbeat_timeout + 10)
        assert work.poller.first("primary", "HOLDING", since) is not None
        work.watch.wait_more(10, 60)  # writes that only the new primary's VM holds
        second = time.monotonic()
        faults.cut(lab, "secondary", "etcd")
        sec_cut = True
        faults.heal(lab, "primary", "etcd")
        pair.wait_state(lab, "secondary", "HOLDING", t.lease_ttl + 10)
        fenced = pair.wait_state(lab, "primary", "FENCED", 3 * t.lease_ttl + 10)
        fenced_after = time.monotonic() - second
        assert "stale" in json.dumps(fenced), fenced
        served = work.poller.states("primary", second) & {"ALONE", "FAILING_OVER"}
        assert not served, f"the old primary served its stale copy: {served}"
    finally:
        if sec_cut:
            faults.heal(lab, "secondary", "etcd")
        for link in pri_links:
            faults.heal(lab, "primary", link)
    healed = work.mark()
    reprotect = _wait_protected(lab, ("secondary", "primary"), REPROTECT_S)
    work.watch.wait_more(10, 60)
    served = work.poller.states("primary", second) & {"ALONE", "FAILING_OVER"}
    assert not served, f"the old primary served its stale copy: {served}"
    pause = work.pause(start, healed)
    summary = work.finish()
    assert summary["errors"] == 0, (summary, work.watch.errors())
    _report("new primary loses etcd, old one (cut off) gets it back", client_pause_s=pause,
            old_primary_fenced_s=fenced_after, reprotect_s=reprotect,
            requests=summary["ok"], connections=summary["connections"])


# 1 again, without a proxy: the LAN uplink alone steers and fences the output.
@pytest.mark.lab(proxy=False)
def test_control_link_cut_without_proxy(lab: Lab, work_factory: Any) -> None:
    _control_link_cut(lab, work_factory("ctlnp"), "control link cut (no proxy)")



# 6. The primary's orchestrator stopped (SIGSTOP): it cannot fence its proxy --------------
class _PermitWatch:
    """The primary's colo-proxy status (its release permit, its released packets) and the
    secondary's state, every 20 ms on threads of their own: a stopped orchestrator's API
    never answers, and must not delay the other's samples."""

    def __init__(self, lab: Lab) -> None:
        import threading

        from colo_proxy.service.control_socket import request, status_path_for

        self.proxy: list[tuple[float, bool, int, int]] = []  # t, allows, accepted, lapses
        self.secondary: list[tuple[float, str]] = []
        self._stop = threading.Event()
        path = status_path_for(str(lab.run_dir / "proxy-pri.sock"))

        def proxy() -> None:
            while not self._stop.wait(0.02):
                try:
                    st = request(path, {"type": "status"}, timeout=1.0)
                except (OSError, ValueError):
                    continue
                p = st.get("permit", {})
                self.proxy.append((time.monotonic(), bool(p.get("allows")),
                                   int(st.get("accepted_packets", 0)),
                                   int(p.get("lapses", 0))))

        def secondary() -> None:
            while not self._stop.wait(0.02):
                s = pair.state(lab, "secondary", timeout=1.0).get("state")
                if s:
                    self.secondary.append((time.monotonic(), str(s)))

        self._threads = [threading.Thread(target=f, daemon=True) for f in (proxy, secondary)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


@pytest.mark.lab(spoils=True)  # the roles end swapped: the next test needs a fresh lab
def test_a_stopped_primary_orchestrators_proxy_stops_releasing_before_the_takeover(
        lab: Lab, work_factory: Any) -> None:
    """docs/RELIABILITY.md, "stop-orch of the PVM's host": the proxy released a compared
    packet after the secondary took over, since its stopped orchestrator could not fence
    it. Its release permit now runs out first (docs/PROXY.md, "Release permit")."""
    import signal

    t = _timing(lab)
    work = work_factory("stoporch")
    start = work.mark()
    orch = pair.orchestrator_pid(lab, "primary")
    assert orch is not None
    watch = _PermitWatch(lab)
    wait_until(lambda: any(s[1] for s in watch.proxy), 10, "a permit on the primary's proxy")
    since = time.monotonic()
    os.kill(orch, signal.SIGSTOP)
    try:
        pair.wait_state(lab, "secondary", {"FAILING_OVER", "ALONE"},
                        t.lease_ttl + t.heartbeat_timeout + 10)
        work.watch.wait_more(10, 60)  # the new primary serves the client
        stopped_samples = len(work.sampler.samples)
        end = time.monotonic()
    finally:
        os.kill(orch, signal.SIGCONT)
    healed = work.mark()
    watch.stop()
    proxy = [s for s in watch.proxy if since <= s[0] <= end]
    lapsed = next((s for s in proxy if not s[1]), None)
    assert lapsed is not None, proxy[-5:]
    taken = next(ts for ts, st in watch.secondary if ts >= since and st in
                 {"FAILING_OVER", "ALONE"})
    # The permit ran out (and the proxy said so) before the secondary began to take over,
    assert lapsed[0] < taken and lapsed[3] >= 1, (lapsed, taken)
    # and nothing more went out of the old primary while its orchestrator was stopped.
    assert {s[2] for s in proxy if s[0] >= lapsed[0]} == {lapsed[2]}, proxy[-5:]
    last_pri, first_sec = _handed_over(work, stopped_samples)
    # Back (SIGCONT), the old primary finds it lost the lease, fences and re-protects.
    reprotect = _wait_protected(lab, ("secondary", "primary"), REPROTECT_S)
    work.watch.wait_more(10, 60)
    pause = work.pause(start, healed)
    summary = work.finish()
    assert summary["errors"] == 0, (summary, work.watch.errors())
    _report("primary's colo-orch stopped", client_pause_s=pause,
            permit_lapse_before_takeover_s=taken - lapsed[0],
            lapse_after_stop_s=lapsed[0] - since, output_gap_s=first_sec - last_pri,
            reprotect_s=reprotect, requests=summary["ok"])
