"""The lease witness's trio shell: the server, the ``lifeline witness`` command and
the daemon's client.

What the witness is, its lease rules, its wire protocol and its state file are
described, and implemented sans-IO, in :mod:`daemon.standby.witness_protocol`. This
module holds, in order:

* the state lock and the server: :class:`WitnessServer` (one task per connection,
  every change saved before it is answered), :func:`serve_witness`;
* the ``lifeline witness`` command: :func:`add_witness_parser`,
  :func:`run_witness_command`;
* :class:`WitnessLeaseStore`: the daemon's client backend.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import os
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Final, Mapping, TypeVar

import trio

from daemon.core import log as logging_setup
from daemon.core.accept import BoundedListener, Connection
from daemon.core.config import parse_host_port
from daemon.core.listeners import FloodLog, Limits
from daemon.core.log import get_logger
from daemon.core.service import MetricFamily, Sample
from daemon.metrics import MetricsServer
from daemon.notify import Notifier
from daemon.standby import Position
from daemon.standby.keys import KeyFileError, load_replication_key
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseLost,
    LeaseState,
    LeaseStore,
    LeaseUnavailable,
)
from daemon.standby.protocol import _NeedData
from daemon.standby.witness_protocol import (
    MAX_TTL,
    MIN_TTL,
    Auth,
    Challenge,
    ConnectionClosed,
    Event,
    Hello,
    Message,
    Reject,
    Welcome,
    WitnessBadRequest,
    WitnessConnection,
    WitnessProtocolError,
    WitnessState,
    WitnessStateError,
    _check_name,
    _is_number,
    _reply_epoch,
    answer,
    lease_state_from_json,
    read_state_file,
    write_state_file,
)

log = get_logger("witness")

HANDSHAKE_TIMEOUT: Final = 5.0
RECEIVE_CHUNK: Final = 16 * 1024


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
_DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Link:
    """A stream and its protocol object; request and reply take turns, so no send lock."""

    def __init__(self, stream: trio.abc.Stream, conn: WitnessConnection) -> None:
        self.stream = stream
        self.conn = conn

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def receive(self) -> Event:
        while True:
            event = self.conn.next_event()
            if not isinstance(event, _NeedData):
                return event
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_CHUNK))


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
        link = _Link(stream, WitnessConnection("witness", self.key, cluster_keys=self.cluster_keys))
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
        except _DISCONNECTS as exc:
            log.info("connection.closed", address=address, node=hello.node if hello else None,
                     reason=str(exc) or type(exc).__name__)
        except Exception:  # a client must never take the witness down; log the bug loudly
            log.exception("connection.failed", address=address)
        finally:
            if hello is not None:
                self.open_connections -= 1
            await trio.aclose_forcefully(stream)

    def _dropped(self, link: _Link, kind: str, **fields: Any) -> None:
        """A stranger's dropped connection is logged once per interval and kind, with a
        count; an authenticated client's, every time."""
        if link.conn.authenticated:
            log.warning("connection.dropped", **fields)
        elif (count := self.flood.note(kind, trio.current_time())) is not None:
            log.warning("connection.dropped", **fields, count=count, interval_s=self.flood.interval)

    async def _handshake(self, link: _Link, address: str) -> Hello | None:
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


def _stage(link: _Link) -> str:
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
                    args.max_unauthenticated_per_source, args.handshake_timeout)
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


# =========================================================================== the client


T = TypeVar("T")


class _Refused(Exception):
    pass


class WitnessLeaseStore(LeaseStore):
    """The daemon's lease backend: one authenticated connection to the witness at
    ``address`` ("HOST:PORT"), opened on first use and again after any failure.

    Each call is one request, serialized with the others, and gives up after
    ``timeout`` seconds (connecting included) with :class:`LeaseUnavailable`. A failed
    or timed-out call drops the connection, so a late reply can never be taken for the
    answer to a later request (replies also carry the request's id). ``ttl`` goes with
    every acquire and renewal: the witness counts it on its own clock.

    ``connect`` replaces the TCP connection (tests hand in memory streams)."""

    def __init__(self, address: str, key: bytes, cluster: str, node: str, ttl: float, timeout: float, *,
                 connect: Callable[[], Awaitable[trio.abc.Stream]] | None = None) -> None:
        self.host, self.port = parse_host_port(address)
        self.address = address
        _check_name(cluster, "cluster")
        _check_name(node, "node")
        if not _is_number(ttl) or not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be within [{MIN_TTL:g}, {MAX_TTL:g}] s for the witness, found {ttl!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, found {timeout!r}")
        if len(key) < 16:
            raise ValueError("the witness key must be at least 16 bytes")
        self.key = key
        self.cluster = cluster
        self.node = node
        self.ttl = float(ttl)
        self.timeout = float(timeout)
        self._connect = connect or self._open_tcp
        self._link: _Link | None = None
        self._lock = trio.Lock()
        self._next_id = 0

    # ------------------------------------------------------------------ LeaseStore

    async def acquire(self, node: str, expected_epoch: int) -> Grant:
        reply = await self._call("acquire", node, expected_epoch=expected_epoch, ttl=self.ttl)
        return Grant(self._parse(lambda r: _reply_epoch(r, expected_epoch + 1), reply))

    async def renew(self, node: str, epoch: int) -> Grant:
        reply = await self._call("renew", node, epoch=epoch, ttl=self.ttl)
        return Grant(self._parse(lambda r: _reply_epoch(r, epoch), reply))

    async def read(self) -> LeaseState:
        reply = await self._call("read", self.node)
        return self._parse(lambda r: lease_state_from_json(r.get("state")), reply)

    async def release(self, node: str, epoch: int) -> None:
        await self._call("release", node, epoch=epoch)

    async def set_sync_mark(self, node: str, epoch: int, sync_node: str | None, generation: int = 0) -> None:
        await self._call("set_sync_mark", node, epoch=epoch, sync_node=sync_node, generation=generation)

    async def set_pause(self, node: str, seconds: float, by: str) -> None:
        await self._call("pause", node, seconds=seconds, by=by)

    async def report(self, node: str, position: Position, seen_epoch: int) -> None:
        await self._call("report", node, position=[position.epoch, position.seq], seen_epoch=seen_epoch)

    async def aclose(self) -> None:
        await self._drop()

    # ------------------------------------------------------------------ plumbing

    async def _call(self, op: str, node: str, **fields: Any) -> dict[str, Any]:
        async with self._lock:
            self._next_id += 1
            request = {"op": op, "id": self._next_id, "node": node, **fields}
            done = False
            try:
                with trio.fail_after(self.timeout):
                    link = await self._connected()
                    await link.send(Message(request))
                    event = await link.receive()
                if not isinstance(event, Message):
                    raise WitnessProtocolError("the witness closed the connection")
                reply = event.body
                if reply.get("id") != request["id"]:
                    raise WitnessProtocolError(f"reply for request {reply.get('id')!r}, expected {request['id']}")
                done = True
            except trio.TooSlowError:
                raise LeaseUnavailable(f"no answer from the witness {self.address} to {op} within "
                                       f"{self.timeout:g}s") from None
            except _Refused as exc:
                raise LeaseUnavailable(f"the witness {self.address} refused us: {exc}") from None
            except (WitnessProtocolError, *_DISCONNECTS) as exc:
                raise LeaseUnavailable(f"witness {self.address}: {op} failed: {exc or type(exc).__name__}") from None
            finally:
                if not done:  # whatever happened, this connection's next bytes are not ours to trust
                    await self._drop()
        error = reply.get("error")
        if error is None and reply.get("ok") is True:
            return reply
        message = reply.get("message")
        message = f"witness: {message}" if isinstance(message, str) else f"witness answered {error!r}"
        if error == "conflict":
            raise LeaseConflict(message, self._parse(lambda r: lease_state_from_json(r.get("state")), reply))
        if error == "lost":
            raise LeaseLost(message)
        if error == "bad_request":
            raise WitnessBadRequest(message)
        if error == "unavailable":
            raise LeaseUnavailable(message)
        await self._drop()
        raise LeaseUnavailable(f"witness {self.address}: unexpected reply {reply!r:.200}")

    def _parse(self, parse: Callable[[dict[str, Any]], T], reply: dict[str, Any]) -> T:
        try:
            return parse(reply)
        except WitnessProtocolError as exc:
            # The connection is fine at the frame level; the next call may still succeed.
            raise LeaseUnavailable(f"witness {self.address}: malformed reply: {exc}") from None

    async def _connected(self) -> _Link:
        if self._link is not None and _stale(self._link.stream):
            await self._drop()  # the witness closed it while idle (restarted): reconnect, send nothing twice
        if self._link is None:
            stream = await self._connect()
            link = _Link(stream, WitnessConnection("client", self.key))
            try:
                await link.send(Hello(self.node, self.cluster))
                if not isinstance(await link.receive(), Challenge):
                    raise WitnessProtocolError("no CHALLENGE from the witness")
                await link.send(Auth())
                verdict = await link.receive()
                if isinstance(verdict, Reject):
                    raise _Refused(verdict.reason)
                if not isinstance(verdict, Welcome):
                    raise WitnessProtocolError("no WELCOME from the witness")
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._link = link
            log.info("witness.connected", address=self.address, node=self.node, cluster=self.cluster)
        return self._link

    async def _open_tcp(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream(self.host, self.port)

    async def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await trio.aclose_forcefully(link.stream)


def _stale(stream: trio.abc.Stream) -> bool:
    """True if an idle TCP connection has something to read: between requests the
    witness sends nothing, so that can only be its end of stream or a reset."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
