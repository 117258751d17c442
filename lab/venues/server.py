"""The venue emulator's server: Kraken and Coinbase on one HTTP/1.1 port (h11 frames
the requests and answers; this module only does the I/O), the state and the Python
control API (the HTTP control endpoints of :mod:`lab.venues.control` call it).

Bounds, every connection assumed hostile: an h11 connection per TCP connection with
the request head capped at :data:`MAX_HEAD` (h11's ``max_incomplete_event_size``), the
body at :data:`MAX_BODY`, a started request completed within :data:`REQUEST_TIMEOUT`
(head and body, however slowly it trickles), an idle kept-alive connection closed after
:data:`IDLE_TIMEOUT`, at most :data:`MAX_CONNECTIONS` at once. Garbage, an HTTP/2
preface, an oversized head or body get a 4xx/5xx and close that connection only;
``Transfer-Encoding`` bodies get 501 (ccxt sends ``Content-Length``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h11
import trio

from lab.venues import control
from lab.venues.coinbase import CoinbaseVenue
from lab.venues.faults import OK, Fault, make_fault, normalize_address
from lab.venues.kraken import KrakenVenue
from lab.venues.messages import InputError, Request, Response, json_response
from lab.venues.recorded import DEFAULT_DATA_DIR, load_recorded
from lab.venues.venue import MAX_COUNTED_PATHS, VENUES, Deadman, Now, Venue, iso, log, venue_for_path

MAX_HEAD = 16384
MAX_BODY = 1 << 20
MAX_CONNECTIONS = 512
#: Waiting for the first byte of the next request on a kept-alive connection.
IDLE_TIMEOUT = 60.0
#: Once a request has started, the rest of it (head and body) must arrive within this.
REQUEST_TIMEOUT = 10.0
#: After an error answer: how long to wait for the client's FIN (see metrics.py).
LINGER = 1.0
RECV_SIZE = 65536


class ProtocolError(Exception):
    """A request we cannot read; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _check_head(event: h11.Request) -> None:
    """What h11 accepts but the emulator refuses (ProtocolError)."""
    # h11 caps a head still arriving (max_incomplete_event_size); one that arrived whole
    # in a single read is measured here (its fields as parsed, near enough the bytes).
    size = len(event.method) + len(event.target) + 11 + sum(len(n) + len(v) + 4 for n, v in event.headers)
    if size > MAX_HEAD:
        raise ProtocolError(431, f"request head larger than {MAX_HEAD} bytes")
    version = event.http_version.decode("ascii")
    if version not in ("1.0", "1.1"):
        raise ProtocolError(505, f"HTTP/{version} is not supported; use HTTP/1.1")
    target = event.target.decode("ascii", "replace")
    if not target.startswith("/"):
        raise ProtocolError(400, f"bad request target {target[:80]!r} (origin-form /path expected)")
    names = {name for name, _ in event.headers}
    if b"transfer-encoding" in names:
        raise ProtocolError(501, "Transfer-Encoding is not supported; send Content-Length")
    for name, value in event.headers:
        if name == b"content-length" and int(value) > MAX_BODY:  # h11 checked it is digits
            raise ProtocolError(413, f"body of {int(value)} bytes is larger than {MAX_BODY}")


def now() -> Now:
    return Now(wall=time.time(), mono=trio.current_time())


class VenueEmulator:
    """Kraken and Coinbase on one HTTP port; start with ``await nursery.start(emu.run)``
    (returns the base URL, e.g. ``http://127.0.0.1:41234``)."""

    name = "venue-emulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, data_dir: Path | None = None,
                 api_keys: Mapping[str, str] | None = None, kraken_nonce_window: int | None = None) -> None:
        api_keys = dict(api_keys or {})
        unknown = set(api_keys) - set(VENUES)
        if unknown:
            raise InputError(f"api_keys: unknown venue {min(unknown)!r}; use {' or '.join(VENUES)}")
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        kraken = KrakenVenue(load_recorded("kraken", self.data_dir), api_keys.get("kraken"))
        kraken.nonce_window = kraken_nonce_window
        coinbase = CoinbaseVenue(load_recorded("coinbase", self.data_dir), api_keys.get("coinbase"))
        self.venues: dict[str, Venue] = {"kraken": kraken, "coinbase": coinbase}
        self.bound: tuple[str, int] | None = None
        self.url: str | None = None
        self.connections = 0
        self.bad_requests = 0
        self.unrouted: dict[str, int] = {}
        self.control_requests = 0
        self._changed = trio.Event()          # set (and replaced) on every fault change
        self._deadman_changed = trio.Event()  # set (and replaced) on every (dis)arm

    # --- Python control API (the HTTP control endpoints call these) -------------------

    def venue(self, name: str) -> Venue:
        try:
            return self.venues[name]
        except (KeyError, TypeError):
            raise InputError(f"venue: {name!r} is not emulated; use {' or '.join(VENUES)}") from None

    def set_fault(self, venue: str, mode: str = "ok", *, delay: float = 0.0, status: int | None = None,
                  sources: Iterable[str] = (), message: str | None = None) -> Fault:
        """Replace ``venue``'s fault (``mode="ok"`` lifts it). InputError on bad input."""
        target = self.venue(venue)
        fault = make_fault(mode, delay=delay, status=status, sources=sources, message=message)
        target.fault = fault
        self._changed.set()
        self._changed = trio.Event()
        log.info("venue_emulator.fault", venue=venue, mode=fault.mode, delay=fault.delay, status=fault.status,
                 sources=[str(s) for s in fault.sources] or "all")
        return fault

    def clear_faults(self) -> None:
        for name in self.venues:
            self.set_fault(name, "ok")

    def set_system_status(self, venue: str, status: str) -> None:
        """What Kraken's SystemStatus says ("online", "maintenance", "cancel_only",
        "post_only"); Coinbase stores it but has no status endpoint."""
        if status not in ("online", "maintenance", "cancel_only", "post_only"):
            raise InputError(f"status: {status!r}; use online, maintenance, cancel_only or post_only")
        self.venue(venue).system_status = status

    def add_orders(self, venue: str, orders: Sequence[Mapping[str, Any]], *, replace: bool = False) -> list[str]:
        """Add open orders; each is ``{"symbol", "side", "amount", "price", "type"?, "id"?,
        "client_order_id"?}`` or ``{"raw": <the venue's own order object>, "id"?}``.
        ``replace`` drops the current open orders first. Returns the order ids."""
        ids = self.venue(venue).add_orders(orders, time.time(), replace=replace)
        log.info("venue_emulator.orders_added", venue=venue, count=len(ids), replace=replace)
        return ids

    def open_orders(self, venue: str) -> list[dict[str, Any]]:
        """Summaries of ``venue``'s open orders (id, client_order_id, symbol, side, type,
        amount, price, status)."""
        target = self.venue(venue)
        return [target.summary(i, raw) for i, raw in target.orders.items()]

    def cancel_order(self, venue: str, order_id: str) -> bool:
        return self.venue(venue).cancel(order_id, "control", time.time())

    def arm_deadman(self, venue: str, timeout: float) -> Deadman:
        """Arm ``venue``'s cancel-all timer ``timeout`` seconds from now (0 disarms).
        Call inside trio (it reads trio's clock)."""
        target = self.venue(venue)
        if not target.has_deadman:
            raise InputError(f"venue: {venue} has no dead-man switch; only kraken has one")
        target.deadman.arm(timeout, now())
        self._wake_deadman()
        log.debug("venue_emulator.deadman", venue=venue, timeout=timeout, armed=timeout > 0)
        return target.deadman

    def reset(self) -> None:
        """Back to the start: no faults, seeded orders, timers disarmed, counters zero."""
        for target in self.venues.values():
            target.fault = OK
            target.system_status = "online"
            target.reset_orders()
            target.deadman = Deadman()
            target.requests_total = target.faulted = 0
            target.by_path = {}
            target.last_source = None
        self.unrouted = {}
        self.bad_requests = 0
        self.control_requests = 0
        for event in (self._changed, self._deadman_changed):
            event.set()
        self._changed = trio.Event()
        self._deadman_changed = trio.Event()
        log.info("venue_emulator.reset")

    def state(self) -> dict[str, Any]:
        try:
            mono: float | None = trio.current_time()
        except RuntimeError:
            mono = None
        return {"url": self.url, "time": iso(time.time()), "connections": self.connections,
                "bad_requests": self.bad_requests, "control_requests": self.control_requests,
                "unrouted": dict(self.unrouted),
                "venues": {name: target.state(mono) for name, target in self.venues.items()}}

    def _wake_deadman(self) -> None:
        self._deadman_changed.set()
        self._deadman_changed = trio.Event()

    # --- the server --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        sockname = listeners[0].socket.getsockname()
        self.bound = (sockname[0], sockname[1])
        host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        self.url = f"http://{host}:{sockname[1]}"
        log.info("venue_emulator.listening", url=self.url)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deadman_loop)
                await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
                task_status.started(self.url)
                await trio.sleep_forever()
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def _deadman_loop(self) -> None:
        while True:
            changed = self._deadman_changed
            armed = [(t.deadman.deadline, name) for name, t in self.venues.items()
                     if t.has_deadman and t.deadman.deadline is not None]
            if not armed:
                await changed.wait()
                continue
            deadline, name = min(armed)
            with trio.move_on_at(deadline):
                await changed.wait()
                continue
            count = self.venues[name].fire_deadman(now())
            if count is not None:
                log.info("venue_emulator.deadman_fired", venue=name, cancelled=count)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        if self.connections >= MAX_CONNECTIONS:
            await stream.aclose()
            return
        self.connections += 1
        try:
            peer = stream.socket.getpeername()
            source: str | None = normalize_address(peer[0]) if isinstance(peer, tuple) else None
        except OSError:
            source = None
        try:
            await self._connection_loop(stream, source)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.connections -= 1
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _connection_loop(self, stream: trio.SocketStream, source: str | None) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                request = await self._read_request(conn, stream)
            except ProtocolError as exc:
                await self._reject(conn, stream, exc, source)
                return
            if request is None:
                return
            response = await self._dispatch(request, stream, source)
            if response is None:
                return  # silent: the connection is dropped without an answer
            await self._send(conn, stream, request, response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE: the client or we asked for Connection: close
            conn.start_next_cycle()  # keep-alive; a pipelined request is already buffered

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> Request | None:
        """The next complete request; None when the client hangs up or stays idle."""
        head: h11.Request | None = None
        body = bytearray()
        deadline: float | None = None  # set once the request has started
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(exc.error_status_hint, str(exc)) from None
            if event is h11.NEED_DATA:
                if deadline is None and (head is not None or conn.trailing_data[0]):
                    deadline = trio.current_time() + REQUEST_TIMEOUT
                with trio.move_on_at(deadline if deadline is not None else trio.current_time() + IDLE_TIMEOUT):
                    data = await stream.receive_some(RECV_SIZE)
                    if not data:
                        return None
                    conn.receive_data(data)
                    continue
                if deadline is not None:
                    raise ProtocolError(408, "request not completed in time")
                return None
            if isinstance(event, h11.Request):
                _check_head(event)
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:  # Content-Length was checked; this is belt and braces
                    raise ProtocolError(413, f"body larger than {MAX_BODY}")
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return Request.build(head.method.decode("ascii"), head.target.decode("ascii"),
                                     f"HTTP/{head.http_version.decode('ascii')}",
                                     ((n.decode("ascii"), v.decode("latin-1")) for n, v in head.headers),
                                     bytes(body))
            else:  # ConnectionClosed or PAUSED: nothing more to read on this connection
                return None

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, request: Request,
                    response: Response, *, close: bool = False) -> None:
        data = conn.send(h11.Response(status_code=response.status, reason=response.reason,
                                      headers=response.head_fields(close=close)))
        if request.method != "HEAD":
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _reject(self, conn: h11.Connection, stream: trio.SocketStream, error: ProtocolError,
                      source: str | None) -> None:
        self.bad_requests += 1
        log.debug("venue_emulator.bad_request", source=source, status=error.status, error=error.message)
        response = json_response({"error": error.message}, error.status)
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            data = conn.send(h11.Response(status_code=response.status, reason=response.reason,
                                          headers=response.head_fields(close=True)))
            data += conn.send(h11.Data(data=response.body))
        except h11.LocalProtocolError:
            return
        await stream.send_all(data)
        # Lingering close: a reset from unread input could destroy the answer in flight.
        with trio.move_on_after(LINGER):
            await stream.send_eof()
            while await stream.receive_some(RECV_SIZE):
                pass

    async def _dispatch(self, request: Request, stream: trio.SocketStream, source: str | None) -> Response | None:
        if control.is_control_path(request.path):
            self.control_requests += 1
            return control.handle(self, request)
        name = venue_for_path(request.path)
        if name is None:
            key = request.path if len(self.unrouted) < MAX_COUNTED_PATHS else "(other)"
            self.unrouted[key] = self.unrouted.get(key, 0) + 1
            log.warning("venue_emulator.unknown_path", venue="-", method=request.method, path=request.path)
            return json_response({"error": f"venue-emulator: no venue serves {request.path}; Kraken paths start "
                                           f"/0/, Coinbase /v2/ or /api/v3/, control /_emulator/"}, 404)
        target = self.venues[name]
        target.count(request, source)
        fault = target.fault
        if fault.applies_to(source):
            target.faulted += 1
            if fault.mode == "silent":
                await self._hold(stream, name, source)
                return None
            if fault.mode == "error":
                response = target.error_response(fault)
                self._log_request(name, request, response, source)
                return response
            if fault.mode == "exchange_error":
                response = target.exchange_error_response(fault)
                self._log_request(name, request, response, source)
                return response
            await trio.sleep(fault.delay)  # slow
        try:
            response = target.route(request, now())
        except Exception:  # a bug here must cost one answer, not the server
            log.exception("venue_emulator.handler_failed", venue=name, path=request.path)
            response = json_response({"error": "venue-emulator: internal error, see its log"}, 500)
        if target.has_deadman:
            self._wake_deadman()  # the request may have (dis)armed the dead-man timer
        self._log_request(name, request, response, source)
        return response

    @staticmethod
    def _log_request(venue: str, request: Request, response: Response, source: str | None) -> None:
        log.debug("venue_emulator.request", venue=venue, method=request.method, path=request.path,
                  status=response.status, source=source)

    async def _hold(self, stream: trio.SocketStream, venue: str, source: str | None) -> None:
        """Never answer: wait until the fault no longer applies, the client hangs up, or
        the server stops."""
        log.debug("venue_emulator.silent", venue=venue, source=source)
        async with trio.open_nursery() as nursery:
            async def until_lifted() -> None:
                while True:
                    changed = self._changed
                    fault = self.venues[venue].fault
                    if not (fault.mode == "silent" and fault.applies_to(source)):
                        break
                    await changed.wait()
                nursery.cancel_scope.cancel()

            async def until_hung_up() -> None:
                try:
                    while await stream.receive_some(RECV_SIZE):
                        pass  # a silent venue reads and discards
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_lifted)
            nursery.start_soon(until_hung_up)
