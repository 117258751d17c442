"""Operator hooks run on role changes (``lease.on_primary`` / ``on_fenced`` / ``on_standby``).

Hooks run ONE AT A TIME, IN THE ORDER the roles changed: keepalived's notify scripts ran
concurrently and a fast "backup" script could finish before a slow "master" one, leaving
the host configured for the wrong role (keepalived grew ``notify_fifo`` to fix it). A
role change therefore only queues its hook (:meth:`HookRunner.submit` never blocks and
never drops one); :meth:`HookRunner.run` works through the queue.

A hook is an argv, never a shell command line: config values cannot inject commands.
Each hook runs in its own session so that on timeout the whole process group (the hook
and anything it started) is killed; a child that detaches with its own ``setsid`` is
beyond reach. Children a hook leaves behind after exiting normally are not touched.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from daemon.core.log import get_logger

log = get_logger("hooks")

#: The roles that run a hook, and the LeaseConfig option naming it.
HOOK_OPTIONS = {"primary": "on_primary", "fenced": "on_fenced", "standby": "on_standby"}

BACKLOG_WARNING = 10        # queued hooks beyond this are logged: roles flapping faster than hooks run
OUTPUT_KEEP = 4096          # bytes of a hook's output kept (its tail)
OUTPUT_LINES = 5            # lines of that tail logged
OUTPUT_LINE_CHARS = 200
DRAIN_GRACE = 0.2           # after a hook exits, how long to wait for its output to end
_SERVICE_ONLY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                               "LISTEN_FDNAMES"})


@dataclass(frozen=True)
class _Job:
    role: str
    epoch: int
    previous: str
    argv: tuple[str, ...]


class HookRunner:
    def __init__(self, hooks: Mapping[str, Sequence[str]], timeout: float, *, node: str) -> None:
        unknown = set(hooks) - set(HOOK_OPTIONS)
        if unknown:
            raise ValueError(f"hooks for unknown roles {sorted(unknown)}; known: {sorted(HOOK_OPTIONS)}")
        self.hooks = {role: tuple(argv) for role, argv in hooks.items() if argv}
        self.timeout = timeout
        self.node = node
        self._queue: collections.deque[_Job] = collections.deque()
        self._wakeup = trio.Event()
        self.running: _Job | None = None
        self.run_count = 0
        self.failed = 0
        self.timed_out = 0
        self.last: dict[str, Any] | None = None

    @classmethod
    def from_lease_config(cls, lease: Any, *, node: str) -> HookRunner:
        """From a :class:`daemon.config.LeaseConfig`."""
        return cls({role: getattr(lease, option) for role, option in HOOK_OPTIONS.items()},
                   float(lease.hook_timeout), node=node)

    def submit(self, role: str, epoch: int, previous: str) -> None:
        """Queue the hook for a change to ``role`` (none configured: nothing). Call from
        the trio thread; never blocks."""
        argv = self.hooks.get(role)
        if argv is None:
            return
        self._queue.append(_Job(role, epoch, previous, argv))
        self._wakeup.set()
        if len(self._queue) > BACKLOG_WARNING:
            log.warning("hook.backlog", queued=len(self._queue), role=role, epoch=epoch,
                        running=None if self.running is None else self.running.role)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                while self._queue:
                    self.running = self._queue.popleft()
                    try:
                        await self._run_one(self.running)
                    except Exception:  # a bug here must not stop later hooks
                        self.failed += 1
                        log.exception("hook.error", role=self.running.role, epoch=self.running.epoch)
                    self.running = None
                self._wakeup = trio.Event()
                await self._wakeup.wait()
        finally:
            if self._queue or self.running is not None:
                log.warning("hook.abandoned", queued=len(self._queue),
                            running=None if self.running is None else self.running.role)

    def details(self) -> dict[str, Any]:
        return {"configured": sorted(self.hooks), "queued": len(self._queue),
                "running": None if self.running is None else f"{self.running.role} epoch={self.running.epoch}",
                "run": self.run_count, "failed": self.failed, "timed_out": self.timed_out, "last": self.last}

    # -- one hook

    async def _run_one(self, job: _Job) -> None:
        # systemd's per-service variables describe the daemon, not the hook: a hook (or
        # a program it starts) that sd_notify()s would be talking about lifeline's unit.
        env = {k: v for k, v in os.environ.items() if k not in _SERVICE_ONLY_ENV}
        env.update(LIFELINE_ROLE=job.role, LIFELINE_EPOCH=str(job.epoch),
                   LIFELINE_PREVIOUS_ROLE=job.previous, LIFELINE_NODE=self.node)
        tail = bytearray()
        proc: trio.Process | None = None
        exited = False
        start_error: OSError | None = None
        self.run_count += 1
        started_at = trio.current_time()
        with trio.move_on_after(self.timeout) as deadline:
            async with trio.open_nursery() as nursery:
                try:
                    # (the ignore: trio.run_process takes the argv list; partial's inference picks the str overload)
                    proc = await nursery.start(partial(
                        self._run_process, list(job.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # type: ignore[arg-type]
                        stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True, check=False,
                        deliver_cancel=_kill_group))
                except OSError as exc:  # missing program, not executable, ...
                    start_error = exc
                else:
                    assert proc.stdout is not None
                    reader_done = trio.Event()
                    nursery.start_soon(_keep_tail, proc.stdout, tail, reader_done)
                    await proc.wait()
                    exited = True
                    # A child it left behind may hold the pipe open: take what is there, move on.
                    with trio.move_on_after(DRAIN_GRACE):
                        await reader_done.wait()
                    nursery.cancel_scope.cancel()
        duration_ms = round((trio.current_time() - started_at) * 1000)
        fields: dict[str, Any] = {"role": job.role, "epoch": job.epoch, "previous": job.previous,
                                  "program": job.argv[0], "duration_ms": duration_ms}
        if start_error is not None:
            self.failed += 1
            status: Any = "not-started"
            log.error("hook.failed", **fields, status=status, error=f"{start_error.strerror or start_error}")
        elif deadline.cancelled_caught and not exited:
            self.timed_out += 1
            status = "timeout"
            log.warning("hook.timeout", **fields, status=status, timeout_s=self.timeout, output=_last_lines(tail))
        else:
            assert proc is not None and proc.returncode is not None
            code = proc.returncode
            status = code if code >= 0 else _signal_name(-code)
            if code == 0:
                log.info("hook.done", **fields, status=status, output=_last_lines(tail))
            else:
                self.failed += 1
                log.warning("hook.failed", **fields, status=status, output=_last_lines(tail))
        self.last = {"role": job.role, "epoch": job.epoch, "status": status, "duration_ms": duration_ms}

    # A seam for tests that drive the timing logic under a MockClock without processes.
    _run_process = staticmethod(trio.run_process)


async def _kill_group(proc: trio.Process) -> None:
    """Timeout or shutdown: the hook and everything in its session, at once. Hooks must
    be safe to interrupt anyway (a role can change again mid-hook)."""
    if proc.returncode is not None:  # reaped: its pid (and group id) may be reused
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


async def _keep_tail(stream: trio.abc.ReceiveStream, tail: bytearray, done: trio.Event) -> None:
    async with stream:
        async for chunk in stream:
            tail += chunk
            del tail[:-OUTPUT_KEEP]
    done.set()


def _last_lines(tail: bytearray) -> str | None:
    lines = tail.decode("utf-8", "replace").rstrip().splitlines()[-OUTPUT_LINES:]
    if not lines:
        return None
    return "\n".join(line if len(line) <= OUTPUT_LINE_CHARS else line[:OUTPUT_LINE_CHARS] + "..."
                     for line in lines)
