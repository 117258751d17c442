"""The control socket over a real unix socket: the protocol, the damage rules (a bad line
costs an error reply, an oversized one its connection, a vanished client nothing), the
streaming methods, and the socket file's life cycle. Talks to the server both from trio
and with the blocking :class:`ControlClient` the CLI uses (run in a thread)."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Callable

import pytest
import trio
import trio.testing

from daemon.control import ControlServer, StreamReply
from daemon.core.control_client import ControlClient, ControlError

# Real sockets and real time: every wait is bounded by this cap.
CAP = 10


class Conn:
    """A trio client that reads one JSON line at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, path: Path) -> "Conn":
        return cls(await trio.open_unix_socket(str(path)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, obj: Any) -> None:
        await self.send_raw(json.dumps(obj).encode() + b"\n")

    async def read(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(f"connection closed; partial data {self.buffer!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    async def call(self, method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
        request: dict[str, Any] = {"id": id, "method": method}
        if params is not None:
            request["params"] = params
        await self.send(request)
        return await self.read()

    async def assert_closed_by_server(self) -> None:
        assert self.buffer == b""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return  # ECONNRESET is a close too
        assert data == b"", data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def start(nursery: trio.Nursery, path: Path, **kwargs: Any) -> ControlServer:
    server = ControlServer(path, group=None, **kwargs)
    await nursery.start(server.run)
    return server


async def ping(path: Path) -> None:
    """A fresh client gets an answer: the server is alive."""
    conn = await Conn.open(path)
    try:
        assert await conn.call("ping", id="alive") == {"id": "alive", "ok": True, "result": {"pong": True}}
    finally:
        await conn.aclose()


def blocking(path: Path, fn: Callable[[ControlClient], Any]) -> Any:
    with ControlClient(path, timeout=5) as client:
        return fn(client)


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    assert set(reply["error"]) == {"code", "message"}
    assert reply["error"]["message"]
    return reply["error"]["code"]


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "c.sock"


# --- protocol ---------------------------------------------------------------------------


async def test_round_trip_echoes_the_id(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        seen: list[dict[str, Any]] = []

        async def echo(params: dict[str, Any]) -> Any:
            seen.append(params)
            return {"echo": params, "n": 1.5, "none": None}

        server.register("test.echo", echo, help="Echoes its params.")
        conn = await Conn.open(sock)
        for request_id in (7, "abc", None):
            reply = await conn.call("test.echo", {"x": [1, "two"]}, id=request_id)
            assert reply == {"id": request_id, "ok": True,
                             "result": {"echo": {"x": [1, "two"]}, "n": 1.5, "none": None}}
        # params may be omitted: the handler gets {}
        await conn.send({"id": 9, "method": "test.echo"})
        assert (await conn.read())["result"]["echo"] == {}
        assert seen[-1] == {}
        await conn.aclose()
        assert server.requests == 4
        assert server.errors == 0


async def test_pipelined_requests_and_blank_lines(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock)
        conn = await Conn.open(sock)
        await conn.send_raw(b'\n  \n{"id": 1, "method": "ping"}\n{"id": 2, "method": "ping"}\r\n')
        assert (await conn.read())["id"] == 1
        assert (await conn.read())["id"] == 2
        # One byte at a time is fine too.
        for byte in b'{"id": 3, "method": "ping"}\n':
            await conn.send_raw(bytes([byte]))
        assert await conn.read() == {"id": 3, "ok": True, "result": {"pong": True}}
        await conn.aclose()


async def test_blocking_client_round_trip(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)

        async def add(params: dict[str, Any]) -> Any:
            return params["a"] + params["b"]

        server.register("test.add", add, help="a + b")
        result = await trio.to_thread.run_sync(
            blocking, sock, lambda c: (c.call("ping"), c.call("test.add", {"a": 2, "b": 3})))
        assert result == ({"pong": True}, 5)

        def unknown(client: ControlClient) -> ControlError:
            with pytest.raises(ControlError) as info:
                client.call("no.such.method")
            # the connection stays usable after an error
            assert client.call("ping") == {"pong": True}
            return info.value

        exc = await trio.to_thread.run_sync(blocking, sock, unknown)
        assert exc.code == "unknown_method"
        assert "no.such.method" in exc.message


async def test_socket_file_mode(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        default = tmp_path / "default.sock"
        await start(nursery, default)
        st = os.stat(default)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660

        private = tmp_path / "nested" / "dir" / "private.sock"  # parents are created
        await start(nursery, private, mode=0o600)
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
        await ping(private)


async def test_help_and_ping(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)

        async def status(params: dict[str, Any]) -> Any:
            return {}

        server.register("status", status, help="Every service's state.")
        conn = await Conn.open(sock)
        assert await conn.call("ping") == {"id": 1, "ok": True, "result": {"pong": True}}
        helped = await conn.call("help", id=2)
        assert helped["ok"] is True
        assert list(helped["result"]) == ["help", "ping", "status"]  # sorted
        assert helped["result"]["status"] == "Every service's state."
        await conn.aclose()
        with pytest.raises(ValueError, match="twice"):
            server.register("ping", status, help="again")


async def test_unknown_method(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        conn = await Conn.open(sock)
        reply = await conn.call("reboot", id=5)
        assert reply["id"] == 5
        assert error_code(reply) == "unknown_method"
        assert "help" in reply["error"]["message"] and "ping" in reply["error"]["message"]
        assert server.errors == 1
        await conn.aclose()


@pytest.mark.parametrize(
    ("line", "expected_id", "hint"),
    [
        pytest.param(b'{"id": 1, "method": "ping"', None, "JSON", id="malformed-json"),
        pytest.param(b"ping", None, "JSON", id="not-json"),
        pytest.param(b'{"id": 1, "method": "ping", "x": "\xff\xfe"}', None, "", id="invalid-utf8"),
        pytest.param(b"[1, 2, 3]", None, "JSON object", id="array"),
        pytest.param(b'"ping"', None, "JSON object", id="string"),
        pytest.param(b"42", None, "JSON object", id="number"),
        pytest.param(b"null", None, "JSON object", id="null"),
        pytest.param(b'{"id": 4}', 4, "method", id="no-method"),
        pytest.param(b'{"id": 4, "method": 12}', 4, "method", id="method-not-string"),
        pytest.param(b'{"id": 6, "method": "ping", "params": [1]}', 6, "params", id="params-list"),
        pytest.param(b'{"id": 6, "method": "ping", "params": "x"}', 6, "params", id="params-string"),
        pytest.param(b"[" * 50_000 + b"]" * 50_000, None, "", id="deeply-nested"),
        pytest.param(b'{"id": 1, "method": "ping", "n": ' + b"9" * 5000 + b"}", None, "", id="huge-integer"),
    ],
)
async def test_bad_request_keeps_the_connection(
    nursery: trio.Nursery, sock: Path, line: bytes, expected_id: Any, hint: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock, max_request_bytes=1024 * 1024)
        conn = await Conn.open(sock)
        await conn.send_raw(line + b"\n")
        reply = await conn.read()
        assert reply["id"] == expected_id
        assert error_code(reply) == "bad_request"
        assert hint in reply["error"]["message"]
        # The same connection answers the next valid request.
        assert await conn.call("ping", id=99) == {"id": 99, "ok": True, "result": {"pong": True}}
        await conn.aclose()
        assert server.errors == 1
        # A peer's garbage is not the daemon's failure: no traceback in the log.
        assert not [r for r in caplog.records if getattr(r, "event", "") == "control.handler_failed"]


async def test_oversized_line_closes_only_that_connection(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock, max_request_bytes=1000)
        bystander = await Conn.open(sock)
        assert (await bystander.call("ping"))["ok"]

        # A complete line that is too long.
        conn = await Conn.open(sock)
        await conn.send_raw(b'{"method": "ping", "pad": "' + b"x" * 5000 + b'"}\n')
        reply = await conn.read()
        assert error_code(reply) == "too_large"
        assert "1000" in reply["error"]["message"]
        await conn.assert_closed_by_server()
        await conn.aclose()

        # A line that never ends: refused once the buffer passes the limit.
        endless = await Conn.open(sock)
        await endless.send_raw(b"y" * 3000)
        assert error_code(await endless.read()) == "too_large"
        await endless.assert_closed_by_server()
        await endless.aclose()

        # Exactly at the limit is fine.
        exact = await Conn.open(sock)
        request = b'{"id": 1, "method": "ping", "pad": "'
        request += b"z" * (1000 - len(request) - 2) + b'"}'
        assert len(request) == 1000
        await exact.send_raw(request + b"\n")
        assert (await exact.read())["ok"] is True
        await exact.aclose()

        # The others never noticed.
        assert (await bystander.call("ping", id=2))["ok"]
        await bystander.aclose()
        await ping(sock)


# --- clients that vanish --------------------------------------------------------------------


async def wait_idle(server: ControlServer) -> None:
    while server.active:
        await trio.sleep(0.01)


async def test_client_sends_half_a_line_and_closes(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        conn = await Conn.open(sock)
        await conn.send_raw(b'{"id": 1, "meth')
        await conn.aclose()
        await wait_idle(server)
        assert server.requests == 0
        await ping(sock)


async def test_client_closes_before_reading_the_reply(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        answered = trio.Event()

        async def slow(params: dict[str, Any]) -> Any:
            await trio.sleep(0.2)
            answered.set()
            return {"big": "x" * 200_000}  # more than a socket buffer

        server.register("test.slow", slow, help="slow")
        conn = await Conn.open(sock)
        await conn.send({"id": 1, "method": "test.slow"})
        await conn.aclose()
        await answered.wait()
        await wait_idle(server)
        await ping(sock)

        # Same with a client that resets the connection (SO_LINGER 0) mid-reply.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(sock))
        raw.sendall(b'{"id": 2, "method": "test.slow"}\n')
        raw.close()
        await wait_idle(server)
        await ping(sock)


async def test_many_clients_at_once(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        replies: list[dict[str, Any]] = []

        async def polite(i: int) -> None:
            conn = await Conn.open(sock)
            replies.append(await conn.call("ping", id=i))
            await conn.aclose()

        async def rude(i: int) -> None:
            conn = await Conn.open(sock)
            await conn.send_raw(b'{"id": %d, "method": "pi' % i)
            await conn.aclose()

        async def hasty(i: int) -> None:
            conn = await Conn.open(sock)
            await conn.send({"id": i, "method": "help"})
            await conn.aclose()

        async with trio.open_nursery() as clients:
            for i in range(60):
                clients.start_soon((polite, rude, hasty)[i % 3], i)
        assert sorted(r["id"] for r in replies) == list(range(0, 60, 3))
        assert all(r["ok"] for r in replies)
        await wait_idle(server)
        assert server.connections == 60
        await ping(sock)


async def test_handler_failure_is_an_internal_error(
    nursery: trio.Nursery, sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)

        async def broken(params: dict[str, Any]) -> Any:
            return {}["missing"]

        async def refuses(params: dict[str, Any]) -> Any:
            raise ControlError("not_ready", "the journal is still opening")

        async def unserialisable(params: dict[str, Any]) -> Any:
            return {("tuple", "key"): 1}

        server.register("test.broken", broken, help="raises")
        server.register("test.refuses", refuses, help="ControlError")
        server.register("test.unserialisable", unserialisable, help="bad result")
        conn = await Conn.open(sock)
        reply = await conn.call("test.broken", id=3)
        assert reply["id"] == 3
        assert error_code(reply) == "internal"
        assert "KeyError" in reply["error"]["message"]
        records = [r for r in caplog.records if getattr(r, "event", "") == "control.handler_failed"]
        assert len(records) == 1 and records[0].exc_info is not None

        reply = await conn.call("test.refuses", id=4)
        assert reply == {"id": 4, "ok": False,
                         "error": {"code": "not_ready", "message": "the journal is still opening"}}

        # A result that cannot be written as JSON is the handler's bug, not a crash.
        reply = await conn.call("test.unserialisable", id=5)
        assert reply["id"] == 5
        assert error_code(reply) == "internal"

        assert await conn.call("ping", id=6) == {"id": 6, "ok": True, "result": {"pong": True}}
        await conn.aclose()
        assert server.errors == 3
        await ping(sock)


# --- streaming ------------------------------------------------------------------------------


async def test_streaming_lines_and_cancel_on_hangup(
    nursery: trio.Nursery, sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        ended = trio.Event()
        how: list[str] = []

        async def follow(params: dict[str, Any], reply: StreamReply) -> None:
            try:
                if not isinstance(params.get("count"), int):
                    raise ControlError("bad_request", '"count" must be an integer')
                await reply.start()
                for i in range(params["count"]):
                    await reply.send({"event": {"n": i}})
                await trio.sleep_forever()  # like a subscriber waiting for the next event
            except trio.Cancelled:
                how.append("cancelled")
                raise
            finally:
                ended.set()

        server.register_stream("test.follow", follow, help="streams")

        # Params are validated before the stream starts: an ordinary error reply.
        conn = await Conn.open(sock)
        reply = await conn.call("test.follow", {"count": "three"}, id=1)
        assert error_code(reply) == "bad_request"
        ended = trio.Event()

        reply = await conn.call("test.follow", {"count": 3}, id=2)
        assert reply == {"id": 2, "ok": True, "result": {"streaming": True}}
        assert [await conn.read() for _ in range(3)] == [{"event": {"n": i}} for i in range(3)]
        assert not ended.is_set()
        # Input while streaming is ignored, not answered.
        await conn.send({"id": 3, "method": "ping"})
        await trio.testing.wait_all_tasks_blocked()
        assert not ended.is_set()

        await conn.aclose()
        with trio.fail_after(1):  # promptly, not at the next event
            await ended.wait()
        assert how == ["cancelled"]
        await wait_idle(server)
        assert server.errors == 1  # the bad params only
        assert not [r for r in caplog.records if getattr(r, "event", "") == "control.handler_failed"]
        await ping(sock)


async def test_streaming_with_the_blocking_client(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        ended = trio.Event()

        async def ticks(params: dict[str, Any], reply: StreamReply) -> None:
            try:
                await reply.start()
                n = 0
                while True:
                    await reply.send({"tick": n})
                    n += 1
                    await trio.sleep(0.01)
            finally:
                ended.set()

        server.register_stream("test.ticks", ticks, help="ticks")

        def follow(client: ControlClient) -> list[Any]:
            assert client.call("test.ticks") == {"streaming": True}
            return [client.read_line(timeout=5)["tick"] for _ in range(5)]

        assert await trio.to_thread.run_sync(blocking, sock, follow) == [0, 1, 2, 3, 4]
        with trio.fail_after(2):
            await ended.wait()
        await wait_idle(server)
        await ping(sock)


async def test_streaming_handler_that_ends_or_fails(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)

        async def finite(params: dict[str, Any], reply: StreamReply) -> None:
            await reply.send({"line": 1})  # send() starts the stream by itself

        async def crashes(params: dict[str, Any], reply: StreamReply) -> None:
            await reply.start()
            raise RuntimeError("lost the journal")

        server.register_stream("test.finite", finite, help="one line")
        server.register_stream("test.crashes", crashes, help="fails")
        conn = await Conn.open(sock)
        assert (await conn.call("test.finite", id=1))["result"] == {"streaming": True}
        assert await conn.read() == {"line": 1}
        await conn.aclose()

        # (A new connection: while a stream runs, whatever the client sends is ignored.)
        conn = await Conn.open(sock)
        assert (await conn.call("test.crashes", id=3))["ok"] is True
        reply = await conn.read()
        assert reply["id"] == 3
        assert error_code(reply) == "internal"
        assert "lost the journal" in reply["error"]["message"]
        await conn.aclose()
        await ping(sock)


# --- the socket file ------------------------------------------------------------------------


async def test_stale_socket_is_replaced(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(sock))
        dead.close()  # the file stays, nobody listens: a daemon that died
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        await start(nursery, sock)
        await ping(sock)


async def test_second_server_on_a_live_socket_is_refused(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock)
        inode = os.stat(sock).st_ino
        with pytest.raises(OSError, match="another daemon"):
            await start(nursery, sock)
        assert os.stat(sock).st_ino == inode  # left alone
        await ping(sock)


async def test_busy_live_server_is_not_mistaken_for_a_stale_one(sock: Path) -> None:
    with trio.fail_after(CAP):
        # A listener whose backlog is full: connecting blocks (it is alive, just busy).
        busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        busy.bind(str(sock))
        busy.listen(0)
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                filler.setblocking(False)
                try:
                    filler.connect(str(sock))
                except BlockingIOError:
                    filler.close()
                    break
                fillers.append(filler)
            inode = os.stat(sock).st_ino
            with pytest.raises(OSError, match="another daemon"):
                await ControlServer(sock, group=None).run()
            assert os.stat(sock).st_ino == inode
        finally:
            for filler in fillers:
                filler.close()
            busy.close()


async def test_regular_file_is_refused(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        sock.write_text("not a socket")
        with pytest.raises(OSError, match="not a socket"):
            await start(nursery, sock)
        assert sock.read_text() == "not a socket"


async def test_socket_file_removed_on_shutdown(sock: Path) -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as inner:
            await start(inner, sock)
            conn = await Conn.open(sock)  # a connected client does not delay shutdown
            assert (await conn.call("ping"))["ok"]
            assert sock.exists()
            inner.cancel_scope.cancel()
        assert not sock.exists()
        await conn.assert_closed_by_server()
        await conn.aclose()


async def test_shutdown_leaves_a_newer_daemons_socket_alone(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as old:
            await start(old, sock)
            sock.unlink()  # someone removed it and a newer daemon took the path
            await start(nursery, sock)
            old.cancel_scope.cancel()
        assert sock.exists()
        await ping(sock)


async def test_status_counts(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        conn = await Conn.open(sock)
        await conn.call("ping")
        await conn.call("nope")
        status = server.status()
        assert status.health == "ok"
        assert status.details["requests"] == 2
        assert status.details["errors"] == 1
        assert status.details["active"] == 1
        assert str(sock) in status.summary
        await conn.aclose()


# --- ControlClient errors -------------------------------------------------------------------


def test_client_without_socket_file(tmp_path: Path) -> None:
    client = ControlClient(tmp_path / "missing.sock")
    with pytest.raises(ConnectionError, match="no control socket at .*missing.sock.*is lifeline running"):
        client.connect()


def test_client_on_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(ConnectionError, match="nothing listens"):
        ControlClient(path).connect()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
async def test_client_without_permission(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock, mode=0o000)
        with pytest.raises(ConnectionError, match="permission denied"):
            await trio.to_thread.run_sync(lambda: ControlClient(sock).connect())


async def test_client_sees_the_daemon_close(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock, max_request_bytes=100)

        def oversized(client: ControlClient) -> None:
            with pytest.raises(ControlError, match="too_large"):
                client.call("ping", {"pad": "x" * 500})
            with pytest.raises(ConnectionError, match="closed the connection"):
                client.read_line()

        await trio.to_thread.run_sync(blocking, sock, oversized)


def test_control_error_text() -> None:
    exc = ControlError("bad_request", "missing method")
    assert str(exc) == "bad_request: missing method"
    assert (exc.code, exc.message) == ("bad_request", "missing method")

