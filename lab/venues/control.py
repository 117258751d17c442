"""The control API under ``/_emulator/`` (never faulted, never counted as venue
requests): a request in, a response out; the operations are the emulator's methods.

``GET /_emulator/state``; ``POST /_emulator/fault {"venue", "mode", "delay", "status",
"sources", "message"}``; ``POST /_emulator/orders {"venue", "orders": [...], "replace":
false}``; ``POST /_emulator/system_status {"venue", "status"}``; ``POST /_emulator/reset``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from lab.venues.faults import Fault
from lab.venues.messages import InputError, Request, Response, json_response
from lab.venues.venue import VENUES, Venue, log


class Controlled(Protocol):
    """What the control API drives (:class:`lab.venues.server.VenueEmulator`)."""

    def venue(self, name: str) -> Venue: ...

    def set_fault(self, venue: str, mode: str = "ok", *, delay: float = 0.0, status: int | None = None,
                  sources: Iterable[str] = (), message: str | None = None) -> Fault: ...

    def set_system_status(self, venue: str, status: str) -> None: ...

    def add_orders(self, venue: str, orders: Sequence[Mapping[str, Any]], *, replace: bool = False) -> list[str]: ...

    def reset(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


def is_control_path(path: str) -> bool:
    return path.startswith("/_emulator/") or path == "/_emulator"


def handle(emulator: Controlled, request: Request) -> Response:
    """Answer one control request (400 naming the field on bad input)."""
    action = request.path[len("/_emulator/"):].strip("/") if request.path.startswith("/_emulator/") else ""
    handlers: dict[tuple[str, str], Callable[[Any], Any]] = {
        ("GET", "state"): lambda _: emulator.state(),
        ("POST", "fault"): lambda payload: _fault(emulator, payload),
        ("POST", "orders"): lambda payload: _orders(emulator, payload),
        ("POST", "reset"): lambda payload: _reset(emulator, payload),
        ("POST", "system_status"): lambda payload: _system_status(emulator, payload),
    }
    handler = handlers.get((request.method, action))
    if handler is None:
        known = ", ".join(f"{m} /_emulator/{a}" for m, a in handlers)
        status = 405 if any(a == action for _, a in handlers) else 404
        return json_response({"error": f"no control endpoint {request.method} {request.path}; use {known}"},
                             status)
    try:
        payload = request.json() if request.method == "POST" else None
        if request.method == "POST" and payload is None:
            payload = {}
        if request.method == "POST" and not isinstance(payload, dict):
            raise InputError("body: expected a JSON object")
        return json_response(handler(payload))
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    except Exception:  # a bug here must cost one answer, not the server
        log.exception("venue_emulator.control_failed", path=request.path)
        return json_response({"error": "venue-emulator: internal error, see its log"}, 500)


def _only(payload: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(payload) - allowed
    if unknown:
        raise InputError(f"{min(unknown)}: unknown field; use {', '.join(sorted(allowed))}")


def _fault(emulator: Controlled, payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, {"venue", "mode", "delay", "status", "sources", "message"})
    if "venue" not in payload:
        raise InputError(f"venue: missing; use {' or '.join(VENUES)}")
    sources = payload.get("sources") or []
    if not isinstance(sources, list):
        raise InputError(f"sources: expected a list of CIDRs, found {sources!r}")
    fault = emulator.set_fault(payload["venue"], payload.get("mode", "ok"), delay=payload.get("delay", 0.0),
                               status=payload.get("status"), sources=sources, message=payload.get("message"))
    return {"venue": payload["venue"], "fault": fault.to_dict()}


def _orders(emulator: Controlled, payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, {"venue", "orders", "replace"})
    if "venue" not in payload:
        raise InputError(f"venue: missing; use {' or '.join(VENUES)}")
    replace = payload.get("replace", False)
    if not isinstance(replace, bool):
        raise InputError("replace: expected true or false")
    ids = emulator.add_orders(payload["venue"], payload.get("orders", []), replace=replace)
    return {"venue": payload["venue"], "added": ids, "open": len(emulator.venue(payload["venue"]).orders)}


def _reset(emulator: Controlled, payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, set())
    emulator.reset()
    return {"reset": True}


def _system_status(emulator: Controlled, payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, {"venue", "status"})
    emulator.set_system_status(payload.get("venue", ""), payload.get("status", ""))
    return {"venue": payload["venue"], "system_status": payload["status"]}
