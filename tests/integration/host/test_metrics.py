"""The metrics endpoint: ``render()`` as a pure function, then the tiny HTTP server
scraped over real loopback TCP, both with a raw trio stream and with urllib."""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from typing import Iterable

import pytest
import trio

from daemon import metrics
from daemon.core.listeners import Limits
from daemon.metrics import CONTENT_TYPE, MetricsServer, render
from daemon.core.service import MetricFamily, Sample

CAP = 10

# One sample line of the text exposition format 0.0.4 (without timestamps).
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_LINE = re.compile(
    r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    rf"(?:\{{(?:{LABEL}(?:,{LABEL})*)?\}})?"
    r" (?:[+-]?Inf|NaN|[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
)
COMMENT_LINE = re.compile(r"# (?:HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (?:counter|gauge|histogram|untyped))")


def assert_exposition(body: str) -> list[str]:
    """Every line is a HELP/TYPE comment or a sample; returns the sample lines."""
    assert body.endswith("\n")
    samples = []
    for line in body[:-1].split("\n"):
        if line.startswith("#"):
            assert COMMENT_LINE.fullmatch(line), line
        else:
            assert SAMPLE_LINE.fullmatch(line), line
            samples.append(line)
    return samples


def families() -> list[MetricFamily]:
    return [
        MetricFamily.single("lifeline_up", "gauge", "1 while the daemon runs.", 1),
        MetricFamily("lifeline_control_requests_total", "counter", "Control requests answered.",
                     [Sample({"result": "ok"}, 12), Sample({"result": "error"}, 3)]),
        MetricFamily("lifeline_build_info", "info", "Version.", [Sample({"version": "0.1.0"}, 1)]),
        MetricFamily.single("lifeline_cpu_fraction", "gauge", "CPU busy.", 0.25),
    ]


# --- render ---------------------------------------------------------------------------------


def test_render_help_type_and_samples() -> None:
    body = render(families())
    assert body == (
        "# HELP lifeline_up 1 while the daemon runs.\n"
        "# TYPE lifeline_up gauge\n"
        "lifeline_up 1.0\n"
        "# HELP lifeline_control_requests_total Control requests answered.\n"
        "# TYPE lifeline_control_requests_total counter\n"
        'lifeline_control_requests_total{result="ok"} 12.0\n'
        'lifeline_control_requests_total{result="error"} 3.0\n'
        "# HELP lifeline_build_info Version.\n"
        "# TYPE lifeline_build_info gauge\n"  # "info" is exposed as a gauge in 0.0.4
        'lifeline_build_info{version="0.1.0"} 1.0\n'
        "# HELP lifeline_cpu_fraction CPU busy.\n"
        "# TYPE lifeline_cpu_fraction gauge\n"
        "lifeline_cpu_fraction 0.25\n"
    )
    assert len(assert_exposition(body)) == 5


def test_render_escapes_label_values() -> None:
    family = MetricFamily("x", "gauge", "h", [Sample({"path": 'C:\\dir "quoted"\nnext'}, 1)])
    line = render([family]).splitlines()[2]
    assert line == 'x{path="C:\\\\dir \\"quoted\\"\\nnext"} 1.0'
    assert_exposition(render([family]))


def test_render_escapes_help() -> None:
    family = MetricFamily.single("x", "gauge", 'two\nlines with \\ and "quotes"', 1)
    assert render([family]).splitlines()[0] == '# HELP x two\\nlines with \\\\ and "quotes"'


def test_render_multiple_labels_in_name_order() -> None:
    family = MetricFamily.single("lifeline_link_up", "gauge", "h", 1, uplink="fibre", target="1.1.1.1")
    assert render([family]).splitlines()[2] == 'lifeline_link_up{target="1.1.1.1",uplink="fibre"} 1.0'


def test_render_histograms_from_services() -> None:
    from daemon.core.service import histogram

    rtt = histogram("lifeline_test_rtt_seconds", "RTT.", "rtt", ("uplink",))
    for value in (0.003, 0.004, 0.5):
        rtt.labels(uplink="fibre").observe(value)
    body = render([MetricFamily.single("lifeline_up", "gauge", "h", 1), *rtt.collect()])
    assert "# TYPE lifeline_test_rtt_seconds histogram" in body
    assert 'lifeline_test_rtt_seconds_bucket{le="0.005",uplink="fibre"} 2.0' in body
    assert 'lifeline_test_rtt_seconds_bucket{le="+Inf",uplink="fibre"} 3.0' in body
    assert 'lifeline_test_rtt_seconds_count{uplink="fibre"} 3.0' in body
    assert "_created" not in body  # one name per quantity
    assert_exposition(body)


def test_a_counter_must_end_in_total() -> None:
    with pytest.raises(ValueError, match="_total"):
        render([MetricFamily.single("lifeline_things", "counter", "h", 1)])


def test_the_same_name_with_two_types_is_refused() -> None:
    from daemon.core.service import histogram

    rtt = histogram("lifeline_x_seconds", "RTT.", "rtt")
    with pytest.raises(ValueError, match="two different types"):
        render([MetricFamily.single("lifeline_x_seconds", "gauge", "h", 1), *rtt.collect()])


def test_render_merges_families_with_the_same_name() -> None:
    first = MetricFamily.single("lifeline_service_up", "gauge", "1 when running.", 1, service="control")
    other = MetricFamily.single("lifeline_other", "gauge", "o", 7)
    second = MetricFamily.single("lifeline_service_up", "gauge", "ignored duplicate help", 0, service="metrics")
    body = render([first, other, second])
    assert body.count("# HELP lifeline_service_up") == 1
    assert body.count("# TYPE lifeline_service_up") == 1
    assert body.splitlines() == [
        "# HELP lifeline_service_up 1 when running.",
        "# TYPE lifeline_service_up gauge",
        'lifeline_service_up{service="control"} 1.0',
        'lifeline_service_up{service="metrics"} 0.0',
        "# HELP lifeline_other o",
        "# TYPE lifeline_other gauge",
        "lifeline_other 7.0",
    ]
    # Merging does not touch the callers' families.
    assert len(first.samples) == 1


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (0, "0.0"),
        (3, "3.0"),
        (3.0, "3.0"),
        (-2.0, "-2.0"),
        (True, "1.0"),
        (0.5, "0.5"),
        (1e-9, "1e-09"),
        (1e20, "1e+20"),
        (123456789012.0, "1.23456789012e+11"),
        (0.1 + 0.2, "0.30000000000000004"),  # full precision: repr round-trips
    ],
)
def test_render_values(value: float, text: str) -> None:
    line = render([MetricFamily.single("v", "gauge", "h", value)]).splitlines()[2]
    assert line == f"v {text}"
    assert SAMPLE_LINE.fullmatch(line)
    if not math.isnan(value):
        assert float(text) == value


def test_render_nothing() -> None:
    assert render([]) in ("", "\n")


def test_invalid_metric_name_is_refused() -> None:
    with pytest.raises(ValueError):
        MetricFamily.single("lifeline-up", "gauge", "h", 1)


# --- the server -----------------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self) -> Iterable[MetricFamily]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("a service's metrics() is broken")
        return [*families(),
                MetricFamily.single("lifeline_scrapes_total", "counter", "Scrapes.", self.calls),
                MetricFamily("lifeline_odd", "gauge", "odd labels",
                             [Sample({"v": 'a"b\\c\nd'}, math.nan), Sample({"v": "inf"}, math.inf)])]


async def start(nursery: trio.Nursery, collect: Collector | None = None, limits: Limits | None = None
                ) -> MetricsServer:
    server = MetricsServer("127.0.0.1", 0, collect or Collector(), limits=limits)
    await nursery.start(server.run)
    assert server.bound_port
    return server


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` raw and read the whole answer (the server closes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        response = b""
        while data := await stream.receive_some(65536):
            response += data
    return response


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, code, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers, body


async def get(port: int, target: str = "/metrics", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return parse(await exchange(port, f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()))


def urlopen(url: str, data: bytes | None = None) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def test_scrape_raw(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        code, headers, body = await get(server.bound_port)  # type: ignore[arg-type]
        assert code == 200
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        text = body.decode()
        samples = assert_exposition(text)
        assert "lifeline_up 1.0" in samples
        assert 'lifeline_odd{v="a\\"b\\\\c\\nd"} NaN' in samples
        assert 'lifeline_odd{v="inf"} +Inf' in samples
        assert "lifeline_scrapes_total 1.0" in samples
        # Query strings are ignored; each scrape collects afresh.
        code, _, body = await get(server.bound_port, "/metrics?name[]=up")  # type: ignore[arg-type]
        assert code == 200 and "lifeline_scrapes_total 2.0\n" in body.decode()
        assert server.scrapes == 2


async def test_scrape_has_process_metrics(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        _, _, body = await get(server.bound_port)  # type: ignore[arg-type]
        text = body.decode()
        assert_exposition(text)
        rss = [line for line in text.splitlines() if line.startswith("process_resident_memory_bytes ")]
        assert rss and float(rss[0].split()[1]) > 1e6
        assert "process_cpu_seconds_total " in text
        assert "process_open_fds " in text


async def test_scrape_with_urllib(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        url = f"http://127.0.0.1:{server.bound_port}"
        code, content_type, body = await trio.to_thread.run_sync(urlopen, url + "/metrics")
        assert code == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        assert_exposition(body)
        assert "# TYPE lifeline_control_requests_total counter" in body

        code, _, body = await trio.to_thread.run_sync(urlopen, url + "/")
        assert code == 200 and "/metrics" in body
        code, _, body = await trio.to_thread.run_sync(urlopen, url + "/nope")
        assert code == 404
        code, _, _ = await trio.to_thread.run_sync(urlopen, url + "/metrics", b"x=1" * 1000)
        assert code == 405


async def test_head(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        port: int = server.bound_port  # type: ignore[assignment]
        _, _, full = await get(port)
        code, headers, body = await get(port, method="HEAD")
        assert code == 200
        assert headers["content-type"] == CONTENT_TYPE
        assert body == b""
        assert int(headers["content-length"]) == len(full)
        # HEAD never carries a body, whatever the path.
        code, headers, body = await get(port, "/elsewhere", method="HEAD")
        assert code == 404 and body == b"" and int(headers["content-length"]) > 0
        code, _, body = await get(port, "/", method="HEAD")
        assert code == 200 and body == b""


async def test_other_paths_and_methods(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        collect = Collector()
        server = await start(nursery, collect)
        port: int = server.bound_port  # type: ignore[assignment]
        code, _, body = await get(port, "/metrics/extra")
        assert code == 404 and b"/metrics" in body
        code, headers, _ = await get(port, "/metrics", method="POST")
        assert code == 405
        assert headers["allow"] == "GET, HEAD"
        code, _, _ = await get(port, "/metrics", method="DELETE")
        assert code == 405
        # A POST with a body the server never reads still gets its 405, not a reset.
        response = await exchange(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000)
        assert parse(response)[0] == 405
        assert collect.calls == 0


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello-ish
        b"GARBAGE\r\n\r\n",
        b"GET /metrics\r\n\r\n",  # HTTP/0.9
        b"GET /metrics SMTP/1.0\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
    ],
)
async def test_garbage_request_line(nursery: trio.Nursery, request_bytes: bytes) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        port: int = server.bound_port  # type: ignore[assignment]
        code, _, body = parse(await exchange(port, request_bytes))
        assert code == 400 and body == b"bad request line\n"
        assert server.bad_requests == 1
        assert (await get(port))[0] == 200


async def test_bare_newlines_are_accepted(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        code, _, _ = parse(await exchange(server.bound_port, b"GET /metrics HTTP/1.0\n\n"))  # type: ignore[arg-type]
        assert code == 200


@pytest.mark.parametrize("size", [9 * 1024, 64 * 1024])
async def test_oversized_head(nursery: trio.Nursery, size: int) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        port: int = server.bound_port  # type: ignore[assignment]
        head = b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"p" * size + b"\r\n\r\n"
        code, _, _ = parse(await exchange(port, head))
        assert code == 431
        # Unterminated too.
        code, _, _ = parse(await exchange(port, b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"p" * size))
        assert code == 431
        assert server.bad_requests == 2
        assert (await get(port))[0] == 200


async def test_head_just_under_the_cap_is_fine(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery)
        head = b"GET /metrics HTTP/1.1\r\nX-Padding: "
        head += b"p" * (metrics.MAX_HEAD - len(head) - 4) + b"\r\n\r\n"
        assert len(head) == metrics.MAX_HEAD
        assert parse(await exchange(server.bound_port, head))[0] == 200  # type: ignore[arg-type]


async def test_silent_client_is_dropped_without_blocking_others(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(CAP):
        monkeypatch.setattr(metrics, "REQUEST_DEADLINE", 0.5)
        server = await start(nursery)
        port: int = server.bound_port  # type: ignore[assignment]
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        trickle = await trio.open_tcp_stream("127.0.0.1", port)
        await trickle.send_all(b"GET /metr")  # and then nothing more
        opened = trio.current_time()

        # Others are served at once while those two hang around.
        for _ in range(3):
            assert (await get(port))[0] == 200
        assert trio.current_time() - opened < 0.4

        async with silent, trickle:
            assert await silent.receive_some(1024) == b""  # dropped, without an answer
            assert await trickle.receive_some(1024) == b""
        waited = trio.current_time() - opened
        assert 0.4 < waited < 3, waited
        assert (await get(port))[0] == 200


async def test_collect_failure_is_500_and_server_keeps_serving(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        collect = Collector()
        server = await start(nursery, collect)
        port: int = server.bound_port  # type: ignore[assignment]
        collect.fail = True
        code, _, body = await get(port)
        assert code == 500
        assert b"RuntimeError" in body
        assert [r for r in caplog.records if getattr(r, "event", "") == "metrics.collect_failed"]
        code, _, _ = await trio.to_thread.run_sync(urlopen, f"http://127.0.0.1:{port}/metrics")
        assert code == 500
        collect.fail = False
        code, _, body = await get(port)
        assert code == 200
        assert_exposition(body.decode())


async def test_bad_sample_value_is_500(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        bad = [MetricFamily("x", "gauge", "h", [Sample({}, None)])]  # type: ignore[arg-type]
        server = MetricsServer("127.0.0.1", 0, lambda: bad)
        await nursery.start(server.run)
        assert (await get(server.bound_port))[0] == 500  # type: ignore[arg-type]


async def test_many_scrapes_at_once(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        # Within the caps ([listeners]); past them, see tests/integration/host/test_listener_bounds.py.
        server = await start(nursery, limits=Limits(64, 64, 64, 64, accept_burst_per_source=64))
        codes: list[int] = []

        async def scrape() -> None:
            codes.append((await get(server.bound_port))[0])  # type: ignore[arg-type]

        async with trio.open_nursery() as clients:
            for _ in range(40):
                clients.start_soon(scrape)
        assert codes == [200] * 40
        status = server.status()
        assert status.details["scrapes"] == 40
        assert f"127.0.0.1:{server.bound_port}" in status.summary
