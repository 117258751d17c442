"""The control socket: one JSON object per line over a unix socket.

Request:  ``{"id": 1, "method": "status", "params": {}}``
Reply:    ``{"id": 1, "ok": true, "result": {...}}``
Error:    ``{"id": 1, "ok": false, "error": {"code": "bad_request", "message": "..."}}``

A streaming method (``events.subscribe``) answers ``ok`` once and then writes one
``{"event": {...}}`` line per event until the client disconnects.

Who can connect is decided by the socket file's mode (0660 by default) and group; what
a connection may call, by the role of its peer (``SO_PEERCRED``, :mod:`daemon.core.acl`): a
refused call answers ``forbidden`` naming the role it needs, and every state-changing
call is logged with the caller's uid, pid and roles (and handlers find the caller in
:data:`daemon.core.acl.CURRENT_CALLER` for their audit entries).

The connection is the unit of damage: a malformed line gets an error reply and the
connection stays usable; a line longer than ``max_request_bytes`` (``max_append_bytes``
for ``journal.append`` from an engine) gets an error and the connection is closed (there
is no way to find the next line boundary we would trust) — the bytes are counted as they
arrive, never buffered past the limit; a client that vanishes mid-request costs its own
connection only. Bounds: ``max_connections`` at once (``max_connections_per_user`` per
uid), one more is answered ``busy`` and closed; a connection idle for ``idle_timeout``,
or a request not complete ``request_timeout`` after its first byte, is closed. When the
process runs out of descriptors the newest connection is dropped (a spare descriptor is
kept for that) and the event is logged once per interval with a count. No request can
take the daemon down: a handler that raises answers ``internal`` and the error is logged.

Handlers are registered by name, so each capability (uplinks, journal, ...) adds its
own methods without this module knowing them.
"""

from __future__ import annotations

import errno
import grp
import json
import math
import os
import re
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from daemon.core import acl
from daemon.core.acl import Caller, RoleMap
from daemon.core.control_client import ControlError
from daemon.core.log import get_logger
from daemon.core.service import ServiceStatus

log = get_logger("control")

#: A request handler: params in, JSON-able result out (or ControlError).
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
#: A streaming handler writes its lines through a :class:`StreamReply`.
StreamHandler = Callable[[dict[str, Any], "StreamReply"], Awaitable[None]]

SEND_TIMEOUT = 10.0
#: accept() errors that mean "out of descriptors or memory": retried, logged with a count.
ACCEPT_CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: One log line per kind of repeated trouble (refusals, EMFILE, caps) per this interval.
LOG_INTERVAL = 10.0
#: How long a user's name and roles are reused before the user database is asked again.
PEER_CACHE_TTL = 10.0
#: How a journal.append request starts (within its first max_request_bytes).
_APPEND_PREFIX = re.compile(rb'"method"\s*:\s*"journal\.append"')
#: Bound on the per-(uid, method) refusal table between two log flushes.
MAX_REFUSAL_KEYS = 256


@dataclass
class _Method:
    handler: Handler | StreamHandler
    streaming: bool
    help: str


class ControlServer:
    """Serves the control socket; a service for the supervisor."""

    name = "control"

    def __init__(
        self,
        path: Path,
        *,
        mode: int = 0o660,
        group: str | None = "lifeline",
        max_request_bytes: int = 64 * 1024,
        max_append_bytes: int = 4 * 1024 * 1024,
        max_connections: int = 64,
        max_connections_per_user: int = 16,
        idle_timeout: float = 300.0,
        request_timeout: float = 10.0,
        roles: RoleMap | dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self.group = group
        self.max_request_bytes = max_request_bytes
        self.max_append_bytes = max(max_append_bytes, max_request_bytes)
        self.max_connections = max_connections
        self.max_connections_per_user = max_connections_per_user
        self.idle_timeout = float(idle_timeout)
        self.request_timeout = float(request_timeout)
        if roles is None:
            roles = acl.DEFAULT_ROLES
        self.role_map = roles if isinstance(roles, RoleMap) else RoleMap.from_config(roles)
        self._methods: dict[str, _Method] = {}
        self.connections = 0
        self.requests = 0
        self.errors = 0
        self.active = 0
        self.refused = 0          # calls refused for want of a role
        self.dropped = 0          # connections turned away (caps, no descriptor)
        self.timeouts = 0         # connections closed idle or mid-request
        self._per_uid: dict[int, int] = {}
        # (what, uid, method) -> count since the last flush; logged once per LOG_INTERVAL.
        self._pending_logs: dict[tuple[str, int, str], int] = {}
        self._last_flush = -math.inf
        self._reserve_fd: int | None = None
        self._peer_cache: dict[tuple[int, int], tuple[float, Caller]] = {}
        self.register("ping", self._ping, help="Liveness check; answers {\"pong\": true}.")
        self.register("help", self._help, help="Lists the methods this daemon answers.")

    def register(self, method: str, handler: Handler, *, help: str) -> None:
        if method in self._methods:
            raise ValueError(f"control method {method!r} registered twice")
        self._methods[method] = _Method(handler, False, help)

    def register_stream(self, method: str, handler: StreamHandler, *, help: str) -> None:
        if method in self._methods:
            raise ValueError(f"control method {method!r} registered twice")
        self._methods[method] = _Method(handler, True, help)

    async def _ping(self, params: dict[str, Any]) -> Any:
        return {"pong": True}

    async def _help(self, params: dict[str, Any]) -> Any:
        return {name: m.help for name, m in sorted(self._methods.items())}

    # ------------------------------------------------------------------ serving

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self._bind()
        log.info("control.listening", socket=str(self.path), mode=oct(self.mode),
                 max_connections=self.max_connections, max_request_bytes=self.max_request_bytes)
        for missing in self.role_map.missing:
            log.warning("control.role_entry_unknown", entry=missing,
                        fix="create the user or group, or remove it from [control.roles]")
        self._open_reserve()
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._accept_loop(sock, nursery)
        finally:
            sock.close()
            self._close_reserve()
            # Remove the socket only if it is still ours (not replaced by a newer daemon).
            try:
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()
            except OSError:
                pass

    async def _accept_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        """Accept forever. Out of descriptors: give up the spare one, accept and close the
        newest connection (so the backlog does not hold it), take the spare back; logged
        once per interval with a count, never a traceback per attempt."""
        while True:
            try:
                conn, _ = await sock.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRORS:
                    raise
                self._note("accept_failed", -1, errno.errorcode.get(exc.errno or 0, "?"))
                if self._reserve_fd is not None:
                    self._close_reserve()
                    try:
                        extra, _ = self._std_sock.accept()  # non-blocking: the one waiting, if any
                        extra.close()
                        self.dropped += 1
                    except OSError:
                        pass
                    self._open_reserve()
                await trio.sleep(0.05)
                continue
            nursery.start_soon(self._serve_connection, trio.SocketStream(conn))

    def _open_reserve(self) -> None:
        try:
            self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._reserve_fd = None

    def _close_reserve(self) -> None:
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None

    def _note(self, what: str, uid: int, method: str) -> None:
        """Count a repeated event; flush the counts as log lines once per interval."""
        key = (what, uid, method)
        if key in self._pending_logs or len(self._pending_logs) < MAX_REFUSAL_KEYS:
            self._pending_logs[key] = self._pending_logs.get(key, 0) + 1
        else:
            other = ("other", -1, "-")
            self._pending_logs[other] = self._pending_logs.get(other, 0) + 1
        now = trio.current_time()
        if now - self._last_flush >= LOG_INTERVAL:
            self._last_flush = now
            pending, self._pending_logs = self._pending_logs, {}
            for (kind, who, name), count in pending.items():
                log.warning(f"control.{kind}", uid=who if who >= 0 else None, method=name, count=count,
                            interval_s=LOG_INTERVAL)

    def _bind(self) -> trio.socket.SocketType:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # umask makes the socket file private from birth; chmod then widens to `mode`.
        # (A plain, synchronous bind: no other task can run while the umask is narrowed.)
        old_umask = os.umask(0o077)
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        self._inode = self.path.stat().st_ino
        if self.group:
            try:
                gid = grp.getgrnam(self.group).gr_gid
                # Under systemd (Group=lifeline) the file is born with the right group,
                # and the unit's syscall filter forbids chown: only change what differs.
                if self.path.stat().st_gid != gid:
                    os.chown(self.path, -1, gid)
            except KeyError:
                log.warning("control.group_missing", group=self.group,
                            fix="create it (systemd-sysusers systemd/lifeline.sysusers.conf) or set control.group")
            except PermissionError as exc:
                log.warning("control.chown_failed", group=self.group, error=str(exc))
        os.chmod(self.path, self.mode)
        sock.listen(64)
        self._std_sock = sock
        return trio.socket.from_stdlib_socket(sock)

    def _peer(self, stream: trio.SocketStream) -> Caller:
        """The connecting process's credentials, as the kernel recorded them at connect().
        The user database look-ups (name, groups) are cached per (uid, gid) for
        PEER_CACHE_TTL: local files answer in microseconds, and a slow directory service
        then costs the event loop once per user and interval, not once per connection."""
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        now = trio.current_time()
        cached = self._peer_cache.get((uid, gid))
        if cached is None or now - cached[0] >= PEER_CACHE_TTL:
            cached = (now, acl.resolve_caller(0, uid, gid, self.role_map))
            self._peer_cache.pop((uid, gid), None)
            self._peer_cache[(uid, gid)] = cached
            while len(self._peer_cache) > MAX_REFUSAL_KEYS:
                del self._peer_cache[next(iter(self._peer_cache))]
        base = cached[1]
        return Caller(pid, uid, gid, base.user, base.roles)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.active += 1
        uid: int | None = None
        try:
            if self.active > self.max_connections:
                self.dropped += 1
                self._note("connection_refused", -1, f"max_connections={self.max_connections}")
                await self._send(stream, _error(None, "busy", f"{self.max_connections} connections are open "
                                                "(control.max_connections); try again"))
                return
            caller = self._peer(stream)
            uid = caller.uid
            self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
            if self._per_uid[uid] > self.max_connections_per_user and acl.ADMIN not in caller.roles:
                self.dropped += 1
                self._note("connection_refused", uid, f"max_connections_per_user={self.max_connections_per_user}")
                await self._send(stream, _error(None, "busy", f"uid {uid} holds {self.max_connections_per_user} "
                                                "connections (control.max_connections_per_user); close some"))
                return
            acl.CURRENT_CALLER.set(caller)  # this task's context: seen by the handlers it runs
            await self._converse(stream, caller)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; that is its business
        except trio.TooSlowError:
            log.warning("control.client_too_slow", reason="reply not read within timeout")
        except Exception:
            # A bug of ours in serving one connection must cost that connection only,
            # not the listener.
            log.exception("control.connection_failed")
        finally:
            self.active -= 1
            if uid is not None:
                left = self._per_uid.get(uid, 1) - 1
                if left <= 0:
                    self._per_uid.pop(uid, None)
                else:
                    self._per_uid[uid] = left
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _converse(self, stream: trio.SocketStream, caller: Caller) -> None:
        # An engine may send journal.append batches up to max_append_bytes; everyone else
        # max_request_bytes. Bytes are counted as they arrive: never more than limit + 1
        # are buffered before the connection is dropped.
        # The longer limit applies once the line's first max_request_bytes name the method
        # journal.append (clients write "method" before "params"); the parsed request is
        # checked again below.
        may_append = acl.ENGINE in caller.roles and self.max_append_bytes > self.max_request_bytes
        limit = self.max_request_bytes
        buffer = bytearray()
        scan_from = 0
        request_started: float | None = None
        while True:
            newline = buffer.find(b"\n", scan_from)
            if newline < 0:
                scan_from = len(buffer)
                if len(buffer) > limit and may_append and limit == self.max_request_bytes \
                        and _APPEND_PREFIX.search(buffer, 0, self.max_request_bytes):
                    limit = self.max_append_bytes
                if len(buffer) > limit:
                    await self._send(stream, _error(None, "too_large", f"request longer than {limit} bytes "
                                                    "(control.max_request_bytes); closing"))
                    return
                if buffer.strip() and request_started is None:
                    request_started = trio.current_time()
                if request_started is None:
                    deadline, why = trio.current_time() + self.idle_timeout, "idle"
                else:
                    deadline, why = request_started + self.request_timeout, "incomplete request"
                with trio.move_on_at(deadline):
                    data = await stream.receive_some(min(65536, limit + 1 - len(buffer)))
                    if not data:
                        return
                    buffer += data
                    continue
                self.timeouts += 1
                self._note("timed_out", caller.uid, why)
                await self._send(stream, _error(None, "timeout", f"{why}: closing after "
                                                f"{self.idle_timeout if why == 'idle' else self.request_timeout:g}s "
                                                "(control.idle_timeout / request_timeout)"))
                return
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            scan_from = 0
            request_started = None
            if len(line) > self.max_request_bytes and may_append and _APPEND_PREFIX.search(
                    line, 0, self.max_request_bytes):
                limit = self.max_append_bytes
            if len(line) > limit:
                await self._send(stream, _error(None, "too_large", f"request longer than {limit} bytes "
                                                "(control.max_request_bytes); closing"))
                return
            if not line.strip():
                continue
            limit = self.max_request_bytes
            if not await self._answer(stream, line, caller):
                return

    async def _answer(self, stream: trio.SocketStream, line: bytes, caller: Caller | None = None) -> bool:
        """Answer one request line; False: close the connection after the reply."""
        self.requests += 1
        request_id: Any = None
        if caller is None:
            caller = acl.CURRENT_CALLER.get() or Caller(os.getpid(), os.geteuid(), os.getegid(), "self",
                                                         frozenset(acl.ROLES))
        keep_open = True
        try:
            try:
                request = json.loads(line, parse_constant=_refuse_constant)
            except (ValueError, RecursionError) as exc:
                # ValueError covers JSONDecodeError and UnicodeDecodeError, and also the
                # integer digit limit; RecursionError is deep nesting. All the peer's fault.
                raise ControlError("bad_request", f"not a JSON object: {exc}") from None
            if not isinstance(request, dict):
                raise ControlError("bad_request", "expected a JSON object like {\"method\": \"status\"}")
            request_id = request.get("id")
            if not _json_safe_id(request_id):
                request_id = None
                raise ControlError("bad_request", '"id" must be an integer, a string or null')
            method_name = request.get("method")
            params = request.get("params", {})
            if not isinstance(method_name, str):
                raise ControlError("bad_request", 'missing "method" (a string); try {"method": "help"}')
            if not isinstance(params, dict):
                raise ControlError("bad_request", '"params" must be a JSON object')
            if len(line) > self.max_request_bytes and method_name != "journal.append":
                keep_open = False
                raise ControlError("too_large", f"request longer than {self.max_request_bytes} bytes "
                                                "(control.max_request_bytes; only journal.append may be longer); "
                                                "closing")
            method = self._methods.get(method_name)
            if method is None:
                raise ControlError("unknown_method", f"no method {method_name!r}; known: {', '.join(sorted(self._methods))}")
            need = acl.required_roles(method_name, params)
            if not acl.allowed(caller.roles, need):
                self.refused += 1
                self._note("refused", caller.uid, method_name)
                held = ", ".join(sorted(caller.roles)) or "none"
                role = next(r for r in acl.ROLES if r in need)
                raise ControlError("forbidden", f"{method_name}{' (not a dry run)' if method_name in acl.DRY_RUN_OPERATOR and need == acl.ONLY_ADMIN else ''} "
                                                f"needs {acl.describe(need)}; {caller} holds {held}: add the user (or "
                                                f"an @group of it) to [control.roles] {role} in the daemon's config")
            if method_name in acl.STATE_CHANGING:
                if method_name != "journal.append":
                    log.info("control.call", method=method_name, **caller.log_fields(),
                             dry_run=params.get("dry_run") if "dry_run" in params else None)
                elif not getattr(stream, "_lifeline_logged_append", False):
                    # Appends come by the thousand: the engine's identity once per connection.
                    stream._lifeline_logged_append = True  # type: ignore[attr-defined]
                    log.info("control.call", method=method_name, **caller.log_fields(), note="first on this connection")
            if method.streaming:
                await self._stream(stream, request_id, method, params)
                return True
            result = await method.handler(params)  # type: ignore[call-arg]
            reply = {"id": request_id, "ok": True, "result": result}
        except ControlError as exc:
            self.errors += 1
            reply = _error(request_id, exc.code, exc.message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled):
            raise
        except Exception as exc:
            self.errors += 1
            log.exception("control.handler_failed", error=f"{type(exc).__name__}: {exc}")
            reply = _error(request_id, "internal", f"{type(exc).__name__}: {exc} (logged by the daemon)")
        try:
            data = _encode(reply)
        except (TypeError, ValueError, RecursionError) as exc:
            # default=str cannot help with, say, a tuple as a dict key: the handler's bug.
            self.errors += 1
            log.error("control.reply_not_json", error=f"{type(exc).__name__}: {exc}")
            data = _encode(_error(request_id, "internal",
                                  f"the reply could not be written as JSON: {exc} (logged by the daemon)"))
        await self._send_bytes(stream, data)
        return keep_open

    async def _stream(self, stream: trio.SocketStream, request_id: Any, method: _Method,
                      params: dict[str, Any]) -> None:
        """Run a streaming handler until it ends or the client hangs up.

        The handler validates its params first (a ControlError then is an ordinary error
        reply), then calls ``reply.start()``, which sends the ok. The client says nothing
        more once it streams, so a concurrent reader watches for its EOF: without it a
        dead subscriber would linger until the next event."""
        reply = StreamReply(self, stream, request_id)
        async with trio.open_nursery() as nursery:
            async def watch_for_hangup() -> None:
                try:
                    while await stream.receive_some(4096):
                        pass  # input during a stream is ignored
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_for_hangup)
            # Set only when the handler raises; a hang-up cancels it, which this nursery
            # absorbs, and then there is nothing to re-raise.
            error: Exception | None = None
            try:
                await method.handler(params, reply)  # type: ignore[call-arg]
            except Exception as exc:
                # Re-raised below, outside the nursery, so it is not wrapped in a group
                # and _answer sees the handler's own exception.
                error = exc
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _send(self, stream: trio.SocketStream, obj: dict[str, Any]) -> None:
        await self._send_bytes(stream, _encode(obj))

    async def _send_bytes(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.fail_after(SEND_TIMEOUT):
            await stream.send_all(data)

    def status(self) -> ServiceStatus:
        return ServiceStatus(
            "ok",
            f"{self.path} ({self.active} connected, {self.requests} requests, {self.errors} errors)",
            {"socket": str(self.path), "connections": self.connections, "active": self.active,
             "requests": self.requests, "errors": self.errors, "refused": self.refused,
             "dropped": self.dropped, "timeouts": self.timeouts},
        )


class StreamReply:
    """What a streaming handler writes to: ``await reply.start()`` once its params are
    valid, then ``await reply.send({...})`` per line."""

    def __init__(self, server: ControlServer, stream: trio.SocketStream, request_id: Any) -> None:
        self._server = server
        self._stream = stream
        self._request_id = request_id
        self.started = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            await self._server._send(self._stream, {"id": self._request_id, "ok": True,
                                                    "result": {"streaming": True}})

    async def send(self, obj: dict[str, Any]) -> None:
        await self.start()
        await self._server._send(self._stream, obj)


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_safe_id(value: Any) -> bool:
    """A request id we may echo: an integer, a string or null (never a float: 1e999 is inf)."""
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _error(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead daemon; refuse to replace a live one or a
    non-socket file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; remove it or set control.socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: nobody listens
        log.info("control.stale_socket_removed", socket=str(path))
        return
    except (TimeoutError, BlockingIOError):
        # connect() blocks when the listener's backlog is full: alive, only busy.
        raise OSError(errno.EADDRINUSE, f"another daemon is answering on {path} (busy: connecting "
                                        "timed out); stop it first or set control.socket") from None
    except OSError as exc:
        # Anything else (EACCES: someone else's socket, say) says nothing about
        # staleness; removing a live daemon's socket would orphan it.
        raise OSError(exc.errno, f"cannot tell whether {path} is in use ({exc.strerror}); "
                                 "remove it if no daemon runs, or set control.socket") from exc
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another daemon is answering on {path}; stop it first or set control.socket")
