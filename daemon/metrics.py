"""Prometheus metrics over HTTP: ``GET /metrics`` in the text exposition format 0.0.4.

The numbers come from the same objects as ``lifeline status`` (the supervisor asks
every running service for its ``metrics()``), so the two never disagree. prometheus_client
renders them: a custom collector (:class:`ServicesCollector`) over the services' state on
a private registry, with its ``ProcessCollector`` for ``process_*``. Histograms are
prometheus_client ``Histogram`` objects owned by the services (see
:func:`daemon.core.service.histogram`); their ``metrics()`` yield the histograms' families.

The HTTP server is deliberately tiny: it reads one request head (capped at 8 KiB, within
the listener's handshake_timeout, so a slow or garbage client costs only its own
connection; the connections are capped as every listener's, see :mod:`daemon.core.accept`), answers
``/metrics`` (and ``/`` with a pointer; ``/primary``, ``/standby``, ``/health`` for
load balancers, see :mod:`daemon.health`), 404 to other paths, 405 to other methods, and
closes the connection. It listens on loopback by default; put a reverse proxy in front
for anything else.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from daemon.core.accept import BoundedListener, Connection
from daemon.health import PATHS, answer
from daemon.core.listeners import Limits
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, ServiceStatus

log = get_logger("metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8192
REQUEST_DEADLINE = 5.0
#: How long, at most, to wait for the client's FIN after answering (see _serve).
LINGER = 2.0


def _metric(family: MetricFamily) -> Metric:
    """One of our families as a prometheus_client family (a counter's name loses its
    ``_total``, which the exposition puts back)."""
    kind = "gauge" if family.type == "info" else family.type
    name = family.name
    if kind == "counter":
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        name = name[: -len("_total")]
    metric = Metric(name, family.help, kind)
    for sample in family.samples:
        value = sample.value
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)):
            raise TypeError(f"{family.name}: sample value {value!r} is not a number")
        metric.add_sample(family.name, {k: str(v) for k, v in sample.labels.items()}, float(value))
    return metric


def to_prometheus(families: Iterable[MetricFamily | Metric]) -> list[Metric]:
    """``families`` as prometheus_client families, those with the same name merged (two
    services may report the same metric with different labels). A service may also hand
    over prometheus_client families itself (its histograms' ``collect()``)."""
    merged: dict[str, MetricFamily | Metric] = {}
    for family in families:
        previous = merged.get(family.name)
        if previous is None:
            merged[family.name] = family
        elif isinstance(previous, MetricFamily) and isinstance(family, MetricFamily):
            merged[family.name] = MetricFamily(family.name, previous.type, previous.help,
                                               previous.samples + family.samples)
        elif isinstance(previous, Metric) and isinstance(family, Metric):
            combined = Metric(previous.name, previous.documentation, previous.type)
            combined.samples = previous.samples + family.samples
            merged[family.name] = combined
        else:
            raise ValueError(f"metric {family.name!r} is reported with two different types")
    return [_metric(f) if isinstance(f, MetricFamily) else f for f in merged.values()]


class ServicesCollector:
    """A prometheus_client collector over the services' state: each scrape asks
    ``collect()`` (the supervisor's, which asks every running service) afresh."""

    def __init__(self, collect: Callable[[], Iterable[MetricFamily | Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return to_prometheus(self._collect())


def make_registry(collect: Callable[[], Iterable[MetricFamily | Metric]], *,
                  process: bool = True) -> CollectorRegistry:
    """A private registry (never prometheus_client's global one): the services'
    collector, and ``process_*`` (CPU, memory, open files of this process) when
    ``process``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServicesCollector(collect))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(families: Iterable[MetricFamily | Metric]) -> str:
    """The text exposition (0.0.4) of ``families``; families with the same name are merged."""
    items = list(families)
    return generate_latest(make_registry(lambda: items, process=False)).decode()


def _end_of_head(head: bytes | bytearray) -> int:
    """The index just past the blank line ending the request head, or -1 if none yet.
    Bare ``\\n`` line ends are accepted (RFC 9112 section 2.2)."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0]
    return min(ends) if ends else -1


class MetricsServer:
    """Serves ``collect()``'s families on ``host:port``; a service for the supervisor."""

    name = "metrics"

    def __init__(self, host: str, port: int, collect: Callable[[], Iterable[MetricFamily | Metric]], *,
                 process: bool = True, health: Callable[[str], Any] | None = None,
                 limits: Limits | None = None) -> None:
        self.host = host
        self.port = port
        self.collect = collect
        #: Returns a :class:`daemon.health.HealthFacts` for the path (/primary, /standby,
        #: /health); None: those paths answer 404.
        self.health = health
        self.registry = make_registry(collect, process=process)
        #: A connection counts as unauthenticated until its request head arrived: the
        #: caps on those apply, the head must arrive within handshake_timeout (slow-loris
        #: clients), and a source whose connections keep ending without one is paced.
        self.limits = limits or Limits()
        self.listener = BoundedListener("metrics", self.limits, self._serve, log)
        self.bound_port: int | None = None
        self.scrapes = 0
        self.bad_requests = 0
        self.slow_requests = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        _, self.bound_port = await self.listener.open(self.host, self.port)
        log.info("metrics.listening", address=f"{self.host}:{self.bound_port}", path="/metrics")
        await self.listener.serve(task_status=task_status)

    async def _serve(self, stream: trio.SocketStream, connection: Connection | None = None) -> None:
        try:
            with trio.move_on_after(REQUEST_DEADLINE):
                head = None
                with trio.move_on_after(self.limits.handshake_timeout) as head_scope:
                    head = await self._read_head(stream)
                if head_scope.cancelled_caught:
                    self.slow_requests += 1
                    count = self.listener.flood.note("slow-request", trio.current_time())
                    if count is not None:
                        log.warning("metrics.request_dropped", reason=f"no request head within "
                                    f"{self.limits.handshake_timeout:g}s", count=count,
                                    interval_s=self.listener.flood.interval)
                    return
                if head is not None and connection is not None:
                    connection.authenticated()  # a whole request head: no longer a stranger's slot
                await self._handle(stream, head)
                # Lingering close (RFC 9112 section 9.6): closing a TCP socket with
                # unread input (a POST body, the rest of an oversized head) sends a
                # reset, which can destroy our answer in the client's buffers before it
                # reads it. So half-close, then discard input until the client closes.
                await stream.send_eof()
                with trio.move_on_after(LINGER):
                    while await stream.receive_some(65536):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _read_head(self, stream: trio.SocketStream) -> bytearray | None:
        """The request head; None if the client closed first; too long a head is
        answered here (431) and also answers None."""
        head = bytearray()
        while True:
            end = _end_of_head(head)
            # The whole head, blank line included, must fit in MAX_HEAD.
            if end > MAX_HEAD or (end < 0 and len(head) >= MAX_HEAD):
                self.bad_requests += 1
                await self._reply(stream, 431, "request head too large\n")
                return None
            if end >= 0:
                return head
            data = await stream.receive_some(4096)
            if not data:
                return None
            head += data

    async def _handle(self, stream: trio.SocketStream, head: bytearray | None) -> None:
        if head is None:
            return
        request_line = bytes(head).split(b"\n", 1)[0].strip()
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self.bad_requests += 1
            await self._reply(stream, 400, "bad request line\n")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            await self._reply(stream, 405, "only GET\n", extra="Allow: GET, HEAD\r\n")
            return
        head_only = method == b"HEAD"  # a response to HEAD never has a body (RFC 9110 9.3.2)
        if target == b"/metrics":
            self.scrapes += 1
            try:
                body = generate_latest(self.registry).decode()
            except Exception as exc:
                log.exception("metrics.collect_failed")
                await self._reply(stream, 500, f"collecting metrics failed: {type(exc).__name__}\n",
                                  head_only=head_only)
                return
            await self._reply(stream, 200, body, content_type=CONTENT_TYPE, head_only=head_only)
        elif self.health is not None and target.decode("latin-1") in PATHS:
            try:
                path = target.decode("latin-1")
                code, body = answer(path, self.health(path))
            except Exception as exc:
                log.exception("metrics.health_failed")
                code, body = 503, f'{{"ok": false, "why": "{type(exc).__name__}"}}\n'
            await self._reply(stream, code, body, content_type="application/json", head_only=head_only)
        elif target == b"/":
            await self._reply(stream, 200, "lifeline: metrics at /metrics\n", head_only=head_only)
        else:
            await self._reply(stream, 404, "not found; metrics are at /metrics\n", head_only=head_only)

    async def _reply(self, stream: trio.SocketStream, code: int, body: str, *,
                     content_type: str = "text/plain; charset=utf-8", extra: str = "",
                     head_only: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error",
                  503: "Service Unavailable"}[code]
        payload = body.encode()
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n{extra}\r\n")
        await stream.send_all(head.encode() + (b"" if head_only else payload))

    def status(self) -> ServiceStatus:
        return ServiceStatus("ok", f"http://{self.host}:{self.bound_port}/metrics ({self.scrapes} scrapes)",
                             {"address": f"{self.host}:{self.bound_port}", "scrapes": self.scrapes,
                              "bad_requests": self.bad_requests, "slow_requests": self.slow_requests,
                              "listener": self.listener.snapshot()})
