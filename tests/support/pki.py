"""Throwaway certificates for TLS tests, made with the openssl command."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(d: Path, name: str) -> None:
    """A CA `name`-ca and, signed by it, a server certificate for 127.0.0.1
    (`name`-server.pem/.key) and a client's (`name`-client.pem/.key), in `d`."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", "-days", "1",
             "-subj", f"/CN={name} test CA", cwd=d)
    # etcd's JSON gateway dials its own gRPC server with the server's certificate as a
    # client certificate: the server's must allow both uses.
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth,clientAuth"),
                     ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{who}.ext").write_text(ext + "\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}-{who}.key", "-out", f"{name}-{who}.csr",
                 "-subj", f"/CN={who}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}-{who}.csr", "-CA", f"{name}-ca.pem",
                 "-CAkey", f"{name}-ca.key", "-CAcreateserial", "-days", "1",
                 "-extfile", f"{who}.ext", "-out", f"{name}-{who}.pem", cwd=d)
