"""Least privilege and bounds on the control socket, against real processes of other
uids (``setpriv --reuid``; the kernel's SO_PEERCRED tells the daemon who they are):
the method ACL by role (a refused call names the role it needs), the caller named in
the log, the request-size limits (64 KiB; journal.append from an engine more), the
connection cap, the idle and request timeouts (MockClock), and JSON-safe request ids."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio
import trio.testing

from daemon.core import acl
from daemon.control import ControlServer

CAP = 20
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to connect as other uids")

# uids/gids with no passwd entry: setpriv takes numbers, and the roles name numbers.
ENGINE_UID, OPERATOR_UID, ADMIN_UID, NOBODY_UID, GROUP_ADMIN_UID = 40001, 40002, 40003, 40004, 40005
ADMIN_GID = 40010
ROLES = {"engine": [str(ENGINE_UID)], "operator": [str(OPERATOR_UID), f"@{ENGINE_UID}"],
         "admin": [str(ADMIN_UID), f"@{ADMIN_GID}"]}

# The client: the system python, plain sockets (nothing imported from the checkout, which
# another uid may not read). argv: socket; stdin: the requests (a JSON list of raw lines).
CLIENT = r"""
import json, socket, sys
path, lines = sys.argv[1], json.loads(sys.stdin.read())
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(path)
out, buf = [], b""
try:
    for line in lines:
        try:
            s.sendall(line.encode() + b"\n")
        except OSError:
            pass  # refused mid-send: its error reply may still be waiting
        while b"\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise ConnectionError
            buf += data
        reply, buf = buf.split(b"\n", 1)
        out.append(json.loads(reply))
except (ConnectionError, OSError):
    out.append({"closed": True})
print(json.dumps(out))
"""


@pytest.fixture
def sock() -> Iterator[Path]:
    # A directory other uids can enter (pytest's tmp_path is root's alone).
    directory = Path(tempfile.mkdtemp(prefix="ll-acl-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory / "control.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def start(nursery: trio.Nursery, path: Path, **kwargs: Any) -> ControlServer:
    kwargs.setdefault("roles", ROLES)
    server = ControlServer(path, group=None, mode=0o666, **kwargs)
    calls: list[tuple[str, dict[str, Any], Any]] = []
    server.calls = calls  # type: ignore[attr-defined]

    def fake(name: str) -> Any:
        async def handler(params: dict[str, Any]) -> Any:
            calls.append((name, params, acl.current_caller()))
            return {"done": name}
        return handler

    for name in ("status", "journal.append", "standby.promote", "uplink.use", "playbook.run",
                 "venues.reconcile", "events.recent"):
        server.register(name, fake(name), help=name)
    await nursery.start(server.run)
    return server


async def call_as(uid: int, path: Path, *requests: Any, gid: int | None = None) -> list[dict[str, Any]]:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    result = await trio.run_process(
        ["setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else uid}", "--clear-groups",
         "/usr/bin/python3", "-c", CLIENT, str(path)],
        stdin=json.dumps(lines).encode(), capture_stdout=True, capture_stderr=True)
    return json.loads(result.stdout)


def req(method: str, **params: Any) -> dict[str, Any]:
    return {"id": 1, "method": method, "params": params}


def code(reply: dict[str, Any]) -> str | None:
    return None if reply.get("ok") else reply.get("error", {}).get("code")


async def test_engine_appends_but_cannot_promote(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        append, promote, use, status = await call_as(
            ENGINE_UID, sock, req("journal.append", payloads=["x"]), req("standby.promote", accept_loss=True),
            req("uplink.use", name="starlink"), req("status"))
        assert append["ok"] and status["ok"]
        assert code(promote) == "forbidden"
        assert "standby.promote needs the admin role" in promote["error"]["message"]
        assert f"uid {ENGINE_UID}" in promote["error"]["message"]
        assert "[control.roles] admin" in promote["error"]["message"]
        # Named as an engine: the operator group it is also in does not apply.
        assert code(use) == "forbidden" and "the operator role" in use["error"]["message"]
        assert [c[0] for c in server.calls] == ["journal.append", "status"]
        caller = server.calls[0][2]
        assert caller.uid == ENGINE_UID and caller.roles == frozenset({"engine"})
        assert server.refused == 2


async def test_operator_dry_runs_but_needs_admin_to_act(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        dry, real, recon_dry, recon, use, append = await call_as(
            OPERATOR_UID, sock, req("playbook.run", name="fibre-lost", dry_run=True),
            req("playbook.run", name="fibre-lost"), req("venues.reconcile", dry_run=True),
            req("venues.reconcile", dry_run=False), req("uplink.use", name="starlink"),
            req("journal.append", payloads=["order"]))
        assert dry["ok"] and recon_dry["ok"] and use["ok"]
        assert code(real) == "forbidden" and "playbook.run (not a dry run) needs the admin role" in \
            real["error"]["message"]
        assert code(recon) == "forbidden" and "the admin role" in recon["error"]["message"]
        assert code(append) == "forbidden" and "journal.append needs the engine role" in append["error"]["message"]
        assert [c[0] for c in server.calls] == ["playbook.run", "venues.reconcile", "uplink.use"]


async def test_admin_by_uid_and_by_group(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        (by_uid,) = await call_as(ADMIN_UID, sock, req("standby.promote", accept_loss=True))
        (by_group, use) = await call_as(GROUP_ADMIN_UID, sock, req("standby.promote", accept_loss=True),
                                        req("uplink.use", name="fibre"), gid=ADMIN_GID)
        assert by_uid["ok"] and by_group["ok"] and use["ok"]  # admin includes operator
        assert [c[2].uid for c in server.calls] == [ADMIN_UID, GROUP_ADMIN_UID, GROUP_ADMIN_UID]


async def test_no_role_reads_nothing_but_ping_and_help(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock)
        ping, help_, status, promote = await call_as(NOBODY_UID, sock, req("ping"), req("help"), req("status"),
                                                     req("standby.promote", accept_loss=True))
        assert ping["ok"] and help_["ok"]
        assert code(status) == "forbidden" and "needs the engine or operator role" in status["error"]["message"]
        assert "holds none" in status["error"]["message"]
        assert code(promote) == "forbidden"


async def test_default_roles_refuse_admin_to_all_but_root(nursery: trio.Nursery, sock: Path) -> None:
    """Without [control.roles]: root is admin; a uid in no admin group is not."""
    with trio.fail_after(CAP):
        server = await start(nursery, sock, roles=None)
        (promote,) = await call_as(ADMIN_UID, sock, req("standby.promote", accept_loss=True))
        assert code(promote) == "forbidden"
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            await s.connect(str(sock))
            await s.send(json.dumps(req("standby.promote", accept_loss=True)).encode() + b"\n")
            reply = json.loads((await s.recv(65536)).split(b"\n")[0])
        assert reply["ok"], reply
        assert server.calls[-1][2].uid == 0


async def test_state_changing_calls_name_the_caller(nursery: trio.Nursery, sock: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline.control")
    with trio.fail_after(CAP):
        await start(nursery, sock)
        await call_as(OPERATOR_UID, sock, req("uplink.use", name="starlink"), req("status"))
    calls = [r for r in caplog.records if getattr(r, "event", "") == "control.call"]
    assert len(calls) == 1, "status changes nothing and is not logged; uplink.use is"
    fields = calls[0].fields  # type: ignore[attr-defined]
    assert fields["method"] == "uplink.use" and fields["uid"] == OPERATOR_UID and fields["pid"] > 1
    assert fields["roles"] == "operator"


async def test_live_drills_need_the_admin_role(nursery: trio.Nursery, sock: Path) -> None:
    """`lifeline drill switchover|uplink --live` move the primary and cut the fibre for
    real: an operator (or the engine) is refused before the daemon acts; admin gets in."""
    with trio.fail_after(CAP):
        server = ControlServer(sock, group=None, mode=0o666, roles=ROLES)
        reached: list[tuple[str, Any]] = []
        for name in ("drill.switchover", "drill.uplink"):
            async def handler(params: dict[str, Any], name: str = name) -> Any:
                reached.append((name, acl.current_caller()))
                return {"done": name}
            server.register(name, handler, help=name)
        await nursery.start(server.run)
        for uid in (OPERATOR_UID, ENGINE_UID):
            switch, cut = await call_as(uid, sock, req("drill.switchover", force=False), req("drill.uplink", seconds=5))
            assert code(switch) == "forbidden" and "drill.switchover needs the admin role" in switch["error"]["message"]
            assert code(cut) == "forbidden" and "drill.uplink needs the admin role" in cut["error"]["message"]
        assert reached == []
        switch, cut = await call_as(ADMIN_UID, sock, req("drill.switchover"), req("drill.uplink", seconds=5))
        assert switch["ok"] and cut["ok"]
        assert [(n, c.uid) for n, c in reached] == [("drill.switchover", ADMIN_UID), ("drill.uplink", ADMIN_UID)]
        assert {"drill.switchover", "drill.uplink"} <= acl.STATE_CHANGING  # each call logged with the caller


async def test_every_registered_method_is_in_the_acl_table() -> None:
    """A method missing from acl.METHODS needs admin (fail closed), but every method
    the daemon registers is meant to be placed on purpose."""
    root = Path(__file__).resolve().parents[3]
    names: set[str] = set()
    for sub in ("daemon", "recovery", "hardware"):
        for path in (root / sub).rglob("*.py"):
            names |= set(re.findall(r"""\.register(?:_stream)?\(\s*["']([\w.]+)["']""", path.read_text()))
    assert names, "no registrations found"
    assert names <= set(acl.METHODS), names - set(acl.METHODS)


# --------------------------------------------------------------------------- bounds


async def test_long_request_dropped_unless_an_engine_appends(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock)
        big = ["x" * 1000] * 300  # ~300 KB: a batch of recorded feed lines
        (too_long, after) = await call_as(OPERATOR_UID, sock, req("status", pad="y" * 70_000), req("status"))
        assert code(too_long) == "too_large" and "65536" in too_long["error"]["message"]
        assert after == {"closed": True}
        (append_by_operator, _) = await call_as(OPERATOR_UID, sock, req("journal.append", payloads=big),
                                                req("status"))
        assert code(append_by_operator) == "too_large"
        (append, status_too_long, closed) = await call_as(
            ENGINE_UID, sock, req("journal.append", payloads=big), req("status", pad="y" * 70_000), req("status"))
        assert append["ok"]
        assert code(status_too_long) == "too_large" and closed == {"closed": True}
        assert [c[0] for c in server.calls] == ["journal.append"]


async def test_a_line_without_end_is_not_buffered_past_the_limit(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock, max_request_bytes=4096, max_append_bytes=8192)
        s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await s.connect(str(sock))
        # root holds the engine role, and this line even names journal.append: still
        # dropped at max_append_bytes, after at most that much was read.
        await s.send(b'{"method": "journal.append", "params": {"payloads": ["' + b"z" * 3000)
        with pytest.raises(OSError):
            for _ in range(100):
                await s.send(b"z" * 4096)
        s.close()


async def test_connection_cap(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        server = await start(nursery, sock, max_connections=3)
        held = []
        for _ in range(3):
            s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await s.connect(str(sock))
            await s.send(b'{"id": 1, "method": "ping"}\n')
            assert b'"ok":true' in await s.recv(1000)
            held.append(s)
        (busy,) = await call_as(OPERATOR_UID, sock, req("status"))
        assert busy == {"closed": True} or code(busy) == "busy"
        assert server.dropped == 1
        held.pop().close()
        await trio.sleep(0.2)
        (ok,) = await call_as(OPERATOR_UID, sock, req("status"))
        assert ok["ok"]
        for s in held:
            s.close()


async def test_per_user_cap(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock, max_connections_per_user=1)
        # One process holds a connection (it sends nothing), the next one of the same uid is turned away.
        holder = await trio.lowlevel.open_process(
            ["setpriv", f"--reuid={OPERATOR_UID}", f"--regid={OPERATOR_UID}", "--clear-groups", "/usr/bin/python3",
             "-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                   "print('c', flush=True); time.sleep(30)", str(sock)], stdout=-1)
        try:
            assert holder.stdout is not None
            got = b""
            while b"\n" not in got:
                got += await holder.stdout.receive_some(10)
            await trio.sleep(0.2)
            (busy,) = await call_as(OPERATOR_UID, sock, req("status"))
            assert busy == {"closed": True} or code(busy) == "busy"
            (other,) = await call_as(ENGINE_UID, sock, req("status"))
            assert other["ok"]
        finally:
            holder.kill()
            await holder.wait()


async def test_idle_connection_closed(nursery: trio.Nursery, sock: Path,
                                      mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    with trio.fail_after(1000):
        server = await start(nursery, sock, idle_timeout=300)
        stream = await trio.open_unix_socket(str(sock))
        await stream.send_all(b'{"id": 1, "method": "ping"}\n')
        first = await stream.receive_some(1000)
        assert b'"ok":true' in first, first
        start_time = trio.current_time()
        reply = await stream.receive_some(1000)
        assert b'"timeout"' in reply and b"idle" in reply
        assert await stream.receive_some(1000) == b""
        assert 300 <= trio.current_time() - start_time < 301
        assert server.timeouts == 1


async def test_slow_request_closed(nursery: trio.Nursery, sock: Path,
                                   mock_clock: trio.testing.MockClock) -> None:
    """Slowloris: a byte every few seconds never completes a request in time."""
    mock_clock.autojump_threshold = 0
    with trio.fail_after(1000):
        server = await start(nursery, sock, idle_timeout=300, request_timeout=10)
        stream = await trio.open_unix_socket(str(sock))
        # A complete request first: the server has read our credentials (in a thread,
        # during which the mock clock may jump) and waits for lines.
        await stream.send_all(b'{"id": 1, "method": "ping"}\n')
        first = await stream.receive_some(1000)
        assert b'"ok":true' in first, first
        start_time = trio.current_time()
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            for byte in b'{"id": 1, "method": "ping", "params": {"pad": "' + b"x" * 100:
                await stream.send_all(bytes([byte]))
                await trio.sleep(3)
        assert trio.current_time() - start_time < 15
        assert server.timeouts == 1


async def test_request_id_must_be_json_safe(nursery: trio.Nursery, sock: Path) -> None:
    with trio.fail_after(CAP):
        await start(nursery, sock)
        raw = await call_as(OPERATOR_UID, sock, '{"id": 1e999, "method": "status"}',
                            '{"id": 1.5, "method": "status"}', '{"id": [1], "method": "status"}',
                            '{"id": 3, "method": "status", "params": {"x": NaN}}',
                            '{"id": "a", "method": "status"}')
        for reply in raw[:4]:
            assert code(reply) == "bad_request" and reply["id"] in (None, 3), reply
        assert raw[4] == {"id": "a", "ok": True, "result": {"done": "status"}}
        # The reply to 1e999 is JSON a strict parser accepts (no Infinity).
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            await s.connect(str(sock))
            await s.send(b'{"id": 1e999, "method": "ping"}\n')
            line = (await s.recv(65536)).split(b"\n")[0]
        assert b"Infinity" not in line
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


SERVER_WITH_FEW_DESCRIPTORS = r"""
import resource, sys, trio
from daemon.core import log
from daemon.control import ControlServer
log.setup("info")
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
async def main():
    server = ControlServer(sys.argv[1], group=None, max_connections=1000, max_connections_per_user=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        print("ready", flush=True)
        await trio.sleep(30)
trio.run(main)
"""


async def test_out_of_descriptors_drops_the_newest_and_logs_a_count(sock: Path) -> None:
    """At the process's descriptor limit the listener neither dies nor logs a traceback
    per attempt: the newest connections are closed, counted once per interval, and the
    socket answers again as soon as descriptors are free."""
    root = Path(__file__).resolve().parents[3]
    proc = await trio.lowlevel.open_process(
        [os.sys.executable, "-c", SERVER_WITH_FEW_DESCRIPTORS, str(sock)], stdout=-1, stderr=-1, cwd=root)
    try:
        with trio.fail_after(CAP):
            assert proc.stdout is not None and proc.stderr is not None
            got = b""
            while b"ready" not in got:
                got += await proc.stdout.receive_some(100)
            held = []
            for _ in range(120):
                s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                await s.connect(str(sock))
                held.append(s)
            await trio.sleep(1.0)
            for s in held:
                s.close()
            await trio.sleep(0.5)
            stream = await trio.open_unix_socket(str(sock))
            await stream.send_all(b'{"id": 1, "method": "ping"}\n')
            assert b'"pong":true' in await stream.receive_some(1000)
            await stream.aclose()
    finally:
        proc.kill()
        await proc.wait()
    assert proc.stderr is not None
    err = b""
    while chunk := await proc.stderr.receive_some(65536):
        err += chunk
    text = err.decode(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "control.accept_failed" in text and "count=" in text, text[-3000:]
    assert text.count("control.accept_failed") <= 3, text[-3000:]
