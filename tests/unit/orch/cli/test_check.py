"""`colo-orch check`: finds the test bed and its QEMU only through the `colo-lab` command;
refuses an arbiter that cannot guard the pair."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from colo_orch.cli import check
from colo_orch.core.config import Config


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with neither colo-lab nor QEMU on it, and no COLO_QEMU."""
    empty = tmp_path / "path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("COLO_QEMU", raising=False)
    return empty


def test_lab_is_found_beside_python_first_then_on_path(tmp_path: Path, bare: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    assert check.lab_command(str(venv / "python")) is None
    on_path = _script(bare / "colo-lab", "exit 0")
    assert check.lab_command(str(venv / "python")) == [str(on_path)]
    beside = _script(venv / "colo-lab", "exit 0")
    assert check.lab_command(str(venv / "python")) == [str(beside)]


def test_smoke_command_is_a_short_named_lab_run() -> None:
    assert check.smoke_command(["/v/bin/colo-lab"]) == [
        "/v/bin/colo-lab", "smoke", "--name", "check", "--checkpoints", "5"]


def test_qemu_from_the_lab_cache_else_path(tmp_path: Path, bare: Path) -> None:
    missing = "no QEMU: run 'colo-lab build' (patched QEMU) or install qemu-system-x86"
    cached = _script(tmp_path / "cached" / "colo-lab",
                     '[ "$1" = qemu-path ] && echo /cache/qemu-system-x86_64')
    empty = _script(tmp_path / "empty" / "colo-lab", "exit 1")
    assert check._qemu([str(cached)]) is None
    assert check._qemu([str(empty)]) == missing
    assert check._qemu(None) == missing
    _script(bare / "qemu-system-x86_64", "exit 0")
    assert check._qemu([str(empty)]) is None
    assert check._qemu(None) is None


def test_colo_qemu_wins_and_must_be_executable(tmp_path: Path, bare: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLO_QEMU", str(tmp_path / "nope"))
    cached = _script(tmp_path / "cached" / "colo-lab", "echo /cache/qemu-system-x86_64")
    assert check._qemu([str(cached)]) == f"COLO_QEMU={tmp_path / 'nope'} is not executable"
    monkeypatch.setenv("COLO_QEMU", str(_script(tmp_path / "q", "exit 0")))
    assert check._qemu(None) is None


def test_smoke_runs_the_lab_and_streams_its_output(tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    lab = _script(tmp_path / "colo-lab", 'echo "lab says: $*"; exit 0')
    assert check._smoke([str(lab)]) is True
    out = capfd.readouterr().out
    assert "lab says: smoke --name check --checkpoints 5" in out
    assert out.rstrip().endswith("ok   QEMU can run COLO on this host")
    failing = _script(tmp_path / "failing" / "colo-lab", "exit 3")
    assert check._smoke([str(failing)]) is False
    assert "FAIL QEMU can run COLO on this host: see the lines above" in capfd.readouterr().out


def test_smoke_without_the_lab_says_how_to_get_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert check._smoke(None) is False
    out = capsys.readouterr().out
    assert out.startswith("FAIL QEMU can run COLO on this host: colo-lab (the test bed)")
    assert "scripts/bootstrap" in out


def _cfg(**kw: object) -> Config:
    base: dict[str, object] = dict(
        name="web", role="primary", qmp="/q", qmp_events="/e",
        heartbeat_listen="127.0.0.1:7410", peer_heartbeat="127.0.0.1:7411",
        incoming_uri="tcp:127.0.0.1:4444", peer_incoming_uri="tcp:127.0.0.1:4445")
    return Config(**{**base, **kw})  # type: ignore[arg-type]


def test_a_xen_primary_not_created_paused_is_warned_never_to_be_protected() -> None:
    xen = dict(backend="xen", xen_domain="web", xen_config="/etc/xen/web.cfg",
               xen_checkpoint_listen="127.0.0.1:9911")
    assert check.xen_protection_problem(_cfg(**xen)) is None  # created paused by default
    assert check.xen_protection_problem(_cfg(xen_create_paused=False)) is None  # QEMU
    problem = check.xen_protection_problem(_cfg(xen_create_paused=False, **xen))
    assert isinstance(problem, check.Warn) and "never protected" in problem


def test_local_arbiter_only_with_the_peer_on_this_machine() -> None:
    assert check.is_local_address("127.0.0.1") is True
    # TEST-NET-1 (RFC 5737): never an address of this machine. Bind only; nothing is sent.
    assert check.is_local_address("192.0.2.7") is False
    assert check.arbiter_problem(_cfg()) is None
    problem = check.arbiter_problem(_cfg(peer_heartbeat="192.0.2.7:7410"))
    assert problem is not None
    assert "192.0.2.7 is not an address of this machine" in problem
    assert 'use arbiter = "etcd" with etcd_endpoints' in problem


def test_etcd_that_does_not_answer_is_named(tmp_path: Path) -> None:
    eps = []
    for _ in range(2):  # ports bound, never listened on: connection refused at once
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        eps.append((s, f"http://127.0.0.1:{s.getsockname()[1]}"))
    try:
        problem = check.arbiter_problem(_cfg(arbiter="etcd", etcd_endpoints=[e for _, e in eps]))
    finally:
        for s, _ in eps:
            s.close()
    assert problem is not None
    for _, e in eps:
        assert f"{e}: connection refused" in problem
    assert problem.endswith("start etcd or fix etcd_endpoints")
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    problem = check.arbiter_problem(_cfg(arbiter="etcd", etcd_endpoints=["http://127.0.0.1:1"],
                                         etcd_user="colo", etcd_password_file=str(pw)))
    assert problem == f"etcd_password_file {pw}: mode 0644 lets others read the password; " \
                      f"chmod 600 {pw}"


def test_api_credentials_others_can_read_are_named(tmp_path: Path) -> None:
    token = tmp_path / "api.token"
    token.write_text("a-token-of-24-characters\n")
    token.chmod(0o600)
    assert check.api_problem(_cfg(api_token_file=str(token))) is None
    token.chmod(0o604)
    assert check.api_problem(_cfg(api_token_file=str(token))) == \
        f"api_token_file {token}: mode 0604 lets others read the token; chmod 600 {token}"
    problem = check.api_problem(_cfg(api_tls_cert_file=str(tmp_path / "none.pem"),
                                     api_tls_key_file=str(tmp_path / "none.key")))
    assert problem is not None and problem.startswith("api_tls_cert_file ")
    assert "give a PEM certificate chain and its private key" in problem


def test_without_migration_tls_check_warns_and_names_the_open_ports() -> None:
    from colo_orch.core.disks import Disk

    problem = check.migration_tls_problem(_cfg(disks=(Disk("d0", "/i", "/a", "/h"),)))
    assert isinstance(problem, check.Warn)
    assert "127.0.0.1:4444 and the NBD port 10809" in problem
    assert 'set migration_tls = "x509"' in problem and "colo-orch firewall" in problem


def test_migration_tls_files_must_be_there_and_private(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    d.mkdir()
    cfg = _cfg(migration_tls="x509", migration_tls_dir=str(d))
    problem = check.migration_tls_problem(cfg)
    assert problem is not None and not isinstance(problem, check.Warn)
    assert "lacks ca-cert.pem, server-cert.pem" in problem
    for f in check.X509_FILES:
        (d / f).write_text("x")
        (d / f).chmod(0o600 if f.endswith("key.pem") else 0o644)
    assert check.migration_tls_problem(cfg) is None
    (d / "client-key.pem").chmod(0o640)
    assert check.migration_tls_problem(cfg) == (f"{d}/client-key.pem is readable by other "
                                                f"users: chmod 600 {d}/client-key.pem")
    psk = _cfg(migration_tls="psk", migration_tls_dir=str(d), migration_tls_psk_user="web")
    (d / "keys.psk").write_text("qemu:00ff\n")
    (d / "keys.psk").chmod(0o600)
    assert "has no line web:HEXKEY" in str(check.migration_tls_problem(psk))
    (d / "keys.psk").write_text("qemu:00ff\nweb:0123abcd\n")
    assert check.migration_tls_problem(psk) is None


def test_a_qemu_without_gnutls_is_named(tmp_path: Path) -> None:
    fake = _script(tmp_path / "qemu", 'echo "qemu: TLS credentials support requires GNUTLS" >&2; '
                                      "exit 1")
    cfg = _cfg(migration_tls="x509", migration_tls_dir=str(tmp_path))
    problem = check.qemu_tls_problem(cfg, str(fake))
    assert problem is not None and "is built without GnuTLS" in problem
    ok = _script(tmp_path / "ok", 'case "$*" in *tls-creds-x509,id=colo-tls-server,*endpoint='
                                  "server*tls-creds-x509,id=colo-tls-client,*) exit 0;; esac; "
                                  "exit 3")
    assert check.qemu_tls_problem(cfg, str(ok)) is None


def _proc(tmp_path: Path, *, syscall: bool, jit_sysctl: bool, kallsyms: str | None) -> Path:
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "net" / "core").mkdir(parents=True)
    if syscall:
        (proc / "sys" / "kernel" / "unprivileged_bpf_disabled").write_text("2\n")
    if jit_sysctl:
        (proc / "sys" / "net" / "core" / "bpf_jit_enable").write_text("1\n")
    if kallsyms is not None:
        (proc / "kallsyms").write_text(kallsyms)
    return proc


def test_bpf_jit_is_found_from_another_network_namespace_too(tmp_path: Path) -> None:
    """net.core.bpf_jit_enable shows in the host's network namespace only: `ip netns exec
    colo-orch check` (the lab's hosts, DEPLOY.md's test) failed "kernel without BPF JIT"."""
    syms = "0000000000000000 t bpf_int_jit_compile.cold\n0000000000000000 T bpf_prog_run\n"
    assert check._bpf(_proc(tmp_path / "a", syscall=True, jit_sysctl=True, kallsyms=None)) is None
    assert check._bpf(_proc(tmp_path / "b", syscall=True, jit_sysctl=False, kallsyms=syms)) is None
    no_jit = check._bpf(_proc(tmp_path / "c", syscall=True, jit_sysctl=False,
                        kallsyms="0000000000000000 T bpf_prog_run\n"))
    assert no_jit is not None and "CONFIG_BPF_JIT" in no_jit
    no_bpf = check._bpf(_proc(tmp_path / "d", syscall=False, jit_sysctl=False, kallsyms=syms))
    assert no_bpf is not None and "CONFIG_BPF_SYSCALL" in no_bpf
