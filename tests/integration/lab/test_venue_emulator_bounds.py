"""The venue emulator's HTTP side (h11), in real TCP against the running server: garbage,
an HTTP/2 preface, an oversized head or body, a slow client, pipelined requests and
keep-alive. Each bad connection gets its answer and is closed; the server (and every
other connection) carries on."""

from __future__ import annotations

import json
import socket

import pytest
import trio

from lab.venues import server
from lab.venues.server import VenueEmulator

CAP = 20  # seconds: no test may hang longer than this

TIME = b"GET /0/public/Time HTTP/1.1\r\nHost: e\r\n\r\n"
CANCEL = (b"POST /0/private/CancelOrder HTTP/1.1\r\nHost: e\r\nContent-Type: application/x-www-form-urlencoded\r\n"
          b"Content-Length: 33\r\n\r\nnonce=1700000000000&txid=OABC-123")
COINBASE_TIME = b"GET /v2/time HTTP/1.1\r\nHost: e\r\n\r\n"


class Conn:
    """One TCP connection; reads Content-Length framed answers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, emulator: VenueEmulator) -> Conn:
        assert emulator.bound is not None
        stream = await trio.open_tcp_stream("127.0.0.1", emulator.bound[1])
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(stream)

    async def _more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("closed")
        self.buffer += data

    async def read(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            await self._more()
        head, _, _ = bytes(self.buffer).partition(b"\r\n\r\n")
        del self.buffer[:len(head) + 4]
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            await self._more()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return int(lines[0].split(" ")[1]), headers, body

    async def closed(self) -> bool:
        """True if the server closed the connection with nothing more to read."""
        try:
            return not self.buffer and await self.stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


@pytest.fixture
async def emulator(nursery: trio.Nursery) -> VenueEmulator:
    emulator = VenueEmulator()
    await nursery.start(emulator.run)
    return emulator


async def still_serving(emulator: VenueEmulator) -> None:
    conn = await Conn.open(emulator)
    await conn.stream.send_all(TIME)
    assert (await conn.read())[0] == 200
    await conn.stream.aclose()


@pytest.mark.parametrize(("data", "status", "says"), [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400, "illegal request line"),  # TLS hello
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2.0 is not supported"),  # the HTTP/2 preface
    (b"GET / HTTP/2.0\r\nHost: e\r\n\r\n", 505, "HTTP/2.0 is not supported"),
    (b"GET /v2/time HTTP/1.1\r\nHost: e\r\nX: " + b"a" * 20000, 431, "too long"),  # a head that never ends
    (b"GET /v2/time HTTP/1.1\r\nHost: e\r\nX: " + b"a" * 16370 + b"\r\n\r\n", 431, "head larger"),  # whole
    (b"POST /_emulator/fault HTTP/1.1\r\nHost: e\r\nContent-Length: 2000000\r\n\r\n", 413, "larger than"),
    (b"POST /x HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "Transfer-Encoding"),
    (b"POST /x HTTP/1.1\r\nHost: e\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "Content-Length"),
    (b"GET http://venue/0/public/Time HTTP/1.1\r\nHost: e\r\n\r\n", 400, "origin-form"),
    (b"GET /0/public/Time HTTP/1.1\r\n\r\n", 400, "Host"),
])
async def test_a_bad_request_is_answered_and_drops_only_its_connection(
        emulator: VenueEmulator, data: bytes, status: int, says: str) -> None:
    with trio.fail_after(CAP):
        good = await Conn.open(emulator)
        await good.stream.send_all(TIME)
        assert (await good.read())[0] == 200
        bad = await Conn.open(emulator)
        await bad.stream.send_all(data)
        answer, headers, body = await bad.read()
        assert answer == status and headers["connection"] == "close"
        assert says in json.loads(body)["error"]
        assert await bad.closed()
        await good.stream.send_all(COINBASE_TIME)  # the other connection is still kept alive
        assert (await good.read())[0] == 200
        await still_serving(emulator)
    assert emulator.state()["bad_requests"] == 1


async def test_a_slow_client_gets_408_however_it_trickles(emulator: VenueEmulator,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A started request must be complete within REQUEST_TIMEOUT in all: one byte every
    0.1 s (each well inside the bound) does not keep the connection forever."""
    monkeypatch.setattr(server, "REQUEST_TIMEOUT", 0.5)
    with trio.fail_after(CAP):
        slow = await Conn.open(emulator)
        started = trio.current_time()

        async def trickle() -> None:
            for byte in b"GET /v2/time HTTP/1.1\r\nHost: e\r\nX-Pad: " + b"a" * 100:
                await slow.stream.send_all(bytes([byte]))
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            answer, _, body = await slow.read()
            nursery.cancel_scope.cancel()
        assert answer == 408 and "not completed in time" in json.loads(body)["error"]
        assert trio.current_time() - started < 2.5
        assert await slow.closed()
        await still_serving(emulator)


async def test_an_idle_connection_is_closed_without_an_answer(emulator: VenueEmulator,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.3)
    with trio.fail_after(CAP):
        conn = await Conn.open(emulator)
        await conn.stream.send_all(TIME)
        assert (await conn.read())[0] == 200
        assert await conn.closed()  # after 0.3 s of nothing
    assert emulator.state()["bad_requests"] == 0


@pytest.mark.parametrize("chunk", [0, 1, 7])
async def test_pipelined_requests_are_answered_in_order(emulator: VenueEmulator, chunk: int) -> None:
    """Three requests in one write (chunk 0) or cut into pieces of ``chunk`` bytes."""
    stream = TIME + CANCEL + COINBASE_TIME
    with trio.fail_after(CAP):
        conn = await Conn.open(emulator)
        if chunk == 0:
            await conn.stream.send_all(stream)
        else:
            for i in range(0, len(stream), chunk):
                await conn.stream.send_all(stream[i:i + chunk])
        answers = [await conn.read() for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert "unixtime" in json.loads(answers[0][2])["result"]
    assert json.loads(answers[1][2]) == {"error": ["EOrder:Unknown order"]}
    assert "epoch" in json.loads(answers[2][2])["data"]
    kraken = emulator.state()["venues"]["kraken"]["requests"]["by_path"]
    assert kraken == {"/0/public/Time": 1, "/0/private/CancelOrder": 1}


async def test_keep_alive_and_close(emulator: VenueEmulator) -> None:
    with trio.fail_after(CAP):
        conn = await Conn.open(emulator)
        for _ in range(3):  # HTTP/1.1: kept alive
            await conn.stream.send_all(TIME)
            status, headers, _ = await conn.read()
            assert status == 200 and "connection" not in headers
        await conn.stream.send_all(b"GET /0/public/Time HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        status, headers, _ = await conn.read()
        assert status == 200 and headers["connection"] == "close"
        assert await conn.closed()

        old = await Conn.open(emulator)  # HTTP/1.0 without keep-alive: one answer, then closed
        await old.stream.send_all(b"GET /v2/time HTTP/1.0\r\n\r\n")
        assert (await old.read())[0] == 200
        assert await old.closed()
