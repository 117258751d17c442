"""The emulator's messages, sans-IO: a parsed :class:`Request` (what the server shell
builds from h11's events) and a :class:`Response` (what route handlers return)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported", 520: "Unknown Error"}


class InputError(ValueError):
    """Bad control input; the message is "<field>: <problem>; <fix>"."""


@dataclass(frozen=True)
class Request:
    """One complete request: what route handlers read."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes = b""

    @classmethod
    def build(cls, method: str, target: str, version: str, headers: Iterable[tuple[str, str]],
              body: bytes = b"") -> Request:
        """A request from its parts (the server passes what h11 parsed)."""
        joined: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        path, _, query = target.partition("?")
        return cls(method=method, target=target, path=urllib.parse.unquote(path),
                   query=urllib.parse.parse_qs(query, keep_blank_values=True), version=version,
                   headers=joined, body=body)

    def param(self, name: str, default: str | None = None) -> str | None:
        """A parameter from the query string or, for a form/JSON body, the body."""
        values = self.params().get(name)
        return values[0] if values else default

    def params(self) -> dict[str, list[str]]:
        merged = {k: list(v) for k, v in self.query.items()}
        for key, value in self.body_params().items():
            merged.setdefault(key, []).extend(value)
        return merged

    def body_params(self) -> dict[str, list[str]]:
        if not self.body:
            return {}
        if self.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            data = self.json()
            if not isinstance(data, dict):
                return {}
            return {str(k): [v if isinstance(v, str) else json.dumps(v)] if not isinstance(v, list)
                    else [str(x) for x in v] for k, v in data.items()}
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        return urllib.parse.parse_qs(text, keep_blank_values=True)

    def json(self) -> Any:
        """The body as JSON; InputError naming the problem otherwise."""
        try:
            return json.loads(self.body.decode("utf-8")) if self.body else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"body: not JSON ({exc}); send a JSON object") from None


@dataclass
class Response:
    """What a handler answers; the server shell sends it (h11 frames it)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "Unknown")

    def head_fields(self, *, close: bool) -> list[tuple[str, str]]:
        """The header fields to send (Content-Length framing; ``Connection: close`` when
        the server will close after this answer)."""
        fields = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
                  ("Server", "lifeline-venue-emulator"), *self.headers]
        if close:
            fields.append(("Connection", "close"))
        return fields


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode())


def text_response(text: str, status: int) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")

