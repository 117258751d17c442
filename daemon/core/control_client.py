"""The client side of the control socket, for the CLI and the trading engine.

Blocking and free of trio on purpose: `lifeline status` must start and answer fast.
The protocol is described in :mod:`daemon.control`.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from daemon.core.errors import LifelineError


class ControlError(LifelineError):
    """An error answered by the daemon: ``code`` for programs, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class ControlClient:
    """A blocking client for the CLI (no trio: `lifeline status` must start fast)."""

    def __init__(self, path: Path | str, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._next_id = 1

    def connect(self) -> "ControlClient":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise ConnectionError(f"no control socket at {self.path}: is lifeline running? (systemctl status lifeline)") from None
        except PermissionError:
            sock.close()
            raise ConnectionError(f"permission denied on {self.path}: run as root or as a member of the socket's group") from None
        except ConnectionRefusedError:
            sock.close()
            raise ConnectionError(f"nothing listens on {self.path}: the daemon is not running (stale socket)") from None
        self._sock = sock
        return self

    def set_timeout(self, timeout: float | None) -> None:
        """The longest wait for an answer from now on (None: no limit)."""
        self.timeout = timeout  # type: ignore[assignment]
        if self._sock is not None:
            self._sock.settimeout(timeout)

    def __enter__(self) -> "ControlClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        assert self._sock is not None, "connect() first"
        request_id = self._next_id
        self._next_id += 1
        line = json.dumps({"id": request_id, "method": method, "params": params or {}}) + "\n"
        self._sock.sendall(line.encode())
        return request_id

    def read_line(self, timeout: float | None = -1.0) -> dict[str, Any]:
        assert self._sock is not None, "connect() first"
        if timeout != -1.0:
            self._sock.settimeout(timeout)
        while b"\n" not in self._buffer:
            try:
                data = self._sock.recv(65536)
            except ConnectionResetError:
                # The daemon closed with our unread bytes queued (a request it refused
                # as too long): its error reply, if any, came before.
                raise ConnectionError("the daemon closed the connection (reset)") from None
            if not data:
                raise ConnectionError("the daemon closed the connection")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; raise ControlError on an error reply."""
        self.send(method, params)
        reply = self.read_line()
        if not reply.get("ok"):
            error = reply.get("error", {})
            raise ControlError(error.get("code", "error"), error.get("message", "unknown error"))
        return reply.get("result")
