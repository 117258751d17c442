"""The control vocabulary the capabilities use to offer methods on the control socket,
without importing the host's server (:mod:`daemon.control`): the error a method raises
and the stream a streaming method writes to."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from daemon.core.control_client import ControlError

__all__ = ["ControlError", "ControlRegistry", "Handler", "ReplyStream", "StreamHandler"]


class ReplyStream(Protocol):
    """What a streaming handler writes to (:class:`daemon.control.StreamReply` is one):
    ``await reply.start()`` once its params are valid, then ``await reply.send({...})`` per line."""

    started: bool

    async def start(self) -> None: ...

    async def send(self, obj: dict[str, Any]) -> None: ...


#: A control method: its params in, its JSON-able answer out.
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
#: A streaming control method writes its lines through the :class:`ReplyStream`.
StreamHandler = Callable[[dict[str, Any], ReplyStream], Awaitable[None]]


class ControlRegistry(Protocol):
    """Where a capability offers its control methods (:class:`daemon.control.ControlServer` is one)."""

    def register(self, method: str, handler: Handler, *, help: str) -> None: ...

    def register_stream(self, method: str, handler: StreamHandler, *, help: str) -> None: ...
