"""The lease witness's server: its own small host process (``lifeline witness``).

What the witness is, its lease rules and its wire protocol are described, and
implemented sans-IO, in :mod:`daemon.standby.witness_protocol`; the daemon's client is
:mod:`daemon.standby.witness`. This module is the host around them, and holds, in order:

* the state file: :func:`read_state_file`, :func:`write_state_file` (plain blocking
  file I/O, run in a thread by the server) and the lock that keeps a second witness off it;
* the server: :class:`WitnessServer` (one task per connection, every change saved
  before it is answered), :func:`serve_witness`;
* the ``lifeline witness`` command: :func:`add_witness_parser`,
  :func:`run_witness_command` (with ``--metrics`` and sd_notify, the host's).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Final, Mapping

import trio

from daemon.core.accept import BoundedListener, Connection
from daemon.core.config import parse_host_port
from daemon.core.files import replace_file
from daemon.core.listeners import FloodLog, Limits
from daemon.core import log as logging_setup
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, Sample
from daemon.metrics import MetricsServer
from daemon.notify import Notifier
from daemon.standby import StandbyError
from daemon.standby.keys import KeyFileError, load_replication_key
from daemon.standby.witness import DISCONNECTS, WitnessLink
from daemon.standby.witness_protocol import (
    Auth,
    Challenge,
    ConnectionClosed,
    Hello,
    Message,
    Reject,
    Welcome,
    WitnessConnection,
    WitnessProtocolError,
    WitnessState,
    answer,
)

log = get_logger("witness")

HANDSHAKE_TIMEOUT: Final = 5.0


class WitnessStateError(StandbyError):
    """The state file cannot be used; the message names the file and the fix. The
    witness refuses to start rather than begin again at epoch 0, which could grant an
    epoch a second time."""


# =========================================================================== the state file

_EXAMPLE = '{"version": 1, "clusters": {"lifeline": {"epoch": 42}}}'


def read_state_file(path: Path, now: float) -> WitnessState | None:
    """The state saved in ``path`` (None if there is no such file).
    :class:`WitnessStateError` if it cannot be read or makes no sense."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WitnessStateError(f"{path}: cannot read the witness state: {exc.strerror or exc}") from None
    try:
        return WitnessState.from_durable(json.loads(raw.decode("utf-8")), now)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WitnessStateError(
            f"{path}: the witness state is corrupt ({str(exc)[:300]}). Refusing to start: beginning again at "
            f"epoch 0 could grant an epoch twice. Restore the file from a backup, or rewrite it with every "
            f"cluster's epoch above the highest either node has seen (`lifeline journal stats` on both), "
            f"e.g. {_EXAMPLE}") from None


def write_state_file(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` durably: a crash leaves the old file or the new
    one, never a mix, and once this returns the new one survives a power cut."""
    replace_file(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"), 0o600)


# =========================================================================== the state lock


def _lock_state(path: Path) -> int:
    """An exclusive lock on ``PATH.lock`` for the life of the process: two witnesses
    sharing one state would each grant the lease."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WitnessStateError(f"{lock_path}: cannot open the state lock: {exc.strerror or exc}; check that "
                                f"{path.parent} exists and is writable") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise WitnessStateError(f"{path}: another witness is using this state file (it holds {lock_path}); "
                                "stop it first") from None
    return fd


# =========================================================================== the server (trio)

Save = Callable[[Mapping[str, Any]], Awaitable[None]]


class WitnessServer:
    """The trio shell around :class:`WitnessState`: one task per connection; each
    request is applied and, if it changed the durable state, saved with ``save``
    before it is answered, all under one lock so requests are linearizable."""

    def __init__(self, state: WitnessState, key: bytes | None, save: Save, *,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, cluster_keys: Mapping[str, bytes] | None = None,
                 flood: FloodLog | None = None) -> None:
        self.state = state
        self.key = key
        #: A key per cluster (``--cluster-key``); ``key`` serves the clusters not listed.
        self.cluster_keys = dict(cluster_keys or {})
        self.save = save
        self.handshake_timeout = handshake_timeout
        #: Coalesces the log lines of strangers' dropped connections (a flood is a count).
        self.flood = flood or FloodLog()
        self._lock = trio.Lock()
        # Figures for `--metrics` (see metrics()).
        self.granted: dict[str, int] = {}
        self.renewals: dict[str, int] = {}
        self.refusals: dict[tuple[str, str, str], int] = {}
        self.connections = 0
        self.open_connections = 0
        self.auth_failures = 0

    def _count(self, cluster: str, body: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
        op = str(body.get("op"))
        if "error" in reply:
            key = (cluster, op if op in _OPS else "other", str(reply["error"]))
            self.refusals[key] = self.refusals.get(key, 0) + 1
        elif op == "acquire":
            self.granted[cluster] = self.granted.get(cluster, 0) + 1
        elif op == "renew":
            self.renewals[cluster] = self.renewals.get(cluster, 0) + 1

    def metrics(self) -> list[MetricFamily]:
        """The witness's own metrics (``lifeline witness --metrics HOST:PORT``)."""
        return [
            MetricFamily("lifeline_witness_leases_granted_total", "counter", "Leases granted (acquire).",
                         [Sample({"cluster": c}, n) for c, n in sorted(self.granted.items())]),
            MetricFamily("lifeline_witness_renewals_total", "counter", "Lease renewals granted.",
                         [Sample({"cluster": c}, n) for c, n in sorted(self.renewals.items())]),
            MetricFamily("lifeline_witness_refusals_total", "counter", "Requests refused, by operation and error.",
                         [Sample({"cluster": c, "op": op, "error": e}, n)
                          for (c, op, e), n in sorted(self.refusals.items())]),
            MetricFamily.single("lifeline_witness_connections_total", "counter",
                                "Authenticated connections opened.", self.connections),
            MetricFamily.single("lifeline_witness_connections_open", "gauge",
                                "Authenticated connections open now.", self.open_connections),
            MetricFamily.single("lifeline_witness_auth_failures_total", "counter",
                                "Handshakes refused for a wrong key.", self.auth_failures),
            MetricFamily("lifeline_witness_epoch", "gauge", "The highest epoch granted, by cluster.",
                         [Sample({"cluster": c}, e) for c, e in sorted(self.state.epochs().items())]),
        ]

    async def apply(self, cluster: str, node: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One request, atomically: answer it, persist what changed, then reply."""
        async with self._lock:
            now = trio.current_time()
            snapshot = self.state.snapshot()
            before = self.state.durable()
            reply = answer(self.state, cluster, node, body, now)
            after = self.state.durable()
            if after != before:
                try:
                    # Shielded: once the state changed, it is saved (or put back) before
                    # anything else, even at shutdown.
                    with trio.CancelScope(shield=True):
                        await self.save(after)
                except BaseException as exc:
                    self.state.restore(snapshot)  # never keep, let alone answer, what a crash would lose
                    if not isinstance(exc, OSError):
                        raise
                    log.error("state.save_failed", cluster=cluster, node=node, op=body.get("op"), error=str(exc))
                    reply = {"id": reply.get("id"), "error": "unavailable",
                             "message": f"the witness could not save its state: {exc}"}
                    self._count(cluster, body, reply)
                    return reply
        self._count(cluster, body, reply)
        _log_request(cluster, node, body, reply)
        return reply

    async def handle(self, stream: trio.abc.Stream, address: str = "?", connection: Connection | None = None) -> None:
        """Serve one connection until it closes; any fault of the peer ends it alone."""
        link = WitnessLink(stream, WitnessConnection("witness", self.key, cluster_keys=self.cluster_keys))
        hello: Hello | None = None
        try:
            with trio.fail_after(self.handshake_timeout):
                hello = await self._handshake(link, address)
            if hello is None:
                return
            if connection is not None:
                connection.authenticated()
            log.info("connection.opened", address=address, node=hello.node, cluster=hello.cluster)
            self.connections += 1
            self.open_connections += 1
            while True:
                event = await link.receive()
                if isinstance(event, ConnectionClosed):
                    log.info("connection.closed", address=address, node=hello.node)
                    return
                assert isinstance(event, Message)  # the only event from a client once open
                await link.send(Message(await self.apply(hello.cluster, hello.node, event.body)))
        except trio.TooSlowError:
            self._dropped(link, "handshake-timeout", address=address,
                          reason=f"no handshake within {self.handshake_timeout:g}s", stage=_stage(link))
        except WitnessProtocolError as exc:
            self._dropped(link, "protocol-error", address=address, node=hello.node if hello else None,
                          reason=f"protocol error: {exc}", stage=_stage(link))
        except DISCONNECTS as exc:
            log.info("connection.closed", address=address, node=hello.node if hello else None,
                     reason=str(exc) or type(exc).__name__)
        except Exception:  # a client must never take the witness down; log the bug loudly
            log.exception("connection.failed", address=address)
        finally:
            if hello is not None:
                self.open_connections -= 1
            await trio.aclose_forcefully(stream)

    def _dropped(self, link: WitnessLink, kind: str, **fields: Any) -> None:
        """A stranger's dropped connection is logged once per interval and kind, with a
        count; an authenticated client's, every time."""
        if link.conn.authenticated:
            log.warning("connection.dropped", **fields)
        elif (count := self.flood.note(kind, trio.current_time())) is not None:
            log.warning("connection.dropped", **fields, count=count, interval_s=self.flood.interval)

    async def _handshake(self, link: WitnessLink, address: str) -> Hello | None:
        hello = await link.receive()
        if not isinstance(hello, Hello):
            raise WitnessProtocolError("the connection closed before HELLO")
        await link.send(Challenge())
        auth = await link.receive()
        if not isinstance(auth, Auth):
            raise WitnessProtocolError("the connection closed before AUTH")
        if not auth.verified:
            self.auth_failures += 1
            if (count := self.flood.note("auth-failed", trio.current_time())) is not None:
                log.warning("auth.failed", address=address, node=hello.node, cluster=hello.cluster,
                            reason="the proof does not verify: another key", count=count,
                            interval_s=self.flood.interval)
            await link.send(Reject("authentication failed: the client's key is not the witness's"))
            return None
        await link.send(Welcome())
        return hello


def _stage(link: WitnessLink) -> str:
    return (link.conn.failed_in or link.conn.state).value


_OPS = frozenset({"acquire", "renew", "read", "release", "set_sync_mark", "report", "pause"})


def _log_request(cluster: str, node: str, body: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
    op = body.get("op")
    fields: dict[str, Any] = {"cluster": cluster, "node": node}
    if "error" in reply:
        log.info(f"lease.{op}.refused" if op in _OPS else "request.refused", **fields, error=reply["error"],
                 message=reply.get("message"))
    elif op == "acquire":
        log.info("lease.granted", **fields, epoch=reply.get("epoch"), ttl=body.get("ttl"))
    elif op == "release":
        if reply.get("released"):
            log.info("lease.released", **fields, epoch=body.get("epoch"))
    elif op == "set_sync_mark":
        log.info("lease.sync_mark", **fields, epoch=body.get("epoch"), sync_node=body.get("sync_node"))
    elif op == "pause":
        log.warning("lease.pause", **fields, seconds=body.get("seconds"), by=body.get("by"))
    else:  # renewals, reads and reports come several times a second
        log.debug(f"lease.{op}", **fields)


async def serve_witness(listen: tuple[str, int], state_path: str | os.PathLike[str], key: bytes | None, *,
                        min_epoch: int = 0, handshake_timeout: float | None = None, limits: Limits | None = None,
                        metrics: tuple[str, int] | None = None,
                        cluster_keys: Mapping[str, bytes] | None = None,
                        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Load (or create) the state in ``state_path``, listen on ``listen`` and serve
    until cancelled. ``task_status.started`` gets the bound (host, port), port 0
    resolved. :class:`WitnessStateError` if the state cannot be used, ``OSError`` if
    the address cannot be bound. ``metrics``: also serve ``/metrics`` on (host, port)."""
    path = Path(state_path)
    lock_fd = _lock_state(path)
    try:
        state = read_state_file(path, trio.current_time())
        if state is None:
            state = WitnessState()
            try:
                write_state_file(path, state.durable())  # now, so an unwritable directory stops us at once
            except OSError as exc:
                raise WitnessStateError(f"{path}: cannot create the witness state: {exc.strerror or exc}; check "
                                        f"that {path.parent} exists and is writable") from None
            log.info("state.created", path=str(path), epoch=0, reason="no state file: every cluster starts at 0")
        else:
            log.info("state.loaded", path=str(path), epochs=_epochs(state),
                     note="each holder's lease counts as live for its ttl from now")

        if min_epoch:
            changed = state.raise_epochs(min_epoch)
            # Persisted at once: the floor must not depend on the flag being kept.
            write_state_file(path, state.durable())
            log.warning("state.epochs_raised", path=str(path), min_epoch=min_epoch, clusters=",".join(changed) or "-")

        async def save(data: Mapping[str, Any]) -> None:
            await trio.to_thread.run_sync(write_state_file, path, data)

        limits = limits or Limits()

        async def handle(stream: trio.SocketStream, connection: Connection) -> None:
            # Clients keep one idle connection open; keepalive reaps those of dead hosts.
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            await server.handle(stream, connection.address, connection)

        listener = BoundedListener("witness", limits, handle, log)
        server = WitnessServer(state, key, save, flood=listener.flood, cluster_keys=cluster_keys,
                               handshake_timeout=limits.handshake_timeout if handshake_timeout is None
                               else handshake_timeout)
        host, port = listen
        bound_host, bound_port = await listener.open(host or None, port)
        shown = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"

        async with trio.open_nursery() as nursery:
            if metrics is not None:
                await nursery.start(MetricsServer(metrics[0], metrics[1], server.metrics).run)
            await nursery.start(listener.serve)
            log.info("witness.listening", address=shown, epochs=_epochs(state))
            task_status.started((bound_host, bound_port))
    finally:
        os.close(lock_fd)


def _epochs(state: WitnessState) -> str:
    return ",".join(f"{name}:{epoch}" for name, epoch in state.epochs().items()) or "none"


# =========================================================================== the command


def add_witness_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "witness", help="run the lease witness (the pair's quorum device)",
        description="Grant and renew the pair's leader lease from a third host; the epoch is kept in --state. "
                    "Stops with SIGTERM or SIGINT (exit 0).")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help='the address the nodes reach, e.g. "198.51.100.30:7480", not every interface '
                             '(port 0: any free port)')
    parser.add_argument("--state", required=True, type=Path, metavar="PATH",
                        help="the state file (created if missing; its directory must exist)")
    parser.add_argument("--key-file", type=Path, metavar="PATH",
                        help="the witness key shared with the nodes (`lifeline keys witness --out PATH`), for "
                             "every cluster without a --cluster-key")
    parser.add_argument("--cluster-key", action="append", default=[], metavar="CLUSTER=PATH",
                        help="a witness key for one cluster (repeatable): a key holder of one pair cannot "
                             "speak for another")
    parser.add_argument("--min-epoch", type=int, default=0, metavar="N",
                        help="start every epoch at N or above (after a lost state file: N = the highest epoch in "
                             "either node's journal, `lifeline journal stats`)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--metrics", default=None, metavar="HOST:PORT",
                        help='serve Prometheus metrics at http://HOST:PORT/metrics, e.g. "127.0.0.1:9478" '
                             "(default: none)")
    defaults = Limits()
    bounds = parser.add_argument_group("listener bounds (a client that has not proved the key gets a slot, "
                                       "a short deadline and a hello-sized frame)")
    bounds.add_argument("--max-connections", type=int, default=defaults.max_connections, metavar="N",
                        help="connections held at once (default %(default)s)")
    bounds.add_argument("--max-per-source", type=int, default=defaults.max_per_source, metavar="N",
                        help="connections held at once from one address (default %(default)s)")
    bounds.add_argument("--max-unauthenticated", type=int, default=defaults.max_unauthenticated, metavar="N",
                        help="connections still in their handshake (default %(default)s)")
    bounds.add_argument("--max-unauthenticated-per-source", type=int,
                        default=defaults.max_unauthenticated_per_source, metavar="N",
                        help="the same, from one address (default %(default)s)")
    bounds.add_argument("--handshake-timeout", type=float, default=defaults.handshake_timeout, metavar="SECONDS",
                        help="time a client has to prove the key (default %(default)s)")
    bounds.add_argument("--accept-rate-per-source", type=float, default=defaults.accept_rate_per_source,
                        metavar="PER_SECOND", help="connections per second one address may open that fail to "
                        "prove the key, past its burst; the rest are closed at accept (default %(default)s)")
    bounds.add_argument("--accept-burst-per-source", type=int, default=defaults.accept_burst_per_source,
                        metavar="N", help="such connections one address may open before it is paced "
                        "(default %(default)s)")


def run_witness_command(args: argparse.Namespace) -> int:
    logging_setup.setup(args.log_level)
    try:
        listen = parse_host_port(args.listen)
    except ValueError as exc:
        print(f"lifeline witness: --listen: {exc}", file=sys.stderr)
        return 2
    if args.key_file is None and not args.cluster_key:
        print("lifeline witness: give --key-file PATH or --cluster-key CLUSTER=PATH (make a key with "
              "`lifeline keys witness --out PATH`)", file=sys.stderr)
        return 2
    cluster_files: dict[str, Path] = {}
    for item in args.cluster_key:
        cluster, sep, file = item.partition("=")
        if not sep or not cluster or not file:
            print(f"lifeline witness: --cluster-key {item!r}: expected CLUSTER=PATH", file=sys.stderr)
            return 2
        cluster_files[cluster] = Path(file)
    key: bytes | None = None
    cluster_keys: dict[str, bytes] = {}
    for cluster, path in [("", args.key_file)] * (args.key_file is not None) + list(cluster_files.items()):
        try:
            loaded = load_replication_key(path)
        except KeyFileError as exc:
            print(f"lifeline witness: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"lifeline witness: {path}: cannot read the key: {exc.strerror or exc}; make one with "
                  f"`lifeline keys witness --out {path}` and give the nodes the same file", file=sys.stderr)
            return 2
        if cluster:
            cluster_keys[cluster] = loaded
        else:
            key = loaded
    if args.min_epoch < 0:
        print("lifeline witness: --min-epoch must be 0 or more", file=sys.stderr)
        return 2
    limits = Limits(args.max_connections, args.max_per_source, args.max_unauthenticated,
                    args.max_unauthenticated_per_source, args.handshake_timeout, args.accept_rate_per_source,
                    args.accept_burst_per_source)
    for name, problem in limits.problems():
        print(f"lifeline witness: --{name.replace('_', '-')} {problem}", file=sys.stderr)
        return 2
    metrics = None
    if args.metrics is not None:
        try:
            metrics = parse_host_port(args.metrics)
        except ValueError as exc:
            print(f"lifeline witness: --metrics: {exc}", file=sys.stderr)
            return 2
    return trio.run(_main, listen, args.state, key, args.min_epoch, cluster_keys, metrics, limits)


async def _main(listen: tuple[str, int], state_path: Path, key: bytes | None, min_epoch: int = 0,
                cluster_keys: Mapping[str, bytes] | None = None, metrics: tuple[str, int] | None = None,
                limits: Limits | None = None) -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                host, port = await nursery.start(functools.partial(serve_witness, min_epoch=min_epoch,
                                                                   cluster_keys=cluster_keys, metrics=metrics,
                                                                   limits=limits),
                                                 listen, state_path, key)
            except WitnessStateError as exc:
                log.error("witness.refused", error=str(exc))
                print(f"lifeline witness: refusing to start: {exc}", file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"lifeline witness: cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}",
                      file=sys.stderr)
                return 1
            Notifier().ready(f"witness listening on {host}:{port}")
            async for signum in signals:
                log.info("witness.stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0
