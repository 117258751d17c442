"""Real etcd members for the lab and the tests: start, wait until healthy, stop, kill.

:class:`EtcdCluster` runs one or more ``etcd`` processes (3.4's flags), each with its own
data directory under ``datadir``, either on loopback with free ports (the tests) or, given
a network namespace and an address per member, inside those namespaces with
``ip netns exec`` (the lab's regional drill). It talks to each member over HTTP, or
HTTPS with the lab's client certificate (``GET /health``, ``POST
/v3/maintenance/status``, neither needs etcd's auth); for a member inside a namespace the
probe's socket is opened in that namespace (:func:`lab.netns.in_netns`), so the
host needs no route to it.

Timers: etcd's minimum lease TTL is ``ceil(1.5 * election timeout)`` seconds, so the
default 100 ms heartbeat / 1000 ms election makes it 2 s. The lab defaults to 25 ms /
250 ms (min TTL 1 s, re-election well under a second), which loopback and veth links
keep with room to spare.

Security: given an :class:`~lab.pki.EtcdPki` (``tls``), every member serves its
client and peer ports over TLS and wants a certificate from the lab's CA on both
(``--client-cert-auth``, ``--peer-client-cert-auth``); given an :class:`EtcdAuth`,
:meth:`EtcdCluster.start` then turns etcd's authentication on through the JSON gateway
(``etcdctl`` need not be installed): a ``root`` user with the ``root`` role, a lifeline
user whose role may read and write the lease's key prefix and nothing else, then
``auth enable``. :meth:`EtcdCluster.lease_settings` gives the ``[standby.lease]`` keys a
node needs to use it (the password written to a mode-0600 file).

Synchronous (blocking ``subprocess``/``http.client``) on purpose: it is driven from test
fixtures and lab set-up code, outside any trio run or from a worker thread.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from daemon.standby.etcd import ssl_context
from lab.netns import in_netns
from lab.pki import EtcdPki
from lab.procs import free_port

ETCD_BINARY = "/usr/bin/etcd"


class EtcdError(Exception):
    """An etcd member could not be started, did not become healthy, or would not stop."""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class EtcdMember:
    """One member: its name, the address it listens on and, optionally, the network
    namespace it runs in. Port 0 means "a free loopback port, picked at start"
    (loopback only; inside a namespace the defaults 2379/2380 are free)."""

    name: str
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    netns: str | None = None
    tls: bool = False  # set by an EtcdCluster given a PKI: https:// on both ports
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.netns is not None:
            self.client_port = self.client_port or 2379
            self.peer_port = self.peer_port or 2380
        else:
            self.client_port = self.client_port or free_port()
            self.peer_port = self.peer_port or free_port()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.host)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.host)}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class EtcdAuth:
    """etcd's authentication as the lab sets it up: ``root``'s password, and ``user``
    (password ``password``) with a role that may read and write keys under ``prefix``
    only. :meth:`generate` makes random passwords."""

    user: str
    password: str = field(repr=False)
    root_password: str = field(repr=False)
    prefix: str = "/lifeline/"

    @classmethod
    def generate(cls, user: str = "lifeline", prefix: str = "/lifeline/") -> EtcdAuth:
        return cls(user, secrets.token_urlsafe(18), secrets.token_urlsafe(18), prefix)


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdCluster:
    """``members`` started together as one etcd cluster, data under ``datadir/NAME``,
    each member's log in ``datadir/NAME.log``; over TLS with ``tls``, with etcd's
    authentication on with ``auth`` (see the module's "Security").

    Use as a context manager (``with EtcdCluster.local(3, tmp) as c: ...``) or call
    :meth:`start` / :meth:`stop`. :meth:`kill`, :meth:`pause`/:meth:`resume` and
    :meth:`restart` act on one member, for drills."""

    def __init__(self, members: Sequence[EtcdMember], datadir: Path | str, *, binary: str = ETCD_BINARY,
                 heartbeat_ms: int = 25, election_ms: int = 250, token: str = "lifeline-lab",
                 tls: EtcdPki | None = None, auth: EtcdAuth | None = None, extra_args: Sequence[str] = ()) -> None:
        if not members:
            raise ValueError("an etcd cluster needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, found {names}")
        self.members = list(members)
        self.datadir = Path(datadir)
        self.binary = binary
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.token = token
        self.tls = tls
        self.auth = auth
        self.extra_args = list(extra_args)  # more etcd flags, e.g. ["--auth-token-ttl", "1"]
        if auth is not None and tls is None:
            raise ValueError("etcd's authentication in the lab needs TLS (the passwords would cross in clear)")
        for m in self.members:
            m.tls = tls is not None
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.create_default_context(cafile=str(tls.ca))
            self._context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        self._root_token: str | None = None

    @classmethod
    def local(cls, size: int, datadir: Path | str, **kwargs: Any) -> EtcdCluster:
        """``size`` members on 127.0.0.1 with free ports, named ``etcd0``, ``etcd1``, ..."""
        return cls([EtcdMember(f"etcd{i}") for i in range(size)], datadir, **kwargs)

    @staticmethod
    def available(binary: str = ETCD_BINARY) -> bool:
        return os.access(binary, os.X_OK) or shutil.which(binary) is not None

    # ------------------------------------------------------------------ addresses

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, in member order."""
        return [m.client_url for m in self.members]

    def member(self, name: str) -> EtcdMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no etcd member named {name!r} (have {[m.name for m in self.members]})")

    def log_path(self, member: EtcdMember) -> Path:
        return self.datadir / f"{member.name}.log"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> None:
        """Start every member and wait until each answers ``/health`` true."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            for m in self.members:
                # One after the other, each once it serves its peers: a new member first
                # asks the others whether it was bootstrapped already, and a peer that
                # listens but does not serve yet holds that question for a second.
                self._spawn(m, new=True)
                self._wait_serving_peers(m, deadline)
            self.wait_healthy(timeout=max(deadline - time.monotonic(), 0.1))
            if self.auth is not None:
                self._enable_auth(self.auth, deadline)
        except BaseException:
            self.stop()
            raise

    def restart(self, member: EtcdMember, timeout: float = 20.0) -> None:
        """Start a stopped or killed member again on its data directory (it rejoins)."""
        if member.running:
            raise EtcdError(f"etcd member {member.name} is still running (pid {member.proc.pid})")  # type: ignore[union-attr]
        self._spawn(member, new=False)
        self.wait_healthy([member], timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every running member, one after the other: SIGTERM, then SIGKILL if it
        is still there after ``timeout``. One at a time because a leader asked to stop
        first hands leadership to a live follower, and with every member stopping at
        once that hand-over waits for its own timeout (5 s) instead."""
        for m in self.members:
            if not m.running:
                continue
            assert m.proc is not None
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(signal.SIGCONT)  # a paused member cannot act on SIGTERM
                m.proc.terminate()
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(5)

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL one member (a crash: no leadership hand-over, nothing flushed late)."""
        if member.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            member.proc.kill()
        member.proc.wait(5)

    def pause(self, member: EtcdMember) -> None:
        """SIGSTOP one member: its sockets stay open but nothing answers (a hung host)."""
        if not member.running:
            raise EtcdError(f"etcd member {member.name} is not running")
        member.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self, member: EtcdMember) -> None:
        if member.running:
            member.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ health

    def is_healthy(self, member: EtcdMember, timeout: float = 1.0) -> bool:
        try:
            status, body = self._request(member, "GET", "/health", None, timeout)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and body.get("health") == "true"

    def wait_healthy(self, members: Sequence[EtcdMember] | None = None, timeout: float = 20.0) -> None:
        """Wait until every given member (default: all running ones) reports healthy;
        :class:`EtcdError` naming the laggards (and the tail of their logs) otherwise."""
        wanted = list(members) if members is not None else [m for m in self.members if m.running]
        deadline = time.monotonic() + timeout
        pending = list(wanted)
        while pending:
            for m in list(pending):
                if m.proc is not None and m.proc.poll() is not None:
                    raise EtcdError(f"etcd member {m.name} exited with code {m.proc.returncode} while starting:\n"
                                    f"{self._log_tail(m)}")
                # Short probes: a member without a leader yet holds /health open until
                # the probe gives up, and the election may end meanwhile.
                if self.is_healthy(m, timeout=min(0.25, max(deadline - time.monotonic(), 0.05))):
                    pending.remove(m)
            if not pending:
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {m.name} ({m.client_url}):\n{self._log_tail(m)}" for m in pending)
                raise EtcdError(f"etcd members not healthy within {timeout:g} s: {[m.name for m in pending]}\n{tails}")
            time.sleep(0.05)

    def _wait_serving_peers(self, m: EtcdMember, deadline: float) -> None:
        while True:
            if m.proc is not None and m.proc.poll() is not None:
                raise EtcdError(f"etcd member {m.name} exited with code {m.proc.returncode} while starting:\n"
                                f"{self._log_tail(m)}")
            try:
                status, _ = self._request(m, "GET", "/version", None, 0.25, port=m.peer_port)
                if status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                raise EtcdError(f"etcd member {m.name} does not serve its peer URL {m.peer_url}:\n"
                                f"{self._log_tail(m)}")
            time.sleep(0.02)

    def status(self, member: EtcdMember, timeout: float = 1.0) -> dict[str, Any]:
        """``/v3/maintenance/status`` of one member (its id, the leader's id, raft indexes)."""
        code, body = self._request(member, "POST", "/v3/maintenance/status", {}, timeout)
        if code != 200:
            raise EtcdError(f"{member.client_url}/v3/maintenance/status: HTTP {code}: {body}")
        return body

    def leader(self, timeout: float = 1.0) -> EtcdMember | None:
        """The member that is raft leader right now, as the running members report it."""
        ids: dict[str, EtcdMember] = {}
        leader_id = None
        for m in self.members:
            if not m.running:
                continue
            with contextlib.suppress(OSError, http.client.HTTPException, EtcdError):
                st = self.status(m, timeout)
                ids[str(st["header"]["member_id"])] = m
                leader_id = str(st.get("leader", "0"))
        return ids.get(leader_id) if leader_id else None

    # ------------------------------------------------------------------ security

    def client_context(self) -> ssl.SSLContext | None:
        """A TLS context trusting the lab's CA and presenting its client certificate
        (None without TLS)."""
        if self.tls is None:
            return None

        return ssl_context(self.tls.ca, self.tls.client_cert, self.tls.client_key)

    def lease_settings(self, directory: Path | str, endpoints: Sequence[str] | None = None) -> dict[str, Any]:
        """The ``[standby.lease]`` keys a node needs to reach this cluster: its
        endpoints (``endpoints`` if given), and with TLS and auth the CA, the client
        certificate and key, the user and a password file (written mode 0600 into
        ``directory``)."""
        settings: dict[str, Any] = {"backend": "etcd",
                                    "etcd_endpoints": list(endpoints if endpoints is not None else self.endpoints)}
        if self.tls is not None:
            settings.update(etcd_ca=str(self.tls.ca), etcd_cert=str(self.tls.client_cert),
                            etcd_key=str(self.tls.client_key))
        if self.auth is not None:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / "etcd-password"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(self.auth.password + "\n")
            settings.update(etcd_user=self.auth.user, etcd_password_file=str(path), etcd_prefix=self.auth.prefix)
        return settings

    def root_call(self, path: str, body: dict[str, Any], member: EtcdMember | None = None,
                  timeout: float = 5.0) -> dict[str, Any]:
        """POST ``body`` to ``path`` as etcd's root user (authenticated when auth is on),
        on ``member`` or the first running one; :class:`EtcdError` on a refusal."""
        m = member or next((x for x in self.members if x.running), None)
        if m is None:
            raise EtcdError("no etcd member is running")
        token = None
        if self.auth is not None:
            token = self._root_token or self._authenticate_root(m, timeout)
        code, answer = self._request(m, "POST", path, body, timeout, token=token)
        if code == 401 and self.auth is not None:  # the token expired, or the member restarted
            token = self._authenticate_root(m, timeout)
            code, answer = self._request(m, "POST", path, body, timeout, token=token)
        if code != 200:
            raise EtcdError(f"{m.client_url}{path}: HTTP {code}: {answer}")
        return answer

    def _authenticate_root(self, m: EtcdMember, timeout: float) -> str:
        assert self.auth is not None
        code, answer = self._request(m, "POST", "/v3/auth/authenticate",
                                     {"name": "root", "password": self.auth.root_password}, timeout)
        if code != 200 or not answer.get("token"):
            raise EtcdError(f"{m.client_url}: authentication as root refused: HTTP {code}: {answer}")
        self._root_token = str(answer["token"])
        return self._root_token

    def _enable_auth(self, auth: EtcdAuth, deadline: float) -> None:
        """Users, roles, then ``auth enable``, through the JSON gateway of the first
        member (before auth is on, anyone may do this: the lab does it at once)."""
        m = self.members[0]
        prefix = auth.prefix.encode()
        role = f"{auth.user}-lease"
        steps: list[tuple[str, dict[str, Any]]] = [
            ("/v3/auth/user/add", {"name": "root", "password": auth.root_password}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/role/add", {"name": role}),
            ("/v3/auth/role/grant", {"name": role, "perm": {"permType": "READWRITE", "key": _b64(prefix),
                                                             "range_end": _b64(_prefix_end(prefix))}}),
            ("/v3/auth/user/add", {"name": auth.user, "password": auth.password}),
            ("/v3/auth/user/grant", {"user": auth.user, "role": role}),
            ("/v3/auth/enable", {}),
        ]
        for path, body in steps:
            timeout = max(deadline - time.monotonic(), 1.0)
            code, answer = self._request(m, "POST", path, body, timeout)
            if code != 200:
                shown = {k: ("***" if "password" in k else v) for k, v in body.items()}
                raise EtcdError(f"{m.client_url}{path} {shown}: HTTP {code}: {answer}")

    # ------------------------------------------------------------------ internals

    def _argv(self, m: EtcdMember, *, new: bool) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        argv = [
            self.binary,
            "--name", m.name,
            "--data-dir", str(self.datadir / m.name),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new" if new else "existing",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        if self.tls is not None:
            pki = self.tls
            argv += ["--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
                     "--trusted-ca-file", str(pki.ca), "--client-cert-auth",
                     "--peer-cert-file", str(pki.server_cert), "--peer-key-file", str(pki.server_key),
                     "--peer-trusted-ca-file", str(pki.ca), "--peer-client-cert-auth"]
        argv += self.extra_args
        if m.netns is not None:
            argv = ["ip", "netns", "exec", m.netns, *argv]  # ip execs etcd: the pid is etcd's
        return argv

    def _spawn(self, m: EtcdMember, *, new: bool) -> None:
        if new and (self.datadir / m.name).exists():
            shutil.rmtree(self.datadir / m.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_path(m), "ab") as log:  # the child keeps its own descriptor
            try:
                m.proc = subprocess.Popen(self._argv(m, new=new), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=log, env=env, start_new_session=True)
            except FileNotFoundError as e:
                raise EtcdError(f"cannot start etcd member {m.name}: {e}") from None

    def _log_tail(self, m: EtcdMember, lines: int = 15) -> str:
        try:
            text = self.log_path(m).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _request(self, m: EtcdMember, method: str, path: str, body: dict[str, Any] | None,
                 timeout: float, port: int | None = None, token: str | None = None) -> tuple[int, dict[str, Any]]:
        with self._in_ns(m):
            conn: http.client.HTTPConnection
            if self._context is not None:
                conn = http.client.HTTPSConnection(m.host, port or m.client_port, timeout=timeout,
                                                   context=self._context)
            else:
                conn = http.client.HTTPConnection(m.host, port or m.client_port, timeout=timeout)
            try:
                conn.connect()  # the socket is made here, inside the member's namespace
            except BaseException:
                conn.close()
                raise
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"}
            if token is not None:
                headers["Authorization"] = token
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"raw": raw.decode("utf-8", "replace")}
        return resp.status, data if isinstance(data, dict) else {"value": data}

    @staticmethod
    @contextlib.contextmanager
    def _in_ns(m: EtcdMember) -> Iterator[None]:
        if m.netns is None:
            yield
            return

        with in_netns(m.netns):
            yield
