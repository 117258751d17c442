"""sd_notify over a real AF_UNIX datagram socket, as systemd receives it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from daemon.core.bus import EventBus
from daemon.core.service import ServiceStatus
from daemon.notify import Notifier
from daemon.supervisor import Supervisor
from lab.procs import NotifyListener


def test_environment_parsing() -> None:
    assert Notifier({}).enabled is False
    assert Notifier({"NOTIFY_SOCKET": "/run/systemd/notify"}).address == "/run/systemd/notify"
    assert Notifier({"NOTIFY_SOCKET": "@abstract/name"}).address == b"\0abstract/name"
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled is False
    assert Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval == 10.0
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "garbage"}).watchdog_interval is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 2.0
    theirs = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(theirs).watchdog_interval is None, "the watchdog of another process is not ours"


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier({})
    assert notifier.ready("x") is False
    assert notifier.sent == 0


def test_messages_arrive_on_a_real_datagram_socket(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
        assert notifier.ready("edge-a: 3/3 services running")
        assert notifier.status("line one\nline two")  # a newline must not forge a field
        assert notifier.watchdog()
        assert notifier.stopping("stopping: signal SIGTERM")
        for _ in range(4):
            assert listener.poll(2) is not None
        fields = [m.fields for m in listener.messages]
        assert fields[0] == {"READY": "1", "STATUS": "edge-a: 3/3 services running"}
        assert fields[1] == {"STATUS": "line one line two"}
        assert fields[2] == {"WATCHDOG": "1"}
        assert fields[3] == {"STOPPING": "1", "STATUS": "stopping: signal SIGTERM"}
    finally:
        listener.close()


def test_abstract_namespace_socket() -> None:
    name = f"lifeline-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    receiver.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=ok"
    finally:
        receiver.close()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready("x") is False
    assert notifier.failures == 1


class BlockingService:
    """After starting, blocks the whole trio loop with a synchronous sleep once."""

    name = "blocker"

    def __init__(self, block_after: float, block_for: float) -> None:
        self.block_after = block_after
        self.block_for = block_for
        self.blocked_at: float | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(self.block_after)
        self.blocked_at = time.monotonic()
        time.sleep(self.block_for)  # the bug a watchdog exists for: a hung loop
        await trio.sleep_forever()

    def status(self) -> ServiceStatus:
        return ServiceStatus("ok", "blocking")


async def test_supervisor_notifies_in_order_and_watchdog_stops_while_the_loop_is_blocked(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    # Watchdog period 200 ms -> a ping every 100 ms from the trio loop.
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"})
    blocker = BlockingService(block_after=0.5, block_for=0.8)
    sup = Supervisor(node="n", services=[blocker], bus=EventBus(16), notifier=notifier, handle_signals=False)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                # Read as systemd does, concurrently: an unread datagram socket
                # fills after ~10 messages (net.unix.max_dgram_qlen).
                await trio.to_thread.run_sync(listener.drain, 1.8)
                sup.stop("test over")
        listener.drain(0.2)
        kinds = []
        for message in listener.messages:
            kind = next((k for k in ("READY", "WATCHDOG", "STOPPING") if k in message.fields), "STATUS")
            if not kinds or kinds[-1] != kind:
                kinds.append(kind)
        # STATUS (starting ...) -> READY -> WATCHDOG pings -> STOPPING
        assert kinds[0] == "STATUS" and "starting blocker" in listener.messages[0].fields["STATUS"]
        assert kinds[1:4] == ["READY", "WATCHDOG", "STOPPING"], kinds
        # While subscribers drain after STOPPING=1 the loop is alive and still pings.
        assert set(kinds[4:]) <= {"WATCHDOG"}, kinds
        pings = [m.at for m in listener.with_key("WATCHDOG")]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert blocker.blocked_at is not None
        # While the loop was blocked (0.8 s) no ping went out: one gap covers the block.
        assert max(gaps) >= 0.75, gaps
        # Otherwise pings come every ~100 ms; before and after the block there are several.
        before = [t for t in pings if t < blocker.blocked_at]
        after = [t for t in pings if t > blocker.blocked_at + 0.8]
        assert len(before) >= 3 and len(after) >= 3, (len(before), len(after))
        normal = sorted(gaps)[len(gaps) // 2]
        assert 0.05 <= normal <= 0.3, f"median ping gap {normal:.3f}s, expected ~0.1s"
    finally:
        listener.close()


def test_the_notify_listener_binds_a_short_path_when_the_work_directory_is_deep(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    listener = NotifyListener(deep / "notify.sock")
    try:
        assert len(str(listener.path).encode()) <= 100
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"READY=1", str(listener.path))
        assert listener.wait_for("READY", "1", timeout=2) is not None
    finally:
        listener.close()
    assert not listener.path.parent.exists()


def test_readers_are_not_starved_while_the_pump_runs(tmp_path: Path) -> None:
    """Once the pump thread reads the socket, poll/drain/wait_for on another thread see what
    it received, promptly (they used to contend for the socket's lock with the pump, which
    retook it in a tight loop: one stop() took 69 s, the next hung)."""
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
        listener.start_pump()
        began = time.monotonic()
        for _ in range(20):
            listener.drain(0.01)
        assert time.monotonic() - began < 2.0
        assert notifier.ready("up")
        note = listener.wait_for("READY", "1", timeout=5)
        assert note is not None and note.fields["STATUS"] == "up"
        assert notifier.watchdog()
        polled = listener.poll(5)
        assert polled is not None and polled.fields == {"WATCHDOG": "1"}
        assert listener.poll(0.05) is None
    finally:
        listener.close()
