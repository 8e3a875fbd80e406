"""QEMU's TLS credentials: the objects, where the backend and the block graph use them, and
that a secondary's listener has them from its start (against a scripted monitor)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from colo_orch.backends.base import BackendError
from colo_orch.backends.qemu.backend import QemuBackend
from colo_orch.backends.qemu.blk.graph import DiskError
from colo_orch.backends.qemu.tls import CLIENT_ID, SERVER_ID, QemuTls, from_config
from colo_orch.core.disks import Disk
from tests.unit.orch.backends.qemu.blk.test_graph import FakeMon, _rep

X509 = QemuTls("x509", "/etc/colo/tls,1", hostname="sec.example")
PSK = QemuTls("psk", "/etc/colo/psk", psk_user="web")
DUP = BackendError("QMP object-add: attempt to add duplicate property 'colo-tls-server' to "
                   "object (type 'container')")


def test_objects_per_endpoint_on_the_command_line_and_over_qmp() -> None:
    assert X509.props("server") == {"qom-type": "tls-creds-x509", "id": SERVER_ID,
                                    "dir": "/etc/colo/tls,1", "endpoint": "server",
                                    "verify-peer": True}
    assert PSK.props("client") == {"qom-type": "tls-creds-psk", "id": CLIENT_ID,
                                   "dir": "/etc/colo/psk", "endpoint": "client",
                                   "username": "web"}
    # A comma in the directory is doubled: it must not start another option.
    assert X509.incoming_args() == [
        "-object", "tls-creds-x509,id=colo-tls-server,dir=/etc/colo/tls,,1,endpoint=server,"
                   "verify-peer=on",
        "-global", "migration.tls-creds=colo-tls-server"]
    assert from_config("", "/x") is None
    assert X509.migration_params() == {"tls-creds": CLIENT_ID, "tls-hostname": "sec.example"}
    assert PSK.nbd_client() == {"tls-creds": CLIENT_ID}


def test_the_export_needs_tls_and_its_object_is_added_first() -> None:
    mon = FakeMon({"object-add": DUP})  # on the command line already: not an error
    r = _rep(mon)
    r.tls = X509
    assert r.export("10.0.0.2").endswith("(TLS x509)")
    assert mon.names() == ["object-add", "nbd-server-start", "nbd-server-add"]
    assert mon.calls[1][1]["tls-creds"] == SERVER_ID


def _resync_mon() -> FakeMon:
    """A monitor through which one resync becomes ready, then finishes."""
    mirrored: list[int] = []
    jobs = [[{"device": "disk0-resync", "ready": True, "offset": 64}], []]
    return FakeMon({"query-block-jobs": lambda: jobs.pop(0) if len(jobs) > 1 else jobs[0],
                    "block-job-cancel": lambda **a: None if mirrored else DiskError("no job"),
                    "drive-mirror": lambda **a: mirrored.append(1),
                    "human-monitor-command": "", "query-blockstats": [],
                    "x-debug-query-block-graph": {"nodes": [], "edges": []}})


def test_mirror_target_and_replication_child_connect_with_tls() -> None:
    mon = _resync_mon()
    r = _rep(mon)
    r.tls = X509
    r.resync("10.0.0.2")
    assert mon.calls[0] == ("object-add", X509.props("client"))
    target = next(a for n, a in mon.calls if n == "drive-mirror")["target"]
    assert target.startswith("json:")
    assert json.loads(target.removeprefix("json:")) == {
        "driver": "raw", "file": {"driver": "nbd", "export": "disk0-parent",
                                  "server": {"type": "inet", "host": "10.0.0.2", "port": "10809"},
                                  "tls-creds": CLIENT_ID, "tls-hostname": "sec.example"}}
    r.attach("10.0.0.2")
    line = next(a for n, a in mon.calls if n == "human-monitor-command")["command-line"]
    assert line.endswith(",file.tls-creds=colo-tls-client,file.tls-hostname=sec.example")
    r.detach()


def test_without_tls_the_mirror_target_is_the_plain_export() -> None:
    mon = _resync_mon()
    _rep(mon).resync("10.0.0.2")
    target = json.loads(next(a for n, a in mon.calls if n == "drive-mirror")["target"][5:])
    assert "tls-creds" not in target["file"] and "object-add" not in mon.names()


class Mon(FakeMon):
    """A scripted monitor in the place of the backend's (no QEMU; no events)."""

    path = "/nonexistent/vm.qmp"

    def drop(self) -> None:
        pass

    def pull_event(self, wait: float) -> None:
        return None

    def clear_events(self) -> None:
        pass


class _Backend(QemuBackend):
    def __init__(self, mon: Mon, tls: QemuTls | None, disks: tuple[Disk, ...] = ()) -> None:
        super().__init__(mon.path, mon.path, ["qemu"], tls=tls, disks=disks,
                         incoming_uri="tcp:10.0.0.2:4444")
        self.mon = self.blk.mon = mon  # type: ignore[assignment]
        self.events = Mon({})  # type: ignore[assignment]


def test_primary_migrates_with_the_client_object_and_the_peers_name() -> None:
    mon = Mon({"query-migrate": {"status": "colo"}})
    b = _Backend(mon, X509)
    assert "in COLO" in b.enter_colo("tcp:10.0.0.2:4444")
    names = mon.names()
    assert names.index("object-add") < names.index("migrate-set-parameters") < names.index("migrate")
    params = next(a for n, a in mon.calls if n == "migrate-set-parameters")
    assert params["tls-creds"] == CLIENT_ID and params["tls-hostname"] == "sec.example"


def test_an_adopted_waiting_vm_gets_its_credentials_once() -> None:
    answers: dict[str, Any] = {"query-status": {"status": "inmigrate", "running": False},
                               "query-migrate": {}, "query-colo-status": {"mode": "none"}}
    mon = Mon(answers)
    b = _Backend(mon, PSK)
    assert b.observe().status == "inmigrate"
    b.observe()
    assert mon.names().count("object-add") == 1
    assert ("migrate-set-parameters", {"tls-creds": SERVER_ID}) in mon.calls
    assert ("object-add", PSK.props("server")) in mon.calls
    plain = Mon(answers)
    _Backend(plain, None).observe()
    assert "object-add" not in plain.names()


def test_a_started_secondary_listens_with_tls_from_its_first_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class Proc:
        pid, returncode = 1, 2

        def __init__(self, argv: list[str], **kw: Any) -> None:
            started.append(argv)

        def poll(self) -> int:
            return 2

    monkeypatch.setattr("colo_orch.backends.qemu.backend.subprocess.Popen", Proc)
    b = _Backend(Mon({}), X509)
    b.vm_log = "/dev/null"
    with pytest.raises(BackendError, match="exited with 2"):
        b.start_vm("tcp:10.0.0.2:4444")
    argv = started[0]
    assert argv[argv.index("-incoming") - 4:] == [*X509.incoming_args(), "-incoming",
                                                  "tcp:10.0.0.2:4444"]
