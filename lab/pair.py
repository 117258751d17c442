"""The promotion lab: two edge hosts, a witness and three etcd region hosts on one switch.

::

                              llp-sw (bridge br0)
        ┌──────────┬──────────┬───────┴───┬──────────┬──────────┐
    llp-edge-a  llp-edge-b  llp-witness  llp-etcd1  llp-etcd2  llp-etcd3
    10.76.0.11  10.76.0.12  10.76.0.20   10.76.0.31 10.76.0.32 10.76.0.33
     site 1      site 2                   site 1     site 2     site 3

Every host namespace has one veth ``eth0`` whose other end is a port of the bridge in
``llp-sw``; all sit on :data:`SUBNET`, so every host reaches every other in one hop and
nothing routes. The regional drill's sites (:data:`SITES`): site 1 = edge-a + etcd
member 1, site 2 = edge-b + etcd member 2, site 3 = etcd member 3 alone.

Faults are nftables drops in the hosts' own namespaces (table ``inet lifeline_pair``,
one ``input`` chain and a set ``cut`` of addresses it drops). Cutting host A from host
B adds B to A's set and A to B's, so each side silently loses what the other sends, as
on a real broken path: no refusal, no ``EPERM`` to the sender, just timeouts, and
established TCP connections stall like the new ones. :meth:`PairLab.partition` cuts one
pair (edge-a from the witness, say, while edge-a still reaches edge-b);
:meth:`PairLab.cut_one_way` makes one host drop what another sends (the other way still
works), :meth:`PairLab.arm_one_way` readies such a cut to fire within a millisecond;
:meth:`PairLab.lose_site` cuts every host of a site from every other host, the site's
own included (a whole site gone dark); :meth:`PairLab.heal` empties every set.

Processes run inside a host with ``ip netns exec`` (:meth:`PairLab.exec_argv`). The
daemons' control sockets and sd_notify sockets are unix sockets in the workdir, which
network cuts do not touch, so a drill always talks to both daemons.

Names start with :data:`PREFIX` (``llp-``, apart from the uplink lab's ``ll-``) and every
link lives inside a lab namespace, so :meth:`PairLab.down` removes exactly what the lab
made, after a crash too. :meth:`PairLab.up` takes the lab lock shared with the uplink lab
(:class:`lab.world.LabLock`) and holds it until :meth:`PairLab.down`, so drills,
benchmarks and tests never build worlds on top of each other.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config import dump_toml
from lab import netns
from lab.netns import LabError
from lab.procs import DaemonProcess
from lab.world import LOCK_TIMEOUT, LabLock, netns_unavailable

PREFIX = "llp-"
SWITCH = f"{PREFIX}sw"
BRIDGE = "br0"
SUBNET = "10.76.0.0/24"
PREFIX_LEN = 24
NFT_TABLE = "lifeline_pair"
REPLICATION_PORT = 7470
WITNESS_PORT = 7480
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
#: The replication timers of the drills and the standby fault tests: a dead link is
#: noticed within a second.
REPLICATION_TIMERS = {"heartbeat": "100ms", "peer_timeout": "1s", "reconnect_max": "200ms", "sync_timeout": "2s"}
#: Short lease timings (the witness allows them, and etcd's fast timers in
#: :class:`lab.etcd.EtcdCluster`) of the loopback drills and the lease-pair tests.
LEASE_TIMINGS = {"ttl": "1s", "retry_timeout": "250ms", "safety_margin": "200ms", "fencing_margin": "100ms"}
ROOT = Path(__file__).resolve().parents[1]
WITNESS_READY_TIMEOUT = 20.0
PROBE_TIMEOUT = 0.3


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    site: int | None  # the regional drill's site; the witness belongs to none

    @property
    def ns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def port(self) -> str:
        """The switch's side of the host's veth (at most 15 characters)."""
        return f"p-{self.name}"


HOSTS: dict[str, Host] = {h.name: h for h in (
    Host("edge-a", "10.76.0.11", 1),
    Host("edge-b", "10.76.0.12", 2),
    Host("witness", "10.76.0.20", None),
    Host("etcd1", "10.76.0.31", 1),
    Host("etcd2", "10.76.0.32", 2),
    Host("etcd3", "10.76.0.33", 3),
)}
EDGES = ("edge-a", "edge-b")
ETCD_HOSTS = ("etcd1", "etcd2", "etcd3")
SITES: dict[int, tuple[str, ...]] = {
    site: tuple(h.name for h in HOSTS.values() if h.site == site) for site in (1, 2, 3)
}
NAMESPACES = (SWITCH, *(h.ns for h in HOSTS.values()))


def host(name: str) -> Host:
    try:
        return HOSTS[name]
    except KeyError:
        raise LabError(f"no host {name!r} in the pair lab; its hosts are {', '.join(HOSTS)}") from None


def replication_address(name: str) -> str:
    return f"{host(name).address}:{REPLICATION_PORT}"


def witness_address() -> str:
    return f"{HOSTS['witness'].address}:{WITNESS_PORT}"


def etcd_endpoints(names: Sequence[str] = ETCD_HOSTS) -> list[str]:
    return [f"http://{host(n).address}:{ETCD_CLIENT_PORT}" for n in names]


def pair_unavailable() -> str | None:
    """Why this host cannot build the pair lab, or None if it can."""
    return netns_unavailable()


class PairLab:
    """The namespace world of the promotion drills (root, ``ip`` and ``nft``)."""

    def __init__(self) -> None:
        self.lock = LabLock()
        #: The pairs of hosts currently cut from each other.
        self.cut_pairs: set[frozenset[str]] = set()
        #: One-way cuts: (sender, receiver) where the receiver drops what the sender sends.
        self.one_way: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ build and remove

    def up(self, *, lock_timeout: float = LOCK_TIMEOUT) -> list[str]:
        """Build the world (removing a left-over one first) and check every host reaches
        every other; on any failure nothing is left behind. Returns what it built."""
        self.lock.acquire(lock_timeout)
        self.down(release=False)
        try:
            return self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> list[str]:
        netns.add_netns(SWITCH)
        netns.link_set(SWITCH, "lo", up=True)
        netns.ip(SWITCH, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        netns.link_set(SWITCH, BRIDGE, up=True)
        built = [f"{SWITCH}: bridge {BRIDGE}"]
        for h in HOSTS.values():
            netns.add_netns(h.ns)
            netns.link_set(h.ns, "lo", up=True)
            netns.veth(h.ns, "eth0", SWITCH, h.port)
            netns.ip(SWITCH, "link", "set", h.port, "master", BRIDGE)
            netns.addr(h.ns, "eth0", f"{h.address}/{PREFIX_LEN}")
            netns.nft(h.ns, f"table inet {NFT_TABLE} {{\n"
                            f"  set cut {{ type ipv4_addr; }}\n"
                            f"  chain input {{ type filter hook input priority 0; policy accept;\n"
                            f'    ip saddr @cut counter drop comment "lab cut"\n  }}\n}}\n')
            site = f", site {h.site}" if h.site else ""
            built.append(f"{h.ns}: eth0 {h.address}/{PREFIX_LEN}{site}")
        self.cut_pairs.clear()
        self._check_all_reachable()
        return built

    def _check_all_reachable(self, timeout: float = 5.0) -> None:
        # The first packet of each pair waits for ARP; give the whole mesh a few seconds.
        deadline = time.monotonic() + timeout
        missing: list[tuple[str, str]] = []
        for a in HOSTS:
            for b in HOSTS:
                if a == b:
                    continue
                while not self.reachable(a, b):
                    if time.monotonic() >= deadline:
                        missing.append((a, b))
                        break
        if missing:
            raise LabError("pair lab built but these paths do not answer: "
                           + ", ".join(f"{a} -> {b}" for a, b in missing))

    def down(self, *, release: bool = True) -> list[str]:
        """Stop every process in the lab's namespaces and delete every ``llp-*``
        namespace (their veths and the bridge go with them). Safe when nothing exists
        and after a crash; returns what it removed."""
        removed: list[str] = []
        try:
            present = netns.lab_namespaces(PREFIX)
            # Processes first: a namespace deleted under a live process only loses its name.
            for ns in present:
                for pid in netns.kill_netns_pids(ns):
                    removed.append(f"process {pid} in {ns}")
            for ns in present:
                if netns.del_netns(ns):
                    removed.append(f"namespace {ns}")
            self.cut_pairs.clear()
        finally:
            if release:
                self.lock.release()
        return removed

    def exists(self) -> list[str]:
        return netns.lab_namespaces(PREFIX)

    # ------------------------------------------------------------------ faults

    def partition(self, a: str, b: str) -> None:
        """Cut host ``a`` from host ``b`` in both directions (each still reaches the rest)."""
        if a == b:
            raise LabError(f"cannot cut {a} from itself")
        self._cut([(a, b)])

    def cut_one_way(self, sender: str, receiver: str) -> None:
        """``receiver`` drops every packet from ``sender``; the other direction still
        flows (so TCP from either side stalls, but ``receiver``'s packets still arrive:
        the half-broken path a bad optic or an asymmetric firewall rule makes)."""
        if sender == receiver:
            raise LabError(f"cannot cut {sender} from itself")
        netns.nft(host(receiver).ns, f"add element inet {NFT_TABLE} cut {{ {host(sender).address} }}\n")
        self.one_way.add((sender, receiver))

    def arm_one_way(self, sender: str, receiver: str) -> ArmedCut:
        """A one-way cut made ready to fire within a millisecond or so: ``nft -f -`` is
        started inside ``receiver`` now and reads its command only at :meth:`ArmedCut.fire`
        (a fresh ``nft`` takes several ms to start; a host crash is instantaneous)."""
        if sender == receiver:
            raise LabError(f"cannot cut {sender} from itself")
        proc = subprocess.Popen(self.exec_argv(receiver, ["nft", "-f", "-"]), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return ArmedCut(self, sender, receiver, proc)

    def isolate(self, name: str) -> None:
        """Cut ``name`` from every other host."""
        self._cut([(name, other) for other in HOSTS if other != name])

    def lose_site(self, site: int) -> list[str]:
        """Cut every host of ``site`` from every other host (its own site's included):
        the whole site goes dark. Returns the hosts cut."""
        try:
            members = SITES[site]
        except KeyError:
            raise LabError(f"no site {site}; the lab's sites are {', '.join(map(str, SITES))}") from None
        self._cut([(m, other) for m in members for other in HOSTS if other != m])
        return list(members)

    def heal(self) -> None:
        """Remove every cut."""
        for h in HOSTS.values():
            netns.nft(h.ns, f"flush set inet {NFT_TABLE} cut\n")
        self.cut_pairs.clear()
        self.one_way.clear()

    def _cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        blocked: dict[str, set[str]] = {}
        for a, b in pairs:
            ha, hb = host(a), host(b)
            blocked.setdefault(a, set()).add(hb.address)
            blocked.setdefault(b, set()).add(ha.address)
            self.cut_pairs.add(frozenset((a, b)))
        for name, addresses in blocked.items():
            netns.nft(host(name).ns, f"add element inet {NFT_TABLE} cut {{ {', '.join(sorted(addresses))} }}\n")

    def cuts(self) -> dict[str, list[str]]:
        """What each host's namespace drops right now (addresses), as nft lists it."""
        out: dict[str, list[str]] = {}
        for h in HOSTS.values():
            text = netns.run(netns.exec_argv(h.ns, ["nft", "list", "set", "inet", NFT_TABLE, "cut"])).stdout
            inside = text.split("elements = {", 1)[1].split("}", 1)[0] if "elements = {" in text else ""
            out[h.name] = sorted(a.strip() for a in inside.split(",") if a.strip())
        return out

    # ------------------------------------------------------------------ probing

    def reachable(self, a: str, b: str, port: int = 9, timeout: float = PROBE_TIMEOUT) -> bool:
        """A TCP connect from ``a``'s namespace to ``b``'s address: an answer of any kind
        (accepted, or refused because nothing listens) means the path works both ways;
        silence means it is cut."""
        sock = netns.socket_in_netns(host(a).ns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect((host(b).address, port))
                return True
            except ConnectionRefusedError:
                return True
            except TimeoutError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM, errno.ETIMEDOUT):
                    return False
                raise
        finally:
            sock.close()

    # ------------------------------------------------------------------ processes inside hosts

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        return netns.exec_argv(host(name).ns, argv)

    def start_daemon(self, name: str, workdir: Path, config: dict[str, Any]) -> DaemonProcess:
        """Write ``config`` to ``workdir/lifeline.toml`` and start ``lifeline run`` inside
        host ``name`` as systemd would (the caller waits for READY)."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "lifeline.toml"
        path.write_text(dump_toml(config))
        daemon = DaemonProcess(config=path, workdir=workdir, watchdog_usec=None,
                               argv_prefix=self.exec_argv(name, [sys.executable, "-m", "daemon.cli"]))
        daemon.start()
        return daemon

    def start_witness(self, workdir: Path, key_file: Path, *, timeout: float = WITNESS_READY_TIMEOUT
                      ) -> LabProcess:
        """``lifeline witness`` inside the witness host, state under ``workdir``; returns
        once it printed its ready line."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        argv = self.exec_argv("witness", [sys.executable, "-m", "daemon.cli", "witness",
                                          "--listen", witness_address(), "--state", str(workdir / "witness.state"),
                                          "--key-file", str(key_file)])
        proc = LabProcess.start("witness", argv, workdir / "witness.log")
        proc.wait_for_line("witness.listening", timeout)
        return proc


class ArmedCut:
    """A pending one-way cut (:meth:`PairLab.arm_one_way`)."""

    def __init__(self, lab: PairLab, sender: str, receiver: str, proc: subprocess.Popen[bytes]) -> None:
        self.lab, self.sender, self.receiver, self.proc = lab, sender, receiver, proc

    def fire(self) -> None:
        command = f"add element inet {NFT_TABLE} cut {{ {host(self.sender).address} }}\n"
        _, err = self.proc.communicate(command.encode(), timeout=10)
        if self.proc.returncode != 0:
            raise LabError(f"nft in {host(self.receiver).ns}: {err.decode(errors='replace').strip()}")
        self.lab.one_way.add((self.sender, self.receiver))

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LabProcess:
    """A helper process of the lab (the witness, an etcd member): argv, a log file, a
    ready line to wait for, a stop that always ends it."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> LabProcess:
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env.update(env or {})
        with open(log, "wb") as handle:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
                                    env=full_env, cwd=ROOT)
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_line(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if needle in line:
                    return line
            if not self.alive():
                raise LabError(f"{self.name} exited {self.proc.returncode} before saying {needle!r}:\n"
                               f"{self.log_text()[-2000:]}")
            if time.monotonic() >= deadline:
                self.stop()
                raise LabError(f"{self.name} did not say {needle!r} within {timeout:g} s:\n"
                               f"{self.log_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
