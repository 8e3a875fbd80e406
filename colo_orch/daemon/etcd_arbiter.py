"""The pair's lease in etcd: a leader key bound to an etcd lease (Patroni's model).

The key `{etcd_prefix}/{pair}/leader` holds the holder's host id and is bound to an
etcd lease of TTL `timing.lease_ttl` (etcd grants whole seconds, at least about
1.5 election timeouts; the TTL etcd returns is the one used). Expiry is decided by
etcd alone; a host's clock only bounds its own `safe_until` (see `arbiter`).

- acquire: one transaction: if the key's create_revision is 0 (absent), put it with
  our lease; else read it, to learn the holder.
- renew: a keep-alive every ttl/3. An answer without TTL means etcd let the lease go.
  Each renewal then reads the key: deleted (`etcdctl del`) or rewritten
  (`etcdctl put`) by hand, the holder steps down at once and says why.
- release: revoke the lease, which deletes the key.
- sync (S6, Patroni's synchronous mode): the key `{etcd_prefix}/{pair}/sync`, without
  a lease (it must outlive both hosts), says `protected` (the secondary's copy is
  current) or `alone:<host id>` (that primary served alone: the other copy is stale).
  The holder writes it in one transaction conditioned on the leader key's value and
  lease being ours, so only the holder can. Every acquisition reads it before it creates
  the leader key, and its create also compares the sync key's mod revision with the one
  it read: a host recording `alone` meanwhile makes it fail. `alone:` naming the other
  host refuses it, whatever our role: a secondary whose primary went on alone, or a
  primary that was cut off while its secondary took over.

A restarted orchestrator whose key is still live (same host id, same value) adopts
its lease by keeping it alive: its lease id is in the key.

The client: etcd3gw (OpenStack's, maintained), etcd's v3 API over its JSON gateway
with `requests`: pure Python, no grpcio build. It takes a CA and a client
certificate and a timeout; it has neither user/password authentication nor more
than one endpoint. Both are done here over its client: one client per endpoint,
tried in turn from the last that answered, each request bounded by ttl/4 in all so
that a keeper whose request fails tries again before `safe_until`; and
`/v3/auth/authenticate` once per endpoint, its token sent in the Authorization
header, fetched again when etcd says it is invalid (a restarted member forgets
simple tokens). This module is the only one that imports the client library.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etcd3gw import exceptions as etcd_exc
from etcd3gw.client import Etcd3Client

from colo_orch.core.config import Config
from colo_orch.daemon.arbiter import NOT_CHECKED, STALE, Arbiter, LeaseView, sync_refuses
from colo_orch.daemon.secret_file import SecretFileError, read_secret

log = logging.getLogger("colo_orch.etcd")

# gRPC status codes etcd's gateway returns in its error bodies.
_INVALID_ARGUMENT = 3
_NOT_FOUND = 5
_PERMISSION_DENIED = 7
_FAILED_PRECONDITION = 9
_UNAUTHENTICATED = 16
# Answers that another member would give too: not worth trying the next endpoint.
_FINAL = {_INVALID_ARGUMENT, _NOT_FOUND, _PERMISSION_DENIED, _FAILED_PRECONDITION,
          _UNAUTHENTICATED}


class EtcdError(Exception):
    """A request failed: str() says which endpoint(s) and why."""

    def __init__(self, message: str, code: int = -1) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnreachable(EtcdError):
    """No endpoint answered."""


class EtcdAuthError(EtcdError):
    """etcd refused our credentials or permissions: retrying will not help; the fix is said."""


@dataclass(frozen=True)
class EtcdSettings:
    """What the arbiter needs from the config (see colo_orch.core.config)."""

    endpoints: tuple[str, ...]
    prefix: str = "/colo"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    user: str = ""
    password: str = ""


class EtcdConfigError(ValueError):
    """A file the config names cannot be used: str() names the field and the fix."""


def settings_from_config(cfg: Config) -> EtcdSettings:
    """The config's etcd fields, with the password read from its file (which must not be
    readable by group or others) and the TLS files checked to be readable."""
    for key in ("etcd_ca_file", "etcd_cert_file", "etcd_key_file"):
        f = getattr(cfg, key)
        if f and not os.access(f, os.R_OK):
            raise EtcdConfigError(f"{key} {f}: cannot be read; give the path of the PEM file")
    password = read_password_file(cfg.etcd_password_file) if cfg.etcd_password_file else ""
    return EtcdSettings(endpoints=tuple(cfg.etcd_endpoints), prefix=cfg.etcd_prefix,
                        ca_file=cfg.etcd_ca_file, cert_file=cfg.etcd_cert_file,
                        key_file=cfg.etcd_key_file, user=cfg.etcd_user, password=password)


def read_password_file(path: str, field: str = "etcd_password_file",
                       user: str = "etcd_user") -> str:
    """The password in `path`, which must not be readable by group or others; errors name
    `field` (the config's or a command's option) and the fix."""
    try:
        secret = read_secret(path, field, f"{user}'s password", "the password")
    except SecretFileError as exc:
        raise EtcdConfigError(str(exc)) from exc
    return secret.decode(errors="replace")


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode(errors="replace")


class _Endpoint:
    def __init__(self, url: str, s: EtcdSettings) -> None:
        self.url = url
        scheme, rest = url.split("://", 1)
        host, port = rest.rstrip("/").rsplit(":", 1)
        self.client = Etcd3Client(
            host=host.strip("[]"), port=int(port), protocol=scheme,
            ca_cert=s.ca_file or None, cert_cert=s.cert_file or None,
            cert_key=s.key_file or None, api_path="/v3/")
        # Not from the environment: REQUESTS_CA_BUNDLE would replace etcd_ca_file (requests
        # lets it override a session's CA), and HTTP(S)_PROXY would route the lease through
        # a proxy.
        self.client.session.trust_env = False
        self.token = ""


class EtcdClient:
    """The few v3 calls the arbiter makes, over several endpoints, with auth.

    Not thread-safe: one caller at a time (the arbiter serialises its requests).
    """

    def __init__(self, settings: EtcdSettings, request_timeout: float, *,
                 permission: str = "readwrite") -> None:
        self.settings = settings
        self.permission = permission  # what the caller needs on the prefix: for the errors
        self.request_timeout = request_timeout
        self._eps = [_Endpoint(u, settings) for u in settings.endpoints]
        self._cur = 0  # the endpoint that answered last: tried first

    def call(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        """POST `body` to /v3/`path` at the first endpoint that answers, within `timeout`."""
        budget = self.request_timeout if timeout is None else timeout
        start = time.monotonic()
        errors: list[str] = []
        n = len(self._eps)
        for i in range(n):
            left = budget - (time.monotonic() - start)
            if left <= 0.01:
                errors.append(f"not tried in time: {', '.join(e.url for e in self._rest(i))}")
                # The next request starts with the first endpoint not tried: a hung one
                # must not eat every request's whole budget.
                self._cur = (self._cur + i) % n
                break
            ep = self._eps[(self._cur + i) % n]
            try:
                out = self._at(ep, path, body, min(left, self.request_timeout))
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as exc:
                errors.append(f"{ep.url}: {_why(exc)}")
                continue
            except EtcdError as exc:
                if isinstance(exc, EtcdAuthError) or exc.code in _FINAL:
                    raise
                errors.append(str(exc))  # e.g. a member without a leader: ask another
                continue
            self._cur = (self._cur + i) % n
            return out
        raise EtcdUnreachable("etcd unreachable: " + "; ".join(errors))

    def _rest(self, i: int) -> list[_Endpoint]:
        n = len(self._eps)
        return [self._eps[(self._cur + j) % n] for j in range(i, n)]

    def _at(self, ep: _Endpoint, path: str, body: dict[str, Any], timeout: float) -> Any:
        s = self.settings
        if s.user and not ep.token:
            self._authenticate(ep, timeout)
        try:
            return self._post(ep, path, body, timeout)
        except etcd_exc.Etcd3Exception as exc:
            if isinstance(exc, etcd_exc.ConnectionFailedError | etcd_exc.ConnectionTimeoutError):
                raise
            code, msg = _detail(exc)
            if code == _UNAUTHENTICATED and s.user:
                ep.token = ""
                self._authenticate(ep, timeout)
                return self._post(ep, path, body, timeout)
            raise self._refused(ep, code, msg) from exc

    def _post(self, ep: _Endpoint, path: str, body: dict[str, Any], timeout: float) -> Any:
        ep.client.timeout = timeout
        try:
            return ep.client.post(ep.client.get_url(path), json=body)
        except ValueError as exc:  # not JSON: not etcd's gateway
            raise EtcdError(f"{ep.url}: the answer to {path} is not JSON: is this etcd's "
                            "client URL?") from exc

    def _authenticate(self, ep: _Endpoint, timeout: float) -> None:
        s = self.settings
        try:
            got = self._post(ep, "auth/authenticate", {"name": s.user, "password": s.password},
                             timeout)
        except etcd_exc.Etcd3Exception as exc:
            if isinstance(exc, etcd_exc.ConnectionFailedError | etcd_exc.ConnectionTimeoutError):
                raise
            code, msg = _detail(exc)
            raise self._refused(ep, code, msg) from exc
        ep.token = str(got.get("token", ""))
        ep.client.session.headers["Authorization"] = ep.token

    def _refused(self, ep: _Endpoint, code: int, msg: str) -> EtcdError:
        s = self.settings
        if "authentication failed" in msg:
            return EtcdAuthError(
                f"etcd at {ep.url} refused user {s.user!r}: {msg}; fix etcd_user or the "
                "password in etcd_password_file (etcdctl user passwd USER)")
        if "authentication is not enabled" in msg:
            return EtcdAuthError(
                f"etcd at {ep.url} has no authentication enabled but etcd_user = {s.user!r} "
                "is set: remove etcd_user and etcd_password_file, or enable auth in etcd "
                "(etcdctl auth enable)")
        if "user name is empty" in msg or code == _UNAUTHENTICATED:
            return EtcdAuthError(
                f"etcd at {ep.url} requires authentication: {msg}; set etcd_user and "
                "etcd_password_file")
        if code == _PERMISSION_DENIED:
            need = {"readwrite": "read-write"}.get(self.permission, self.permission)
            return EtcdAuthError(
                f"etcd at {ep.url}: user {s.user or '(none)'!r} has no {need} permission on "
                f"{s.prefix!r}: {msg}; grant it: etcdctl role grant-permission ROLE "
                f"--prefix=true {self.permission} {s.prefix}/ and etcdctl user grant-role "
                f"{s.user or 'USER'} ROLE")
        return EtcdError(f"{ep.url}: {msg} (code {code})", code)

    def check(self, timeout: float) -> None:
        """Raise EtcdUnreachable or EtcdAuthError unless a request with our credentials
        on our prefix works (a read of the prefix's keys)."""
        key = self.settings.prefix + "/"
        self.call("kv/range", {"key": _b64(key), "range_end": _b64(key[:-1] + "0"),
                               "count_only": True}, timeout)

    def range_prefix(self, timeout: float) -> list[tuple[str, str]]:
        """Every (key, value) under our prefix + "/", in key order, as text."""
        key = self.settings.prefix + "/"
        got = self.call("kv/range", {"key": _b64(key), "range_end": _b64(key[:-1] + "0")},
                        timeout)
        return [(_unb64(kv.get("key", "")), _unb64(kv.get("value", "")))
                for kv in got.get("kvs", [])]


def _detail(exc: etcd_exc.Etcd3Exception) -> tuple[int, str]:
    text = exc.detail_text or ""
    try:
        body = json.loads(text)
        return int(body.get("code", -1)), str(body.get("message") or body.get("error") or text)
    # RecursionError: "[[[[..." nested too deeply; OverflowError: a code of 1e999 (inf).
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        return -1, text.strip()[:200] or type(exc).__name__


_CLIENT_CERT = ("TLS: etcd closed the handshake: does it want a client certificate "
                "(etcd_cert_file, etcd_key_file) signed by its --trusted-ca-file?")


def _why(exc: etcd_exc.Etcd3Exception) -> str:
    if isinstance(exc, etcd_exc.ConnectionTimeoutError):
        return "no answer in time"
    text = exc.detail_text or str(exc)
    for needle, short in (
            ("Connection refused", "connection refused"),
            ("No route to host", "no route to host"),
            ("Network is unreachable", "network unreachable"),
            ("CERTIFICATE_VERIFY_FAILED", "TLS: etcd's certificate is not signed by "
                                          "etcd_ca_file (or not for this address)"),
            # Go's TLS server refuses a missing or untrusted client certificate with an
            # alert after the TLS 1.3 handshake: the client reads it as an alert or, when
            # the server has already hung up, as an EOF (either, as the race goes).
            ("EOF occurred in violation of protocol", _CLIENT_CERT),
            ("ALERT_BAD_CERTIFICATE", _CLIENT_CERT),
            ("ALERT_CERTIFICATE_REQUIRED", _CLIENT_CERT)):
        if needle in text:
            return short
    if "SSL" in text:
        return "TLS handshake failed: " + text[-160:]
    return text[-200:]


class EtcdArbiter(Arbiter):
    """The pair's leader key in etcd, kept by a background thread (see the module doc)."""

    def __init__(self, settings: EtcdSettings, pair: str, who: str, ttl: float,
                 margin: float, *, poll: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.who = who
        self.key = f"{settings.prefix}/{pair}/leader"
        self.sync_key = f"{settings.prefix}/{pair}/sync"
        self.ttl_wanted = max(2, round(ttl))
        self.margin = margin
        self.period = ttl / 3  # keep-alive period
        self.poll = min(poll, self.period)  # how often a non-holder reads the key
        self.clock = clock
        self.client = EtcdClient(settings, request_timeout=ttl / 4)
        self._io = threading.Lock()  # one request at a time
        self._mu = threading.Lock()  # guards the fields below
        self._want = False
        self._want_at = 0.0
        # The loop has said once what it wants. Until then the keeper asks nothing: a first
        # answer of "held by us, not by this run" (our key from before a restart, adopted
        # only when wanted) made a restarted primary fence its output for a cycle.
        self._told = False
        self._lease = 0  # our lease's id while we hold the key
        self._next_renew = 0.0
        self._loss = ""  # why we lost the key, until we hold it again
        self._hands_off_until = 0.0
        self._said_ttl = False
        self._record = ""  # the sync key's wanted value, "" for none
        self._sync = ""  # the sync key's value as last read or written ("" absent)
        self._stale = False
        self._view = NOT_CHECKED
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # The interface ----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="etcd-keeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=2 * self.client.request_timeout + 1)

    def want(self, hold: bool, now: float) -> None:
        with self._mu:
            changed = hold != self._want or not self._told
            self._want, self._told = hold, True
            if hold:
                self._want_at = now
        if changed:
            self._wake.set()

    def view(self) -> LeaseView:
        with self._mu:
            return self._view

    def want_sync(self, record: str) -> None:
        value = f"alone:{self.who}" if record == "alone" else record
        with self._mu:
            changed = value != self._record and value not in ("", self._sync)
            self._record = value
        if changed:
            self._wake.set()  # recording "alone" holds our output: do it now

    def acquire_now(self, timeout: float) -> bool:
        deadline = self.clock() + timeout
        self.want(True, self.clock())
        if not self._io.acquire(timeout=timeout):
            return False
        try:
            try:
                if not self._lease:
                    self._acquire(deadline)
                elif self.clock() >= self.view().safe_until:
                    # Ours, but no longer certain (keep-alives failing): certain again only
                    # after etcd answers a keep-alive.
                    self._renew()
            except EtcdError as exc:
                self._failed(str(exc))
                return False
            self._wake.set()  # schedule the first keep-alive
            return bool(self._lease) and self.clock() < self.view().safe_until
        finally:
            self._io.release()

    def release(self) -> None:
        with self._mu:
            self._want = False
        if not self._io.acquire(timeout=self.client.request_timeout):
            return
        try:
            self._revoke("released")
        finally:
            self._io.release()

    def check(self, timeout: float) -> None:
        """Raise EtcdUnreachable / EtcdAuthError unless etcd answers us on our prefix."""
        with self._io:
            self.client.check(timeout)

    # The keeper -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._io:
                    delay = self._step()
            except Exception as exc:  # a bug must not end the keeper: it would hold on
                log.exception("etcd keeper step failed")
                self._failed(f"keeper error: {exc}")
                delay = self.poll
            self._wake.wait(delay)
            self._wake.clear()

    def _wanted(self, now: float) -> bool:
        with self._mu:
            return self._want and now - self._want_at <= self.ttl_wanted / 3

    def _step(self) -> float:
        """One round of the keeper; returns how long to sleep."""
        now = self.clock()
        with self._mu:
            if not self._told:
                return self.poll
        wanted = self._wanted(now)
        if not wanted:
            self._stale = False  # said once to the loop that fenced on it; read anew next time
        try:
            if self._lease:
                if not wanted:
                    self._revoke("not wanted: the loop stopped asking to hold it")
                    return self.poll
                self._write_sync()
                if now < self._next_renew:
                    return min(self._next_renew - now, self.poll)
                self._renew()
                return self.poll
            if wanted and now >= self._hands_off_until:
                self._acquire()
            else:
                self._read_holder()
        except EtcdError as exc:
            self._failed(str(exc))
            return min(self.poll, 0.1)
        return self.poll

    def _set(self, held: bool, holder: str | None, safe_until: float,
             renewed_at: float = 0.0) -> None:
        """A successful answer. The reason we lost the key stays until we hold it again."""
        if held:
            self._loss = ""
        with self._mu:
            before = self._view
            self._view = LeaseView(held=held, holder=holder, safe_until=safe_until,
                                   reachable=True, checked_at=self.clock(),
                                   error=STALE if self._stale else self._loss,
                                   renewed_at=renewed_at,
                                   alone_recorded=self._sync == f"alone:{self.who}",
                                   stale=self._stale)
            v = self._view
        if (v.held, v.holder, v.alone_recorded, v.stale) != (
                before.held, before.holder, before.alone_recorded, before.stale):
            self.on_change()

    def _failed(self, error: str) -> None:
        with self._mu:
            v = self._view
            if v.error != error:
                log.warning("%s", error)
            # held and safe_until stay: the hold ends by itself at safe_until.
            self._view = LeaseView(held=v.held, holder=v.holder, safe_until=v.safe_until,
                                   reachable=False, checked_at=self.clock(), error=error,
                                   renewed_at=v.renewed_at, alone_recorded=v.alone_recorded,
                                   stale=v.stale)

    def _lost(self, why: str, holder: str | None, by_hand: bool = False) -> None:
        log.warning("lost the leader key %s: %s", self.key, why)
        self._lease = 0
        self._loss = why
        if by_hand:
            # Someone took the key from us on purpose: give our loop a whole TTL to see
            # it and step down before we would take the key back.
            self._hands_off_until = self.clock() + self.ttl_wanted
        self._set(held=False, holder=holder, safe_until=0.0)

    def _budget(self, deadline: float | None) -> float:
        if deadline is None:
            return self.client.request_timeout
        left = deadline - self.clock()
        if left <= 0.01:
            raise EtcdError("no time left to acquire the leader key")
        return min(left, self.client.request_timeout)

    def _acquire(self, deadline: float | None = None) -> None:
        # S6: only while the store says our copy is current, whatever our role: a secondary
        # taking over, or a primary that was cut off while its secondary took over. The
        # create compares the sync key's mod revision, so that an "alone" written since
        # makes it fail.
        kvs = self.client.call("kv/range", {"key": _b64(self.sync_key)},
                               self._budget(deadline)).get("kvs", [])
        self._sync = _unb64(kvs[0].get("value", "")) if kvs else ""
        self._stale = sync_refuses(self._sync, self.who)
        if self._stale:
            self._read_holder()
            return
        compare = [{"key": _b64(self.key), "target": "CREATE", "result": "EQUAL",
                    "create_revision": "0"},
                   {"key": _b64(self.sync_key), "target": "MOD", "result": "EQUAL",
                    "mod_revision": str(kvs[0].get("mod_revision", 0)) if kvs else "0"}]
        sent = self.clock()
        got = self.client.call("lease/grant", {"TTL": self.ttl_wanted}, self._budget(deadline))
        lease, ttl = int(got["ID"]), int(got["TTL"])
        if ttl != self.ttl_wanted and not self._said_ttl:
            self._said_ttl = True
            log.warning("etcd granted %d s leases for the %d s asked (its minimum follows its "
                        "election timeout): a dead holder's key lives that long", ttl,
                        self.ttl_wanted)
        key = _b64(self.key)
        got = self.client.call("kv/txn", {
            "compare": compare,
            "success": [{"request_put": {"key": key, "value": _b64(self.who),
                                         "lease": str(lease)}}],
            "failure": [{"request_range": {"key": key}}],
        }, self._budget(deadline))
        if got.get("succeeded"):
            self._held(lease, sent, ttl)
            log.info("acquired the leader key %s (lease %x, ttl %d s)", self.key, lease, ttl)
            return
        if deadline is None:  # (the take-over path does not wait: it expires unused)
            self._drop_lease(lease)
        kvs = got["responses"][0]["response_range"].get("kvs", [])
        if not kvs:  # deleted between compare and range: try again next round
            self._set(held=False, holder=None, safe_until=0.0)
            return
        holder = _unb64(kvs[0].get("value", ""))
        theirs = int(kvs[0].get("lease", 0))
        if holder == self.who and theirs:
            # Our own key from before a restart: keep its lease alive instead of waiting
            # for it to expire (a restarted primary keeps serving its VM).
            self._lease = theirs
            self._renew()
            if self._lease:
                log.info("adopted our leader key %s (lease %x)", self.key, theirs)
            return
        self._set(held=False, holder=holder, safe_until=0.0)

    def _held(self, lease: int, sent: float, ttl: int) -> None:
        self._lease = lease
        self._next_renew = sent + self.period
        self._set(held=True, holder=self.who, safe_until=sent + ttl - self.margin,
                  renewed_at=sent)

    def _renew(self) -> None:
        sent = self.clock()
        got = self.client.call("lease/keepalive", {"ID": str(self._lease)})
        ttl = int(got.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            self._lost("the lease expired at etcd (its keep-alive found no lease)", None)
            return
        got = self.client.call("kv/txn", {"compare": [], "success": [
            {"request_range": {"key": _b64(self.key)}},
            {"request_range": {"key": _b64(self.sync_key)}}]})
        kvs, sync = (r["response_range"].get("kvs", []) for r in got["responses"])
        self._sync = _unb64(sync[0].get("value", "")) if sync else ""
        if not kvs:
            self._drop_lease(self._lease)
            self._lost("leader key deleted by hand", None, by_hand=True)
            return
        holder = _unb64(kvs[0].get("value", ""))
        if holder != self.who:
            self._drop_lease(self._lease)
            self._lost(f"leader key now held by {holder}", holder, by_hand=True)
            return
        if int(kvs[0].get("lease", 0)) != self._lease:
            self._drop_lease(self._lease)
            self._lost("leader key rewritten by hand without our lease", holder, by_hand=True)
            return
        self._held(self._lease, sent, ttl)

    def _write_sync(self) -> None:
        """Write the sync key's wanted value while we hold the leader key (S6)."""
        with self._mu:
            value = self._record
        if not value or value == self._sync:
            return
        key = _b64(self.key)
        got = self.client.call("kv/txn", {
            "compare": [{"key": key, "target": "VALUE", "result": "EQUAL",
                         "value": _b64(self.who)},
                        {"key": key, "target": "LEASE", "result": "EQUAL",
                         "lease": str(self._lease)}],
            "success": [{"request_put": {"key": _b64(self.sync_key), "value": _b64(value)}}],
            "failure": [],
        })
        if not got.get("succeeded"):
            # Not ours any more: a renewal now finds out why and steps down.
            log.warning("recording %r in %s refused: the leader key %s is no longer ours",
                        value, self.sync_key, self.key)
            self._renew()
            return
        self._sync = value
        log.info("recorded %s in %s", value, self.sync_key)
        v = self.view()
        self._set(held=v.held, holder=v.holder, safe_until=v.safe_until,
                  renewed_at=v.renewed_at)

    def _read_holder(self) -> None:
        kvs = self.client.call("kv/range", {"key": _b64(self.key)}).get("kvs", [])
        holder = _unb64(kvs[0].get("value", "")) if kvs else None
        self._set(held=False, holder=holder, safe_until=0.0)

    def _revoke(self, why: str) -> None:
        if not self._lease:
            return
        lease, self._lease = self._lease, 0
        self._set(held=False, holder=None, safe_until=0.0)
        try:
            self._drop_lease(lease, strict=True)
        except EtcdError as exc:
            # The lease expires by itself; we no longer renew it.
            self._failed(f"revoking the lease ({why}) failed: {exc}")
            return
        log.info("revoked the leader key %s: %s", self.key, why)

    def _drop_lease(self, lease: int, strict: bool = False) -> None:
        try:
            self.client.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if strict and not isinstance(exc, EtcdAuthError) and "not found" not in str(exc):
                raise
