"""`coloctl list` without etcd: the table and JSON from records, and its errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from colo_lab.etcd import free_port
from colo_orch.cli.ctl import main as ctl_main
from colo_orch.cli.fleet import age, as_json, table
from colo_orch.core.fleet import Member, Pair, encode, group

H1 = Member(pair="web", host="h1", role="primary", state="PROTECTED", lease_holder="h1",
            checkpoint_age_s=0.43, heartbeat_age_s=0.05, proxy="connected",
            api="10.0.0.1:7411", published_at=1e9, seq=3, uptime_s=3.0, period_s=1.0,
            ttl_s=10.0)
H2 = replace(H1, host="h2", role="secondary", checkpoint_age_s=None, heartbeat_age_s=75.0,
             proxy=None, api="10.0.0.2:7411", lease_holder=None)


def _pairs() -> list[Pair]:
    return group("/colo", [
        ("/colo/web/leader", "h1"),
        ("/colo/web/members/h1", encode(H1)),
        ("/colo/web/members/h2", encode(H2)),
        ("/colo/db/leader", "d1"),
        ("/colo/db/members/d9", '{"format": 1, "pair": "db"'),
    ])


def test_ages_for_people() -> None:
    assert [age(s) for s in (None, 0.43, 9.96, 42.4, 185.0, 7620.0)] == \
        ["-", "0.4s", "10.0s", "42s", "3m05s", "2h07m"]


def test_table_marks_the_leader_and_shows_a_hosts_other_belief() -> None:
    lines = table(_pairs()).splitlines()
    assert lines[0].split() == ["PAIR", "HOST", "ROLE", "STATE", "LEASE", "HOLDER",
                                "CHECKPOINT", "HEARTBEAT", "PROXY", "API"]
    db, h1, h2 = lines[1:]
    assert db.split()[:5] == ["db", "d9", "?", "BAD", "RECORD:"] and "not JSON" in db
    assert h1.split() == ["web", "h1*", "primary", "PROTECTED", "h1", "0.4s", "0.1s",
                          "connected", "10.0.0.1:7411"]
    assert h2.split() == ["web", "h2", "secondary", "PROTECTED", "h1", "(sees", "none)",
                          "-", "1m15s", "-", "10.0.0.2:7411"]
    # Columns line up: each header starts where its values start.
    col = lines[0].index("CHECKPOINT")
    assert h1[col:].startswith("0.4s") and h2[col:].startswith("-")


def test_a_pair_without_members_still_shows_its_holder() -> None:
    line = table(group("/colo", [("/colo/web/leader", "h1")])).splitlines()[1]
    assert line.split() == ["web", "-", "-", "no", "host", "publishes", "h1", "-", "-", "-",
                            "-"]


def test_json_keeps_every_field_and_the_bad_record() -> None:
    doc = json.loads(json.dumps(as_json("/colo", _pairs())))
    assert doc["prefix"] == "/colo"
    db, web = doc["pairs"]
    assert db["lease_holder"] == "d1"
    assert db["members"][0]["bad"] is True and db["members"][0]["leader"] is False
    assert "not JSON" in db["members"][0]["error"]
    assert web["members"][0] == {**json.loads(encode(H1)), "leader": True}
    assert web["members"][1]["leader"] is False


def test_unreachable_endpoints_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    eps = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    assert ctl_main(["list", "--etcd", ",".join(eps), "--timeout", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "etcd unreachable" in err and all(f"{e}: connection refused" in err for e in eps), err


@pytest.mark.parametrize(("args", "why"), [
    (["--etcd", "10.0.0.5:2379"], "--etcd: '10.0.0.5:2379' is not http(s)://HOST:PORT"),
    (["--etcd", ","], "--etcd: give at least one"),
    (["--etcd", "ftp://a:1"], "--etcd: 'ftp://a:1' is not http(s)://HOST:PORT"),
    (["--etcd", "https://a:1", "--ca-file", "/nonexistent/ca.pem"],
     "--ca-file /nonexistent/ca.pem: cannot be read"),
    (["--etcd", "http://a:1", "--cert-file", "/c"], "--cert-file and --key-file go together"),
    (["--etcd", "http://a:1", "--user", "u"], "--user needs --password-file"),
])
def test_bad_options_are_named(args: list[str], why: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ctl_main(["list", *args])
    assert exc.value.code == 2
    assert why in capsys.readouterr().err


def test_a_password_file_others_can_read_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    assert ctl_main(["list", "--etcd", "http://127.0.0.1:1", "--user", "u",
                     "--password-file", str(pw)]) == 2
    assert f"--password-file {pw}: mode 0644 lets others read the password; chmod 600 {pw}" \
        in capsys.readouterr().err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ctl_main(["list", "--help"])
    out = capsys.readouterr().out
    assert "coloctl list --etcd http://" in out and "--json" in out
    with pytest.raises(SystemExit):
        ctl_main(["--help"])
    assert "coloctl list --etcd" in capsys.readouterr().out
