"""Probes that leave through one uplink only: UDP echo, ICMP echo, TCP connect, HTTP(S)
GET, and a DNS query — the trio shell around the codecs in :mod:`daemon.uplinks.echo`.

Every socket is bound to the uplink's source address, so the per-uplink policy-routing
table sends it out of that uplink; with ``interface`` (and the right to do so) it is also
bound to the device (``SO_BINDTODEVICE``), so a probe cannot leave through another uplink
even when the policy routing is missing — a probe that tested the wrong uplink would be
worse than no probe.

A network error is a probe result, never an exception: the health machine wants a loss
with a reason (``"timeout"``, ``"unreachable"``, ``"no source address"``, ...), and an
uplink whose interface vanished must keep being probed so it is noticed when it comes
back. A shared socket whose send fails is closed and re-opened at the start of the next
round (at most once per round): a socket bound to a device that was deleted stays bound
to the dead one, even after a device of the same name comes back.

Replies are matched to outstanding probes by (target address and port, sequence, nonce);
anything else is counted in :attr:`UplinkProber.counters` and ignored.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import secrets
import socket as stdlib_socket
import ssl
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import trio

from daemon.core.log import get_logger
from daemon.uplinks import ProbeResult
from daemon.uplinks.echo import (
    PROBE_SIZE,
    decode_dns_response,
    decode_icmp_echo_reply,
    decode_reply,
    encode_dns_name,
    encode_dns_query,
    encode_icmp_echo,
    encode_probe,
)
from daemon.uplinks.targets import Target

log = get_logger("uplinks.probe")

COUNTERS = ("sent", "received", "late", "duplicate", "wrong_source", "garbage", "refused", "errors")

NO_SOURCE = "no source address"
NO_INTERFACE = "no interface"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"

# Sending from an address the host no longer has fails with EINVAL (the route lookup
# refuses a non-local source), binding to one with EADDRNOTAVAIL.
_NO_SOURCE_ERRNOS = {errno.EADDRNOTAVAIL, errno.EINVAL}
_NO_INTERFACE_ERRNOS = {errno.ENODEV, errno.ENXIO}
# EPERM / EACCES: a netfilter rule rejected the packet on the way out.
_UNREACHABLE_ERRNOS = {
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
    errno.EPERM, errno.EACCES, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
}

_HTTP_STATUS_CAP = 8192
_HTTP_STATUS = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: .*)?", re.DOTALL)
# How many sent probes we remember, to tell a late or duplicated reply from garbage.
_REMEMBERED = 4096
_SEQ_MASK = 2**64 - 1
_SOL_RAW = getattr(stdlib_socket, "SOL_RAW", 255)
_ICMP_FILTER = 1  # linux/icmp.h
_ICMP6_FILTER = 1  # linux/icmpv6.h


def reason_for(exc: OSError) -> str:
    """The short probe error for a socket error."""
    if exc.errno in _NO_SOURCE_ERRNOS:
        return NO_SOURCE
    if exc.errno in _NO_INTERFACE_ERRNOS:
        return NO_INTERFACE
    if exc.errno in _UNREACHABLE_ERRNOS:
        return UNREACHABLE
    return f"socket error {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def _normal(address: str) -> str:
    """One spelling per address (``recvfrom`` may add a ``%scope`` to IPv6 link-local)."""
    return ipaddress.ip_address(address.split("%", 1)[0]).compressed


def _family(address: str) -> int:
    return stdlib_socket.AF_INET6 if ":" in address else stdlib_socket.AF_INET


class _ProbeFailed(Exception):
    """A probe cannot be sent; ``reason`` becomes the result's error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Binder:
    """Binds sockets to one uplink: its device (when permitted) and its source address."""

    def __init__(self, uplink: str, source: str, interface: str | None) -> None:
        self.uplink = uplink
        self.source = source
        self.family = _family(source)
        self.interface = interface
        # None: not tried yet; False: not permitted here, do not ask again.
        self.device_binding: bool | None = None if interface else False

    async def bind(self, sock: trio.socket.SocketType) -> None:
        """Bind ``sock`` to the device and the source; OSError out on failure."""
        if self.interface and self.device_binding is not False:
            try:
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_BINDTODEVICE, self.interface.encode())
                self.device_binding = True
            except PermissionError:
                self.device_binding = False
                log.debug("probe.bind_to_device.skipped", uplink=self.uplink, interface=self.interface,
                          reason="not permitted (needs root or CAP_NET_RAW); relying on the source address")
        await sock.bind((self.source, 0))

    async def connect(self, target: Target) -> trio.socket.SocketType:
        """A TCP socket connected from the source to ``target`` (closed if this fails)."""
        sock = trio.socket.socket(self.family, stdlib_socket.SOCK_STREAM)
        try:
            await self.bind(sock)
            await sock.connect((target.address, target.port))
        except BaseException:
            sock.close()
            raise
        return sock


@dataclass
class _Outstanding:
    """One probe waiting for (or past) its reply."""

    sent_at: float
    deadline: float
    event: trio.Event = field(default_factory=trio.Event)
    state: str = "waiting"  # waiting | answered | timed_out | late
    arrived_at: float | None = None


class _Channel:
    """One datagram socket (UDP or ICMP) shared by all targets of its kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sock: trio.socket.SocketType | None = None
        self.raw = False
        self.error: str | None = None  # why there is no socket now


class UplinkProber:
    """Probes ``targets`` through one uplink; :meth:`run` must be running for UDP and ICMP.

    ``counters``:
      ``sent``          probes that left (datagrams sent, connections attempted)
      ``received``      replies matched in time (and TCP/HTTP exchanges completed)
      ``late``          replies for a probe that had already timed out
      ``duplicate``     a second reply for the same probe
      ``wrong_source``  a well-formed reply from an address/port that is not the target
      ``garbage``       datagrams that do not decode, or carry another prober's nonce
      ``refused``       connections refused (RST): the path works, the port is closed
      ``errors``        probes that failed with a socket error (not a timeout)
    """

    def __init__(self, uplink: str, source: str, targets: list[Target], timeout: float,
                 interface: str | None = None) -> None:
        self.uplink = uplink
        self.source = source
        self.targets = list(targets)
        self.timeout = float(timeout)
        self.interface = interface
        self.family = _family(source)
        self.uplink_id = zlib.crc32(uplink.encode())
        self.nonce = secrets.token_bytes(8)
        self.icmp_id = secrets.randbelow(0x10000)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._binder = _Binder(uplink, source, interface)
        self._udp = _Channel("udp")
        self._icmp = _Channel("icmp")
        self._nursery: trio.Nursery | None = None
        self._outstanding: OrderedDict[tuple[str, str, int, int], _Outstanding] = OrderedDict()
        self._highest_seq = -1
        self._udp_sources = {(_normal(t.address), t.port) for t in self.targets if t.kind == "udp"}
        self._icmp_sources = {_normal(t.address) for t in self.targets if t.kind == "icmp"}

    @property
    def icmp_socket(self) -> str | None:
        """``"ping"`` (unprivileged ping socket), ``"raw"``, or None when none is open."""
        if self._icmp.sock is None:
            return None
        return "raw" if self._icmp.raw else "ping"

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the shared sockets, run their receivers, and serve rounds until cancelled.

        A socket that cannot be opened now (no source address yet) is retried by the
        next :meth:`probe_round`; that is not a reason to fail.
        """
        kinds = {t.kind for t in self.targets}
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if "udp" in kinds:
                    await self._open(self._udp)
                if "icmp" in kinds:
                    await self._open(self._icmp)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for channel in (self._udp, self._icmp):
                self._close(channel, None)

    async def probe_round(self, seq: int) -> list[ProbeResult]:
        """One probe per target, all at once, each bounded by ``timeout``; results in
        target order. Raises only if :meth:`run` is not running."""
        if self._nursery is None:
            raise RuntimeError("UplinkProber.run() must be running before probe_round()")
        seq &= _SEQ_MASK
        self._highest_seq = max(self._highest_seq, seq)
        kinds = {t.kind for t in self.targets}
        # At most one re-open per socket per round.
        if "udp" in kinds and self._udp.sock is None:
            await self._open(self._udp)
        if "icmp" in kinds and self._icmp.sock is None:
            await self._open(self._icmp)
        results: list[ProbeResult | None] = [None] * len(self.targets)

        async def one(index: int, target: Target) -> None:
            results[index] = await self._probe(target, seq)

        async with trio.open_nursery() as nursery:
            for index, target in enumerate(self.targets):
                nursery.start_soon(one, index, target)
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ sockets

    async def _open(self, channel: _Channel) -> None:
        try:
            sock, raw = self._new_socket(channel.kind)
        except _ProbeFailed as failure:
            self._set_error(channel, failure.reason)
            return
        try:
            await self._binder.bind(sock)
        except OSError as exc:
            sock.close()
            self._set_error(channel, reason_for(exc), exc)
            return
        if channel.error is not None:
            log.info("probe.socket.reopened", uplink=self.uplink, kind=channel.kind, source=self.source)
        channel.sock, channel.raw, channel.error = sock, raw, None
        assert self._nursery is not None
        self._nursery.start_soon(self._receive, channel, sock)

    def _new_socket(self, kind: str) -> tuple[trio.socket.SocketType, bool]:
        v6 = self.family == stdlib_socket.AF_INET6
        if kind == "udp":
            return trio.socket.socket(self.family, stdlib_socket.SOCK_DGRAM), False
        proto = stdlib_socket.IPPROTO_ICMPV6 if v6 else stdlib_socket.IPPROTO_ICMP
        # Unprivileged ping sockets (net.ipv4.ping_group_range) first, raw otherwise.
        for sock_type in (stdlib_socket.SOCK_DGRAM, stdlib_socket.SOCK_RAW):
            try:
                sock = trio.socket.socket(self.family, sock_type, proto)
            except OSError:
                continue
            raw = sock_type == stdlib_socket.SOCK_RAW
            if raw:
                # Only echo replies, please: a raw socket otherwise sees all ICMP.
                try:
                    if v6:
                        blocked = [0xFFFFFFFF] * 8
                        blocked[129 >> 5] &= ~(1 << (129 & 31))
                        sock.setsockopt(stdlib_socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("=8I", *blocked))
                    else:
                        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", ~1 & 0xFFFFFFFF))
                except OSError:
                    pass  # the receiver ignores what is not an echo reply anyway
            return sock, raw
        raise _ProbeFailed("icmp not permitted")

    def _set_error(self, channel: _Channel, reason: str, exc: OSError | None = None) -> None:
        if channel.error != reason:
            log.info("probe.socket.unavailable", uplink=self.uplink, kind=channel.kind, source=self.source,
                     reason=reason, errno=errno.errorcode.get(exc.errno or 0) if exc else None)
        channel.error = reason

    def _close(self, channel: _Channel, reason: str | None) -> None:
        if channel.sock is not None:
            channel.sock.close()  # its receiver gets ClosedResourceError and ends
            channel.sock = None
        if reason is not None:
            self._set_error(channel, reason)

    # ------------------------------------------------------------------ probes

    def _result(self, target: Target, seq: int, sent_at: float, *, rtt: float | None = None,
                error: str | None = None) -> ProbeResult:
        return ProbeResult(self.uplink, target.url, seq, sent_at, error is None, rtt, error)

    async def _probe(self, target: Target, seq: int) -> ProbeResult:
        sent_at = trio.current_time()
        if target.family != (6 if self.family == stdlib_socket.AF_INET6 else 4):
            return self._result(target, seq, sent_at, error="address family mismatch")
        try:
            if target.kind == "udp":
                return await self._probe_datagram(self._udp, target, seq)
            if target.kind == "icmp":
                return await self._probe_datagram(self._icmp, target, seq)
            if target.kind == "tcp":
                return await self._probe_tcp(target, seq)
            return await self._probe_http(target, seq)
        except OSError as exc:  # a last net: network trouble is a result, not a crash
            self.counters["errors"] += 1
            return self._result(target, seq, sent_at, error=reason_for(exc))

    async def _probe_datagram(self, channel: _Channel, target: Target, seq: int) -> ProbeResult:
        sock = channel.sock
        sent_at = trio.current_time()
        if sock is None:
            return self._result(target, seq, sent_at, error=channel.error or NO_SOURCE)
        payload = encode_probe(self.uplink_id, seq, time.monotonic_ns() & _SEQ_MASK, self.nonce)
        if channel.kind == "udp":
            key = ("udp", _normal(target.address), target.port or 0, seq)
            packet, address = payload, (target.address, target.port)
        else:
            key = ("icmp", _normal(target.address), 0, seq)
            packet = encode_icmp_echo(self.icmp_id, seq & 0xFFFF, payload, v6=self.family == stdlib_socket.AF_INET6)
            address = (target.address, 0)
        # Registered before sending: the receiver may run before sendto returns.
        entry = self._expect(key, sent_at)
        try:
            await sock.sendto(packet, address)
        except (OSError, trio.ClosedResourceError) as exc:
            self._outstanding.pop(key, None)
            if isinstance(exc, trio.ClosedResourceError):
                return self._result(target, seq, sent_at, error=channel.error or NO_SOURCE)
            self.counters["errors"] += 1
            reason = reason_for(exc)
            # Start afresh next round: a socket bound to a device that was deleted stays
            # bound to the dead one (ENETUNREACH for ever, even once the device is back).
            if channel.sock is sock:
                self._close(channel, reason)
            return self._result(target, seq, sent_at, error=reason)
        self.counters["sent"] += 1
        with trio.move_on_at(entry.deadline):
            await entry.event.wait()
        if entry.state == "answered" and entry.arrived_at is not None:
            return self._result(target, seq, sent_at, rtt=entry.arrived_at - sent_at)
        if entry.state == "waiting":
            entry.state = "timed_out"
        return self._result(target, seq, sent_at, error=TIMEOUT)

    def _expect(self, key: tuple[str, str, int, int], sent_at: float) -> _Outstanding:
        entry = _Outstanding(sent_at, sent_at + self.timeout)
        self._outstanding.pop(key, None)
        self._outstanding[key] = entry
        while len(self._outstanding) > _REMEMBERED:
            self._outstanding.popitem(last=False)
        return entry

    async def _probe_tcp(self, target: Target, seq: int) -> ProbeResult:
        sent_at = trio.current_time()
        self.counters["sent"] += 1
        try:
            with trio.move_on_at(sent_at + self.timeout):
                sock = await self._binder.connect(target)
                sock.close()
                self.counters["received"] += 1
                return self._result(target, seq, sent_at, rtt=trio.current_time() - sent_at)
        except ConnectionRefusedError:
            # An RST came back through this uplink: the path works, only the port is shut.
            self.counters["refused"] += 1
            self.counters["received"] += 1
            return self._result(target, seq, sent_at, rtt=trio.current_time() - sent_at)
        return self._result(target, seq, sent_at, error=TIMEOUT)

    async def _probe_http(self, target: Target, seq: int) -> ProbeResult:
        sent_at = trio.current_time()
        self.counters["sent"] += 1
        status: int | None = None
        try:
            with trio.move_on_at(sent_at + self.timeout):
                status = await self._http_status(target)
        except ConnectionRefusedError:
            self.counters["refused"] += 1
            return self._result(target, seq, sent_at, error="refused")
        except trio.BrokenResourceError as exc:
            self.counters["errors"] += 1
            error = "tls error" if isinstance(exc.__cause__, ssl.SSLError) else "connection reset"
            return self._result(target, seq, sent_at, error=error)
        except ssl.SSLError:
            self.counters["errors"] += 1
            return self._result(target, seq, sent_at, error="tls error")
        except _ProbeFailed as failure:
            return self._result(target, seq, sent_at, error=failure.reason)
        if status is None:
            return self._result(target, seq, sent_at, error=TIMEOUT)
        self.counters["received"] += 1
        if status >= 500:
            return self._result(target, seq, sent_at, error=f"http {status}")
        return self._result(target, seq, sent_at, rtt=trio.current_time() - sent_at)

    async def _http_status(self, target: Target) -> int:
        sock = await self._binder.connect(target)
        stream: trio.abc.Stream = trio.SocketStream(sock)
        try:
            if target.kind == "https":
                # We test the path and send no secrets, so the certificate is not checked
                # (probe targets are IP literals, which rarely have certificates anyway).
                stream = trio.SSLStream(stream, _insecure_tls_context(), server_hostname=None, https_compatible=True)
            host = f"[{target.address}]" if ":" in target.address else target.address
            if target.port not in (None, 80 if target.kind == "http" else 443):
                host = f"{host}:{target.port}"
            request = (f"GET {target.path or '/'} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                       "User-Agent: lifeline-probe\r\n\r\n")
            await stream.send_all(request.encode("ascii", "replace"))
            received = b""
            while b"\r\n" not in received and len(received) < _HTTP_STATUS_CAP:
                chunk = await stream.receive_some(_HTTP_STATUS_CAP - len(received))
                if not chunk:
                    break
                received += chunk
        finally:
            await trio.aclose_forcefully(stream)
        match = _HTTP_STATUS.fullmatch(received.split(b"\r\n", 1)[0])
        if not match:
            raise _ProbeFailed("http bad response" if received else "http no response")
        return int(match.group(1))

    # ------------------------------------------------------------------ receivers

    async def _receive(self, channel: _Channel, sock: trio.socket.SocketType) -> None:
        """Read replies on one socket until it is closed; match or count each one."""
        while True:
            try:
                data, address = await sock.recvfrom(65536)
            except (trio.ClosedResourceError, OSError) as exc:
                if isinstance(exc, trio.ClosedResourceError) or exc.errno == errno.EBADF or sock.fileno() < 0:
                    return
                # A queued ICMP error (e.g. port unreachable) surfacing on a read.
                self.counters["errors"] += 1
                continue
            now = trio.current_time()
            if channel.kind == "udp":
                self._on_udp(data, address, now)
            else:
                self._on_icmp(data, address, now, raw=channel.raw)

    def _on_udp(self, data: bytes, address: Any, now: float) -> None:
        reply = decode_reply(data)
        if reply is None or reply.nonce != self.nonce or reply.uplink_id != self.uplink_id:
            self.counters["garbage"] += 1
            return
        source: tuple[str, int] = (_normal(address[0]), address[1])
        if source not in self._udp_sources:
            self.counters["wrong_source"] += 1
            return
        self._on_reply(("udp", source[0], source[1], reply.seq), now)

    def _on_icmp(self, data: bytes, address: Any, now: float, *, raw: bool) -> None:
        v6 = self.family == stdlib_socket.AF_INET6
        echo = decode_icmp_echo_reply(data, v6=v6, ip_header=raw and not v6)
        if echo is None:
            if not raw:  # a raw socket sees everyone's ICMP; that is not garbage sent to us
                self.counters["garbage"] += 1
            return
        # A ping socket's identifier is its port, rewritten by the kernel: match on the
        # payload instead. A raw socket sees every ping on the host: skip others' ids.
        if raw and echo.identifier != self.icmp_id:
            return
        reply = decode_reply(echo.payload[:PROBE_SIZE]) if len(echo.payload) == PROBE_SIZE else None
        if (reply is None or reply.nonce != self.nonce or reply.uplink_id != self.uplink_id
                or reply.seq & 0xFFFF != echo.sequence):
            self.counters["garbage"] += 1
            return
        source = _normal(address[0])
        if source not in self._icmp_sources:
            self.counters["wrong_source"] += 1
            return
        self._on_reply(("icmp", source, 0, reply.seq), now)

    def _on_reply(self, key: tuple[str, str, int, int], now: float) -> None:
        entry = self._outstanding.get(key)
        if entry is None:
            # Forgotten (long late) if we sent that sequence; a forgery if we never did.
            self.counters["late" if key[3] <= self._highest_seq else "garbage"] += 1
            return
        if entry.state == "waiting" and now <= entry.deadline:
            entry.state, entry.arrived_at = "answered", now
            self.counters["received"] += 1
            entry.event.set()
        elif entry.state in ("waiting", "timed_out"):
            entry.state = "late"
            self.counters["late"] += 1
        else:
            self.counters["duplicate"] += 1


class DnsProber:
    """Asks ``server`` for ``name`` through one uplink; any answer, even NXDOMAIN, means
    the resolver works (SERVFAIL or REFUSED mean it does not). A fresh socket per query,
    so each query has its own random source port as well as a random id (RFC 5452)."""

    def __init__(self, uplink: str, source: str, server: str, name: str, timeout: float, *,
                 port: int = 53, interface: str | None = None) -> None:
        encode_dns_name(name)  # a bad name is a config error: say so now
        self.uplink = uplink
        self.source = source
        self.server = server
        self.name = name
        self.port = port
        self.timeout = float(timeout)
        host = f"[{server}]" if ":" in server else server
        self.target = f"dns://{host}{'' if port == 53 else f':{port}'}/{name}"
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._binder = _Binder(uplink, source, interface)
        self._server = (_normal(server), port)

    async def probe(self, seq: int) -> ProbeResult:
        sent_at = trio.current_time()

        def result(error: str | None = None, rtt: float | None = None) -> ProbeResult:
            return ProbeResult(self.uplink, self.target, seq, sent_at, error is None, rtt, error)

        if _family(self.server) != self._binder.family:
            return result("address family mismatch")
        txid = secrets.randbelow(0x10000)
        sock = trio.socket.socket(self._binder.family, stdlib_socket.SOCK_DGRAM)
        try:
            with trio.move_on_at(sent_at + self.timeout):
                try:
                    await self._binder.bind(sock)
                    await sock.sendto(encode_dns_query(txid, self.name), (self.server, self.port))
                except OSError as exc:
                    self.counters["errors"] += 1
                    return result(reason_for(exc))
                self.counters["sent"] += 1
                while True:
                    try:
                        data, address = await sock.recvfrom(65536)
                    except OSError:
                        self.counters["errors"] += 1
                        continue
                    if (_normal(address[0]), address[1]) != self._server:
                        self.counters["wrong_source"] += 1
                        continue
                    answer = decode_dns_response(data, txid, self.name)
                    if answer is None:
                        self.counters["garbage"] += 1
                        continue
                    self.counters["received"] += 1
                    if answer.resolver_works:
                        return result(rtt=trio.current_time() - sent_at)
                    return result(f"dns {answer.rcode_name}")
        finally:
            sock.close()
        return result("dns timeout")


def _insecure_tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


__all__ = ["COUNTERS", "DnsProber", "UplinkProber", "reason_for"]
