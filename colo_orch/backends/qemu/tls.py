"""QEMU's TLS credentials for what crosses between the hosts: their names and arguments,
and the one QMP command that adds them.

Without them, QEMU takes VM state from whoever connects first to a COLO secondary's
`-incoming` port, and writes into the secondary's image for whoever connects to its NBD
export. QEMU 7.2 facts used here (migration/channel.c, migration/tls.c, nbd/server.c,
block/nbd.c, crypto/tlscreds*.c; docs/system/tls.rst):
- A TLS credentials object has one endpoint, server or client. The secondary's QEMU is
  the server of both the migration and the NBD export; the primary's is the client of
  both. A failover makes the secondary's QEMU a primary, so either object may be needed
  in one process: each has its own id, added when first needed.
- The incoming side decides per accepted connection: when the `tls-creds` migration
  parameter names an object it runs a TLS handshake first (migrate_channel_requires_tls_
  upgrade), and a failed handshake drops that connection only; the listener stays open.
  Setting the parameter with `-global migration.tls-creds=ID` on the command line closes
  the window between the listener's start and a QMP command.
- x509 with `verify-peer=on` (the default) makes the server demand a client certificate
  signed by the same CA; the client checks the server's certificate against
  `tls-hostname`, else the host of the URI (an IP address must be in the certificate's
  subjectAltName). PSK: both ends hold `keys.psk`; the client names its USER.
- NBD: `nbd-server-start tls-creds=ID` refuses every option but STARTTLS and ABORT
  before the handshake (NBD_REP_ERR_TLS_REQD); the client is the `nbd` block driver with
  `tls-creds` and `tls-hostname`. QEMU built without GnuTLS refuses to create the object
  ("TLS credentials support requires GNUTLS").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

SERVER_ID = "colo-tls-server"
CLIENT_ID = "colo-tls-client"
ENDPOINTS = {"server": SERVER_ID, "client": CLIENT_ID}


@dataclass(frozen=True)
class QemuTls:
    kind: str  # "x509" or "psk"
    dir: str
    hostname: str = ""  # x509: the name in the peer's server certificate ("" = the URI's host)
    psk_user: str = "qemu"

    def props(self, endpoint: str) -> dict[str, Any]:
        """The object's properties, for QMP `object-add`."""
        p: dict[str, Any] = {"qom-type": f"tls-creds-{self.kind}", "id": ENDPOINTS[endpoint],
                             "dir": self.dir, "endpoint": endpoint}
        if self.kind == "x509":
            p["verify-peer"] = True
        elif endpoint == "client":
            p["username"] = self.psk_user
        return p

    def object_arg(self, endpoint: str) -> str:
        """The same object as a `-object` command-line argument."""
        parts: list[str] = []
        for k, v in self.props(endpoint).items():
            if k == "qom-type":
                parts.insert(0, str(v))
                continue
            value = "on" if v is True else str(v)
            parts.append(f"{k}={value.replace(',', ',,')}")  # a doubled comma is a literal one
        return ",".join(parts)

    def incoming_args(self) -> list[str]:
        """A secondary's arguments: its TLS server, in force from its listener's start."""
        return ["-object", self.object_arg("server"),
                "-global", f"migration.tls-creds={SERVER_ID}"]

    def migration_params(self) -> dict[str, Any]:
        """`migrate-set-parameters` for a primary's outgoing COLO migration."""
        return {"tls-creds": CLIENT_ID, "tls-hostname": self.hostname}

    def nbd_client(self) -> dict[str, str]:
        """The `nbd` block driver's options toward the secondary's export."""
        opts = {"tls-creds": CLIENT_ID}
        if self.hostname:
            opts["tls-hostname"] = self.hostname
        return opts


def from_config(kind: str, dir: str, hostname: str = "", psk_user: str = "qemu") -> QemuTls | None:
    """The credentials a config asks for; None without TLS (migration_tls = "")."""
    return QemuTls(kind, dir, hostname, psk_user) if kind else None


def is_duplicate(exc: Exception) -> bool:
    """object-add of an id that exists: the object was added before (or on the command line)."""
    return "duplicate" in str(exc).lower() or "already exists" in str(exc).lower()


class Monitor(Protocol):
    def cmd(self, name: str, **args: Any) -> Any: ...


def add_creds(mon: Monitor, tls: QemuTls, endpoint: str) -> None:
    """Add the credentials object for one endpoint to a running QEMU, unless it has it."""
    try:
        mon.cmd("object-add", **tls.props(endpoint))
    except Exception as exc:
        if not is_duplicate(exc):
            raise
