"""The API of a real colo-orch (no VM behind it): a forged or missing token changes
nothing, the metrics listener runs no command, slow and oversized requests are cut off
without holding up anyone else, the unix socket checks its peer, and TLS works."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from colo_lab.etcd import EtcdCluster, free_port, start_single
from colo_lab.pair import parse_metrics
from colo_lab.wait import wait_until
from colo_orch.core.api import MAX_HEAD_BYTES
from colo_orch.core.config import load
from tests.support.api import Addr, closed_by_peer, connect, exchange, request, slowloris
from tests.support.etcd import orch_config
from tests.support.pki import make_certs

pytestmark = pytest.mark.host

TOKEN = "api-test-token-c2VjcmV0LXNlY3JldA"
API_TIMEOUT = 2.0
NOBODY = 65534
CTL = [sys.executable, "-m", "colo_orch.cli.ctl"]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with start_single(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="colo-api-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Orch:
    """A colo-orch started from a test's config, and where its listeners are."""

    def __init__(self, cfg: Path) -> None:
        self.cfg_path = cfg
        self.cfg = load(cfg)
        self.log = cfg.parent / "orch.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([*CTL[:2], "colo_orch.cli.orch", "run", "--config",
                                          str(cfg), "--host-id", "hostA"],
                                         stdout=out, stderr=subprocess.STDOUT)

    def addr(self, key: str) -> tuple[str, int]:
        host, port = getattr(self.cfg, key).rsplit(":", 1)
        return host, int(port)

    def metrics(self) -> dict[str, float]:
        status, text = request(self.addr("metrics_listen"), "GET", "/metrics")
        assert status == 200, text
        return parse_metrics(text)

    def manual_requests(self) -> float:
        return self.metrics()['colo_checkpoint_requests_total{reason="manual"}']

    def judged(self) -> float:
        """Commands that passed authentication and were judged against the state: with no
        VM behind it this orchestrator never gets past STOPPED, STARTING, DEGRADED or FENCED
        (how far depends on when the arbiter's answer wakes its loop), where a checkpoint does
        not apply, so each is refused with 409 (a command that applies is tested in the lab)."""
        return self.refused("not_applicable")

    def refused(self, reason: str) -> float:
        return self.metrics()[f'colo_api_requests_refused_total{{reason="{reason}"}}']

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Callable[..., Orch]]:
    started: list[Orch] = []

    def _start(extra: str = "", token_mode: int = 0o600, ready: str = "metrics_listen") -> Orch:
        token = tmp_path / "api.token"
        token.write_text(TOKEN + "\n")
        token.chmod(token_mode)
        cfg = orch_config(tmp_path, f"api{len(started)}-{os.getpid()}", etcd.endpoints,
                          f'api_token_file = "{token}"\n'
                          f'metrics_listen = "127.0.0.1:{free_port()}"\n{extra}'
                          f"[timing]\napi_timeout = {API_TIMEOUT}\n")
        orch = Orch(cfg)
        started.append(orch)
        if ready:
            wait_until(lambda: _answers(orch, ready), 20, f"colo-orch's {ready}",
                       detail=lambda: orch.log.read_text())
        return orch

    yield _start
    for orch in started:
        orch.stop()


def _answers(orch: Orch, key: str) -> bool:
    assert orch.proc.poll() is None, orch.log.read_text()
    try:
        return request(orch.addr(key), "GET", "/state")[0] == 200
    except OSError:
        return False


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_a_forged_or_missing_token_changes_nothing(start: Callable[..., Orch]) -> None:
    orch = start()
    api, metrics = orch.addr("api_listen"), orch.addr("metrics_listen")
    forged = (None, "", "api-test-token-c2VjcmV0LXNlY3JldB", TOKEN[:-1], TOKEN + "x",
              TOKEN.upper())
    for cmd in ("checkpoint", "pause", "failover", "reprotect"):
        for tok in forged:
            assert request(api, "POST", f"/{cmd}", tok)[0] == 401, (cmd, tok)
        # The read-only listener runs no command, whatever the token.
        for tok in (None, TOKEN):
            assert request(metrics, "POST", f"/{cmd}", tok)[0] == 405
    st = request(api, "GET", "/state")[1]
    assert orch.manual_requests() == 0
    assert orch.refused("unauthorized") == 4 * len(forged)
    assert orch.refused("read_only") == 8
    assert "API command" not in orch.log.read_text()  # no command was taken
    assert st["state"] not in ("PAUSED", "FAILING_OVER", "ALONE")
    # The same request with the token gets past the check (it could have failed) and is
    # judged: a checkpoint does not apply to a stopped host.
    status, body = request(api, "POST", "/checkpoint", TOKEN)
    assert status == 409 and body["error"].startswith(
        "checkpoint applies to a protected primary; this host is the primary in "), body
    assert body["state"] in ("STOPPED", "STARTING", "DEGRADED", "FENCED"), body
    assert orch.judged() == 1 and orch.manual_requests() == 0
    assert "API command checkpoint from ('127.0.0.1'" in orch.log.read_text()
    # coloctl: from the config, from the environment; a wrong one is refused and named.
    res = _ctl("--config", str(orch.cfg_path), "checkpoint")
    assert res.returncode == 1 and "coloctl: checkpoint refused: checkpoint applies" in \
        res.stderr, res.stderr
    url = f"http://{api[0]}:{api[1]}"
    res = _ctl("--url", url, "checkpoint", env={"COLO_API_TOKEN": TOKEN})
    assert res.returncode == 1 and "checkpoint refused" in res.stderr, res.stderr
    res = _ctl("--url", url, "checkpoint", env={"COLO_API_TOKEN": "not-the-token-at-all-0"})
    assert res.returncode == 1 and "refused (401): wrong token" in res.stderr
    assert orch.judged() == 3


def test_slow_and_oversized_requests_are_cut_off_and_block_nobody(
        start: Callable[..., Orch]) -> None:
    orch = start()
    api, metrics = orch.addr("api_listen"), orch.addr("metrics_listen")

    def serve() -> None:
        assert request(api, "GET", "/state")[0] == 200
        assert request(metrics, "GET", "/metrics")[0] == 200
        assert request(api, "POST", "/checkpoint", TOKEN)[0] == 409

    served, cut = slowloris([api, metrics], 20, serve, API_TIMEOUT)
    print(f"9 requests served in {served:.3f} s beside 40 slow clients; those cut off after "
          f"{cut:.3f} s (api_timeout {API_TIMEOUT} s)")
    assert orch.refused("timeout") == 40
    # Too big: refused before anything is read past the limit, nothing runs.
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    big = b"POST /failover HTTP/1.1\r\n" + auth + b"X-Pad: " + b"a" * (8 * MAX_HEAD_BYTES)
    assert exchange(api, big + b"\r\n\r\n")[0] == 431
    assert exchange(api, b"POST /failover HTTP/1.1\r\n" + auth +
                    b"Content-Length: 1000000000\r\n\r\n")[0] == 413
    assert orch.refused("too_large") == 2
    assert orch.judged() == 3  # only the three checkpoints above
    assert "API command failover" not in orch.log.read_text()


def _as_nobody(fn: Callable[[], Any]) -> Any:
    """fn() in a child process that runs as nobody; its result or its exception's text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = repr(fn())
        except BaseException as exc:
            out = repr(f"{type(exc).__name__}: {exc}")
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(pid, 0)
    return eval(got)  # a repr of plain values made above


def test_the_socket_takes_commands_from_root_only(start: Callable[..., Orch],
                                                  shared_dir: Path) -> None:
    sock = shared_dir / "api.sock"
    orch = start(f'api_socket = "{sock}"\n')
    wait_until(sock.exists, 10, "the API socket")
    assert sock.stat().st_mode & 0o777 == 0o666
    addr: Addr = str(sock)
    status, body = _as_nobody(lambda: request(addr, "POST", "/failover"))
    assert status == 403 and f"uid {NOBODY} may not send commands" in body["error"], body
    status, _ = _as_nobody(lambda: request(addr, "POST", "/checkpoint"))
    assert status == 403
    assert _as_nobody(lambda: request(addr, "GET", "/state"))[0] == 200  # reads stay open
    assert orch.judged() == 0 and orch.refused("forbidden") == 2
    res = _ctl("--socket", str(sock), "checkpoint")  # root: no token needed, judged
    assert res.returncode == 1 and "checkpoint refused" in res.stderr, res.stderr
    assert orch.judged() == 1
    assert "API command checkpoint from uid 0 pid" in orch.log.read_text()


def test_a_token_file_others_can_read_stops_the_daemon(start: Callable[..., Orch]) -> None:
    orch = start(token_mode=0o644, ready="")
    assert orch.proc.wait(timeout=30) == 2
    token = orch.cfg.api_token_file
    assert (f"api_token_file {token}: mode 0644 lets others read the token; chmod 600 "
            f"{token}") in orch.log.read_text()


def test_tls(start: Callable[..., Orch], tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_certs(pki, "api")
    make_certs(pki, "other")
    orch = start(f'api_tls_cert_file = "{pki}/api-server.pem"\n'
                 f'api_tls_key_file = "{pki}/api-server.key"\n')
    api = orch.addr("api_listen")
    trust = ssl.create_default_context(cafile=str(pki / "api-ca.pem"))
    kw: dict[str, Any] = {"tls": trust, "server_hostname": "127.0.0.1"}
    assert request(api, "GET", "/state", **kw)[0] == 200
    assert request(api, "POST", "/checkpoint", "wrong-token-0123456789", **kw)[0] == 401
    assert request(api, "POST", "/checkpoint", TOKEN, **kw)[0] == 409
    # Plain HTTP on the TLS port gets no answer; a client trusting another CA refuses.
    assert exchange(api, b"GET /state HTTP/1.1\r\n\r\n")[0] == 0
    other = ssl.create_default_context(cafile=str(pki / "other-ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        request(api, "GET", "/state", tls=other, server_hostname="127.0.0.1")
    # coloctl: with --cacert, and from the config alone (it trusts the server's certificate).
    url = f"https://{api[0]}:{api[1]}"
    res = _ctl("--url", url, "--cacert", str(pki / "api-ca.pem"), "checkpoint",
               env={"COLO_API_TOKEN": TOKEN})
    assert res.returncode == 1 and "checkpoint refused" in res.stderr, res.stderr
    res = _ctl("--config", str(orch.cfg_path), "status", "--json")
    assert res.returncode == 0 and '"state"' in res.stdout, res.stderr
    res = _ctl("--url", url, "--cacert", str(pki / "other-ca.pem"), "status")
    assert res.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in res.stderr
    # A TLS client that never finishes its handshake is cut off like any slow client.
    with connect(api) as s:
        s.sendall(b"\x16\x03\x01")
        wait_until(lambda: closed_by_peer(s), 5 * API_TIMEOUT, "the half handshake cut off")
    assert orch.judged() == 2
