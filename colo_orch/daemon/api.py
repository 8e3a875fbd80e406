"""The orchestrator's HTTP API: its listeners, on one event loop in a thread of its own.

What each listener serves, and who may send commands, is decided in
`colo_orch/core/api.py`; this module does the I/O:

- every listener (`api_listen`, `api_socket`, `metrics_listen`) is served by one asyncio
  loop, so a slow or idle client costs a file descriptor, not a thread;
- each connection carries one request and has `timing.api_timeout` for all of it (the
  request head, the body, the answer): a client that trickles bytes (slowloris) or never
  reads is cut off then, whatever it sends;
- at most MAX_CONNECTIONS are open at once; one more is answered 503 and closed;
- what needs the orchestrator (its status, a command, the metrics) runs on a pool of
  WORKERS threads, so a handler that waits on the loop's lock holds no listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo_orch.core.api import (
    Command,
    Listener,
    Peer,
    Policy,
    Read,
    Reply,
    Request,
    check_token,
    parse_head,
    render,
    route,
)
from colo_orch.core.commands import CommandRefused
from colo_orch.core.config import Config
from colo_orch.core.state import State
from colo_orch.daemon.secret_file import SecretFileError, read_secret

log = logging.getLogger("colo_orch.api")

READY_STATES = {State.PROTECTED.name, State.CHECKPOINTING.name, State.ALONE.name,
                State.PAUSED.name}
MAX_CONNECTIONS = 64
WORKERS = 2
# Linux's SO_PEERGROUPS (since 4.13): the peer's supplementary groups; Python 3.11's
# socket module does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
REFUSAL_LOG_EVERY_S = 10.0
LINGER_BYTES = 1 << 20  # what a refused client may still send before it is reset


class ApiError(ValueError):
    """A listener or credential the config names cannot be used: str() names the key and
    the fix."""


@dataclass(frozen=True)
class Handlers:
    """What the API asks of the orchestrator; each runs on a worker thread."""

    status: Callable[[], dict[str, Any]]
    # {"accepted": text, "id": n}, or raises CommandRefused when it does not apply now
    command: Callable[[str], dict[str, Any]]
    metrics: Callable[[], bytes]  # Prometheus text format
    refused: Callable[[str], None] = lambda reason: None  # counts a refusal


def read_token(path: str, field: str = "api_token_file") -> bytes:
    """The API token in `path` (mode 0600, at least 16 visible ASCII characters)."""
    try:
        token = read_secret(path, field, "a random token (head -c 32 /dev/urandom | base64)",
                            "the token")
    except SecretFileError as exc:
        raise ApiError(str(exc)) from exc
    problem = check_token(token)
    if problem is not None:
        raise ApiError(f"{field} {path}: {problem}; write a random token there: "
                       f"head -c 32 /dev/urandom | base64 > {path}")
    return token


def _tcp_socket(key: str, listen: str) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port)), family=family, backlog=128)
    except OSError as exc:
        raise ApiError(f"{key} {listen}: {exc.strerror}; use an address of this host and a "
                       "free port") from exc


def _unix_socket(path: str) -> socket.socket:
    """A listening unix socket at `path`, replacing a stale one but never a live one. Its
    mode is 0666: who may command is the peer check's business (SO_PEERCRED), and any
    local user may read GET /state, as over TCP."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise ApiError(f"api_socket {p}: exists and is not a socket; remove it or "
                               "choose another path")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(p))
                except OSError:
                    p.unlink()  # nobody listens: left by a process that died
                else:
                    raise ApiError(f"api_socket {p}: another process listens there (a second "
                                   "colo-orch for this pair?); stop it or choose another path")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(p))
        p.chmod(0o666)
        s.listen(128)
        return s
    except OSError as exc:
        raise ApiError(f"api_socket {p}: {exc.strerror}; give a path in a directory "
                       "this daemon may write (e.g. /run/colo)") from exc


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ApiError(f"api_tls_cert_file {cert} with api_tls_key_file {key}: cannot be "
                       f"loaded ({exc}); give a PEM certificate chain and its private key"
                       ) from exc
    return ctx


def _peer(sock: Any) -> Peer | None:
    """The credentials of a unix socket's peer, as at its connect()."""
    try:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      _UCRED.size))
    except OSError:
        return None
    gids = {gid}
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
        gids.update(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        pass  # an older kernel: the primary group alone
    return Peer(pid, uid, frozenset(gids))


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After refusing a request the client may still be sending: end our side, then read and
    drop its bytes until it closes (up to LINGER_BYTES, within the connection's time), as
    closing a socket with unread input resets it, and the reset can destroy the refusal
    before the client reads it."""
    if writer.can_write_eof():
        writer.write_eof()
    await writer.drain()
    left = LINGER_BYTES
    while left > 0:
        chunk = await reader.read(min(left, 65536))
        if not chunk:
            return
        left -= len(chunk)


class ApiServer:
    """The listeners the config asks for, bound at construction (so that a bad address
    stops the daemon at start, naming its key), served from start() until stop()."""

    def __init__(self, cfg: Config, handlers: Handlers, token: bytes = b"", *,
                 max_connections: int = MAX_CONNECTIONS, workers: int = WORKERS) -> None:
        self.handlers = handlers
        self.timeout = cfg.timing.api_timeout
        self.max_connections = max_connections
        self.policy = Policy(token, frozenset(cfg.api_socket_uids),
                             frozenset(cfg.api_socket_gids))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api")
        self._open = 0
        self._logged: dict[str, float] = {}
        self._listeners: list[tuple[Listener, socket.socket, ssl.SSLContext | None]] = []
        self._socket_path = ""  # ours to remove at close, once bound
        self._socket_ino = 0
        try:
            ctx = (tls_context(cfg.api_tls_cert_file, cfg.api_tls_key_file)
                   if cfg.api_tls_cert_file else None)
            if cfg.api_listen:
                self._listeners.append((Listener.COMMANDS,
                                        _tcp_socket("api_listen", cfg.api_listen), ctx))
            if cfg.metrics_listen:
                self._listeners.append((Listener.READ_ONLY,
                                        _tcp_socket("metrics_listen", cfg.metrics_listen), None))
            if cfg.api_socket:
                self._listeners.append((Listener.SOCKET, _unix_socket(cfg.api_socket), None))
                self._socket_path = cfg.api_socket
                self._socket_ino = os.stat(cfg.api_socket).st_ino
        except ApiError:
            self.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def address(self, listener: Listener) -> Any:
        """Where `listener` listens (its socket's name), for tests and the log."""
        for kind, sock, _ in self._listeners:
            if kind is listener:
                return sock.getsockname()
        return None

    def start(self) -> ApiServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="api",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self.close()

    def close(self) -> None:
        for _, sock, _ in self._listeners:
            sock.close()
        if self._socket_path:
            try:
                # Only the file we bound: a successor may have replaced it since.
                if os.stat(self._socket_path).st_ino == self._socket_ino:
                    os.unlink(self._socket_path)
            except OSError:
                pass
            self._socket_path = ""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # The loop ------------------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        servers = []
        for listener, sock, ctx in self._listeners:
            def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                   listener: Listener = listener) -> Any:
                return self._connection(r, w, listener)

            if listener is Listener.SOCKET:
                servers.append(await asyncio.start_unix_server(cb, sock=sock))
            else:
                servers.append(await asyncio.start_server(
                    cb, sock=sock, ssl=ctx,
                    ssl_handshake_timeout=self.timeout if ctx else None,
                    ssl_shutdown_timeout=self.timeout if ctx else None))
        ready.set()
        await self._stopping.wait()
        for s in servers:
            s.close()
        # Connections still open end with the daemon, not as tasks destroyed mid-await.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          listener: Listener) -> None:
        if self._open >= self.max_connections:
            self._refuse(Reply(503, {"error": f"more than {self.max_connections} open "
                                              "connections; try again"}, "busy"), writer)
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(self.timeout):
                await self._exchange(reader, writer, listener)
                writer.close()
                await writer.wait_closed()
        except TimeoutError:
            self._refused("timeout", writer)
            writer.transport.abort()
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
        except asyncio.CancelledError:  # the daemon stops
            writer.transport.abort()
            raise
        finally:
            self._open -= 1

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        listener: Listener) -> None:
        buf = b""
        parsed = parse_head(buf)
        while parsed is None:
            chunk = await reader.read(4096)
            if not chunk:
                return  # the client went away
            buf += chunk
            parsed = parse_head(buf)
        if isinstance(parsed, Reply):
            self._refuse(parsed, writer)
            await _linger(reader, writer)
            return
        request: Request = parsed
        rest = request.content_length - (len(buf) - request.head_bytes)
        if rest > 0:
            await reader.readexactly(rest)  # a command takes no body: read it, not kept
        peer = _peer(writer.get_extra_info("socket")) if listener is Listener.SOCKET else None
        decision = route(request, listener, self.policy, peer)
        if isinstance(decision, Reply):
            self._refuse(decision, writer)
            return
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._answer, decision, listener, peer, writer)
        except Exception as exc:
            log.exception("API %s failed", decision)
            out = Reply(500, {"error": f"{type(exc).__name__}: {exc}"}).encode()
        writer.write(out)
        await writer.drain()

    # On a worker thread ---------------------------------------------------------------
    def _answer(self, decision: Read | Command, listener: Listener, peer: Peer | None,
                writer: asyncio.StreamWriter) -> bytes:
        h = self.handlers
        if isinstance(decision, Command):
            who = (f"uid {peer.uid} pid {peer.pid}" if peer is not None
                   else str(writer.get_extra_info("peername")))
            try:
                accepted = h.command(decision.name)
            except CommandRefused as exc:
                log.info("API command %s from %s on %s refused: %s", decision.name, who,
                         listener.value, exc)
                h.refused("not_applicable")
                return Reply(409, {"error": str(exc), "state": h.status()["state"]},
                             "not_applicable").encode()
            log.info("API command %s from %s on %s accepted (id %s)", decision.name, who,
                     listener.value, accepted.get("id"))
            return Reply(202, {**accepted, "state": h.status()["state"]}).encode()
        if decision.what == "healthz":
            return Reply(200, {"ok": True}).encode()
        if decision.what == "metrics":
            return render(200, h.metrics(), "text/plain; version=0.0.4; charset=utf-8")
        st = h.status()
        if decision.what == "readyz":
            ready = st["state"] in READY_STATES
            return Reply(200 if ready else 503, {"ready": ready, "state": st["state"]}).encode()
        return Reply(200, st).encode()

    # Refusals --------------------------------------------------------------------------
    def _refuse(self, reply: Reply, writer: asyncio.StreamWriter) -> None:
        if reply.refused:
            self._refused(reply.refused, writer)
        writer.write(reply.encode())

    def _refused(self, reason: str, writer: asyncio.StreamWriter) -> None:
        self.handlers.refused(reason)
        if reason in ("unauthorized", "forbidden", "timeout", "busy"):
            now = time.monotonic()
            # At most one line per reason every few seconds: a flood must not fill the log.
            if now - self._logged.get(reason, -REFUSAL_LOG_EVERY_S) >= REFUSAL_LOG_EVERY_S:
                self._logged[reason] = now
                log.warning("API: refused a request (%s) from %s (colo_api_requests_"
                            "refused_total counts them)", reason,
                            writer.get_extra_info("peername") or "the unix socket")
