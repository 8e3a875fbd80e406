"""TLS credentials for tests, made with the `openssl` command: a CA, and per host the files
QEMU's tls-creds-x509 reads from one directory (docs/PORTS.md), or a PSK key file."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from pathlib import Path

DAYS = "2"  # long enough for any test run, short enough to never matter elsewhere


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(dest: Path, name: str = "colo test CA") -> Path:
    """A self-signed CA in dest (ca-cert.pem, ca-key.pem); returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", DAYS, "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=dest)
    return dest


def _issue(ca: Path, dest: Path, stem: str, cn: str, usage: str, san: str) -> None:
    ext = dest / f"{stem}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{stem}-key.pem", "-out", f"{stem}.csr", "-subj", f"/CN={cn}", cwd=dest)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", str(ca / "ca-cert.pem"),
             "-CAkey", str(ca / "ca-key.pem"), "-CAcreateserial", "-days", DAYS,
             "-extfile", str(ext), "-out", f"{stem}-cert.pem", cwd=dest)
    (dest / f"{stem}.csr").unlink()
    ext.unlink()
    (dest / f"{stem}-key.pem").chmod(0o600)


def host_dir(ca: Path, dest: Path, host: str) -> Path:
    """One host's directory: the CA's certificate, a server certificate for `host` (an
    address or a DNS name) and a client certificate, each with its key."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        san = f"IP:{ipaddress.ip_address(host)}"
    except ValueError:
        san = f"DNS:{host}"
    _issue(ca, dest, "server", host, "serverAuth", san)
    _issue(ca, dest, "client", host, "clientAuth", "")
    (dest / "ca-cert.pem").write_bytes((ca / "ca-cert.pem").read_bytes())
    return dest


def psk_dir(dest: Path, user: str = "qemu", key: bytes | None = None) -> Path:
    """A keys.psk with one USER:HEXKEY line (QEMU's tls-creds-psk format)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "keys.psk"
    path.write_text(f"{user}:{(key or secrets.token_bytes(32)).hex()}\n")
    path.chmod(0o600)
    return dest
