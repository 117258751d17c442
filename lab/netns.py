"""Network-namespace plumbing for the lab: thin, checked wrappers around ``ip`` and ``nft``.

Everything here shells out to iproute2 and nftables with an argv list (never a shell) and
turns a refusal into a :class:`LabError` that names the command and quotes its stderr, so
a drill that cannot build its world says exactly which step failed and why.

:func:`socket_in_netns` is the one piece done in-process: it opens a socket *inside*
another namespace by moving only the calling thread there with ``setns(2)`` and back. A
socket keeps the namespace it was created in, so the test process can probe the lab's
paths without spawning a helper per datagram.

Links are created directly in their namespaces (``ip link add ... netns A type veth peer
... netns B``), never in the host's own namespace, so deleting the lab's namespaces
removes every link it made; nothing of the lab is left on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

#: setns(2) nstype for a network namespace.
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
#: How long one ``ip``/``nft`` invocation may take before the lab gives up on it.
COMMAND_TIMEOUT = 20.0


class LabError(Exception):
    """The lab could not build, change or remove a piece of its world."""


def run(argv: Sequence[str], check: bool = True, *, input: str | None = None,
        timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; with ``check``, a non-zero exit raises :class:`LabError` with the
    command line and its stderr."""
    command = " ".join(argv)
    try:
        result = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                                stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise LabError(f"{command}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{command}: no answer within {timeout:g} s") from None
    if check and result.returncode != 0:
        reason = result.stderr.strip() or result.stdout.strip() or "no message"
        raise LabError(f"{command}: exit {result.returncode}: {reason}")
    return result


# --------------------------------------------------------------------------- namespaces


def add_netns(name: str) -> None:
    run(["ip", "netns", "add", name])


def del_netns(name: str) -> bool:
    """Delete ``name``; False if it did not exist (deleting is idempotent)."""
    if name not in list_netns():
        return False
    run(["ip", "netns", "del", name])
    return True


def list_netns() -> list[str]:
    """Every named namespace (``ip netns list`` prints "NAME (id: N)" or just "NAME")."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_namespaces(prefix: str = "ll-") -> list[str]:
    """The existing namespaces whose name starts with ``prefix``, sorted."""
    return sorted(name for name in list_netns() if name.startswith(prefix))


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return sorted(int(p) for p in out.split() if p.isdigit())


def kill_netns_pids(ns: str, timeout: float = 3.0) -> list[int]:
    """SIGTERM every process inside ``ns``, SIGKILL what is left after ``timeout``;
    returns the pids that were signalled."""
    pids = netns_pids(ns)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (left := netns_pids(ns)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while netns_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- links, addresses, routes


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip -n NS ARGS...``."""
    return run(["ip", "-n", ns, *args], check=check)


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair ``ns_a/if_a`` ↔ ``ns_b/if_b``, created inside the two namespaces (never
    in the host's) and brought up."""
    run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
    link_set(ns_a, if_a, up=True)
    link_set(ns_b, if_b, up=True)


def link_set(ns: str, ifname: str, *, up: bool) -> None:
    ip(ns, "link", "set", ifname, "up" if up else "down")


def addr(ns: str, ifname: str, cidr: str) -> None:
    """Add ``cidr`` (e.g. ``10.71.1.2/24``) to ``ifname`` and bring the link up."""
    ip(ns, "addr", "replace", cidr, "dev", ifname)
    link_set(ns, ifname, up=True)


def route(ns: str, dst: str, *, via: str | None = None, dev: str | None = None, table: int | None = None,
          action: str = "replace") -> None:
    """``ip -n NS route ACTION DST [via VIA] [dev DEV] [table T]``."""
    args = ["route", action, dst]
    if via:
        args += ["via", via]
    if dev:
        args += ["dev", dev]
    if table is not None:
        args += ["table", str(table)]
    ip(ns, *args)


def rule(ns: str, action: str, *, source: str, table: int, priority: int, check: bool = True) -> None:
    """``ip -n NS rule ACTION from SOURCE lookup TABLE priority PRIORITY``."""
    ip(ns, "rule", action, "from", source, "lookup", str(table), "priority", str(priority), check=check)


def sysctl(ns: str, key: str, value: str | int) -> None:
    run(exec_argv(ns, ["sysctl", "-qw", f"{key}={value}"]))


def nft(ns: str, script: str) -> None:
    """Feed an nftables script to ``nft -f -`` inside ``ns`` (one transaction: all or nothing)."""
    run(exec_argv(ns, ["nft", "-f", "-"]), input=script)


# --------------------------------------------------------------------------- sockets in another namespace


_libc: ctypes.CDLL | None = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move the *calling thread* (only) into namespace ``ns`` for the block.

    The thread returns to its own namespace even if the block raises; if it cannot, this
    thread would keep creating sockets in the wrong place, so that is a hard error.
    """
    try:
        target = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"no network namespace {ns!r} (no {NETNS_RUN_DIR / ns})") from None
    try:
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target, CLONE_NEWNET)
            except OSError as exc:
                raise LabError(f"cannot enter network namespace {ns!r}: {exc.strerror}") from None
            try:
                yield
            finally:
                _setns(own, CLONE_NEWNET)
        finally:
            os.close(own)
    finally:
        os.close(target)


def socket_in_netns(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
                    proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ``ns`` (it keeps that namespace for its whole life,
    whatever thread later uses it)."""
    with in_netns(ns):
        return socket.socket(family, type, proto)
