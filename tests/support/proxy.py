"""A TCP relay the test owns on a replication link: cut it, hold the standby's
acknowledgements, hold the primary's RECORDS frames beyond a seq (the in-sync race and
switchover tests). It reads the frame headers, which are in the clear: the link is
authenticated, not encrypted."""

from __future__ import annotations

import socket
import struct
import threading

from daemon.standby.protocol import HEADER, HEADER_SIZE, FrameType

_FIRST_RECORD = struct.Struct("!IQ")  # a RECORDS body starts with its count, then the first record's seq


class _Pump:
    """One direction of one proxied connection, frame by frame, with a hold."""

    def __init__(self, proxy: "LinkProxy", source: socket.socket, sink: socket.socket, down: bool) -> None:
        self.proxy = proxy
        self.source = source
        self.sink = sink
        self.down = down  # primary -> standby
        self.holding = False
        self.held: list[bytes] = []

    def run(self) -> None:
        buffer = b""
        try:
            while data := self.source.recv(256 * 1024):
                buffer += data
                while len(buffer) >= HEADER_SIZE:
                    length = HEADER.unpack_from(buffer)[4]
                    if len(buffer) < HEADER_SIZE + length:
                        break
                    frame, buffer = buffer[:HEADER_SIZE + length], buffer[HEADER_SIZE + length:]
                    self._frame(frame)
        except OSError:
            pass
        finally:
            # The network lost whatever it held; the other end sees the close.
            with self.proxy.lock:
                self.held.clear()
            for s in (self.sink, self.source):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _frame(self, frame: bytes) -> None:
        kind = HEADER.unpack_from(frame)[2]
        with self.proxy.lock:
            if not self.holding:
                if self.down and kind == FrameType.RECORDS and self.proxy.hold_records_above is not None:
                    count, first = _FIRST_RECORD.unpack_from(frame, HEADER_SIZE)
                    if first + count - 1 > self.proxy.hold_records_above:
                        self.holding = True
                        self.proxy.records_held_from = first
                elif not self.down and kind == FrameType.ACK and self.proxy.hold_acks:
                    self.holding = True
            if self.holding:
                self.held.append(frame)
                return
            self.sink.sendall(frame)

    def release(self) -> None:
        """Under the proxy's lock: send what was held and stop holding."""
        for frame in self.held:
            self.sink.sendall(frame)
        self.held.clear()
        self.holding = False


class LinkProxy:
    """A TCP relay from a standby to a primary's replication port, owned by the test.

    ``cut()`` closes every relayed connection and refuses new ones until ``heal()``.
    ``hold_acks``: standby -> primary, hold everything from the next ACK frame on (the
    handshake passes) until ``release_acks()``. ``hold_records_above``: primary ->
    standby, hold everything from the first RECORDS frame reaching past that seq on;
    held frames are lost when the connection ends."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lock = threading.Lock()
        self.refusing = False
        self.hold_acks = False
        self.hold_records_above: int | None = None
        self.records_held_from: int | None = None
        self.pumps: list[_Pump] = []
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="link-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            for s in (downstream, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                pumps = [_Pump(self, upstream, downstream, down=True), _Pump(self, downstream, upstream, down=False)]
                self.pumps += pumps
                self.sockets += [downstream, upstream]
            for pump in pumps:
                threading.Thread(target=pump.run, daemon=True, name="link-proxy-pump").start()

    def cut(self) -> None:
        with self.lock:
            self.refusing = True
            for pump in self.pumps:
                pump.held.clear()
                pump.holding = False
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.pumps, self.sockets = [], []

    def heal(self) -> None:
        self.refusing = False

    def release_acks(self) -> None:
        with self.lock:
            self.hold_acks = False
            for pump in self.pumps:
                if not pump.down:
                    pump.release()

    def release_records(self) -> None:
        with self.lock:
            for pump in self.pumps:
                if pump.down:
                    pump.release()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()
