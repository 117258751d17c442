"""Role-change hooks: real processes (small Python scripts run with sys.executable, no
shell anywhere) for order, environment, timeouts and failures; a fake run_process
under a MockClock for the timing logic."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from daemon.config import LeaseConfig
from daemon.standby import hooks as hooks_module
from daemon.standby.hooks import DRAIN_GRACE, HookRunner

PY = sys.executable


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def hook_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lifeline.hooks"]


def event(record: logging.LogRecord) -> str:
    return record.__dict__.get("event", "")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {"event": event(record), **record.__dict__.get("fields", {})}


async def drain(runner: HookRunner, expected_runs: int, limit: float = 20.0) -> None:
    """Wait (real time) until ``expected_runs`` hooks have finished."""
    with trio.fail_after(limit):
        while runner.run_count < expected_runs or runner.running is not None or runner.details()["queued"]:
            await trio.sleep(0.01)


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped does not count: PID 1 here may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[str, Path]:
    """A hook that logs 'start ROLE' / 'end ROLE' around an optional sleep."""
    log = tmp_path / "order.log"
    path = script(tmp_path, "record.py", """
        import os, sys, time
        role = os.environ["LIFELINE_ROLE"]
        with open(sys.argv[1], "a") as f:
            f.write(f"start {role}\\n")
        time.sleep(float(sys.argv[2]))
        with open(sys.argv[1], "a") as f:
            f.write(f"end {role}\\n")
        print(f"{role} done")
    """)
    return path, log


# --------------------------------------------------------------------------- real processes


async def test_hooks_run_one_at_a_time_in_submission_order(
        recorder: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    rec, log = recorder
    runner = HookRunner({"primary": [PY, rec, str(log), "0.5"], "fenced": [PY, rec, str(log), "0"],
                         "standby": [PY, rec, str(log), "0"]}, timeout=10, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 7, "candidate")   # slow
        runner.submit("fenced", 7, "primary")
        runner.submit("standby", 7, "fenced")
        await drain(runner, 3)
        nursery.cancel_scope.cancel()
    assert log.read_text().splitlines() == [
        "start primary", "end primary", "start fenced", "end fenced", "start standby", "end standby"]
    done = [fields(r) for r in hook_records(caplog) if event(r) == "hook.done"]
    assert [(d["role"], d["epoch"], d["status"]) for d in done] == [
        ("primary", 7, 0), ("fenced", 7, 0), ("standby", 7, 0)]
    assert done[0]["duration_ms"] >= 500 and done[0]["output"] == "primary done"
    assert runner.details() | {"last": None} == {
        "configured": ["fenced", "primary", "standby"], "queued": 0, "running": None,
        "run": 3, "failed": 0, "timed_out": 0, "last": None}


async def test_environment_names_role_epoch_previous_and_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    out = tmp_path / "env.json"
    dump = script(tmp_path, "dump.py", """
        import json, os, sys
        env = {k: v for k, v in os.environ.items() if k.startswith("LIFELINE_")}
        env["cwd"] = os.getcwd()
        env["PATH_kept"] = "PATH" in os.environ
        env["systemd_vars"] = [k for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC") if k in os.environ]
        json.dump(env, open(sys.argv[1], "w"))
    """)
    runner = HookRunner({"fenced": [PY, dump, str(out)]}, timeout=10, node="tokyo-b")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("fenced", 42, "primary")
        await drain(runner, 1)
        nursery.cancel_scope.cancel()
    assert json.loads(out.read_text()) == {
        "LIFELINE_ROLE": "fenced", "LIFELINE_EPOCH": "42", "LIFELINE_PREVIOUS_ROLE": "primary",
        "LIFELINE_NODE": "tokyo-b", "cwd": "/", "PATH_kept": True, "systemd_vars": []}


async def test_timeout_kills_the_hook_and_its_child_then_the_next_runs(
        tmp_path: Path, recorder: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    rec, log = recorder
    pids = tmp_path / "pids"
    hang = script(tmp_path, "hang.py", """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(sys.argv[1], "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        print("stuck waiting for the engine", flush=True)
        time.sleep(60)
    """)
    runner = HookRunner({"primary": [PY, hang, str(pids)], "fenced": [PY, rec, str(log), "0"]},
                        timeout=1.0, node="a")
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 3, "candidate")
        runner.submit("fenced", 3, "primary")
        await drain(runner, 2)
        nursery.cancel_scope.cancel()
    assert time.monotonic() - started < 10
    hook_pid, child_pid = (int(p) for p in pids.read_text().split())
    assert not alive(hook_pid) and not alive(child_pid)
    assert log.read_text().splitlines() == ["start fenced", "end fenced"]
    assert runner.timed_out == 1 and runner.failed == 0 and runner.run_count == 2
    (timeout,) = [fields(r) for r in hook_records(caplog) if event(r) == "hook.timeout"]
    assert timeout["role"] == "primary" and timeout["status"] == "timeout"
    assert timeout["output"] == "stuck waiting for the engine"
    assert 1000 <= timeout["duration_ms"] < 5000


async def test_missing_program_is_logged_and_the_next_runs(
        tmp_path: Path, recorder: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    rec, log = recorder
    runner = HookRunner({"primary": [str(tmp_path / "no-such-hook")], "fenced": [PY, rec, str(log), "0"]},
                        timeout=10, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 1, "candidate")
        runner.submit("fenced", 1, "primary")
        await drain(runner, 2)
        nursery.cancel_scope.cancel()
    assert log.read_text().splitlines() == ["start fenced", "end fenced"]
    (failed,) = [fields(r) for r in hook_records(caplog) if event(r) == "hook.failed"]
    assert failed["status"] == "not-started" and failed["program"] == str(tmp_path / "no-such-hook")
    assert "No such file" in failed["error"]
    assert runner.failed == 1 and runner.details()["last"]["role"] == "fenced"


async def test_failing_hook_logs_status_and_the_tail_of_its_output(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    noisy = script(tmp_path, "noisy.py", """
        import sys
        for i in range(20):
            print(f"line {i}")
        print("x" * 500)
        print("fatal: engine refused", file=sys.stderr)
        sys.exit(3)
    """)
    runner = HookRunner({"standby": [PY, noisy]}, timeout=10, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("standby", 5, "waiting")
        await drain(runner, 1)
        nursery.cancel_scope.cancel()
    (failed,) = [fields(r) for r in hook_records(caplog) if event(r) == "hook.failed"]
    assert failed["status"] == 3
    assert failed["output"].splitlines() == ["line 17", "line 18", "line 19", "x" * 200 + "...",
                                             "fatal: engine refused"]
    assert runner.failed == 1


async def test_nothing_goes_through_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "X"
    argv_out = tmp_path / "argv.json"
    echo = script(tmp_path, "argv.py", """
        import json, sys
        json.dump(sys.argv[2:], open(sys.argv[1], "w"))
    """)
    runner = HookRunner({"primary": [PY, echo, str(argv_out), f"; touch {marker}", "$(touch X)"],
                         "fenced": [f"/bin/true; touch {marker}"]}, timeout=10, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 1, "candidate")
        runner.submit("fenced", 1, "primary")
        await drain(runner, 2)
        nursery.cancel_scope.cancel()
    assert json.loads(argv_out.read_text()) == [f"; touch {marker}", "$(touch X)"]
    assert not marker.exists() and not Path("/X").exists()
    assert runner.failed == 1  # "/bin/true; touch X" is no program


async def test_a_child_left_holding_stdout_does_not_stall_the_queue(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    spawn = script(tmp_path, "spawn.py", """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        open(sys.argv[1], "w").write(str(child.pid))
    """)
    runner = HookRunner({"primary": [PY, spawn, str(pid_file)]}, timeout=5, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 1, "candidate")
        await drain(runner, 1)
        nursery.cancel_scope.cancel()
    child = int(pid_file.read_text())
    try:
        assert runner.timed_out == 0 and runner.details()["last"]["status"] == 0
        assert runner.details()["last"]["duration_ms"] < 3000
        assert alive(child)  # left alone: it outlived a hook that exited normally
    finally:
        os.kill(child, 9)


async def test_roles_without_hooks_run_nothing() -> None:
    runner = HookRunner({"primary": [], "fenced": ["/bin/true"]}, timeout=1, node="a")
    for role in ("primary", "candidate", "waiting", "standby"):
        runner.submit(role, 1, "x")
    assert runner.details()["queued"] == 0 and runner.details()["configured"] == ["fenced"]


def test_unknown_roles_are_refused() -> None:
    with pytest.raises(ValueError, match="candidate"):
        HookRunner({"candidate": ["/bin/true"]}, timeout=1, node="a")


def test_from_lease_config() -> None:
    lease = LeaseConfig(backend="witness", witness="w:1", on_primary=["/usr/local/bin/promote", "--fast"],
                        on_standby=["/usr/local/bin/follow"])
    runner = HookRunner.from_lease_config(lease, node="b")
    assert runner.hooks == {"primary": ("/usr/local/bin/promote", "--fast"), "standby": ("/usr/local/bin/follow",)}
    assert runner.timeout == 10.0 and runner.node == "b"


# --------------------------------------------------------------------------- timing under a MockClock


class FakeProcess:
    def __init__(self) -> None:
        self.pid = -1
        self.returncode: int | None = None
        self._exited = trio.Event()
        self._out, self.stdout = trio.testing.memory_stream_one_way_pair()

    def exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


class FakeRunner(HookRunner):
    """argv = [name, seconds, exit code, close stdout on exit ("close"/"keep")]."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spans: list[tuple[str, float, float | None]] = []
        self._run_process = self._fake_run_process  # type: ignore[assignment]

    async def _fake_run_process(self, argv: list[str], *, task_status: Any, env: dict[str, str],
                                **options: Any) -> None:
        assert options["start_new_session"] and options["stdout"] is not None
        name, seconds, code, stdout = argv
        proc = FakeProcess()
        start = trio.current_time()
        task_status.started(proc)
        try:
            await proc._out.send_all(f"{name} output\n".encode())
            await trio.sleep(float(seconds))
        except trio.Cancelled:
            proc.exit(-9)  # what deliver_cancel's SIGKILL does to a real one
            self.spans.append((name, start, None))
            raise
        proc.exit(int(code))
        self.spans.append((name, start, trio.current_time()))
        if stdout == "close":
            await proc._out.aclose()


async def test_timeout_is_exact_and_the_next_hook_starts_right_after(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    runner = FakeRunner({"primary": ["slow", "100", "0", "close"], "fenced": ["quick", "1", "0", "close"]},
                        timeout=10, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 1, "candidate")
        runner.submit("fenced", 1, "primary")
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert runner.spans == [("slow", 0, None), ("quick", 10, 11)]
    timeout, done = [fields(r) for r in hook_records(caplog)]
    assert timeout["event"] == "hook.timeout" and timeout["duration_ms"] == 10000
    assert timeout["output"] == "slow output"
    assert done["event"] == "hook.done" and done["duration_ms"] == 1000


async def test_a_backlog_is_kept_in_order_and_warned_about(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    runner = FakeRunner({"primary": ["p", "5", "0", "close"], "fenced": ["f", "5", "0", "close"]},
                        timeout=10, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        for epoch in range(1, 8):
            runner.submit("primary", epoch, "candidate")
            runner.submit("fenced", epoch, "primary")
        await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    assert [name for name, _, _ in runner.spans] == ["p", "f"] * 7
    assert [start for _, start, _ in runner.spans] == [5.0 * i for i in range(14)]
    backlog = [fields(r)["queued"] for r in hook_records(caplog) if event(r) == "hook.backlog"]
    # 14 submitted before the runner took the first: queued reached 11 to 14.
    assert backlog == [11, 12, 13, 14]
    assert runner.run_count == 14 and runner.failed == 0


async def test_an_exited_hook_whose_stdout_stays_open_moves_on_after_the_grace(
        autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner({"primary": ["p", "1", "0", "keep"], "fenced": ["f", "1", "2", "close"]},
                        timeout=10, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 1, "candidate")
        runner.submit("fenced", 1, "primary")
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert runner.spans == [("p", 0, 1), ("f", 1 + DRAIN_GRACE, 2 + DRAIN_GRACE)]
    assert runner.timed_out == 0 and runner.failed == 1
    assert runner.details()["last"] == {"role": "fenced", "epoch": 1, "status": 2, "duration_ms": 1000}


async def test_shutdown_mid_hook_abandons_the_queue_loudly(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lifeline")
    runner = FakeRunner({"primary": ["p", "100", "0", "close"], "fenced": ["f", "1", "0", "close"]},
                        timeout=1000, node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit("primary", 1, "candidate")
        runner.submit("fenced", 1, "primary")
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert runner.spans == [("p", 0, None)]
    (abandoned,) = [fields(r) for r in hook_records(caplog) if event(r) == "hook.abandoned"]
    assert abandoned["queued"] == 1 and abandoned["running"] == "primary"


def test_module_has_no_shell_option() -> None:
    source = Path(hooks_module.__file__).read_text()
    assert "shell=" not in source
