"""The control vocabulary the capabilities use to offer methods on the control socket,
without importing the host's server (:mod:`daemon.control`): the error a method raises
and the stream a streaming method writes to."""

from __future__ import annotations

from typing import Any, Protocol

from daemon.core.control_client import ControlError

__all__ = ["ControlError", "ReplyStream"]


class ReplyStream(Protocol):
    """What a streaming handler writes to (:class:`daemon.control.StreamReply` is one):
    ``await reply.start()`` once its params are valid, then ``await reply.send({...})`` per line."""

    started: bool

    async def start(self) -> None: ...

    async def send(self, obj: dict[str, Any]) -> None: ...
