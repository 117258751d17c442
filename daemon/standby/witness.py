"""The lease witness's client: the daemon's :class:`WitnessLeaseStore`, and the
:class:`WitnessLink` both ends of a witness connection use.

What the witness is, its lease rules and its wire protocol are described, and
implemented sans-IO, in :mod:`daemon.standby.witness_protocol` (on the authenticated
channel, :mod:`daemon.standby.channel`). The witness *server* — its own small host
process, with its state file and the ``lifeline witness`` command — is
:mod:`daemon.witness_server`.
"""

from __future__ import annotations

import select
from typing import Any, Awaitable, Callable, Final, TypeVar

import trio

from daemon.core.config import parse_host_port
from daemon.core.log import get_logger
from daemon.standby import Position
from daemon.standby.channel import NeedData
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseLost,
    LeaseState,
    LeaseStore,
    LeaseUnavailable,
)
from daemon.standby.witness_protocol import (
    MAX_TTL,
    MIN_TTL,
    Auth,
    Challenge,
    Event,
    Hello,
    Message,
    Reject,
    Welcome,
    WitnessBadRequest,
    WitnessConnection,
    WitnessProtocolError,
    _check_name,
    _is_number,
    _reply_epoch,
    lease_state_from_json,
)

log = get_logger("witness")

RECEIVE_CHUNK: Final = 16 * 1024
#: What a peer's disconnection raises out of a stream.
DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class WitnessLink:
    """A stream and its protocol object; request and reply take turns, so no send lock."""

    def __init__(self, stream: trio.abc.Stream, conn: WitnessConnection) -> None:
        self.stream = stream
        self.conn = conn

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def receive(self) -> Event:
        while True:
            event = self.conn.next_event()
            if not isinstance(event, NeedData):
                return event
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_CHUNK))


# =========================================================================== the client


T = TypeVar("T")


class _Refused(Exception):
    pass


class WitnessLeaseStore(LeaseStore):
    """The daemon's lease backend: one authenticated connection to the witness at
    ``address`` ("HOST:PORT"), opened on first use and again after any failure.

    Each call is one request, serialized with the others, and gives up after
    ``timeout`` seconds (connecting included) with :class:`LeaseUnavailable`. A failed
    or timed-out call drops the connection, so a late reply can never be taken for the
    answer to a later request (replies also carry the request's id). ``ttl`` goes with
    every acquire and renewal: the witness counts it on its own clock.

    ``connect`` replaces the TCP connection (tests hand in memory streams)."""

    def __init__(self, address: str, key: bytes, cluster: str, node: str, ttl: float, timeout: float, *,
                 connect: Callable[[], Awaitable[trio.abc.Stream]] | None = None) -> None:
        self.host, self.port = parse_host_port(address)
        self.address = address
        _check_name(cluster, "cluster")
        _check_name(node, "node")
        if not _is_number(ttl) or not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be within [{MIN_TTL:g}, {MAX_TTL:g}] s for the witness, found {ttl!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, found {timeout!r}")
        if len(key) < 16:
            raise ValueError("the witness key must be at least 16 bytes")
        self.key = key
        self.cluster = cluster
        self.node = node
        self.ttl = float(ttl)
        self.timeout = float(timeout)
        self._connect = connect or self._open_tcp
        self._link: WitnessLink | None = None
        self._lock = trio.Lock()
        self._next_id = 0

    # ------------------------------------------------------------------ LeaseStore

    async def acquire(self, node: str, expected_epoch: int) -> Grant:
        reply = await self._call("acquire", node, expected_epoch=expected_epoch, ttl=self.ttl)
        return Grant(self._parse(lambda r: _reply_epoch(r, expected_epoch + 1), reply))

    async def renew(self, node: str, epoch: int) -> Grant:
        reply = await self._call("renew", node, epoch=epoch, ttl=self.ttl)
        return Grant(self._parse(lambda r: _reply_epoch(r, epoch), reply))

    async def read(self) -> LeaseState:
        reply = await self._call("read", self.node)
        return self._parse(lambda r: lease_state_from_json(r.get("state")), reply)

    async def release(self, node: str, epoch: int) -> None:
        await self._call("release", node, epoch=epoch)

    async def set_sync_mark(self, node: str, epoch: int, sync_node: str | None, generation: int = 0) -> None:
        await self._call("set_sync_mark", node, epoch=epoch, sync_node=sync_node, generation=generation)

    async def set_pause(self, node: str, seconds: float, by: str) -> None:
        await self._call("pause", node, seconds=seconds, by=by)

    async def report(self, node: str, position: Position, seen_epoch: int) -> None:
        await self._call("report", node, position=[position.epoch, position.seq], seen_epoch=seen_epoch)

    async def aclose(self) -> None:
        await self._drop()

    # ------------------------------------------------------------------ plumbing

    async def _call(self, op: str, node: str, **fields: Any) -> dict[str, Any]:
        async with self._lock:
            self._next_id += 1
            request = {"op": op, "id": self._next_id, "node": node, **fields}
            done = False
            try:
                with trio.fail_after(self.timeout):
                    link = await self._connected()
                    await link.send(Message(request))
                    event = await link.receive()
                if not isinstance(event, Message):
                    raise WitnessProtocolError("the witness closed the connection")
                reply = event.body
                if reply.get("id") != request["id"]:
                    raise WitnessProtocolError(f"reply for request {reply.get('id')!r}, expected {request['id']}")
                done = True
            except trio.TooSlowError:
                raise LeaseUnavailable(f"no answer from the witness {self.address} to {op} within "
                                       f"{self.timeout:g}s") from None
            except _Refused as exc:
                raise LeaseUnavailable(f"the witness {self.address} refused us: {exc}") from None
            except (WitnessProtocolError, *DISCONNECTS) as exc:
                raise LeaseUnavailable(f"witness {self.address}: {op} failed: {exc or type(exc).__name__}") from None
            finally:
                if not done:  # whatever happened, this connection's next bytes are not ours to trust
                    await self._drop()
        error = reply.get("error")
        if error is None and reply.get("ok") is True:
            return reply
        message = reply.get("message")
        message = f"witness: {message}" if isinstance(message, str) else f"witness answered {error!r}"
        if error == "conflict":
            raise LeaseConflict(message, self._parse(lambda r: lease_state_from_json(r.get("state")), reply))
        if error == "lost":
            raise LeaseLost(message)
        if error == "bad_request":
            raise WitnessBadRequest(message)
        if error == "unavailable":
            raise LeaseUnavailable(message)
        await self._drop()
        raise LeaseUnavailable(f"witness {self.address}: unexpected reply {reply!r:.200}")

    def _parse(self, parse: Callable[[dict[str, Any]], T], reply: dict[str, Any]) -> T:
        try:
            return parse(reply)
        except WitnessProtocolError as exc:
            # The connection is fine at the frame level; the next call may still succeed.
            raise LeaseUnavailable(f"witness {self.address}: malformed reply: {exc}") from None

    async def _connected(self) -> WitnessLink:
        if self._link is not None and _stale(self._link.stream):
            await self._drop()  # the witness closed it while idle (restarted): reconnect, send nothing twice
        if self._link is None:
            stream = await self._connect()
            link = WitnessLink(stream, WitnessConnection("client", self.key))
            try:
                await link.send(Hello(self.node, self.cluster))
                if not isinstance(await link.receive(), Challenge):
                    raise WitnessProtocolError("no CHALLENGE from the witness")
                await link.send(Auth())
                verdict = await link.receive()
                if isinstance(verdict, Reject):
                    raise _Refused(verdict.reason)
                if not isinstance(verdict, Welcome):
                    raise WitnessProtocolError("no WELCOME from the witness")
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._link = link
            log.info("witness.connected", address=self.address, node=self.node, cluster=self.cluster)
        return self._link

    async def _open_tcp(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream(self.host, self.port)

    async def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await trio.aclose_forcefully(link.stream)


def _stale(stream: trio.abc.Stream) -> bool:
    """True if an idle TCP connection has something to read: between requests the
    witness sends nothing, so that can only be its end of stream or a reset."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
