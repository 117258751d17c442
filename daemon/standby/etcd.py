"""The leader lease in etcd v3, over etcd's JSON gateway (Patroni's ``dcs/etcd3.py`` idea).

Keys, under ``{prefix}{cluster}/``:

``leader``
    the holder's node name, bound to an etcd lease of ``ceil(ttl)`` seconds: etcd deletes
    it when the lease expires on etcd's clock (or is revoked).
``last``
    ``{"holder": NODE}``, *not* bound to a lease, written in the same transaction as
    ``leader`` on every grant. Its ``mod_revision`` **is the epoch**: the revision of the
    granting transaction, which is also ``leader``'s ``create_revision`` while that key
    lives. It stays after the lease expires, so the epoch and the last holder survive
    (0 and nobody when never granted). Revisions only grow and are persisted before etcd
    answers, so epochs never go backwards, not even across an etcd restart. They grow
    by more than one per grant (every write bumps the revision); the role machine only
    needs each grant's epoch to exceed every epoch seen before.
``sync``
    ``{"node": NAME-or-null, "epoch": E, "generation": G}``: the synchronous standby as
    the live holder at epoch ``E`` marked it in its ``G``-th mark write of that epoch
    (written only by the live holder). A write is applied only when its ``(epoch,
    generation)`` stamp is newer than the stored one, so a write that reaches etcd late
    never undoes a later one. The old format, the bare name (empty: none), reads as
    stamp ``(0, 0)``.
``members/NODE``
    ``{"epoch": E, "seq": S, "seen_epoch": N}``: a node's journal position, reported
    while not primary (no lease).
``pause``
    ``{"until": WALL_SECONDS, "by": "alice via edge-a"}``: maintenance mode (``lifeline
    pause``), no automatic promotion until then; absent when not paused.

Requests (all ``POST``, JSON bodies, keys and values base64, int64 fields as strings;
etcd leaves out fields at their zero value, e.g. ``"succeeded"`` of a refused txn, an
empty ``"value"``, ``"TTL"`` of a gone lease):

* :meth:`EtcdLeaseStore.acquire`: ``/v3/lease/grant``, then one ``/v3/kv/txn``:
  ``leader`` CREATE == 0 (absent) and ``last`` MOD == ``expected_epoch`` → put ``leader``
  (with the lease) and ``last``; the epoch is the txn's header revision. Refused: the
  new lease is revoked and :class:`LeaseConflict` carries the state the txn read back in
  its failure branch (same revision as the refused compare). A txn resent to another
  endpoint after a connection failure is recognised by its fresh lease id in ``leader``.
* :meth:`EtcdLeaseStore.renew`: ``/v3/lease/keepalive`` on the held lease (TTL missing
  or 0: the lease is gone, :class:`LeaseLost`), then a linearizable range of ``leader``
  that must still be this node's, at ``create_revision == epoch``, on that lease.
* :meth:`EtcdLeaseStore.release`: txn ``leader`` CREATE == epoch and VALUE == node →
  delete it; then ``/v3/lease/revoke``. :meth:`EtcdLeaseStore.report`: a plain
  ``/v3/kv/put``.
* :meth:`EtcdLeaseStore.set_sync_mark`: a read-only txn reads ``leader`` and ``sync``
  (linearizable, one revision). ``node`` not the holder at ``epoch`` →
  :class:`LeaseLost` (as the witness does); the stored stamp not older than the write's
  → a successful no-op (a newer write won, or this one, resent). Else one txn: the
  release compare and ``sync`` MOD == the ``mod_revision`` just read (0: absent) → put
  ``sync``; its failure branch reads both keys back at the refused compare's revision
  and the same checks run again: the holder gone → :class:`LeaseLost`; ``sync`` moved
  → retry, at most :data:`SYNC_MARK_RETRIES` times (:class:`LeaseUnavailable` after).
* :meth:`EtcdLeaseStore.read`: one linearizable ``/v3/kv/range`` over the prefix, and
  ``/v3/lease/timetolive`` of ``leader``'s lease.

Timing, and why renewals stay safe:

* etcd counts a lease's TTL on its **leader's** clock from when that leader handled the
  grant or keepalive; the role machine computes its fence deadline from when it *sent*
  the request, so a keepalive answered late is still safe.
* When etcd's own leader changes, the new leader re-extends every lease by its full TTL
  (it cannot know the last renewal). That only delays the next holder: the old holder
  fences on its own deadline, and a keepalive reaching etcd after the lease expired on
  the leader's clock is refused (TTL 0), never revives it.
* A keepalive answered by a deposed etcd leader that does not know it yet would extend a
  lease only on that member's clock (fixed upstream by a leadership check on renew in
  later releases); the linearizable read that follows the keepalive needs a quorum, so
  such a renewal fails (:class:`LeaseUnavailable`) instead of extending the fence.
* etcd releases before the early-2024 fix of etcd-io/etcd#15247 (backported to 3.4 and
  3.5; Debian's 3.4.23 predates it) let a stalled old leader revoke leases early, which
  no client can guard against: run a fixed release in production.
* ``/v3/lease/timetolive`` answers whole seconds, rounded down (a lease with 0.9 s left
  says 0). :meth:`read` reports that lower bound, but never less than
  :data:`MIN_LIVE_TTL` while ``leader`` exists, so a live lease never reads as free; the
  standby just looks again sooner. etcd notices expiry on a 500 ms tick, so a lease
  really goes away between ttl and ttl + 0.5 s after its last renewal.
* etcd raises a TTL below its minimum (``1.5 * election timeout``, rounded up to whole
  seconds: 2 s with the default timers) silently; the grant's answer is logged when it
  differs from what was asked. A store ttl longer than the client's is safe.

Every public call gives up after ``timeout`` seconds in all (:class:`LeaseUnavailable`),
trying the endpoints in order from the last one that answered, moving on after a
connection failure, a 5xx answer, or a timeout (connecting to one endpoint may take at
most ``timeout / len(endpoints)``). Every request here may safely be sent twice.

Whatever etcd answers, a call fails only with a :class:`LeaseError`: a refusal (4xx, e.g.
401 when etcd's auth is on), an answer that is not JSON, or a value that cannot be
decoded (not base64, not UTF-8, not the JSON expected) is :class:`LeaseUnavailable`,
naming the endpoint, the key and what was wrong. A member report that cannot be decoded
is skipped with a log line: it is advisory, and one node's bad report must not blind
the others.

Security (without it, anyone who reaches etcd's client port can write the ``sync`` mark
or delete ``leader``):

* **TLS**: ``https://`` endpoints, etcd's certificate verified against ``etcd_ca`` (its
  IP address or name must be in the certificate), and this node's client certificate
  (``etcd_cert``, ``etcd_key``) presented to an etcd run with ``--client-cert-auth``.
  :func:`ssl_context` builds the context; a TLS failure is a connection failure (the
  next endpoint is tried), named with a hint.
* **etcd's users**: with :class:`EtcdCredentials`, the first call authenticates
  (``/v3/auth/authenticate``, the password read from a mode-0600 file) and every
  request carries the token in its ``Authorization`` header. A token etcd no longer
  knows (simple tokens expire after ``--auth-token-ttl`` without use on that member,
  and are lost when it restarts; an "old auth revision" after a user or role change)
  is replaced once, by authenticating again, and the request sent again; refused
  twice, the call fails with :class:`LeaseUnavailable`. One authentication runs at a
  time, shielded from the caller's timeout but bounded by :data:`AUTH_TIMEOUT` (etcd's
  bcrypt and a TLS handshake need not fit in a short ``retry_timeout``). The password
  and the token never appear in a log line, an error, or the status.
* The client certificate must have **no common name**: with auth on, etcd (3.4.10 and
  later) refuses every JSON-gateway request made with a certificate that has one
  ("CommonName of client sending a request against gateway will be ignored").
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import ssl
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from daemon.core.log import get_logger
from daemon.standby import Position, StandbyError
from daemon.standby.lease import MAX_PAUSE
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseLost,
    LeaseState,
    LeaseStore,
    LeaseUnavailable,
    Member,
)

log = get_logger("etcd")

#: The least ``ttl_remaining`` :meth:`EtcdLeaseStore.read` reports for a lease that still
#: exists (etcd's time-to-live answer is rounded down to whole seconds).
MIN_LIVE_TTL = 0.1

#: How many times :meth:`EtcdLeaseStore.set_sync_mark` tries its txn again when the
#: ``sync`` key moved between its read and its txn.
SYNC_MARK_RETRIES = 3

#: Longest an authentication may take (TLS handshake, etcd's bcrypt, a raft round),
#: whatever the caller's deadline: see :meth:`EtcdLeaseStore._authenticate`.
AUTH_TIMEOUT = 2.0

#: gRPC status code etcd uses for "requested lease not found".
_GRPC_NOT_FOUND = 5


class _Unreadable(ValueError):
    """A key, value or field in etcd's answer that cannot be decoded; says what is wrong.
    Turned into :class:`LeaseUnavailable` naming the endpoint and the key."""


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if text is None or text == "":
        return b""
    if not isinstance(text, str):
        raise _Unreadable(f"not base64 text but {type(text).__name__} {text!r:.60}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:  # binascii.Error
        raise _Unreadable(f"not base64 ({e}): {text!r:.60}") from None


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Unreadable(f"not UTF-8 ({e.reason} at byte {e.start}): {raw!r:.60}") from None


def _parse_sync(raw: bytes) -> tuple[str | None, int, int]:
    """``(node, epoch, generation)`` of a ``sync`` value; the old format (the bare name,
    empty for none) reads as stamp ``(0, 0)``."""
    text = _utf8(raw)
    if not text.lstrip().startswith("{"):
        return text or None, 0, 0
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise _Unreadable(f"not JSON ({e}): {text!r:.60}") from None
    if not isinstance(doc, dict):
        raise _Unreadable(f"not a JSON object: {text!r:.60}")
    node = doc.get("node")
    if node is not None and not isinstance(node, str):
        raise _Unreadable(f'"node" is neither a name nor null: {node!r:.60}')
    stamp = []
    for field in ("epoch", "generation"):
        value = doc.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _Unreadable(f"{field!r} is not a non-negative integer: {value!r:.60}")
        stamp.append(value)
    return node or None, stamp[0], stamp[1]


def _prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _int(obj: dict[str, Any] | None, field: str) -> int:
    """An int64 field as etcd's gateway sends it: a JSON string, left out when 0.
    :class:`_Unreadable` when it is something else."""
    if not obj:
        return 0
    if not isinstance(obj, dict):
        raise _Unreadable(f"not a JSON object (looking for {field!r}): {obj!r:.60}")
    value = obj.get(field)
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Unreadable(f"field {field!r} is not an integer: {value!r:.60}")
    try:
        return int(value)
    except ValueError:
        raise _Unreadable(f"field {field!r} is not an integer: {value!r:.60}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        # httpx's errors from a TLS handshake or alert say nothing themselves: the
        # ssl.SSLError (or OSError) they were raised from does.
        cause = exc.__cause__ or exc.__context__
        seen = 0
        while cause is not None and seen < 8 and not str(cause).strip():
            cause, seen = cause.__cause__ or cause.__context__, seen + 1
        if cause is not None and str(cause).strip():
            text = str(cause).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class EtcdSetupError(StandbyError, ValueError):
    """A TLS file or the password file cannot be used; the message names the file, what
    is wrong, and the fix (never the file's content)."""


@dataclass(frozen=True)
class EtcdCredentials:
    """An etcd user and its password (``repr`` leaves the password out)."""

    user: str
    password: str = field(repr=False)


def secret_file_problem(path: Path, what: str) -> str | None:
    """Why ``path`` cannot hold ``what`` (a secret): missing, not a regular file, or open
    to group or others (checked on the mode, so it holds for root too); None when fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path}: no such file (the {what})"
    except OSError as e:
        return f"{path}: cannot read the {what}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: the {what} is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (f"{path}: mode {mode:04o} lets group or others read or write the {what}; "
                f"run: chmod 600 {path}")
    return None


def load_password(path: Path | str, user: str) -> EtcdCredentials:
    """``user`` with the password in ``path`` (its first line; the file mode 0600).
    :class:`EtcdSetupError` naming the file when it cannot be used."""
    path = Path(path)
    problem = secret_file_problem(path, f"etcd password of {user!r}")
    if problem is not None:
        raise EtcdSetupError(problem)
    try:
        with open(path, "rb") as f:
            raw = f.read(4097)
    except OSError as e:
        raise EtcdSetupError(f"{path}: cannot read the etcd password: {e.strerror}") from None
    if len(raw) > 4096:
        raise EtcdSetupError(f"{path}: more than 4096 bytes; the file holds the etcd password alone")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EtcdSetupError(f"{path}: the etcd password is not UTF-8 text") from None
    lines = text.split("\n")
    password = lines[0].rstrip("\r")
    if not password:
        raise EtcdSetupError(f"{path}: empty; write the password of etcd user {user!r} on its first line")
    if any(line.strip() for line in lines[1:]):
        raise EtcdSetupError(f"{path}: more than one line; the file holds the etcd password alone")
    return EtcdCredentials(user, password)


def _no_passphrase() -> bytes:
    raise EtcdSetupError("the key is encrypted with a passphrase")


def ssl_context(ca: Path | str | None, cert: Path | str | None = None,
                key: Path | str | None = None) -> ssl.SSLContext:
    """A TLS client context for etcd: its certificate verified against ``ca`` alone
    (the system's authorities when None), hostname or IP address checked, TLS 1.2 at
    least; ``cert`` and ``key`` (PEM, the key unencrypted) presented when given.
    :class:`EtcdSetupError` naming the file that cannot be used."""
    if (cert is None) != (key is None):
        raise EtcdSetupError("a client certificate needs its key and a key its certificate (etcd_cert, etcd_key)")
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as e:
        raise EtcdSetupError(f"{ca}: cannot load the CA bundle (PEM certificates expected): "
                             f"{_ssl_reason(e)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(str(cert), str(key), password=_no_passphrase)
        except EtcdSetupError as e:
            raise EtcdSetupError(f"{key}: {e}; lifeline needs it unencrypted, mode 0600") from None
        except (OSError, ssl.SSLError) as e:
            raise EtcdSetupError(f"{cert}, {key}: cannot load the client certificate and its key (PEM expected, "
                                 f"the key matching the certificate, unencrypted): {_ssl_reason(e)}") from None
    return context


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    strerror = getattr(exc, "strerror", None)
    return str(reason or strerror or exc)


def setup_problems(endpoints: list[str], ca: Path | None, cert: Path | None, key: Path | None,
                   user: str | None, password_file: Path | None) -> list[tuple[str, str]]:
    """What is wrong with ``[standby.lease]``'s etcd TLS and authentication settings, as
    ``(key, problem)`` pairs for the config loader; loads the files to check them."""
    problems: list[tuple[str, str]] = []
    tls = ca is not None or cert is not None
    plain = [url for url in endpoints if not url.startswith("https://")]
    if (tls or user is not None) and plain:
        why = "TLS files are given" if tls else "etcd_user is set (the password would cross the network in clear)"
        problems.append(("etcd_endpoints", f"{why}, so every endpoint must be https://, found {', '.join(plain)}"))
    if cert is not None and key is None:
        problems.append(("etcd_key", "etcd_cert is set: give its private key too (etcd_key = PATH, mode 0600)"))
    if key is not None and cert is None:
        problems.append(("etcd_cert", "etcd_key is set: give its certificate too (etcd_cert = PATH)"))
    if user is not None and password_file is None:
        problems.append(("etcd_password_file", "etcd_user is set: give the file holding its password "
                                               "(etcd_password_file = PATH, mode 0600)"))
    if password_file is not None and user is None:
        problems.append(("etcd_user", "etcd_password_file is set: give the etcd user name it is the password of"))
    files_ok = True
    for name, path in (("etcd_ca", ca), ("etcd_cert", cert)):
        if path is not None and not Path(path).is_file():
            problems.append((name, f"{path}: no such file"))
            files_ok = False
    if key is not None:
        problem = secret_file_problem(Path(key), "etcd client key")
        if problem is not None:
            problems.append(("etcd_key", problem))
            files_ok = False
    if files_ok and (cert is None) == (key is None) and (ca is not None or cert is not None):
        try:
            ssl_context(ca, cert, key)
        except EtcdSetupError as e:
            problems.append(("etcd_ca" if cert is None or str(e).startswith(f"{ca}:") else "etcd_cert", str(e)))
    if user is not None and password_file is not None:
        if not user or any(c.isspace() for c in user):
            problems.append(("etcd_user", f"expected an etcd user name without spaces, found {user!r}"))
        try:
            load_password(password_file, user)
        except EtcdSetupError as e:
            problems.append(("etcd_password_file", str(e)))
    return problems


#: What etcd says when a request's token is one it does not know (any more): expired,
#: lost in a restart, or issued before the auth store changed. Authenticate again.
_TOKEN_REFUSALS = ("invalid auth token", "revision of auth store is old", "auth token is expired")

_CLIENT_CERT_REFUSED = ("etcd refused this node's client certificate: none was given, or etcd's "
                        "--trusted-ca-file did not sign it; check etcd_cert and etcd_key")

#: Hints appended to a failure that contains the key (etcd's or OpenSSL's words).
_HINTS = (
    ("CommonName of client", "the client certificate has a common name: with auth on, etcd refuses it on the JSON "
                             "gateway; issue one without a CN"),
    ("CERTIFICATE_VERIFY_FAILED", "etcd's certificate is not signed by etcd_ca, or does not name this address"),
    ("CERTIFICATE_REQUIRED", _CLIENT_CERT_REFUSED),
    ("UNKNOWN_CA", _CLIENT_CERT_REFUSED),
    ("BAD_CERTIFICATE", _CLIENT_CERT_REFUSED),
    ("WRONG_VERSION_NUMBER", "this endpoint does not speak TLS: etcd serves plain http:// there"),
    ("authentication is not enabled", "etcd's auth is off, so anyone who reaches it can change the lease: "
                                      "enable it (README, etcd) or remove etcd_user"),
    ("invalid user ID or password", "check etcd_user and the password in etcd_password_file"),
    ("user name is empty", "etcd's auth is on: set etcd_user and etcd_password_file"),
    ("permission denied", "the etcd user's role must grant readwrite on the lease's key prefix"),
)


def _hinted(text: str) -> str:
    for needle, hint in _HINTS:
        if needle.lower() in text.lower():
            return f"{text} ({hint})"
    return text


class _Refused(Exception):
    """etcd answered with an error (4xx: the request itself was refused, e.g. "requested
    lease not found"). Methods decide what it means for the lease."""

    def __init__(self, url: str, status: int, code: int, message: str) -> None:
        super().__init__(_hinted(f"{url}: HTTP {status}: {message} (grpc code {code})"))
        self.url = url
        self.status = status
        self.code = code
        self.message = message


class EtcdLeaseStore(LeaseStore):
    """The lease of ``cluster`` in the etcd cluster at ``endpoints`` (``http://host:port``;
    a bare ``host:port`` means http). ``ttl`` is the client's lease ttl in seconds (etcd
    gets ``ceil(ttl)``); ``timeout`` bounds every call. ``node`` is this process's node
    name, used in log lines. ``transport`` replaces httpx's own (tests: a
    :class:`httpx.MockTransport` playing etcd). ``tls`` (:func:`ssl_context`) verifies
    etcd's certificate and presents this node's on ``https://`` endpoints;
    ``credentials`` log in as an etcd user (see the module's "Security")."""

    def __init__(self, endpoints: list[str], cluster: str, node: str, ttl: float, timeout: float,
                 prefix: str = "/lifeline/", transport: httpx.AsyncBaseTransport | None = None,
                 tls: ssl.SSLContext | None = None, credentials: EtcdCredentials | None = None) -> None:
        if not endpoints:
            raise ValueError("etcd lease store: no endpoints given")
        if not cluster or "/" in cluster:
            raise ValueError(f"etcd lease store: cluster name must be non-empty without '/', found {cluster!r}")
        if not ttl > 0 or not timeout > 0:
            raise ValueError(f"etcd lease store: ttl and timeout must be positive, found {ttl!r} and {timeout!r}")
        self.endpoints = [(e if "://" in e else f"http://{e}").rstrip("/") for e in endpoints]
        self.cluster = cluster
        self.node = node
        self.ttl = ttl
        self.timeout = timeout
        self.store_ttl = max(1, math.ceil(ttl))
        self.base = f"{prefix}{cluster}/"
        self._leader_key = self.base + "leader"
        self._last_key = self.base + "last"
        self._sync_key = self.base + "sync"
        self._members_prefix = self.base + "members/"
        self._pause_key = self.base + "pause"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=timeout / len(self.endpoints)),
            trust_env=False,  # never through an HTTP proxy from the environment
            headers={"Content-Type": "application/json"},
            transport=transport,
            verify=tls if tls is not None else True,
        )
        self._credentials = credentials
        self._token: str | None = None  # etcd's auth token, from the last authentication
        self._auth_flight: trio.Event | None = None  # set when the authentication under way ends
        self._auth_error: str | None = None  # why the last authentication failed
        self._current = 0  # index of the endpoint that answered last
        self._held: tuple[str, int, int] | None = None  # (node, epoch, etcd lease id) from our last grant
        self._ttl_warned = False

    @property
    def endpoint(self) -> str:
        """The endpoint the next request goes to first."""
        return self.endpoints[self._current]

    # ------------------------------------------------------------------ LeaseStore

    async def read(self) -> LeaseState:
        deadline = self._deadline()
        what = "read the lease"
        with self._guard(what):
            data = await self._unrefused(self._post("/v3/kv/range", self._prefix_range(), deadline, what), what)
            return await self._state(data.get("kvs") or [], deadline, what, self.endpoint)

    async def acquire(self, node: str, expected_epoch: int) -> Grant:
        deadline = self._deadline()
        what = f"acquire for {node} at expected epoch {expected_epoch}"
        with self._guard(what):
            return await self._acquire(node, expected_epoch, deadline, what)

    async def _acquire(self, node: str, expected_epoch: int, deadline: float, what: str) -> Grant:
        try:
            granted = await self._post("/v3/lease/grant", {"TTL": str(self.store_ttl)}, deadline, what)
        except _Refused as e:
            raise LeaseUnavailable(f"etcd {what}: lease grant refused: {e}") from None
        lease_id = _int(granted, "ID")
        if not lease_id:
            raise LeaseUnavailable(f"etcd {what}: {self.endpoint}: lease grant answered no lease id: {granted}")
        self._check_granted_ttl(_int(granted, "TTL"))
        txn = {
            "compare": [
                {"key": _b64(self._leader_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                {"key": _b64(self._last_key), "target": "MOD", "result": "EQUAL",
                 "mod_revision": str(expected_epoch)},
            ],
            "success": [
                {"request_put": {"key": _b64(self._leader_key), "value": _b64(node), "lease": str(lease_id)}},
                {"request_put": {"key": _b64(self._last_key), "value": _b64(json.dumps({"holder": node}))}},
            ],
            "failure": [{"request_range": self._prefix_range()}],
        }
        try:
            answer = await self._post("/v3/kv/txn", txn, deadline, what)
        except _Refused as e:
            # "requested lease not found": it expired between grant and txn (timeout >= ttl?)
            raise LeaseUnavailable(f"etcd {what}: txn refused: {e}") from None
        source = self.endpoint
        if answer.get("succeeded"):
            epoch = _int(answer.get("header"), "revision")
            if epoch <= 0:
                raise LeaseUnavailable(f"etcd {what}: {source}: the granting txn answered no revision: {answer}")
            self._held = (node, epoch, lease_id)
            log.info("lease.acquired", node=node, epoch=epoch, expected_epoch=expected_epoch, lease=f"{lease_id:x}",
                     ttl=self.store_ttl, endpoint=source)
            return Grant(epoch)
        kvs = self._txn_range_kvs(answer)
        leader = self._find(kvs, self._leader_key)
        if leader is not None and self._kv_int(leader, "lease", what, source, self._leader_key) == lease_id:
            # Our own txn, sent to an endpoint that failed before answering, took
            # effect; this resend to the next endpoint saw it. The lease id is ours alone.
            epoch = self._kv_int(leader, "create_revision", what, source, self._leader_key)
            self._held = (node, epoch, lease_id)
            log.info("lease.acquired", node=node, epoch=epoch, expected_epoch=expected_epoch, lease=f"{lease_id:x}",
                     ttl=self.store_ttl, endpoint=source, resent=True)
            return Grant(epoch)
        # Refused: give the unused lease back (best effort: unrevoked, it just expires).
        try:
            await self._post("/v3/lease/revoke", {"ID": str(lease_id)}, deadline, f"{what}: revoke unused lease")
        except (LeaseUnavailable, _Refused) as e:
            log.warning("lease.revoke_failed", node=node, lease=f"{lease_id:x}", error=str(e))
        state: LeaseState | None
        try:
            state = await self._state(kvs, deadline, what, source)
        except (LeaseUnavailable, _Refused, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("lease.conflict_state_unreadable", node=node, error=_describe(e))
            state = None
        why = self._conflict_reason(state, expected_epoch)
        log.info("lease.conflict", node=node, expected_epoch=expected_epoch, reason=why)
        raise LeaseConflict(f"etcd refused the lease to {node} at expected epoch {expected_epoch}: {why}", state)

    async def renew(self, node: str, epoch: int) -> Grant:
        deadline = self._deadline()
        what = f"renew for {node} at epoch {epoch}"
        with self._guard(what):
            return await self._renew(node, epoch, deadline, what)

    async def _renew(self, node: str, epoch: int, deadline: float, what: str) -> Grant:
        lease_id = self._held[2] if self._held is not None and self._held[:2] == (node, epoch) else 0
        if not lease_id:
            # Not granted through this object (a restart, another instance): the leader
            # key names the lease, if it is still ours.
            lease_id = self._check_leader(await self._leader_kv(deadline, what), node, epoch, None, what)
        try:
            answer = await self._post("/v3/lease/keepalive", {"ID": str(lease_id)}, deadline, what)
        except _Refused as e:
            if e.code == _GRPC_NOT_FOUND:
                self._forget(lease_id)
                raise LeaseLost(f"etcd {what}: lease {lease_id:x} not found: {e.message}") from None
            raise LeaseUnavailable(f"etcd {what}: keepalive refused: {e}") from None
        ttl = _int(answer, "TTL")
        if ttl <= 0:
            self._forget(lease_id)
            log.info("lease.lost", node=node, epoch=epoch, lease=f"{lease_id:x}", reason="keepalive answered TTL 0")
            raise LeaseLost(f"etcd {what}: lease {lease_id:x} has expired or was revoked (keepalive answered TTL 0)")
        self._check_leader(await self._leader_kv(deadline, what), node, epoch, lease_id, what)
        self._held = (node, epoch, lease_id)
        log.debug("lease.renewed", node=node, epoch=epoch, ttl=ttl, endpoint=self.endpoint)
        return Grant(epoch)

    async def release(self, node: str, epoch: int) -> None:
        deadline = self._deadline()
        what = f"release for {node} at epoch {epoch}"
        with self._guard(what):
            await self._release(node, epoch, deadline, what)

    async def _release(self, node: str, epoch: int, deadline: float, what: str) -> None:
        txn = {
            "compare": self._holder_compare(node, epoch),
            "success": [
                {"request_range": {"key": _b64(self._leader_key)}},
                {"request_delete_range": {"key": _b64(self._leader_key)}},
            ],
        }
        answer = await self._unrefused(self._post("/v3/kv/txn", txn, deadline, what), what)
        if self._held is not None and self._held[:2] == (node, epoch):
            self._held = None
        if not answer.get("succeeded"):
            log.debug("lease.release_noop", node=node, epoch=epoch, reason="not the holder at that epoch")
            return
        leader = self._find(self._txn_range_kvs(answer), self._leader_key)
        try:
            lease_id = _int(leader, "lease")
        except _Unreadable as e:
            # The leader key is gone already; its lease just expires.
            log.warning("lease.revoke_skipped", node=node, key=self._leader_key, endpoint=self.endpoint, error=str(e))
            lease_id = 0
        log.info("lease.released", node=node, epoch=epoch, lease=f"{lease_id:x}")
        if lease_id:
            try:
                await self._post("/v3/lease/revoke", {"ID": str(lease_id)}, deadline, f"{what}: revoke")
            except (LeaseUnavailable, _Refused) as e:
                # The leader key is gone already; the lease itself just expires.
                log.warning("lease.revoke_failed", node=node, lease=f"{lease_id:x}", error=str(e))

    async def set_sync_mark(self, node: str, epoch: int, sync_node: str | None, generation: int = 0) -> None:
        deadline = self._deadline()
        what = f"sync mark {sync_node or '(none)'} by {node} at epoch {epoch} generation {generation}"
        with self._guard(what):
            await self._set_sync_mark(node, epoch, sync_node, generation, deadline, what)

    async def _set_sync_mark(self, node: str, epoch: int, sync_node: str | None, generation: int, deadline: float,
                             what: str) -> None:
        stamp = (epoch, generation)
        value = json.dumps({"node": sync_node, "epoch": epoch, "generation": generation})
        both = [{"request_range": {"key": _b64(self._leader_key)}}, {"request_range": {"key": _b64(self._sync_key)}}]
        # A read-only txn: leader and sync at one revision (linearizable, as every txn).
        answer = await self._unrefused(self._post("/v3/kv/txn", {"compare": [], "success": both}, deadline, what),
                                       what)
        tries = 0
        while True:
            kvs = self._txn_range_kvs(answer)
            source = self.endpoint
            problem = self._holder_problem(self._find(kvs, self._leader_key), node, epoch, None, what, source)
            if problem is not None:
                log.info("lease.sync_mark_refused", node=node, epoch=epoch, generation=generation, reason=problem)
                raise LeaseLost(f"etcd {what}: refused, {node} does not hold the lease at epoch {epoch}: {problem}")
            stored, mod = self._sync_stamp(self._find(kvs, self._sync_key), what, source)
            if stored >= stamp:
                # A newer write won (or this very one, resent after a lost answer).
                log.info("lease.sync_mark_superseded", node=node, epoch=epoch, generation=generation,
                         stored_epoch=stored[0], stored_generation=stored[1])
                return
            if tries > SYNC_MARK_RETRIES:
                raise LeaseUnavailable(
                    f"etcd {what}: {source}: key {self._sync_key} changed between the read and the txn "
                    f"{tries} times in a row; giving up")
            if tries:
                log.debug("lease.sync_mark_retry", node=node, epoch=epoch, generation=generation, attempt=tries)
            tries += 1
            txn = {
                "compare": self._holder_compare(node, epoch) + [
                    {"key": _b64(self._sync_key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod)},
                ],
                "success": [{"request_put": {"key": _b64(self._sync_key), "value": _b64(value)}}],
                # Refused: both keys at the refused compare's revision, to tell why.
                "failure": both,
            }
            answer = await self._unrefused(self._post("/v3/kv/txn", txn, deadline, what), what)
            if answer.get("succeeded"):
                log.info("lease.sync_mark", node=node, epoch=epoch, generation=generation, sync_node=sync_node)
                return

    async def report(self, node: str, position: Position, seen_epoch: int) -> None:
        deadline = self._deadline()
        what = f"report of {node}"
        value = json.dumps({"epoch": position.epoch, "seq": position.seq, "seen_epoch": seen_epoch})
        body = {"key": _b64(self._members_prefix + node), "value": _b64(value)}
        with self._guard(what):
            await self._unrefused(self._post("/v3/kv/put", body, deadline, what), what)

    async def set_pause(self, node: str, seconds: float, by: str) -> None:
        """``pause``: ``{"until": WALL_SECONDS, "by": ...}`` (each reader counts the rest on
        its own wall clock: NTP-close is plenty for hours); deleted to resume."""
        deadline = self._deadline()
        what = f"pause for {seconds:g}s by {by}" if seconds > 0 else f"resume by {by}"
        with self._guard(what):
            if seconds > 0:
                value = json.dumps({"until": time.time() + seconds, "by": f"{by} via {node}"})
                body = {"key": _b64(self._pause_key), "value": _b64(value)}
                await self._unrefused(self._post("/v3/kv/put", body, deadline, what), what)
            else:
                await self._unrefused(self._post("/v3/kv/deleterange", {"key": _b64(self._pause_key)}, deadline,
                                                 what), what)
        log.warning("lease.pause", node=node, seconds=seconds, by=by)

    def _parse_pause(self, kv: dict[str, Any] | None, source: str) -> tuple[float, str | None]:
        """(seconds left, who) of the pause key; unreadable counts as a pause of the
        longest length: a garbled pause must not let a promotion through unnoticed."""
        if kv is None:
            return 0.0, None
        raw = kv.get("value")
        try:
            doc = json.loads(_utf8(_unb64(raw)))
            left = float(doc["until"]) - time.time()
            by = str(doc.get("by", "?"))[:300]
        except (ValueError, KeyError, TypeError, _Unreadable) as e:
            log.warning("pause.unreadable", key=self._pause_key, endpoint=source, value=f"{raw!r:.120}",
                        error=_describe(e), fix=f"`lifeline resume`, or delete {self._pause_key}")
            return MAX_PAUSE, f"unreadable {self._pause_key}"
        if left <= 0:
            return 0.0, None
        return min(left, MAX_PAUSE), by

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ state

    async def _state(self, kvs: Any, deadline: float, what: str, source: str) -> LeaseState:
        """The lease from the kvs of a range over the prefix, as ``source`` answered them.
        :class:`LeaseUnavailable` if ``leader``, ``last`` or ``sync`` cannot be decoded; a
        member report that cannot be is left out."""
        if not isinstance(kvs, list):
            raise LeaseUnavailable(f"etcd {what}: {source}: the range answered kvs that are not a list: {kvs!r:.80}")
        leader = last = sync = pause = None
        members: list[Member] = []
        for kv in kvs:
            if not isinstance(kv, dict):
                raise LeaseUnavailable(f"etcd {what}: {source}: the range answered a kv that is not an object: "
                                       f"{kv!r:.80}")
            try:
                key = _unb64(kv.get("key")).decode("utf-8", "replace")
            except _Unreadable as e:
                raise LeaseUnavailable(f"etcd {what}: {source}: the range answered a key that is {e}") from None
            if key == self._leader_key:
                leader = kv
            elif key == self._last_key:
                last = kv
            elif key == self._sync_key:
                sync = kv
            elif key == self._pause_key:
                pause = kv
            elif key.startswith(self._members_prefix):
                member = self._parse_member(key[len(self._members_prefix):], kv, source)
                if member is not None:
                    members.append(member)
        epoch = self._kv_int(last, "mod_revision", what, source, self._last_key)
        last_holder = None
        if last is not None:
            text = self._kv_text(last, what, source, self._last_key)
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise self._unreadable(what, source, self._last_key, f"value is not JSON ({e}): {text!r:.60}") from None
            holder_field = doc.get("holder") if isinstance(doc, dict) else None
            if not isinstance(holder_field, str) or not holder_field:
                raise self._unreadable(what, source, self._last_key, f'value has no "holder" name: {text!r:.60}')
            last_holder = holder_field
        sync_node = None
        if sync is not None:
            try:
                sync_node = _parse_sync(_unb64(sync.get("value")))[0]
            except _Unreadable as e:
                raise self._unreadable(what, source, self._sync_key, f"value is {e}") from None
        holder: str | None = None
        ttl_remaining = 0.0
        if leader is not None:
            name = self._kv_text(leader, what, source, self._leader_key)
            lease_id = self._kv_int(leader, "lease", what, source, self._leader_key)
            created = self._kv_int(leader, "create_revision", what, source, self._leader_key)
            if lease_id:
                ttl = await self._time_to_live(lease_id, deadline, what)
                if ttl >= 0:  # -1: expired or revoked since the range
                    holder, ttl_remaining = name, max(float(ttl), MIN_LIVE_TTL)
            else:
                log.warning("leader.unleased", key=self._leader_key, holder=name,
                            hint="the leader key is not bound to a lease: it never expires; delete it by hand")
                holder, ttl_remaining = name, float(self.store_ttl)
            if holder is not None and created != epoch:
                log.warning("leader.epoch_mismatch", holder=holder, create_revision=created, epoch=epoch)
        paused_for, paused_by = self._parse_pause(pause, source)
        return LeaseState(holder=holder, epoch=epoch, ttl_remaining=ttl_remaining, sync_node=sync_node,
                          last_holder=last_holder, members=tuple(sorted(members, key=lambda m: m.node)),
                          paused_for=paused_for, paused_by=paused_by)

    def _parse_member(self, node: str, kv: dict[str, Any], source: str) -> Member | None:
        """A member report, or None (logged) when it cannot be decoded: reports are
        advisory, one node's garbage must not hide the lease from everybody."""
        raw = kv.get("value")
        try:
            doc = json.loads(_utf8(_unb64(raw)))
            if not isinstance(doc, dict):
                raise _Unreadable("not a JSON object")
            return Member(node=node, position=Position(int(doc["epoch"]), int(doc["seq"])),
                          seen_epoch=int(doc["seen_epoch"]))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("member.unreadable", node=node, key=self._members_prefix + node, endpoint=source,
                        value=f"{raw!r:.120}", error=_describe(e))
            return None

    def _sync_stamp(self, sync: dict[str, Any] | None, what: str, source: str) -> tuple[tuple[int, int], int]:
        """The ``(epoch, generation)`` of the stored sync mark and the ``sync`` key's
        ``mod_revision`` (``(0, 0)`` and 0 when absent). A value that cannot be decoded
        counts as ``(0, 0)`` (logged): the live holder's mark replaces it."""
        if sync is None:
            return (0, 0), 0
        mod = self._kv_int(sync, "mod_revision", what, source, self._sync_key)
        try:
            _, epoch, generation = _parse_sync(_unb64(sync.get("value")))
        except _Unreadable as e:
            log.warning("sync.unreadable", key=self._sync_key, endpoint=source, error=f"value is {e}",
                        hint="the holder's mark replaces it")
            return (0, 0), mod
        return (epoch, generation), mod

    async def _time_to_live(self, lease_id: int, deadline: float, what: str) -> int:
        """Seconds left (rounded down), or -1 when the lease is gone."""
        try:
            answer = await self._post("/v3/lease/timetolive", {"ID": str(lease_id)}, deadline, what)
        except _Refused as e:
            if e.code == _GRPC_NOT_FOUND:
                return -1
            raise LeaseUnavailable(f"etcd {what}: lease time-to-live refused: {e}") from None
        try:
            return _int(answer, "TTL") if "TTL" in answer else 0
        except _Unreadable as e:
            raise LeaseUnavailable(f"etcd {what}: {self.endpoint}: time-to-live of lease {lease_id:x}: {e}") from None

    async def _leader_kv(self, deadline: float, what: str) -> dict[str, Any] | None:
        body = {"key": _b64(self._leader_key), "serializable": False}
        answer = await self._unrefused(self._post("/v3/kv/range", body, deadline, what), what)
        return self._find(answer.get("kvs") or [], self._leader_key)

    def _holder_problem(self, leader: dict[str, Any] | None, node: str, epoch: int, lease_id: int | None,
                        what: str, source: str) -> str | None:
        """Why ``node`` does not hold the lease at ``epoch`` (on ``lease_id`` when given),
        judging by the leader key's kv; None when it does."""
        if leader is None:
            return "the leader key is gone (lease expired or released)"
        holder = self._kv_text(leader, what, source, self._leader_key)
        created = self._kv_int(leader, "create_revision", what, source, self._leader_key)
        bound = self._kv_int(leader, "lease", what, source, self._leader_key)
        if holder != node:
            return f"{holder} holds the lease at epoch {created}"
        if created != epoch:
            return f"the lease was granted again at epoch {created}"
        if lease_id is not None and bound != lease_id:
            return f"the leader key is bound to another etcd lease ({bound:x})"
        return None

    def _check_leader(self, leader: dict[str, Any] | None, node: str, epoch: int, lease_id: int | None,
                      what: str) -> int:
        """The leader key's lease id if ``node`` holds it at ``epoch`` (on ``lease_id``
        when given); :class:`LeaseLost` saying why not otherwise."""
        problem = self._holder_problem(leader, node, epoch, lease_id, what, self.endpoint)
        if problem is not None:
            if lease_id is not None:
                self._forget(lease_id)
            log.info("lease.lost", node=node, epoch=epoch, reason=problem)
            raise LeaseLost(f"etcd: {node} no longer holds the lease at epoch {epoch}: {problem}")
        assert leader is not None
        return self._kv_int(leader, "lease", what, self.endpoint, self._leader_key)

    def _kv_text(self, kv: dict[str, Any], what: str, source: str, key: str) -> str:
        """The value of ``key`` (its kv as ``source`` answered it) as text."""
        try:
            return _utf8(_unb64(kv.get("value")))
        except _Unreadable as e:
            raise self._unreadable(what, source, key, f"value is {e}") from None

    def _kv_int(self, kv: dict[str, Any] | None, field: str, what: str, source: str, key: str) -> int:
        """An int64 field (a revision, a lease id) of ``key``'s kv; 0 when absent."""
        try:
            return _int(kv, field)
        except _Unreadable as e:
            raise self._unreadable(what, source, key, str(e)) from None

    @staticmethod
    def _unreadable(what: str, source: str, key: str, problem: str) -> LeaseUnavailable:
        log.warning("key.unreadable", key=key, endpoint=source, problem=problem)
        return LeaseUnavailable(f"etcd {what}: {source}: key {key}: {problem}")

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Whatever goes wrong inside a call leaves it as a :class:`LeaseError`: a
        refusal, or an answer this module could not make sense of (the last resort;
        the decoders above say which key and what was wrong)."""
        try:
            yield
        except _Refused as e:
            raise LeaseUnavailable(f"etcd {what}: refused: {e}") from None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
            log.warning("answer.unreadable", request=what, endpoint=self.endpoint, error=_describe(e))
            raise LeaseUnavailable(f"etcd {what}: {self.endpoint}: unreadable answer: {_describe(e)}") from None

    @staticmethod
    def _conflict_reason(state: LeaseState | None, expected_epoch: int) -> str:
        if state is None:
            return "compare-and-set failed (the state could not be read back)"
        if state.holder is not None:
            return f"{state.holder} holds it at epoch {state.epoch} ({state.ttl_remaining:g}s left)"
        if state.epoch != expected_epoch:
            return f"the epoch is {state.epoch}, not {expected_epoch}"
        return f"the leader key still existed at epoch {state.epoch} (its lease just ran out)"

    def _check_granted_ttl(self, granted: int) -> None:
        if granted != self.store_ttl and not self._ttl_warned:
            self._ttl_warned = True
            log.warning("lease.ttl_adjusted", asked=self.store_ttl, granted=granted,
                        hint="etcd's minimum lease TTL is 1.5 x its election timeout, rounded up to seconds")

    def _forget(self, lease_id: int) -> None:
        if self._held is not None and self._held[2] == lease_id:
            self._held = None

    # ------------------------------------------------------------------ requests

    def _deadline(self) -> float:
        return trio.current_time() + self.timeout

    def _prefix_range(self) -> dict[str, Any]:
        base = self.base.encode()
        return {"key": _b64(base), "range_end": _b64(_prefix_end(base)), "serializable": False}

    def _holder_compare(self, node: str, epoch: int) -> list[dict[str, Any]]:
        return [
            {"key": _b64(self._leader_key), "target": "CREATE", "result": "EQUAL", "create_revision": str(epoch)},
            {"key": _b64(self._leader_key), "target": "VALUE", "result": "EQUAL", "value": _b64(node)},
        ]

    @staticmethod
    def _find(kvs: Any, key: str) -> dict[str, Any] | None:
        if not isinstance(kvs, list):
            raise _Unreadable(f"kvs are not a list: {kvs!r:.60}")
        want = _b64(key)
        return next((kv for kv in kvs if isinstance(kv, dict) and kv.get("key") == want), None)

    @staticmethod
    def _txn_range_kvs(answer: dict[str, Any]) -> list[dict[str, Any]]:
        """The kvs of every range a txn answered, in order."""
        kvs: list[dict[str, Any]] = []
        responses = answer.get("responses") or []
        if not isinstance(responses, list):
            raise _Unreadable(f"txn responses are not a list: {responses!r:.60}")
        for response in responses:
            if isinstance(response, dict) and isinstance(response.get("response_range"), dict):
                found = response["response_range"].get("kvs") or []
                if not isinstance(found, list):
                    raise _Unreadable(f"txn range kvs are not a list: {found!r:.60}")
                kvs.extend(found)
        return kvs

    @staticmethod
    async def _unrefused(request: Any, what: str) -> dict[str, Any]:
        try:
            return await request
        except _Refused as e:
            raise LeaseUnavailable(f"etcd {what}: refused: {e}") from None

    async def _post(self, path: str, body: dict[str, Any], deadline: float, what: str) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers, starting with the
        one that answered last; give up at ``deadline``. Returns etcd's answer (the
        ``result`` of a streamed answer). :class:`_Refused` for a 4xx answer;
        :class:`LeaseUnavailable` when no endpoint answered in time, or when etcd's
        authentication fails. With credentials, authenticated by a token; a token etcd
        refuses is replaced once (the request was not applied, so it is sent again)."""
        if self._credentials is None:
            return await self._send(path, body, deadline, what, None)
        token = self._token or await self._authenticate(deadline, what)
        try:
            return await self._send(path, body, deadline, what, token)
        except _Refused as e:
            if not any(refusal in e.message for refusal in _TOKEN_REFUSALS):
                raise
            log.info("auth.token_refused", user=self._credentials.user, endpoint=self.endpoint, reason=e.message)
            if self._token == token:
                self._token = None
            token = await self._authenticate(deadline, what)
            return await self._send(path, body, deadline, what, token)

    async def _authenticate(self, deadline: float, what: str) -> str:  # type: ignore[return]  # the shielded scope has no cancel of its own: it returns or raises
        """A fresh token for the credentials; :class:`LeaseUnavailable` saying why not
        (never the password).

        One authentication at a time: a call that needs a token while another call is
        fetching one waits for it (until its own deadline). The authentication itself
        is shielded from the caller's cancellation and bounded by :data:`AUTH_TIMEOUT`
        (or the caller's deadline, if later): etcd's bcrypt, a raft round and a TLS
        handshake need not fit in a short ``retry_timeout`` on a loaded host, and
        cancelled each time they would never finish. A token fetched after the caller
        gave up serves the next call; the caller's call fails as it would have."""
        flight = self._auth_flight
        if flight is not None:
            with trio.move_on_at(deadline):
                await flight.wait()
            if self._token is not None:
                return self._token
            raise LeaseUnavailable(f"etcd {what}: {self._auth_error or 'no token yet (authentication under way)'}")
        flight = self._auth_flight = trio.Event()
        self._auth_error = None
        try:
            with trio.CancelScope(shield=True):
                return await self._fetch_token(max(deadline, trio.current_time() + AUTH_TIMEOUT), what)
        except LeaseUnavailable as e:
            self._auth_error = str(e).removeprefix(f"etcd {what}: ")
            raise
        finally:
            self._auth_flight = None
            flight.set()

    async def _fetch_token(self, deadline: float, what: str) -> str:
        assert self._credentials is not None
        user = self._credentials.user
        body = {"name": user, "password": self._credentials.password}
        try:
            answer = await self._send("/v3/auth/authenticate", body, deadline, f"{what}: authenticate", None)
        except _Refused as e:
            log.warning("auth.refused", user=user, endpoint=e.url, reason=_hinted(e.message))
            raise LeaseUnavailable(f"etcd {what}: authentication as etcd user {user!r} refused: "
                                   f"{e}") from None
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise LeaseUnavailable(f"etcd {what}: {self.endpoint}: authentication as etcd user {user!r} answered "
                                   "no token")
        self._token = token
        log.info("auth.authenticated", user=user, endpoint=self.endpoint)
        return token

    async def _send(self, path: str, body: dict[str, Any], deadline: float, what: str,
                    token: str | None) -> dict[str, Any]:
        """:meth:`_post` without authentication: ``token`` (if any) as given."""
        headers = {"Authorization": token} if token is not None else None
        n = len(self.endpoints)
        start = self._current
        failures: list[str] = []
        for i in range(n):
            index = (start + i) % n
            url = self.endpoints[index] + path
            response = None
            with trio.move_on_at(deadline):
                try:
                    response = await self._client.post(url, content=json.dumps(body), headers=headers)
                except (httpx.RequestError, httpx.InvalidURL) as e:
                    failure = _hinted(f"{url}: {_describe(e)}")
                    broken = isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
                    if broken and url.startswith("http://"):
                        failure += (" (an etcd serving TLS closes plain http:// connections like this: use "
                                    "https:// endpoints with etcd_ca, etcd_cert and etcd_key)")
                    elif broken and failure == f"{url}: {type(e).__name__}":  # trio lost the TLS alert
                        failure += (" (etcd closed the TLS connection without an answer; likely "
                                    f"{_CLIENT_CERT_REFUSED})")
                    failures.append(failure)
            if response is None:
                self._current = (index + 1) % n  # next call starts with the next endpoint
                if trio.current_time() >= deadline:
                    failures.append(f"{url}: no answer within the {self.timeout:g}s timeout")
                    break
                continue
            status, answer = self._decode(response)
            if status >= 500 or answer is None:
                problem = "" if answer is not None else "answer is not a JSON object: "
                failures.append(_hinted(f"{url}: HTTP {status}: {problem}{self._error_message(answer, response)}"))
                self._current = (index + 1) % n
                continue
            if status != 200:
                try:
                    code = _int(answer, "code")
                except _Unreadable:
                    code = 0
                raise _Refused(url, status, code, self._error_message(answer, response))
            if index != start:
                log.warning("endpoint.failover", path=path, to=self.endpoints[index], failed="; ".join(failures))
            self._current = index
            return answer
        raise LeaseUnavailable(f"etcd {what}: " + "; ".join(failures))

    @staticmethod
    def _decode(response: httpx.Response) -> tuple[int, dict[str, Any] | None]:
        """HTTP status and JSON answer. A streamed answer (``/v3/lease/keepalive``) is
        one JSON line per request message, ``{"result": ...}`` or ``{"error": ...}``."""
        status = response.status_code
        text = response.text.strip()
        if not text:
            return status, None
        try:
            answer = json.loads(text.splitlines()[0])
        except (ValueError, RecursionError):
            return status, None
        if not isinstance(answer, dict):
            return status, None
        if isinstance(answer.get("result"), dict):
            return status, answer["result"]
        error = answer.get("error")
        if isinstance(error, dict):  # an error inside a stream: its own status and code
            try:
                error_status = int(error.get("http_code") or 500)
            except (ValueError, TypeError):
                error_status = 500
            return error_status, {"code": error.get("grpc_code", 0), "message": error.get("message", "")}
        return status, answer

    @staticmethod
    def _error_message(answer: dict[str, Any] | None, response: httpx.Response) -> str:
        if answer and (answer.get("message") or answer.get("error")):
            return str(answer.get("message") or answer.get("error"))
        return response.text.strip()[:200] or response.reason_phrase or "no message"
