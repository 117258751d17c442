"""The lab's world: an edge host with two uplinks, two routers and a venue, on one machine.

::

    ll-edge (lifeline run)        ll-rfib (terrestrial)         ll-venue
      fibre0 10.71.1.2/24 ─── edge0 10.71.1.1/24
                                  core0 10.73.1.1/24 ─── fib0 10.73.1.2/24
                                                         lo   10.75.0.1/32, 10.75.0.2/32
                                  core0 10.74.1.1/24 ─── sat0 10.74.1.2/24   (UDP echo on :7)
      star0  10.72.1.2/24 ─── edge0 10.72.1.1/24
                              ll-rsat (satellite)

The edge has no default route of its own: the daemon under test installs it. The venue's
echo responder (:mod:`lab.echo`) delays its replies by the sender's network, since
this kernel has no netem: 1-3 ms for the fibre's 10.71/16, 25-60 ms for Starlink's 10.72/16.

Impairments act on the routers, upstream of the edge, so the edge's own links stay up and
only the probes can notice (like a fibre cut in the street). Each router has an nftables
table ``inet lifeline_lab`` (every lab namespace has one) whose ``forward`` chain holds at most one impairment at a time:
:meth:`LabWorld.cut` (drop everything), :meth:`LabWorld.loss` (drop N % at random),
:meth:`LabWorld.restore` (flush). :meth:`LabWorld.link_down` / :meth:`LabWorld.link_up`
are the other way to cut: the router's side of the veth goes down, so the edge sees
NO-CARRIER on its interface.

Every name starts with :data:`PREFIX` and every link lives inside a lab namespace, so
:meth:`LabWorld.down` removes exactly the lab and nothing else, also after a crash. The
names being fixed, one lab exists at a time: :meth:`LabWorld.up` takes :class:`LabLock`
and holds it until :meth:`LabWorld.down`, so a drill and a test run take turns.

Without root (or without ``ip``/``nft``) :class:`LoopbackWorld` stands in; see its
docstring for what it can and cannot do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from daemon.config import dump_toml
from lab import netns
from lab.lifecycle import default_lab_config
from lab.netns import LabError, socket_in_netns  # noqa: F401  (re-exported for the drills)
from lab.procs import DaemonProcess

PREFIX = "ll-"
EDGE = f"{PREFIX}edge"
RFIB = f"{PREFIX}rfib"
RSAT = f"{PREFIX}rsat"
VENUE = f"{PREFIX}venue"
NAMESPACES = (EDGE, RFIB, RSAT, VENUE)
NFT_TABLE = "lifeline_lab"
VENUE_NET = "10.75.0.0/24"
VENUE_TARGETS: tuple[tuple[str, int], ...] = (("10.75.0.1", 7), ("10.75.0.2", 7))
#: The project root: the echo responder runs as ``python -m lab.echo`` from here.
ROOT = Path(__file__).resolve().parents[1]
ECHO_READY_TIMEOUT = 15.0
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "lifeline-lab"
#: Held by the process using the namespace world, from ``up()`` to ``down()``.
LOCK_PATH = Path("/run/lifeline-lab.lock")
LOCK_TIMEOUT = 120.0


@dataclass(frozen=True)
class Link:
    """One uplink of the edge and the router behind it."""

    name: str
    kind: str
    priority: int
    edge_if: str
    source: str  # the edge's address on edge_if
    gateway: str  # the router's address on its edge0
    router: str
    core: str  # the router's address towards the venue (core0)
    venue_if: str
    venue_addr: str  # the venue's address on venue_if
    edge_net: str  # the edge side's network, routed back by the venue; echo delays key on it
    delay: str
    #: Table and rule priority of the temporary routes :meth:`LabWorld.check_paths` adds.
    check_table: int


LINKS: dict[str, Link] = {
    "fibre": Link("fibre", "terrestrial", 10, "fibre0", "10.71.1.2", "10.71.1.1", RFIB,
                  "10.73.1.1", "fib0", "10.73.1.2", "10.71.0.0/16", "1ms..3ms", 71),
    "starlink": Link("starlink", "starlink", 20, "star0", "10.72.1.2", "10.72.1.1", RSAT,
                     "10.74.1.1", "sat0", "10.74.1.2", "10.72.0.0/16", "25ms..60ms", 72),
}


# --------------------------------------------------------------------------- echo round trips


@dataclass
class EchoStats:
    """Datagrams sent to an echo target and the round-trip times of those that came back."""

    sent: int
    rtts: list[float] = field(default_factory=list)  # seconds

    @property
    def received(self) -> int:
        return len(self.rtts)

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 0.0

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.rtts) * 1000 if self.rtts else None

    def __str__(self) -> str:
        rtt = f", median rtt {self.median_ms:.1f} ms" if self.rtts else ""
        return f"{self.received}/{self.sent} echoed ({self.loss:.0%} lost{rtt})"


def echo_round_trips(sock: socket.socket, target: tuple[str, int], count: int = 20, *,
                     interval: float = 0.002, wait: float = 0.3) -> EchoStats:
    """Send ``count`` numbered datagrams ``interval`` apart on ``sock`` to ``target`` and
    collect the echoes until ``wait`` after the last one left (late ones count as lost)."""
    nonce = os.urandom(4).hex().encode()
    sent_at: dict[int, float] = {}
    stats = EchoStats(sent=count)
    sock.setblocking(False)
    seq = 0
    next_send = last_sent = time.monotonic()
    while True:
        now = time.monotonic()
        if seq < count and now >= next_send:
            sent_at[seq] = last_sent = now
            try:
                sock.sendto(b"lifeline-lab %s %d" % (nonce, seq), target)
            except OSError:
                pass  # unreachable right now: counts as lost
            seq += 1
            next_send += interval
            continue
        deadline = next_send if seq < count else last_sent + wait
        if seq >= count and now >= deadline:
            return stats
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - now))
        while ready:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            parts = data.split()
            if len(parts) == 3 and parts[1] == nonce and parts[2].isdigit():
                sent = sent_at.pop(int(parts[2]), None)
                if sent is not None:
                    stats.rtts.append(time.monotonic() - sent)


# --------------------------------------------------------------------------- echo responder process


def start_echo(argv: Sequence[str], log_path: Path, timeout: float = ECHO_READY_TIMEOUT
               ) -> tuple[subprocess.Popen[bytes], str]:
    """Start an echo responder (``argv`` ends in ``-m lab.echo ...``), its output to
    ``log_path``; return it and its ``echo.ready`` line once it has bound every socket."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with open(log_path, "wb") as log:
        # A session of its own: `lifeline lab up` returns and the responder stays, and a
        # Ctrl-C at the operator's terminal does not reach it.
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT,
                                env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if "echo.ready" in line:
                return proc, line.strip()
        if proc.poll() is not None:
            raise LabError(f"echo responder exited with {proc.returncode} before it was ready: "
                           f"{' '.join(argv)}\n{text[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise LabError(f"echo responder not ready within {timeout:g} s: {' '.join(argv)}\n"
                   f"{log_path.read_text(errors='replace')[-2000:]}")


def _is_echo(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"lab.echo" in cmdline


def _stop_pid(pid: int, timeout: float = 3.0) -> None:
    """SIGTERM ``pid`` (if it is still an echo responder), SIGKILL after ``timeout``."""
    if not _is_echo(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_echo(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.02)
    if _is_echo(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own exited child (a zombie still shows its cmdline)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------- reports


@dataclass
class UpReport:
    """What :meth:`up` built, for the operator."""

    mode: str
    namespaces: list[str]
    addresses: list[str]
    echo_pids: list[int]
    echo_log: Path
    paths: dict[str, EchoStats]

    def lines(self) -> list[str]:
        out = [f"mode: {self.mode}"]
        if self.namespaces:
            out.append("namespaces: " + ", ".join(self.namespaces))
        out += ["  " + a for a in self.addresses]
        out.append(f"echo responder: pid {', '.join(map(str, self.echo_pids))} (log {self.echo_log})")
        out += [f"path {name}: {stats}" for name, stats in self.paths.items()]
        return out


@dataclass
class WorldStatus:
    mode: str
    namespaces: list[str]
    echo_pids: list[int]
    default_route: str | None

    @property
    def exists(self) -> bool:
        return bool(self.namespaces or self.echo_pids)

    def lines(self) -> list[str]:
        return [
            f"mode: {self.mode}",
            "lab namespaces: " + (", ".join(self.namespaces) or "none"),
            "echo responder: " + (f"running, pid {', '.join(map(str, self.echo_pids))}"
                                  if self.echo_pids else "not running"),
            "edge default route: " + (self.default_route or "none"),
        ]


def _uplink_table(link: Link | LoopbackLink, targets: Sequence[tuple[str, int]], interface: str) -> dict[str, Any]:
    return {"interface": interface, "source": link.source, "gateway": link.gateway, "kind": link.kind,
            "priority": link.priority, "targets": [f"udp://{h}:{p}" for h, p in targets]}


def _edge_base_config(workdir: Path, backend: str, hold_down: str, min_dwell: str) -> dict[str, Any]:
    config = default_lab_config(Path(workdir), node="lab-edge")
    config["failover"] = {"route_backend": backend, "hold_down": hold_down, "min_dwell": min_dwell}
    return config


# --------------------------------------------------------------------------- one lab at a time


class LabLock:
    """An exclusive ``flock`` on :data:`LOCK_PATH`: the lab's names are fixed, so two users
    (a drill and a test run, say) would otherwise tear down each other's world. The
    kernel drops the lock when its holder exits, so a crash never leaves it taken."""

    def __init__(self, path: Path = LOCK_PATH) -> None:
        self.path = path
        self._handle: Any = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, timeout: float = LOCK_TIMEOUT) -> None:
        if self._handle is not None:
            return
        handle = open(self.path, "a+")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    handle.close()
                    raise LabError(f"another lab is in use (pid {holder} holds {self.path}); "
                                   f"waited {timeout:g} s") from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> LabLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- the daemon under test


def edge_config(workdir: Path, *, backend: str = "netlink", hold_down: str = "30s",
                min_dwell: str = "10s") -> dict[str, Any]:
    """The config of the edge's ``lifeline run`` in the namespace world: both uplinks
    probing both venue targets, every file under ``workdir``."""
    config = _edge_base_config(workdir, backend, hold_down, min_dwell)
    config["uplinks"] = {name: _uplink_table(link, VENUE_TARGETS, link.edge_if) for name, link in LINKS.items()}
    return config


def start_edge_daemon(workdir: Path, config: dict[str, Any]) -> DaemonProcess:
    """Write ``config`` to ``workdir/lifeline.toml`` and start ``lifeline run`` inside
    ll-edge the way systemd would (notify socket and watchdog; the notify socket is a
    path, reachable from the namespace because mounts are shared). The caller waits for
    READY (:meth:`DaemonProcess.wait_ready`) and stops it."""
    return _start_daemon(workdir, config, netns.exec_argv(EDGE, [sys.executable, "-m", "daemon.cli"]))


def _start_daemon(workdir: Path, config: dict[str, Any], argv_prefix: list[str] | None = None) -> DaemonProcess:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "lifeline.toml"
    path.write_text(dump_toml(config))
    daemon = (DaemonProcess(config=path, workdir=workdir, argv_prefix=argv_prefix) if argv_prefix
              else DaemonProcess(config=path, workdir=workdir))
    daemon.start()
    return daemon


# --------------------------------------------------------------------------- the namespace world


def netns_unavailable() -> str | None:
    """Why the namespace world cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "not root (network namespaces and nftables need CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    missing = [tool for tool in ("ip", "nft", "sysctl") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (iproute2, nftables, procps)"
    return None


class LabWorld:
    """The namespace world (needs root, ``ip`` and ``nft``)."""

    mode = "netns"

    def __init__(self, workdir: Path | None = None, python: str = sys.executable) -> None:
        self.workdir = Path(workdir) if workdir else DEFAULT_WORKDIR
        self.python = python
        self.echo: subprocess.Popen[bytes] | None = None
        self.lock = LabLock()
        self._check_depth = 0

    # ------------------------------------------------------------------ build and remove

    def up(self, workdir: Path | None = None, *, lock_timeout: float = LOCK_TIMEOUT) -> UpReport:
        """Build the world (removing a left-over one first), start the venue's echo
        responder, check both paths end to end. On failure nothing is left behind.

        Waits up to ``lock_timeout`` for another process's lab to be taken down first,
        and holds :class:`LabLock` until :meth:`down` (or this process's exit).
        """
        if workdir is not None:
            self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire(lock_timeout)
        self.down(release=False)
        try:
            return self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> UpReport:
        for ns in NAMESPACES:
            netns.add_netns(ns)
            netns.link_set(ns, "lo", up=True)
            netns.nft(ns, f"table inet {NFT_TABLE} {{\n"
                          f"  chain forward {{ type filter hook forward priority 0; policy accept; }}\n}}\n")
        addresses = []
        for link in LINKS.values():
            netns.veth(EDGE, link.edge_if, link.router, "edge0")
            netns.veth(link.router, "core0", VENUE, link.venue_if)
            netns.addr(EDGE, link.edge_if, f"{link.source}/24")
            netns.addr(link.router, "edge0", f"{link.gateway}/24")
            netns.addr(link.router, "core0", f"{link.core}/24")
            netns.addr(VENUE, link.venue_if, f"{link.venue_addr}/24")
            netns.sysctl(link.router, "net.ipv4.ip_forward", 1)
            netns.route(link.router, VENUE_NET, via=link.venue_addr)
            netns.route(VENUE, link.edge_net, via=link.core)
            addresses += [f"{EDGE} {link.edge_if} {link.source}/24 <-> {link.router} edge0 {link.gateway}/24",
                          f"{link.router} core0 {link.core}/24 <-> {VENUE} {link.venue_if} {link.venue_addr}/24"]
        for host, _port in VENUE_TARGETS:
            netns.addr(VENUE, "lo", f"{host}/32")
        addresses.append(f"{VENUE} lo " + ", ".join(f"{h}/32" for h, _ in VENUE_TARGETS))

        argv = netns.exec_argv(VENUE, [self.python, "-m", "lab.echo",
                                       *[a for h, p in VENUE_TARGETS for a in ("--listen", f"{h}:{p}")],
                                       *[a for link in LINKS.values()
                                         for a in ("--delay", f"{link.edge_net}={link.delay}")]])
        self.echo, _ = start_echo(argv, self.echo_log)
        (self.workdir / "echo.pid").write_text(f"{self.echo.pid}\n")

        paths = {}
        with self.check_paths():
            for name in LINKS:
                stats = self.echo_through(name, count=5)
                if not stats.received:
                    raise LabError(f"lab built but the venue does not answer through {name}: {stats}")
                paths[name] = stats
        return UpReport(self.mode, list(NAMESPACES), addresses, [self.echo.pid], self.echo_log, paths)

    @property
    def echo_log(self) -> Path:
        return self.workdir / "echo.log"

    def down(self, *, release: bool = True) -> list[str]:
        """Stop every process in the lab's namespaces and delete every namespace named
        ``PREFIX*`` (their veths go with them). Safe when nothing exists, after a crash,
        and with a namespace already gone; returns what it removed. It does not wait for
        :class:`LabLock`: taking a lab down is what an operator asks for explicitly."""
        try:
            return self._remove()
        finally:
            if release:
                self.lock.release()

    def _remove(self) -> list[str]:
        removed: list[str] = []
        present = netns.lab_namespaces(PREFIX) if shutil.which("ip") else []
        # Every process first: a namespace deleted while a process is still inside it
        # only loses its name, and lives on with its links.
        for ns in present:
            for pid in netns.kill_netns_pids(ns):
                removed.append(f"process {pid} in {ns}")
        # A responder whose namespace was deleted by hand lives on in an unnamed one.
        pidfile = self.workdir / "echo.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            if _is_echo(pid):
                _stop_pid(pid)
                removed.append(f"echo responder {pid}")
        pidfile.unlink(missing_ok=True)
        if self.echo is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.echo.wait(timeout=3)
            self.echo = None
        for ns in present:
            if netns.del_netns(ns):
                removed.append(f"namespace {ns}")
        return removed

    # ------------------------------------------------------------------ impairments

    def _link(self, link: str) -> Link:
        try:
            return LINKS[link]
        except KeyError:
            raise LabError(f"no link {link!r}; the lab's links are {', '.join(LINKS)}") from None

    def _forward(self, link: str, rule: str) -> None:
        router = self._link(link).router
        netns.nft(router, f"flush chain inet {NFT_TABLE} forward\n"
                          f"add rule inet {NFT_TABLE} forward {rule}\n")

    def cut(self, link: str) -> None:
        """Cut ``link`` upstream: its router forwards nothing (the edge's link stays up)."""
        self._forward(link, f'counter drop comment "lab cut {link}"')

    def loss(self, link: str, percent: float, direction: str = "both") -> None:
        """Drop ``percent`` % of the packets ``link``'s router forwards, at random.

        The loss applies *per direction*: with ``direction="both"`` a request and its
        reply each pass the router, so an echo round trip is lost with probability
        1 - (1 - p)², e.g. 75 % for ``loss(link, 50)``. ``"up"`` drops only edge → venue,
        ``"down"`` only venue → edge. Replaces any other impairment on the link.
        """
        if not 0 <= percent <= 100:
            raise LabError(f"loss must be between 0 and 100 %, found {percent}")
        match = {"both": "", "up": 'iifname "edge0" ', "down": 'iifname "core0" '}.get(direction)
        if match is None:
            raise LabError(f'loss direction must be "both", "up" or "down", found {direction!r}')
        # Hundredths of a percent, so 0.5 % loss is expressible.
        self._forward(link, f"{match}numgen random mod 10000 < {round(percent * 100)} counter drop "
                            f'comment "lab loss {link} {percent:g}% {direction}"')

    def restore(self, link: str) -> None:
        """Remove the impairment on ``link`` (and bring its router's link up if it was down)."""
        spec = self._link(link)
        netns.nft(spec.router, f"flush chain inet {NFT_TABLE} forward\n")
        if " state UP " not in netns.ip(EDGE, "link", "show", spec.edge_if).stdout:
            self.link_up(link)

    def link_down(self, link: str, timeout: float = 3.0) -> None:
        """The other kind of cut: the router's end of the veth goes down, so the edge
        sees NO-CARRIER on its interface. Returns once the edge's kernel has noticed."""
        spec = self._link(link)
        netns.link_set(spec.router, "edge0", up=False)
        self._wait_edge_state(spec, up=False, timeout=timeout)

    def link_up(self, link: str, timeout: float = 3.0) -> None:
        """Bring the router's end up again; returns once the edge's interface is UP.

        As on a real host, traffic may need up to another second: datagrams sent while the
        link was down left the edge's ARP entry for the gateway INCOMPLETE, and the kernel
        asks again only at its next ARP retry (``retrans_time``, 1 s).
        """
        spec = self._link(link)
        netns.link_set(spec.router, "edge0", up=True)
        self._wait_edge_state(spec, up=True, timeout=timeout)

    def _wait_edge_state(self, spec: Link, *, up: bool, timeout: float) -> None:
        # The carrier flag changes at once, but the operational state (and with it the
        # device's queue: no packet leaves before it is activated) changes when the
        # kernel's link watcher runs, which it may delay up to a second. Waiting for the
        # state makes down-then-up sequences deterministic.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (" state UP " in netns.ip(EDGE, "link", "show", spec.edge_if).stdout) == up:
                return
            time.sleep(0.02)
        raise LabError(f"{EDGE} {spec.edge_if} not {'UP' if up else 'down'} within {timeout:g} s after "
                       f"{spec.router} edge0 went {'up' if up else 'down'}")

    def impairment(self, link: str) -> str:
        """The router's forward chain as nft prints it (for status and reports)."""
        router = self._link(link).router
        out = netns.run(netns.exec_argv(router, ["nft", "list", "chain", "inet", NFT_TABLE, "forward"])).stdout
        rules = [line.strip() for line in out.splitlines()
                 if line.strip() and not line.strip().startswith(("table", "chain", "type", "}"))]
        return "; ".join(rules) or "none"

    # ------------------------------------------------------------------ probing the paths

    @contextlib.contextmanager
    def check_paths(self) -> Iterator[None]:
        """Temporary source routing in the edge so that a socket bound to an uplink's
        address reaches the venue through that uplink before (or without) the daemon:
        ``VENUE_NET via GATEWAY dev IF table T`` and ``from SOURCE lookup T`` (T = 71, 72).
        Removed on exit, so the daemon starts from a clean edge. Re-entrant."""
        self._check_depth += 1
        try:
            if self._check_depth == 1:
                for link in LINKS.values():
                    netns.route(EDGE, VENUE_NET, via=link.gateway, dev=link.edge_if, table=link.check_table)
                    netns.rule(EDGE, "add", source=link.source, table=link.check_table, priority=link.check_table)
            yield
        finally:
            self._check_depth -= 1
            if self._check_depth == 0:
                for link in LINKS.values():
                    netns.rule(EDGE, "del", source=link.source, table=link.check_table,
                               priority=link.check_table, check=False)
                    netns.ip(EDGE, "route", "flush", "table", str(link.check_table), check=False)

    def echo_through(self, link: str, count: int = 20, target: tuple[str, int] = VENUE_TARGETS[0], *,
                     interval: float = 0.002, wait: float = 0.3) -> EchoStats:
        """Echo round trips from the edge through ``link`` (a socket in ll-edge bound to
        the link's source address) to ``target`` on the venue."""
        spec = self._link(link)
        with self.check_paths():
            sock = netns.socket_in_netns(EDGE)
            try:
                sock.bind((spec.source, 0))
                return echo_round_trips(sock, target, count, interval=interval, wait=wait)
            finally:
                sock.close()

    # ------------------------------------------------------------------ the daemon under test

    def edge_config(self, workdir: Path, *, backend: str = "netlink", hold_down: str = "30s",
                    min_dwell: str = "10s") -> dict[str, Any]:
        return edge_config(workdir, backend=backend, hold_down=hold_down, min_dwell=min_dwell)

    def start_edge_daemon(self, workdir: Path, config: dict[str, Any]) -> DaemonProcess:
        return start_edge_daemon(workdir, config)

    def default_route(self) -> str | None:
        """``ip -n ll-edge route show default``, or None if there is none (or no edge)."""
        result = netns.ip(EDGE, "route", "show", "default", check=False)
        text = " ".join(result.stdout.split()) if result.returncode == 0 else ""
        return text or None

    def status(self) -> WorldStatus:
        namespaces = netns.lab_namespaces(PREFIX)
        echo_pids = [p for p in netns.netns_pids(VENUE) if _is_echo(p)] if VENUE in namespaces else []
        route = self.default_route() if EDGE in namespaces else None
        return WorldStatus(self.mode, namespaces, echo_pids, route)


# --------------------------------------------------------------------------- the loopback world


@dataclass(frozen=True)
class LoopbackLink:
    name: str
    kind: str
    priority: int
    source: str
    gateway: str  # never used: the route backend is "none"
    edge_net: str
    delay: str


LOOPBACK_LINKS: dict[str, LoopbackLink] = {
    "fibre": LoopbackLink("fibre", "terrestrial", 10, "127.0.71.2", "127.0.71.1", "127.0.71.0/24", "1ms..3ms"),
    "starlink": LoopbackLink("starlink", "starlink", 20, "127.0.72.2", "127.0.72.1", "127.0.72.0/24",
                             "25ms..60ms"),
}
LOOPBACK_TARGET_HOSTS = ("127.0.75.1", "127.0.75.2")


class LoopbackWorld:
    """The lab without root: everything on ``lo``, route backend ``none``.

    What it does: one echo responder *per uplink* as a plain process, listening on
    127.0.75.1 and 127.0.75.2 (ports chosen by the kernel, kept across restarts), delaying
    its replies like the real paths (fibre 1-3 ms, Starlink 25-60 ms). The uplinks'
    sources are 127.0.71.2 and 127.0.72.2 (any 127/8 address binds on ``lo``), and each
    uplink probes only its own responder, so :meth:`cut` (stop that responder) and
    :meth:`restore` (start it again on the same ports) act on one uplink only.

    What it cannot do: random loss and link down need nftables and veths (root), so
    :meth:`loss`, :meth:`link_down` and :meth:`link_up` raise :class:`LabError`; nothing
    moves a route (backend ``none``: the daemon decides and reports). Both uplinks name
    the interface ``lo``, and their sources are not listed on it, so today's config and
    host checks (one interface per uplink; the source must be an address of the
    interface) refuse :meth:`edge_config`'s output; the daemon needs a loopback
    allowance there before it can run in this world.
    """

    mode = "loopback"

    def __init__(self, workdir: Path | None = None, python: str = sys.executable) -> None:
        self.workdir = Path(workdir) if workdir else DEFAULT_WORKDIR
        self.python = python
        #: Our own children, kept to reap them; the state file is what counts.
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # The state file (``loopback.json`` in the workdir) records each link's responder pid
    # (None while cut) and its addresses, so `lifeline lab down` in another process, or
    # after a crash, finds them.

    @property
    def state_path(self) -> Path:
        return self.workdir / "loopback.json"

    def _state(self) -> dict[str, dict[str, Any]]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return {}

    def _entry(self, state: dict[str, dict[str, Any]], link: str) -> dict[str, Any]:
        if link not in LOOPBACK_LINKS:
            raise LabError(f"no link {link!r}; the lab's links are {', '.join(LOOPBACK_LINKS)}")
        if link not in state:
            raise LabError(f"the loopback lab is not up (no {self.state_path})")
        return state[link]

    def _start(self, name: str, listens: Sequence[tuple[str, int]]) -> dict[str, Any]:
        link = LOOPBACK_LINKS[name]
        argv = [self.python, "-m", "lab.echo",
                *[a for h, p in listens for a in ("--listen", f"{h}:{p}")],
                "--delay", f"{link.edge_net}={link.delay}"]
        proc, ready = start_echo(argv, self.workdir / f"echo-{name}.log")
        self.procs[name] = proc
        listen = ready.split("listen=", 1)[1].split()[0] if "listen=" in ready else ""
        bound = [[h, int(p)] for h, _, p in (item.rpartition(":") for item in listen.split(",") if item)]
        return {"pid": proc.pid, "listen": bound or [list(x) for x in listens]}

    def _stop(self, name: str, pid: Any) -> None:
        if isinstance(pid, int):
            _stop_pid(pid)
        proc = self.procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=3)

    def up(self, workdir: Path | None = None) -> UpReport:
        if workdir is not None:
            self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.down()
        try:
            state: dict[str, dict[str, Any]] = {}
            for name in LOOPBACK_LINKS:
                state[name] = self._start(name, [(host, 0) for host in LOOPBACK_TARGET_HOSTS])
                self.state_path.write_text(json.dumps(state))
            paths = {}
            for name in LOOPBACK_LINKS:
                stats = self.echo_through(name, count=5)
                if not stats.received:
                    raise LabError(f"loopback lab built but {name}'s responder does not answer: {stats}")
                paths[name] = stats
        except BaseException:
            self.down()
            raise
        addresses = [f"{name}: source {link.source} on lo -> "
                     + ", ".join(f"{h}:{p}" for h, p in state[name]["listen"]) + f" (delay {link.delay})"
                     for name, link in LOOPBACK_LINKS.items()]
        return UpReport(self.mode, [], addresses, [e["pid"] for e in state.values()],
                        self.workdir / "echo-*.log", paths)

    def down(self) -> list[str]:
        removed = []
        for name, entry in self._state().items():
            pid = entry.get("pid")
            if isinstance(pid, int) and _is_echo(pid):
                removed.append(f"echo responder {pid} ({name})")
            self._stop(name, pid)
        for name, proc in list(self.procs.items()):
            self._stop(name, proc.pid)
        self.state_path.unlink(missing_ok=True)
        return removed

    def cut(self, link: str) -> None:
        """Stop ``link``'s responder: its probes go unanswered."""
        state = self._state()
        entry = self._entry(state, link)
        self._stop(link, entry.get("pid"))
        entry["pid"] = None
        self.state_path.write_text(json.dumps(state))

    def restore(self, link: str) -> None:
        """Start ``link``'s responder again on the same addresses and ports."""
        state = self._state()
        entry = self._entry(state, link)
        if isinstance(entry.get("pid"), int) and _is_echo(entry["pid"]):
            return
        state[link] = self._start(link, [(h, p) for h, p in entry["listen"]])
        self.state_path.write_text(json.dumps(state))

    def _unsupported(self, what: str) -> LabError:
        return LabError(f"loopback mode cannot {what}: that needs root (nftables, veth links); "
                        "only cut and restore work here")

    def loss(self, link: str, percent: float, direction: str = "both") -> None:
        raise self._unsupported("add random loss")

    def link_down(self, link: str) -> None:
        raise self._unsupported("take a link down")

    def link_up(self, link: str) -> None:
        raise self._unsupported("bring a link up")

    def targets(self, link: str) -> list[tuple[str, int]]:
        """The echo addresses ``link`` probes (its own responder's)."""
        return [(h, p) for h, p in self._entry(self._state(), link)["listen"]]

    def echo_through(self, link: str, count: int = 20, target: tuple[str, int] | None = None, *,
                     interval: float = 0.002, wait: float = 0.3) -> EchoStats:
        targets = self.targets(link)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK_LINKS[link].source, 0))
            return echo_round_trips(sock, target or targets[0], count, interval=interval, wait=wait)

    def edge_config(self, workdir: Path, *, backend: str = "none", hold_down: str = "30s",
                    min_dwell: str = "10s") -> dict[str, Any]:
        config = _edge_base_config(workdir, backend, hold_down, min_dwell)
        config["uplinks"] = {name: _uplink_table(link, self.targets(name), "lo")
                             for name, link in LOOPBACK_LINKS.items()}
        return config

    def start_edge_daemon(self, workdir: Path, config: dict[str, Any]) -> DaemonProcess:
        """``lifeline run`` as a plain child process (there is no namespace to enter)."""
        return _start_daemon(workdir, config)

    def default_route(self) -> str | None:
        return None  # backend "none": nothing is installed

    def status(self) -> WorldStatus:
        pids = [e["pid"] for e in self._state().values() if isinstance(e.get("pid"), int) and _is_echo(e["pid"])]
        return WorldStatus(self.mode, [], pids, None)


def make_world(workdir: Path | None = None, *, loopback: bool = False) -> LabWorld | LoopbackWorld:
    """The namespace world if this host can build it (and ``loopback`` is not asked for),
    else the loopback world."""
    if loopback or netns_unavailable() is not None:
        return LoopbackWorld(workdir)
    return LabWorld(workdir)
