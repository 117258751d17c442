"""Probes over real sockets on loopback: the prober leaves from 127.0.0.1, the targets
listen on other loopback addresses (127.0.0.0/8 all routes via lo). Real time, small
timeouts; every test is capped with ``trio.fail_after``."""

from __future__ import annotations

import signal
import socket as stdlib_socket
import ssl
import struct
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio

from lab.echo import EchoResponder, parse_delay, serve
from daemon.uplinks.echo import decode_reply, encode_dns_name, encode_icmp_echo, encode_probe, internet_checksum
from daemon.uplinks.probe import DnsProber, UplinkProber
from daemon.uplinks.targets import parse_target
from tests.support.tls import self_signed_context
from tests.support.cli import ROOT as REPO

SOURCE = "127.0.0.1"


@asynccontextmanager
async def running(prober: UplinkProber) -> AsyncIterator[UplinkProber]:
    async with trio.open_nursery() as nursery:
        await nursery.start(prober.run)
        yield prober
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def echo_responder(address: str, *delays: str, max_pending: int = 10000) -> AsyncIterator[EchoResponder]:
    async with trio.open_nursery() as nursery:
        responder: EchoResponder = await nursery.start(
            lambda task_status: serve([(address, 0)], [parse_delay(d) for d in delays], max_pending=max_pending,
                                      task_status=task_status))
        yield responder
        nursery.cancel_scope.cancel()


def closed_port(address: str, kind: int = stdlib_socket.SOCK_DGRAM) -> int:
    """A port on ``address`` that nothing listens on (just released)."""
    with stdlib_socket.socket(stdlib_socket.AF_INET6 if ":" in address else stdlib_socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def prober(*targets: str, timeout: float = 0.3, source: str = SOURCE) -> UplinkProber:
    return UplinkProber("fibre", source, [parse_target(t) for t in targets], timeout)


# ------------------------------------------------------------------ UDP echo


async def test_udp_echo_through_the_lab_responder() -> None:
    with trio.fail_after(10):
        async with echo_responder("127.0.0.2", "127.0.0.1/32=30ms..40ms", "127.0.0.0/8=1s") as responder:
            port = responder.addresses[0][1]
            silent = closed_port("127.0.0.3")
            p = prober(f"udp://127.0.0.2:{port}", f"udp://127.0.0.3:{silent}")
            async with running(p):
                for seq in range(3):
                    echo, nobody = await p.probe_round(seq)
                    assert echo.ok and echo.error is None and echo.seq == seq
                    assert echo.target == f"udp://127.0.0.2:{port}" and echo.uplink == "fibre"
                    assert echo.rtt is not None and 0.03 <= echo.rtt < 0.3, "rtt includes the lab delay"
                    assert not nobody.ok and nobody.error == "timeout" and nobody.rtt is None
                    assert 0.3 <= trio.current_time() - nobody.sent_at < 0.5
            assert p.counters["sent"] == 6 and p.counters["received"] == 3
            assert responder.counters["delayed"] == 3
            for key in ("late", "duplicate", "wrong_source", "garbage"):
                assert p.counters[key] == 0, key


async def test_late_reply_is_not_fresh_and_is_counted() -> None:
    with trio.fail_after(10):
        async with echo_responder("127.0.0.2", "127.0.0.1/32=150ms") as responder:
            p = prober(f"udp://127.0.0.2:{responder.addresses[0][1]}", timeout=0.05)
            async with running(p):
                (first,) = await p.probe_round(1)
                assert not first.ok and first.error == "timeout"
                assert p.counters["late"] == 0
                # The late reply for seq 1 arrives during round 2: it must not answer round 2.
                await trio.sleep(0.06)
                (second,) = await p.probe_round(2)
                assert not second.ok and second.error == "timeout"
                await trio.sleep(0.2)
            assert p.counters["late"] == 2 and p.counters["received"] == 0


async def test_rogue_duplicated_forged_and_garbage_datagrams_are_counted_and_ignored() -> None:
    rogue = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    await rogue.bind(("127.0.0.9", 0))
    target = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    await target.bind(("127.0.0.2", 0))

    async def evil_echo() -> None:
        while True:
            data, sender = await target.recvfrom(2048)
            reply = decode_reply(data)
            assert reply is not None
            await rogue.sendto(data, sender)  # right payload, wrong source
            await rogue.sendto(b"\xff" * 7, sender)  # garbage from anywhere
            await target.sendto(data[:-1], sender)  # truncated
            await target.sendto(b"LLP1" + b"\0" * 40, sender)  # magic, wrong length
            forged = encode_probe(reply.uplink_id, reply.seq, reply.sent_ns, b"12345678")
            await target.sendto(forged, sender)  # right source, wrong nonce
            await target.sendto(data, sender)  # the real echo
            await target.sendto(data, sender)  # ... twice

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(evil_echo)
            p = prober(f"udp://127.0.0.2:{target.getsockname()[1]}", timeout=0.2)
            async with running(p):
                results = [await p.probe_round(seq) for seq in (10, 11)]
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert [r.ok for (r,) in results] == [True, True]
    assert p.counters == {"sent": 2, "received": 2, "late": 0, "duplicate": 2, "wrong_source": 2,
                          "garbage": 8, "refused": 0, "errors": 0}


async def test_udp_echo_over_ipv6_loopback() -> None:
    if not Path("/proc/net/if_inet6").exists() or "lo" not in Path("/proc/net/if_inet6").read_text():
        pytest.skip("no IPv6 on loopback")
    with trio.fail_after(10):
        async with echo_responder("::1") as responder:
            p = prober(f"udp://[::1]:{responder.addresses[0][1]}", "icmp://[::1]", "udp://127.0.0.2:7", source="::1")
            async with running(p):
                echo, ping, mismatch = await p.probe_round(0)
    assert echo.ok, echo
    assert ping.ok or ping.error == "icmp not permitted", ping
    assert not mismatch.ok and mismatch.error == "address family mismatch"


async def test_probe_round_needs_run() -> None:
    with pytest.raises(RuntimeError, match="run"):
        await prober("udp://127.0.0.2:7").probe_round(0)


# ------------------------------------------------------------------ lab echo responder


async def test_responder_bounds_pending_replies() -> None:
    with trio.fail_after(10):
        async with echo_responder("127.0.0.2", "127.0.0.0/8=100ms", max_pending=2) as responder:
            sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.4", 0))
            for i in range(5):
                await sock.sendto(bytes([i]), responder.addresses[0])
            got = set()
            with trio.move_on_after(0.5):
                while len(got) < 5:
                    got.add((await sock.recv(10))[0])
            sock.close()
    assert got == {0, 1}
    assert responder.counters["dropped"] == 3 and responder.counters["echoed"] == 2


def test_responder_cli_ready_line_and_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.echo", "--listen", "127.0.0.2:0", "--delay", "127.0.0.0/8=1ms..2ms"],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().strip()
        assert line.startswith("echo.ready listen=127.0.0.2:"), line
        port = int(line.rsplit(":", 1)[1])
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"ping", ("127.0.0.2", port))
            assert sock.recvfrom(16) == (b"ping", ("127.0.0.2", port))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "echoed=1" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_responder_cli_bad_delay_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "lab.echo", "--listen", "127.0.0.2:0", "--delay", "x=1ms"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "not a network" in proc.stderr


# ------------------------------------------------------------------ TCP, HTTP, HTTPS


async def test_tcp_connect_ok_and_refused() -> None:
    listener = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    await listener.bind(("127.0.0.2", 0))
    listener.listen(8)  # the kernel completes the handshake; nobody needs to accept
    refused_port = closed_port("127.0.0.3", stdlib_socket.SOCK_STREAM)
    p = prober(f"tcp://127.0.0.2:{listener.getsockname()[1]}", f"tcp://127.0.0.3:{refused_port}")
    with trio.fail_after(10):
        async with running(p):
            open_, refused = await p.probe_round(0)
    listener.close()
    assert open_.ok and open_.rtt is not None and open_.rtt < 0.3
    assert refused.ok and refused.error is None, "an RST proves the path"
    assert p.counters["refused"] == 1 and p.counters["sent"] == 2


async def _read_request(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


@asynccontextmanager
async def http_server(host: str, ssl_context: ssl.SSLContext | None = None
                      ) -> AsyncIterator[tuple[int, list[bytes]]]:
    requests: list[bytes] = []

    async def handler(stream: trio.abc.Stream) -> None:
        try:
            request = await _read_request(stream)
            requests.append(request)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path == b"/fail":
                response = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
            elif path == b"/garbage":
                response = b"SSH-2.0-OpenSSH_9.6\r\n"
            elif path == b"/slow":
                await trio.sleep(1)
                response = b""
            else:
                response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            await stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        if ssl_context is None:
            listeners = await nursery.start(
                lambda task_status: trio.serve_tcp(handler, 0, host=host, task_status=task_status))
        else:
            listeners = await nursery.start(
                lambda task_status: trio.serve_ssl_over_tcp(handler, 0, ssl_context, host=host,
                                                             https_compatible=True, task_status=task_status))
        sock = listeners[0].transport_listener.socket if ssl_context else listeners[0].socket
        yield sock.getsockname()[1], requests
        nursery.cancel_scope.cancel()


async def test_http_ok_503_garbage_and_slow() -> None:
    with trio.fail_after(10):
        async with http_server("127.0.0.2") as (port, requests):
            base = f"http://127.0.0.2:{port}"
            p = prober(f"{base}/ok", f"{base}/fail", f"{base}/garbage", f"{base}/slow",
                       f"http://127.0.0.3:{closed_port('127.0.0.3', stdlib_socket.SOCK_STREAM)}/", timeout=0.3)
            async with running(p):
                ok, fail, garbage, slow, refused = await p.probe_round(0)
    assert ok.ok and ok.rtt is not None
    assert not fail.ok and fail.error == "http 503"
    assert not garbage.ok and garbage.error == "http bad response"
    assert not slow.ok and slow.error == "timeout"
    assert not refused.ok and refused.error == "refused" and p.counters["refused"] == 1
    first = sorted(requests)[-1]  # any one: all have the same shape
    assert first.startswith(b"GET /")
    assert f"Host: 127.0.0.2:{port}\r\n".encode() in first
    assert b"Connection: close\r\n" in first and b"User-Agent: lifeline-probe\r\n" in first


async def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    tls = self_signed_context(tmp_path, "127.0.0.2", "lifeline probe test")
    with trio.fail_after(10):
        async with http_server("127.0.0.2", tls) as (port, requests):
            p = prober(f"https://127.0.0.2:{port}/ok", f"https://127.0.0.2:{port}/fail", timeout=1.0)
            async with running(p):
                ok, fail = await p.probe_round(0)
    assert ok.ok, ok
    assert not fail.ok and fail.error == "http 503"
    assert len(requests) == 2


async def test_https_against_a_plain_http_server_is_a_tls_error() -> None:
    async def plain(stream: trio.SocketStream) -> None:
        # What a plain HTTP server says to a ClientHello.
        try:
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        except trio.BrokenResourceError:
            pass
        await trio.aclose_forcefully(stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(lambda task_status: trio.serve_tcp(plain, 0, host="127.0.0.2",
                                                                               task_status=task_status))
            p = prober(f"https://127.0.0.2:{listeners[0].socket.getsockname()[1]}/ok", timeout=1.0)
            async with running(p):
                (result,) = await p.probe_round(0)
            nursery.cancel_scope.cancel()
    assert not result.ok and result.error == "tls error", result


# ------------------------------------------------------------------ ICMP


async def test_icmp_echo_on_loopback() -> None:
    p = prober("icmp://127.0.0.1", "icmp://127.0.0.2", timeout=0.5)
    with trio.fail_after(10):
        async with running(p):
            rounds = [await p.probe_round(seq) for seq in (0, 1, 65536 + 2)]
    if rounds[0][0].error == "icmp not permitted":
        pytest.skip("neither an unprivileged ping socket nor a raw socket can be opened here")
    for results in rounds:
        for result in results:
            assert result.ok, result
            assert result.rtt is not None and result.rtt < 0.5
    assert p.counters["received"] == 6
    assert p.counters["garbage"] == p.counters["wrong_source"] == p.counters["duplicate"] == 0


async def test_forged_icmp_replies_are_counted_and_ignored() -> None:
    p = prober("icmp://127.0.0.1", timeout=0.5)
    with trio.fail_after(10):
        async with running(p):
            if p.icmp_socket != "raw":
                pytest.skip("forging replies to a ping socket's kernel-chosen id needs the raw path")
            rogue = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_RAW, stdlib_socket.IPPROTO_ICMP)
            await rogue.bind(("127.0.0.5", 0))

            def reply(identifier: int, seq: int, payload: bytes) -> bytes:
                request = encode_icmp_echo(identifier, seq & 0xFFFF, payload)
                body = b"\0\0\0\0" + request[4:]  # type 0 (echo reply), checksum recomputed below
                return body[:2] + internet_checksum(body).to_bytes(2, "big") + body[4:]

            (before,) = await p.probe_round(0)
            valid = encode_probe(p.uplink_id, 0, 0, p.nonce)
            await rogue.sendto(reply(p.icmp_id, 0, b"junk"), ("127.0.0.1", 0))  # garbage
            await rogue.sendto(reply(p.icmp_id, 0, encode_probe(p.uplink_id, 0, 0, b"\1" * 8)), ("127.0.0.1", 0))
            await rogue.sendto(reply(p.icmp_id, 0, valid), ("127.0.0.1", 0))  # right payload, wrong source
            await rogue.sendto(reply(p.icmp_id ^ 1, 0, valid), ("127.0.0.1", 0))  # someone else's ping: not ours
            await trio.sleep(0.05)
            (after,) = await p.probe_round(1)
            rogue.close()
    assert before.ok and after.ok
    assert p.counters["garbage"] == 2 and p.counters["wrong_source"] == 1
    assert p.counters["received"] == 2 and p.counters["duplicate"] == p.counters["late"] == 0


# ------------------------------------------------------------------ DNS


def _question_name(query: bytes) -> str:
    labels, offset = [], 12
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    return ".".join(labels)


@asynccontextmanager
async def fake_resolver() -> AsyncIterator[int]:
    """Answers by the name asked: ok. → NOERROR, nx. → NXDOMAIN, fail. → SERVFAIL,
    garbage. → junk and a reply with another id, spoof. → a NOERROR from another address
    then a REFUSED from the real one; silent. → nothing."""
    sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.2", 0))
    spoofer = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    await spoofer.bind(("127.0.0.3", 0))

    def reply(query: bytes, rcode: int, txid: int | None = None) -> bytes:
        txid = int.from_bytes(query[:2], "big") if txid is None else txid
        return struct.pack("!HHHHHH", txid, 0x8180 | rcode, 1, 0, 0, 0) + query[12:]

    async def loop() -> None:
        while True:
            query, sender = await sock.recvfrom(512)
            name = _question_name(query).split(".")[0]
            if name == "ok":
                await sock.sendto(reply(query, 0), sender)
            elif name == "nx":
                await sock.sendto(reply(query, 3), sender)
            elif name == "fail":
                await sock.sendto(reply(query, 2), sender)
            elif name == "garbage":
                await sock.sendto(b"\x00\x01garbage", sender)
                await sock.sendto(reply(query, 0, txid=int.from_bytes(query[:2], "big") ^ 1), sender)
                await sock.sendto(query, sender)  # the query itself: not a response
            elif name == "spoof":
                await spoofer.sendto(reply(query, 0), sender)
                await trio.sleep(0.01)
                await sock.sendto(reply(query, 5), sender)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        yield sock.getsockname()[1]
        nursery.cancel_scope.cancel()
    sock.close()
    spoofer.close()


async def test_dns_probe_answers() -> None:
    with trio.fail_after(10):
        async with fake_resolver() as port:
            def dns(name: str) -> DnsProber:
                return DnsProber("fibre", SOURCE, "127.0.0.2", name, 0.2, port=port)

            ok = await dns("ok.example").probe(1)
            nx = await dns("nx.example").probe(2)
            fail = dns("fail.example")
            failed = await fail.probe(3)
            garbage = dns("garbage.example")
            junk = await garbage.probe(4)
            spoof = dns("spoof.example")
            spoofed = await spoof.probe(5)
            silent = await dns("silent.example").probe(6)
    assert ok.ok and ok.error is None and ok.rtt is not None
    assert ok.target == f"dns://127.0.0.2:{port}/ok.example" and ok.seq == 1
    assert nx.ok, "NXDOMAIN is an answer: the resolver works"
    assert not failed.ok and failed.error == "dns SERVFAIL"
    assert not junk.ok and junk.error == "dns timeout" and garbage.counters["garbage"] == 3
    assert not spoofed.ok and spoofed.error == "dns REFUSED" and spoof.counters["wrong_source"] == 1
    assert not silent.ok and silent.error == "dns timeout"


def test_dns_prober_rejects_a_bad_name() -> None:
    with pytest.raises(ValueError):
        DnsProber("fibre", SOURCE, "127.0.0.2", "bad..name", 0.2)
    assert DnsProber("fibre", SOURCE, "9.9.9.9", "example.com", 0.2).target == "dns://9.9.9.9/example.com"
    encode_dns_name("ok.example")


# ------------------------------------------------------------------ source address gone


async def test_missing_source_address_never_raises() -> None:
    missing = "192.0.2.77"  # TEST-NET-1: not on this host
    p = prober("udp://127.0.0.2:7", "icmp://127.0.0.2", "tcp://127.0.0.2:80", "http://127.0.0.2/",
               "https://127.0.0.2/", source=missing, timeout=0.1)
    with trio.fail_after(10):
        async with running(p):
            for seq in range(3):
                results = await p.probe_round(seq)
                assert len(results) == 5
                for result in results:
                    assert not result.ok, result
                    if result.target.startswith("icmp") and result.error == "icmp not permitted":
                        continue
                    assert result.error == "no source address", result
        dns = await DnsProber("fibre", missing, "127.0.0.2", "example.com", 0.1).probe(0)
    assert not dns.ok and dns.error == "no source address"


async def test_run_and_probe_survive_a_source_that_appears_later() -> None:
    """The prober keeps retrying a socket it could not open: here the 'address' is fine
    from the start but the socket is dropped, as after a send reporting the address gone."""
    with trio.fail_after(10):
        async with echo_responder("127.0.0.2") as responder:
            p = prober(f"udp://127.0.0.2:{responder.addresses[0][1]}", timeout=0.2)
            async with running(p):
                (before,) = await p.probe_round(0)
                p._close(p._udp, "no source address")  # what a send failing with EADDRNOTAVAIL does
                (after,) = await p.probe_round(1)
    assert before.ok and after.ok, (before, after)

