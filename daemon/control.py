"""The control socket: one JSON object per line over a unix socket.

Request:  ``{"id": 1, "method": "status", "params": {}}``
Reply:    ``{"id": 1, "ok": true, "result": {...}}``
Error:    ``{"id": 1, "ok": false, "error": {"code": "bad_request", "message": "..."}}``

A streaming method (``events.subscribe``) answers ``ok`` once and then writes one
``{"event": {...}}`` line per event until the client disconnects.

Who can connect is decided by the socket file's mode (0660 by default) and group. The
connection is the unit of damage: a malformed line gets an error reply and the
connection stays usable; a line longer than ``max_request_bytes`` gets an error and the
connection is closed (there is no way to find the next line boundary we would trust);
a client that vanishes mid-request costs its own connection only. No request can take
the daemon down: a handler that raises answers ``internal`` and the error is logged.

Handlers are registered by name, so each capability (uplinks, journal, ...) adds its
own methods without this module knowing them.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from daemon.core.control_client import ControlError
from daemon.core.log import get_logger
from daemon.core.service import ServiceStatus

log = get_logger("control")

#: A request handler: params in, JSON-able result out (or ControlError).
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
#: A streaming handler writes its lines through a :class:`StreamReply`.
StreamHandler = Callable[[dict[str, Any], "StreamReply"], Awaitable[None]]

SEND_TIMEOUT = 10.0


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
        max_request_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self.group = group
        self.max_request_bytes = max_request_bytes
        self._methods: dict[str, _Method] = {}
        self.connections = 0
        self.requests = 0
        self.errors = 0
        self.active = 0
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
        listener = trio.SocketListener(sock)
        log.info("control.listening", socket=str(self.path), mode=oct(self.mode))
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._serve_connection, [listener], handler_nursery=nursery)
        finally:
            with trio.move_on_after(1, shield=True):
                await listener.aclose()
            # Remove the socket only if it is still ours (not replaced by a newer daemon).
            try:
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()
            except OSError:
                pass

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
        return trio.socket.from_stdlib_socket(sock)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.active += 1
        try:
            await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; that is its business
        except trio.TooSlowError:
            log.warning("control.client_too_slow", reason="reply not read within timeout")
        except Exception:
            # A bug of ours in serving one connection must cost that connection only,
            # not the listener (an exception here would end serve_listeners).
            log.exception("control.connection_failed")
        finally:
            self.active -= 1
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _converse(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > self.max_request_bytes:
                    await self._send(stream, _error(None, "too_large",
                                                    f"request longer than {self.max_request_bytes} bytes; closing"))
                    return
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                continue
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if len(line) > self.max_request_bytes:
                await self._send(stream, _error(None, "too_large",
                                                f"request longer than {self.max_request_bytes} bytes; closing"))
                return
            if not line.strip():
                continue
            await self._answer(stream, line)

    async def _answer(self, stream: trio.SocketStream, line: bytes) -> None:
        self.requests += 1
        request_id: Any = None
        try:
            try:
                request = json.loads(line)
            except (ValueError, RecursionError) as exc:
                # ValueError covers JSONDecodeError and UnicodeDecodeError, and also the
                # integer digit limit; RecursionError is deep nesting. All the peer's fault.
                raise ControlError("bad_request", f"not a JSON object: {exc}") from None
            if not isinstance(request, dict):
                raise ControlError("bad_request", "expected a JSON object like {\"method\": \"status\"}")
            request_id = request.get("id")
            method_name = request.get("method")
            params = request.get("params", {})
            if not isinstance(method_name, str):
                raise ControlError("bad_request", 'missing "method" (a string); try {"method": "help"}')
            if not isinstance(params, dict):
                raise ControlError("bad_request", '"params" must be a JSON object')
            method = self._methods.get(method_name)
            if method is None:
                raise ControlError("unknown_method", f"no method {method_name!r}; known: {', '.join(sorted(self._methods))}")
            if method.streaming:
                await self._stream(stream, request_id, method, params)
                return
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
             "requests": self.requests, "errors": self.errors},
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
