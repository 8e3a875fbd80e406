"""TLS for `xl remus`'s stream between the hosts (Python's ssl, x509; docs/PORTS.md).

xl itself speaks no TLS. Both ends of the connection are ours: on the primary, xl runs
colo_orch.backends.xen.connect as its "ssh" command; on the secondary, XenBackend accepts
the connection and hands it to `xl migrate-receive`. Each end wraps it in TLS with the
files of QEMU's tls-creds-x509 layout (one directory per host, the same for both
backends): the receiver demands a client certificate signed by the pair's CA, the sender
checks the receiver's certificate against the host it connects to. A connection that fails
the handshake is closed; the receiver goes on listening.

OpenSSL forbids using one connection from two threads at once, and this stream runs both
ways (the domain's state out, libxl's back channel in): `relay` runs both directions in
one asyncio loop on a thread of its own, and gives the caller a plain socket (one end of a
socketpair) that carries the same bytes, so the code around it is the same with or
without TLS.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from concurrent.futures import Future
from pathlib import Path

HANDSHAKE_S = 10.0
CHUNK = 65536


def server_context(tls_dir: str) -> ssl.SSLContext:
    d = Path(tls_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(d / "server-cert.pem", d / "server-key.pem")
    ctx.load_verify_locations(d / "ca-cert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls_dir: str) -> ssl.SSLContext:
    d = Path(tls_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the name and the chain
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(d / "client-cert.pem", d / "client-key.pem")
    ctx.load_verify_locations(d / "ca-cert.pem")
    return ctx


def relay(sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
          hostname: str | None = None, handshake_timeout: float = HANDSHAKE_S) -> socket.socket:
    """Run TLS over the connected `sock` and return a plain socket carrying its stream.

    Returns once the handshake succeeded; raises (ssl.SSLError, OSError, TimeoutError) and
    closes `sock` when it did not. End-of-stream from the peer reaches the plain socket as
    end-of-file; closing the plain socket (or shutting it down) ends the TLS connection.
    """
    ours, theirs = socket.socketpair()
    started: Future[None] = Future()

    def run() -> None:
        try:
            asyncio.run(_run(sock, ctx, server_side, hostname, handshake_timeout, theirs,
                             started))
        except BaseException as exc:  # handed to the caller below
            if not started.done():
                started.set_exception(exc)
        finally:
            theirs.close()
            sock.close()

    threading.Thread(target=run, daemon=True, name="tls-relay").start()
    try:
        started.result()
    except BaseException:
        ours.close()
        raise
    return ours


async def _run(sock: socket.socket, ctx: ssl.SSLContext, server_side: bool,
               hostname: str | None, timeout: float, plain: socket.socket,
               started: Future[None]) -> None:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    if server_side:
        reader = asyncio.StreamReader(limit=CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock=sock, ssl=ctx, ssl_handshake_timeout=timeout)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    else:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=ctx, server_hostname=hostname, ssl_handshake_timeout=timeout,
            limit=CHUNK)
    plain.setblocking(False)
    preader, pwriter = await asyncio.open_connection(sock=plain, limit=CHUNK)
    started.set_result(None)

    async def inbound() -> None:
        # The peer's stream ends, or breaks: the plain side reads end-of-file (on the
        # secondary, xl fails over on it).
        try:
            while data := await reader.read(CHUNK):
                pwriter.write(data)
                await pwriter.drain()
        finally:
            if not pwriter.is_closing():
                pwriter.write_eof()

    async def outbound() -> None:
        while data := await preader.read(CHUNK):
            writer.write(data)
            await writer.drain()

    into, out = asyncio.create_task(inbound()), asyncio.create_task(outbound())
    try:
        # Our side closing ends the connection (TLS cannot half-close); the peer's end
        # leaves the other way open until our side closes (libxl's back channel outlives
        # the stream for a moment at failover).
        await asyncio.wait((into, out), return_when=asyncio.FIRST_COMPLETED)
        if out.done():
            into.cancel()
        await asyncio.gather(into, out, return_exceptions=True)
    finally:
        for w in (writer, pwriter):
            w.close()
