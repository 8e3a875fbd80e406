"""The orchestrators with colo-proxy in the data path, against a real client.

A checking client keeps ONE persistent TCP connection and a PUT+GET loop going
through the proxies while VMs are killed; every answer must be correct and the
connection must never be reset. Non-deterministic requests must cause "payload"
checkpoints within the rate limit, and deterministic traffic none.
"""

from __future__ import annotations

import json
import time

import pytest

from colo_lab import guest, pair
from colo_lab.client import Watch
from colo_lab.lab import VM_IP, Lab
from colo_lab.wait import wait_until

pytestmark = pytest.mark.lab(proxy=True)


def _client(lab: Lab, *args: str) -> Watch:
    """colo_lab.client in the client namespace; its JSON lines collected as they come."""
    return Watch(lab.client_ns, "--host", VM_IP, "--duration", "900", "--timeout", "10", *args)


def _checkpoints(lab: Lab, host: str) -> dict[str, int]:
    """Checkpoints by reason, without the periodic ones (a safety net that may fire any time)."""
    cps = dict(pair.state(lab, host).get("checkpoints", {}))
    cps.pop("periodic", None)
    return cps


@pytest.mark.timeout(90)  # 30 s here, with the boot
def test_pvm_killed_twice_client_never_notices(lab: Lab) -> None:
    client = _client(lab, "--random-every", "7")
    try:
        client.wait_more(15)
        pair.kill_vm(lab, "primary")
        sec = pair.wait_state(lab, "secondary", "ALONE", 30)
        print(f"first takeover: {1000 * sec['last_takeover_s']:.0f} ms")
        client.wait_more(15)
        pair.wait_state(lab, "primary", "PROTECTED", 90)
        pair.wait_state(lab, "secondary", "PROTECTED", 30)
        client.wait_more(10)
        # Second failover, the other way round: the bug that broke QEMU COLO after two
        # failovers must not exist here.
        pair.kill_vm(lab, "secondary")
        pri = pair.wait_state(lab, "primary", "ALONE", 30)
        print(f"second takeover: {1000 * pri['last_takeover_s']:.0f} ms")
        client.wait_more(15)
    finally:
        summary = client.finish()
    assert client.errors() == []
    assert summary["errors"] == 0 and summary["connections"] == 1
    assert summary["ok"] >= 55


def test_svm_killed_primary_continues_with_the_same_connection(lab: Lab) -> None:
    client = _client(lab)
    try:
        client.wait_more(15)
        pair.kill_vm(lab, "secondary")
        pair.wait_state(lab, "primary", "ALONE", 30)
        client.wait_more(15)
        # The fenced secondary host brings a new SVM; the pair is protected again.
        pair.wait_state(lab, "primary", "PROTECTED", 90)
        pair.wait_state(lab, "secondary", "PROTECTED", 30)
        client.wait_more(10)
    finally:
        summary = client.finish()
    assert client.errors() == []
    assert summary["errors"] == 0 and summary["connections"] == 1


def test_coloctl_pause_resume_and_status(lab: Lab) -> None:
    st = pair.coloctl(lab, "primary", "status")
    assert st.returncode == 0 and "PROTECTED (primary)" in st.stdout, st.stdout
    # Both hosts in one table, the peer's row from its heartbeat.
    rows = {ln.split()[0]: ln.split() for ln in st.stdout.splitlines()[2:4]}
    assert rows["pri*"][1:3] == ["primary", "PROTECTED"], st.stdout
    assert rows["sec"][1:3] == ["secondary", "PROTECTED"], st.stdout
    # A command that does not apply here is refused with its reason, and nothing happens.
    ref = pair.coloctl(lab, "secondary", "pause")
    assert ref.returncode == 1 and ("pause refused: pause applies to a protected primary; "
                                    "this host is the secondary in PROTECTED") in ref.stderr, ref
    ref = pair.coloctl(lab, "primary", "resume")
    assert ref.returncode == 1 and "resume applies while paused" in ref.stderr, ref
    # --wait returns once the loop acted on the command.
    res = pair.coloctl(lab, "primary", "pause", "--wait", "--timeout", "20")
    assert res.returncode == 0 and "pause done: pausing protection on operator request" in \
        res.stdout, (res.stdout, res.stderr)
    pair.wait_state(lab, "primary", "PAUSED", 20)
    before = _checkpoints(lab, "primary")
    # Paused: output passes uncompared, so divergence causes no checkpoint.
    for _ in range(3):
        assert lab.http("/random")[0] == 200
    assert _checkpoints(lab, "primary") == before
    assert pair.coloctl(lab, "primary", "resume").returncode == 0
    pair.wait_state(lab, "primary", "PROTECTED", 20)
    # Resuming resynchronises the secondary with a checkpoint first.
    assert _checkpoints(lab, "primary").get("resume", 0) == before.get("resume", 0) + 1
    assert lab.http("/kv/z", method="PUT", data=b"ok")[0] == 200
    js = json.loads(pair.coloctl(lab, "primary", "status", "--json").stdout)
    assert js["state"] == "PROTECTED" and js["proxy_connected"] is True
    bad = pair.coloctl(lab, "primary", "--url", "http://127.0.0.1:1", "status")
    assert bad.returncode == 2 and "cannot reach the orchestrator" in bad.stderr


# No periodic checkpoint: a connection opened after protection began then keeps its
# sequence offset up to the failover (a checkpoint would make it zero).
@pytest.mark.lab(extra="[timing]\ncheckpoint_max_interval = 600\n")
@pytest.mark.timeout(90)  # 25 s here, with the boot
def test_connection_opened_since_the_last_checkpoint_survives_role_swaps(lab: Lab) -> None:
    """The old secondary's offsets go over to the proxy that restarts as primary at the
    re-protection, which rewrites those flows on the uplink (docs/PROXY.md), and announces
    them to the new secondary, which keeps them through the next failover."""
    before = pair.checkpoint_count(lab, "primary")
    client = _client(lab)
    try:
        client.wait_more(10)
        assert pair.checkpoint_count(lab, "primary") == before  # the offset is not zero
        pair.kill_vm(lab, "primary")
        pair.wait_state(lab, "secondary", "ALONE", 30)
        client.wait_more(10)
        # Re-protection: the secondary host's proxy restarts as primary, the primary
        # host's as secondary.
        pair.wait_state(lab, "secondary", "PROTECTED", 90)
        pair.wait_state(lab, "primary", "PROTECTED", 30)
        client.wait_more(20)
        carried = pair.proxy_status(lab, "secondary")
        # The second failover, the other way: the primary host's proxy (now secondary)
        # hears the carried flow from the forward link (its challenge every 2 s answered)
        # and shifts it when its VM serves.
        wait_until(lambda: pair.proxy_status(lab, "primary").get("carried_flows", 0) >= 1, 30,
                   "the secondary to hear the carried flow", every=0.1)
        pair.kill_vm(lab, "secondary")
        pair.wait_state(lab, "primary", "ALONE", 30)
        client.wait_more(20)
        heard = pair.proxy_status(lab, "primary")
    finally:
        summary = client.finish()
    assert client.errors() == []
    assert summary["errors"] == 0 and summary["connections"] == 1
    dp = carried["datapath"]
    assert carried["carried_flows"] >= 1 and dp["ack_rewrites"] > 0 and dp["seq_rewrites"] > 0
    # Heard authenticated (the pair's key), answering its own challenges.
    assert heard["carry"]["accepted"] >= 1 and heard["carry"]["refused"] == {}, heard


# A long refill interval makes the checkpoint budget observable.
@pytest.mark.lab(extra="[timing]\ncheckpoint_min_interval = 1.5\ncheckpoint_burst = 2\n")
@pytest.mark.timeout(90)  # 28 s here, with the boot
def test_divergence_checkpoints_payload_within_the_rate_limit(lab: Lab) -> None:
    before = _checkpoints(lab, "primary")
    # Deterministic traffic alone: no checkpoint at all.
    code_body = [lab.http(f"/kv/d{i}", method="PUT", data=b"x" * i) for i in range(1, 21)]
    assert all(code == 200 for code, _ in code_body)
    assert _checkpoints(lab, "primary") == before
    # Every /random answer differs between PVM and SVM.
    start = time.monotonic()
    answers = [lab.http("/random") for _ in range(8)]
    elapsed = time.monotonic() - start
    assert all(code == 200 for code, _ in answers)
    assert len({body for _, body in answers}) == 8
    after = _checkpoints(lab, "primary")
    payload = after.get("payload", 0) - before.get("payload", 0)
    assert payload >= 2, after
    # Once the burst of 2 is spent, requests closer than the interval are coalesced.
    assert payload <= 2 + elapsed / 1.5 + 1, (payload, elapsed)
    # After the checkpoints, deterministic requests match again: no new checkpoint.
    settled = _checkpoints(lab, "primary")
    for i in range(10):
        assert lab.http(f"/kv/d{i + 1}") == (200, b"x" * (i + 1))
    assert _checkpoints(lab, "primary") == settled


# Each checkpoint overwrites, in the SVM, the pages either VM changed since the last one,
# code included; the lab's QEMU then drops the code translated from those pages only, not
# all of it (colo_lab/patches, change 3). Right after every checkpoint the SVM must run
# the service's programs from the new pages and answer byte for byte as the PVM does: a
# stale translation shows as a divergence (a checkpoint) or a dead SVM (timeouts).
@pytest.mark.timeout(150)  # about 40 s here, with the boot
def test_the_svm_answers_alike_right_after_each_checkpoint(lab: Lab) -> None:
    blob = guest.pattern()
    for i in range(12):
        before = _checkpoints(lab, "primary")
        assert lab.http("/random")[0] == 200
        settled = wait_until(
            lambda b=before: (c := _checkpoints(lab, "primary")) != b and c, 10,
            "the divergent request's checkpoint")
        grew = {k for k, n in settled.items() if n != before.get(k, 0)}
        assert grew == {"payload"}, (before, settled)
        # Programs the service forks differ by request: head, cp, cp + sync + wc.
        assert lab.http(f"/blob/{1000 + 37 * i}") == (200, blob[:1000 + 37 * i])
        body = f"echo {i} ".encode() * (i + 1)
        assert lab.http("/echo", method="POST", data=body) == (200, body)
        assert lab.http(f"/kv/after{i}", method="PUT", data=body)[0] == 200
        assert lab.http(f"/kv/after{i}") == (200, body)
        assert _checkpoints(lab, "primary") == settled, i
    # The last connection's close, compared too, leaves nothing held.
    wait_until(lambda: pair.proxy_status(lab, "primary")["held_packets"] == 0, 10,
               "nothing held by the primary's proxy")
