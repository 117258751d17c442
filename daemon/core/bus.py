"""The event bus: the events of :mod:`daemon.core.events` fanned out to every subscriber.

Services publish events (``UplinkChanged``, ``RoleChanged``, ``SystemOverloaded``, ...)
with :meth:`EventBus.publish`, which never blocks and never fails: each subscriber has
its own bounded trio memory channel, and when a subscriber falls behind, the *oldest*
event in its buffer is dropped and counted, so a slow reader (a stalled `lifeline
events --follow`, say) can never hold up the uplink policy. The counts show in status.
"""

from __future__ import annotations

import collections
from typing import Any

import trio

from daemon.core.events import Event, log_event


class Subscription:
    """One subscriber's end of the bus. Iterate it (``async for event in sub``) or call
    :meth:`receive`. ``dropped`` counts events discarded because this subscriber was
    slow. Close it (or use it as a context manager) to unsubscribe."""

    def __init__(self, bus: "EventBus", name: str, buffer: int, kinds: frozenset[str] | None) -> None:
        self.bus = bus
        self.name = name
        self.kinds = kinds
        self.dropped = 0
        self.delivered = 0
        self._send, self._receive = trio.open_memory_channel[Event](buffer)
        # A second handle on the receive side, so the bus can pop the oldest event.
        self._drop_oldest_handle = self._receive.clone()

    def _offer(self, event: Event) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            try:
                self._drop_oldest_handle.receive_nowait()
            except trio.WouldBlock:  # pragma: no cover - buffer of size 0 is not allowed
                pass
            self.dropped += 1
            self.bus.dropped_total += 1
            self._send.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def receive(self) -> Event:
        event = await self._receive.receive()
        self.delivered += 1
        return event

    def receive_nowait(self) -> Event:
        event = self._receive.receive_nowait()
        self.delivered += 1
        return event

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        self.bus._unsubscribe(self)
        self._send.close()
        self._drop_oldest_handle.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "buffered": self._send.statistics().current_buffer_used,
            "delivered": self.delivered,
            "dropped": self.dropped,
        }


class EventBus:
    """Fan-out of events to subscribers; see the module docstring."""

    def __init__(self, subscriber_buffer: int = 1024, recent: int = 200) -> None:
        if subscriber_buffer < 1:
            raise ValueError("subscriber_buffer must be at least 1")
        self.subscriber_buffer = subscriber_buffer
        self._subscriptions: list[Subscription] = []
        self.published = 0
        #: Events dropped for slow subscribers since start, including ones now gone.
        self.dropped_total = 0
        self.by_kind: dict[str, int] = {}
        #: The last events published, for `lifeline events` without --follow.
        self.recent: collections.deque[Event] = collections.deque(maxlen=recent)

    def publish(self, event: Event, *, log: bool = True) -> None:
        """Deliver ``event`` to every subscriber now. Never blocks, never raises.

        The bus logs each event: one line, ``event=event.KIND`` with the event's fields
        (and, under journald, ``EVENT=KIND`` among the journal fields). So a publisher
        does not log the same happening itself; ``log=False`` only where it already
        wrote a richer line (a crash with its traceback)."""
        self.published += 1
        self.by_kind[event.kind] = self.by_kind.get(event.kind, 0) + 1
        self.recent.append(event)
        if log:
            log_event(event)
        for sub in list(self._subscriptions):
            sub._offer(event)

    def subscribe(
        self, name: str, *, buffer: int | None = None, kinds: set[str] | None = None
    ) -> Subscription:
        """A new subscription receiving every event published from now on (or only the
        ``kinds`` named)."""
        sub = Subscription(self, name, buffer or self.subscriber_buffer, frozenset(kinds) if kinds else None)
        self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def pending(self) -> int:
        """Events buffered for subscribers and not yet received."""
        return sum(s._send.statistics().current_buffer_used for s in self._subscriptions)

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "subscribers": [s.stats() for s in self._subscriptions],
            "dropped": self.dropped_total,
        }
