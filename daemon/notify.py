"""sd_notify(3), written here: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

systemd hands a ``Type=notify`` service the path of a datagram socket in
``$NOTIFY_SOCKET`` (a filesystem path, or an abstract name starting with ``@``) and,
with ``WatchdogSec=``, the watchdog period in ``$WATCHDOG_USEC`` (for the process in
``$WATCHDOG_PID``, when set). Each notification is one datagram of newline-separated
``KEY=VALUE`` assignments.

The watchdog ping is sent from a task of the daemon's own trio loop, every half period
(the interval sd_watchdog_enabled(3) recommends): if anything blocks the loop, the pings
stop and systemd kills and restarts the daemon, which is the point. Pinging from a
thread would keep a hung daemon alive.

Without ``$NOTIFY_SOCKET`` (running by hand, in tests) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

import trio

from daemon.core.log import get_logger

log = get_logger("notify")


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET`` (or nowhere, if it is unset)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self.sent = 0
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send one notification (``"READY=1"``, ``"STATUS=..."``); True if delivered.

        A failed send is logged once per failure and never raised: losing a status
        line must not take the daemon down (systemd would then kill it for the missed
        READY or watchdog, which is the right outcome for a truly broken socket).
        """
        if self.address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            self.failures += 1
            log.warning("notify.send_failed", error=str(exc), message=message.decode())
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def run_watchdog(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping the watchdog every half period, from this trio loop, until cancelled."""
        task_status.started()
        if self.watchdog_interval is None or not self.enabled:
            await trio.sleep_forever()
        assert self.watchdog_interval is not None
        period = self.watchdog_interval / 2
        log.info("watchdog.enabled", ping_every_ms=round(period * 1000))
        while True:
            self.watchdog()
            await trio.sleep(period)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("notify.bad_socket", NOTIFY_SOCKET=value, reason="neither a path nor @abstract")
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """The watchdog period in seconds, or None when the watchdog is not for us."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog belongs to another process (sd_watchdog_enabled(3))
    try:
        value = int(usec)
    except ValueError:
        log.warning("notify.bad_watchdog_usec", WATCHDOG_USEC=usec)
        return None
    return value / 1_000_000 if value > 0 else None
