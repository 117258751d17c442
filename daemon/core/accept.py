"""The accept loop every TCP listener of lifeline shares: bounded, quiet at the limit.

trio's ``serve_listeners`` serves whoever connects, and when ``accept`` fails with
EMFILE (no descriptor left) it logs a full traceback and retries every 0.1 s, while the
connection that caused it waits in the backlog for ever. Here instead:

* every connection is first paced by source (:class:`~daemon.core.listeners.AcceptPacer`):
  a source whose connections keep failing their handshake is refused at once, before
  any task, challenge or MAC is spent on it, so a flood costs the flooder an accept and
  a reset, and the daemon a close() and a counter;
* then admitted by a :class:`~daemon.core.listeners.ConnectionBudget` before
  its handler starts; a refused one is closed at once (the newest loses, the peers
  already served keep their place), and refusals are logged once per interval with a
  count (:class:`~daemon.core.listeners.FloodLog`);
* at the descriptor limit a spare descriptor kept open on ``/dev/null`` is closed, the
  pending connection accepted and closed, and the spare reopened (the classic trick,
  as in libev and nginx): the listener stays up, drops the newest connection, and the
  event is one log line with a count per interval, never a traceback.

The handler gets a :class:`Connection` (its ticket and address); it calls
:meth:`Connection.authenticated` once the peer proved the key, which frees its place
among the unauthenticated and gives its source back the pacing token it took.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from daemon.core.listeners import RATE_LIMITED, REFUSALS, AcceptPacer, ConnectionBudget, FloodLog, Limits, Ticket
from daemon.core.log import Logger

#: accept() failures that mean "no resources for one more socket now".
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: accept() failures that concern only the connection being accepted (it died in the
#: backlog, a firewall refused it): skip it, as trio does.
SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
                         errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH})
#: How often suppressed events of a flood are logged (one line per kind, with a count).
FLOOD_INTERVAL = 10.0
#: Connections accepted in a row before the loop lets other tasks run.
ACCEPT_BURST = 8
#: With no spare descriptor to sacrifice, how long the loop waits before accepting again.
CAPACITY_BACKOFF = 0.1
#: After refusing a paced source, with nothing more pending, the loop looks again this
#: much later instead of waking for every connect: a flood's connects are refused in
#: batches (one wake of the loop for several), a peer arriving meanwhile waits that long.
PACED_COALESCE = 0.002


class DescriptorReserve:
    """One descriptor held open on /dev/null, given up for an instant when the process
    is at its limit so that the listener can accept (and drop) the pending connection.
    One per process: listeners run on one trio thread, and the release-accept-close-
    restore sequence has no checkpoint in it."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.restore()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> bool:
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True

    def restore(self) -> bool:
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True


_reserve: DescriptorReserve | None = None


def descriptor_reserve() -> DescriptorReserve:
    global _reserve
    if _reserve is None:
        _reserve = DescriptorReserve()
    return _reserve


def peer_address(address: Any) -> tuple[str, str]:
    """(source host, "host:port" for logs) of an accepted socket's peer address."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return host, f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return "?", "?"


@dataclass(eq=False)
class Connection:
    """An admitted connection, as its handler sees it."""

    source: str
    address: str
    ticket: Ticket
    _budget: ConnectionBudget = field(repr=False)
    _pacer: AcceptPacer | None = field(default=None, repr=False)

    def authenticated(self) -> None:
        """The peer proved the key: it leaves the unauthenticated caps, and its source
        gets back the pacing token this connection took."""
        if self.ticket.authenticated or self.ticket.released:
            return
        self._budget.authenticate(self.ticket)
        if self._pacer is not None:
            self._pacer.refund(self.source, trio.current_time())


Handler = Callable[[trio.SocketStream, Connection], Awaitable[None]]


class BoundedListener:
    """Serves ``handler`` on TCP sockets, within a :class:`ConnectionBudget`.

    ``name`` labels the log lines (``listener.refused``, ``listener.at_fd_limit``)."""

    def __init__(self, name: str, limits: Limits, handler: Handler, log: Logger, *,
                 flood_interval: float = FLOOD_INTERVAL) -> None:
        self.name = name
        self.limits = limits
        self.handler = handler
        self.log = log
        self.budget = ConnectionBudget(limits)
        self.pacer = AcceptPacer(limits.accept_rate_per_source, limits.accept_burst_per_source)
        self.flood = FloodLog(flood_interval)
        self.dropped_at_fd_limit = 0
        self.sockets: list[socket.socket] = []

    async def open(self, host: str | None, port: int) -> tuple[str, int]:
        """Bind and listen (as ``trio.open_tcp_listeners``: every address of ``host``,
        dual-stack wildcard when None); answers the first bound (host, port)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        # Plain sockets from here: the drop path needs a synchronous accept().
        self.sockets = [socket.socket(fileno=listener.socket.detach()) for listener in listeners]
        for sock in self.sockets:
            sock.setblocking(False)
        bound = self.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        for sock in self.sockets:
            if sock.fileno() == -1:
                continue  # closed by its accept loop already
            try:
                trio.lowlevel.notify_closing(sock)  # wakes (and unregisters) a task waiting on it
            except RuntimeError:  # pragma: no cover - outside trio: nobody waits on it
                pass
            sock.close()

    def snapshot(self) -> dict[str, int]:
        return {**self.budget.snapshot(), "refused_rate_per_source": self.pacer.refused,
                "paced_sources": self.pacer.sources(), "dropped_at_fd_limit": self.dropped_at_fd_limit}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until cancelled; the sockets are closed on the way out."""
        descriptor_reserve()
        # The handlers' nursery outlives the accept loops: once cancelled, the sockets
        # close at once (the port is free again) while handlers finish their cleanup.
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as nursery:
                    for sock in self.sockets:
                        nursery.start_soon(self._accept_loop, sock, handlers)
                    nursery.start_soon(self._flush_loop)
                    task_status.started()
        finally:
            self.close()

    async def _accept_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        try:
            await self._accept_forever(sock, nursery)
        finally:
            try:
                trio.lowlevel.notify_closing(sock)
            except RuntimeError:  # pragma: no cover - outside trio
                pass
            sock.close()

    async def _accept_forever(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        accepted = 0
        paced = False
        while True:
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                if paced:
                    paced = False
                    await trio.sleep(PACED_COALESCE)
                else:
                    await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno in CAPACITY_ERRNOS:
                    if not self._drop_newest(sock, exc):
                        await trio.sleep(CAPACITY_BACKOFF)
                    else:
                        await trio.lowlevel.checkpoint()
                    continue
                if exc.errno in SKIP_ERRNOS:
                    await trio.lowlevel.checkpoint()
                    continue
                raise
            source = str(address[0]) if isinstance(address, tuple) and address else "?"
            if not self.pacer.admit(source, trio.current_time()):
                # Over its budget: a close and a counter, nothing else (no task, no
                # challenge; the log line is one per interval, with the count).
                _close_now(conn)
                paced = True
                self._note("listener.refused", RATE_LIMITED, reason=RATE_LIMITED, source=source)
            elif isinstance(admitted := self.budget.admit(source), str):
                _close_now(conn)
                self._note("listener.refused", admitted, reason=admitted, source=source)
            else:
                try:
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                except OSError:  # pragma: no cover - the socket died between accept and setup
                    self.budget.release(admitted)
                    conn.close()
                else:
                    _, shown = peer_address(address)
                    nursery.start_soon(self._run, stream,
                                       Connection(source, shown, admitted, self.budget, self.pacer))
            accepted += 1
            if accepted % ACCEPT_BURST == 0:
                await trio.lowlevel.checkpoint()  # a flood of connects must not starve the loop

    def _drop_newest(self, sock: socket.socket, exc: OSError) -> bool:
        reserve = descriptor_reserve()
        dropped = False
        if reserve.release():
            try:
                conn, _ = sock.accept()
            except OSError:
                pass
            else:
                _close_now(conn)
                dropped = True
            finally:
                reserve.restore()
        if dropped:
            self.dropped_at_fd_limit += 1
        self._note("listener.at_fd_limit", "fd-limit", error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                   dropped=dropped, fix="raise LimitNOFILE= or find who holds the descriptors (ls /proc/PID/fd)")
        return dropped

    def _note(self, event: str, key: str, **fields: Any) -> None:
        count = self.flood.note(key, trio.current_time())
        if count is not None:
            self.log.warning(event, listener=self.name, count=count, interval_s=self.flood.interval, **fields)

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(self.flood.interval)
            for key, count in self.flood.flush(trio.current_time()):
                # The handlers share this log for strangers' drops (see its users).
                event = ("listener.at_fd_limit" if key == "fd-limit"
                         else "listener.refused" if key in REFUSALS or key == RATE_LIMITED else "connection.dropped")
                self.log.warning(event, listener=self.name, count=count, interval_s=self.flood.interval,
                                 reason=key, **self.budget.snapshot())

    async def _run(self, stream: trio.SocketStream, connection: Connection) -> None:
        try:
            await self.handler(stream, connection)
        except Exception:  # a peer must never take the listener down: log our bug loudly
            self.log.exception("listener.handler_failed", listener=self.name, address=connection.address)
        finally:
            self.budget.release(connection.ticket)
            with trio.move_on_after(1, shield=True):
                await stream.aclose()


def _close_now(conn: socket.socket) -> None:
    """Close with a reset: the descriptor and the kernel's buffers go at once, no
    TIME_WAIT on our side for a peer we refuse."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    conn.close()
