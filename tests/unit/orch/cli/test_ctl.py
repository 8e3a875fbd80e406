"""`coloctl`: status says who holds the lease and why the arbiter cannot answer; commands
carry the token from --token-file, $COLO_API_TOKEN or the orchestrator's config."""

from __future__ import annotations

import argparse
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from colo_orch.cli.ctl import CtlError, Target, main, target
from tests.support.api import CONFIG

STATE: dict[str, Any] = {
    "name": "web", "host": "h1", "state": "HOLDING", "role": "primary",
    "vm": {"reachable": True, "status": "running", "migration": "none", "colo_mode": "none"},
    "peer": None, "peer_seen_s_ago": None, "checkpoints": {}, "failovers": 0,
    "reprotections": 0, "degraded_reason": "", "lease_holder": "h2",
    "lease_reachable": True, "lease_error": "leader key now held by h2",
}


TOKEN = "coloctl-test-token-0123"
SEEN: list[tuple[str, str | None]] = []  # (path, Authorization) of each POST
GETS: list[str] = []  # paths of each GET
OUTCOMES: list[dict[str, Any]] = []  # commands.recent of GET /state, from the third GET
PENDING: list[dict[str, Any]] = []  # commands.pending of GET /state, before the third GET


@pytest.fixture
def api() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            GETS.append(self.path)
            # A command's outcome shows from the third read of /state on.
            self._send(200, {**STATE, "commands": {
                "pending": PENDING if len(GETS) < 3 else [],
                "recent": OUTCOMES if len(GETS) >= 3 else []}})

        def do_POST(self) -> None:
            auth = self.headers.get("Authorization")
            SEEN.append((self.path, auth))
            if auth != f"Bearer {TOKEN}":
                self._send(401, {"error": "wrong token"})
            elif self.path == "/pause":
                self._send(409, {"error": "pause applies to a protected primary; this host "
                                          "is the secondary in PROTECTED", "state": "PROTECTED"})
            else:
                self._send(202, {"accepted": f"{self.path[1:]} requested", "id": 7,
                                 "state": "PROTECTED"})

        def log_message(self, *args: object) -> None:
            pass

    SEEN.clear()
    GETS.clear()
    PENDING.clear()
    OUTCOMES[:] = [{"id": 7, "command": "checkpoint", "age_s": 0.4, "outcome": "done",
                    "detail": "checkpoint for manual (1 request(s) coalesced)"}]
    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_status_names_the_holder_and_the_reason(api: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", api, "status"]) == 0
    assert "  lease: held by h2 (leader key now held by h2)\n" in capsys.readouterr().out


def _token_file(tmp_path: Path, token: str, name: str = "api.token") -> Path:
    f = tmp_path / name
    f.write_text(token + "\n")
    f.chmod(0o600)
    return f


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"config": None, "url": None, "socket": None,
                                 "token_file": None, "cacert": None, **kw})


def test_the_token_comes_from_the_option_then_the_environment_then_the_config(
        tmp_path: Path) -> None:
    opt = _token_file(tmp_path, "from-the-option-0123456")
    cfg_token = _token_file(tmp_path, "from-the-config-0123456", "cfg.token")
    cfg = tmp_path / "web1.toml"
    cfg.write_text(CONFIG + f'api_token_file = "{cfg_token}"\napi_listen = "0.0.0.0:7999"\n')
    env = {"COLO_API_TOKEN": "from-the-environment-01"}
    assert target(_args(config=str(cfg), token_file=str(opt)), env).token == \
        b"from-the-option-0123456"
    assert target(_args(config=str(cfg)), env).token == b"from-the-environment-01"
    got = target(_args(config=str(cfg)), {})
    # Bound to every interface: reached on loopback.
    assert got == Target(url="http://127.0.0.1:7999", token=b"from-the-config-0123456")
    assert target(_args(), {}) == Target(url="http://127.0.0.1:7411")
    sock = tmp_path / "api.sock"
    cfg.write_text(CONFIG + f'api_socket = "{sock}"\n')
    assert target(_args(config=str(cfg)), {}) == Target(socket=str(sock))


def test_bad_token_sources_are_named(tmp_path: Path) -> None:
    loose = _token_file(tmp_path, "readable-by-all-0123456")
    loose.chmod(0o644)
    with pytest.raises(CtlError, match=rf"--token-file {loose}: mode 0644 lets others read "
                                       rf"the token; chmod 600 {loose}"):
        target(_args(token_file=str(loose)), {})
    with pytest.raises(CtlError, match=r"\$COLO_API_TOKEN: 5 bytes: shorter than 16"):
        target(_args(), {"COLO_API_TOKEN": "short"})


def test_a_command_carries_the_token_and_a_refusal_says_how_to_give_it(
        api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLO_API_TOKEN", raising=False)
    assert main(["--url", api, "failover"]) == 1
    err = capsys.readouterr().err
    assert "refused (401): wrong token" in err and "--config FILE, $COLO_API_TOKEN" in err
    monkeypatch.setenv("COLO_API_TOKEN", TOKEN)
    assert main(["--url", api, "checkpoint"]) == 0
    assert capsys.readouterr().out == "checkpoint requested\n"
    assert SEEN == [("/failover", None), ("/checkpoint", f"Bearer {TOKEN}")]


def test_a_command_that_does_not_apply_exits_1_with_its_reason(
        api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLO_API_TOKEN", TOKEN)
    assert main(["--url", api, "pause"]) == 1
    assert capsys.readouterr().err == (
        "coloctl: pause refused: pause applies to a protected primary; this host is the "
        "secondary in PROTECTED (state PROTECTED)\n")


def test_wait_follows_the_command_to_its_outcome(
        api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLO_API_TOKEN", TOKEN)
    monkeypatch.setenv("COLOCTL_URL", api)  # no --url: the environment names the API
    assert main(["checkpoint", "--wait", "--timeout", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["checkpoint requested (id 7); waiting up to 10 s",
                   "checkpoint done: checkpoint for manual (1 request(s) coalesced) "
                   "(state HOLDING)"]
    assert GETS == ["/state"] * 3
    # Dropped: exit 1; never seen within the timeout: exit 3.
    GETS.clear()
    OUTCOMES[0] = {**OUTCOMES[0], "outcome": "dropped", "detail": "no longer applies"}
    assert main(["checkpoint", "--wait"]) == 1
    GETS.clear()
    OUTCOMES[0] = {**OUTCOMES[0], "id": 6}
    assert main(["checkpoint", "--wait", "--timeout", "0.3"]) == 3
    assert "checkpoint (id 7) still pending after 0.3 s" in capsys.readouterr().err


def test_status_shows_both_hosts_in_one_table() -> None:
    from colo_orch.cli.ctl import status_table
    from colo_orch.core.state import State

    st = {**STATE, "host": "pri", "state": "PROTECTED", "lease_holder": "pri",
          "protection_verified": True, "peer_seen_s_ago": 0.21, "last_checkpoint_age_s": 2.04,
          "proxy": {"connected": True, "role": "primary", "mode": "protected", "pid": 9},
          "disk": {"state": "replicating"},
          "vm": {**STATE["vm"], "migration": "colo"},
          "peer": {"state": int(State.PROTECTED), "role": "secondary", "host": "sec",
                   "proxy_role": "secondary", "proxy_mode": "protected",
                   "checkpoint_age_s": None, "disk": "replicating"}}
    assert status_table(st).splitlines() == [
        "pair web: protection verified, lease held by pri, peer heard 0.2 s ago",
        "HOST  ROLE       STATE      LEASE  LAST CHECKPOINT  PROXY                 DISKS"
        "        SYNC",
        "pri*  primary    PROTECTED  held   2.0 s ago        primary, protected    replicating"
        "  colo",
        "sec   secondary  PROTECTED  -      -                secondary, protected  replicating"
        "  -"]
    # A peer never heard, our proxy gone: said as such.
    lone = {**STATE, "host": "pri", "proxy": {"connected": False}, "peer": None}
    lines = status_table(lone).splitlines()
    assert lines[0] == "pair web: NOT protected, lease held by h2"
    assert "DISCONNECTED" in lines[2] and "never heard" in lines[3]


def test_switchover_asks_first_unless_forced(
        api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLO_API_TOKEN", TOKEN)
    monkeypatch.setitem(STATE, "state", "PROTECTED")
    monkeypatch.setitem(STATE, "peer", {"host": "h2", "role": "secondary", "state": 4})
    for answer in ("n\n", ""):  # no, and no answer at all (stdin closed)
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        assert main(["--url", api, "switchover"]) == 1
        out, err = capsys.readouterr()
        assert ("Switch over pair web: h2 becomes the primary and h1 re-joins as its "
                "secondary") in out and "Are you sure? [y/N]" in out
        assert "switchover not confirmed; nothing done (--force skips" in err
    assert SEEN == []
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["--url", api, "switchover"]) == 0
    assert capsys.readouterr().out.endswith("switchover requested\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["--url", api, "switchover", "--force"]) == 0
    assert "Are you sure" not in capsys.readouterr().out
    assert [path for path, _ in SEEN] == ["/switchover"] * 2


def test_switchover_wait_shows_each_phase_until_the_pair_has_swapped(
        api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLO_API_TOKEN", TOKEN)
    PENDING[:] = [{"id": 7, "command": "switchover", "age_s": 0.5,
                   "phase": "handed over, our VM stopped; waiting for it to take over"}]
    OUTCOMES[:] = [{"id": 7, "command": "switchover", "age_s": 9.0, "outcome": "done",
                    "detail": "roles swapped: the peer is primary in PROTECTED"}]
    assert main(["--url", api, "switchover", "--force", "--wait", "--timeout", "10"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "switchover requested (id 7); waiting up to 10 s",
        "  handed over, our VM stopped; waiting for it to take over",
        "switchover done: roles swapped: the peer is primary in PROTECTED (state HOLDING)"]
    # Not over within the timeout: exit 3, with the phase it waits in.
    GETS.clear()
    OUTCOMES.clear()
    assert main(["--url", api, "switchover", "--force", "--wait", "--timeout", "0.3"]) == 3
    assert capsys.readouterr().err.endswith(
        "(state HOLDING; handed over, our VM stopped; waiting for it to take over)\n")


def test_switchover_is_in_the_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "switchover" in out and "--force" in out
    assert "coloctl --config /etc/colo/web1.toml switchover --wait --timeout 120" in out
