"""The enclosure's sans-IO parts: CRC-16/MODBUS, RTU framing on both sides, the register
map, the simulator's answers and the monitor's events. No ports, no threads; the real
serial round trips are in tests/integration/hardware/test_enclosure_serial.py."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core import events
from hardware.enclosure.modbus import (
    NEED_DATA,
    ExceptionReply,
    RegistersReply,
    Request,
    RtuReadTransaction,
    RtuRequestParser,
    crc16_modbus,
    crc_ok,
    exception_response,
    read_request,
    registers_response,
    with_crc,
)
from hardware.enclosure.monitor import EnclosureMonitor
from hardware.enclosure.registers import (
    DEFAULT_MAP,
    PRESETS,
    ClimateReading,
    DoorReading,
    Register,
    RegisterMap,
)
from lab.sim.enclosure import EnclosureSimulator
from tests.support.hardware import Pairs, pairs
from hardware.errors import DeviceGarbage, DeviceTimeout

# A Modbus RTU exchange of an XY-MD02 / SHT20-class sensor (input registers 1-2): 30.5 °C, 54.6 %RH.
GOLDEN_REQUEST = bytes.fromhex("01 04 00 01 00 02 20 0B")
GOLDEN_REPLY = bytes.fromhex("01 04 04 01 31 02 22 2A CE")


def feed_bytewise(txn: RtuReadTransaction, data: bytes) -> list[object]:
    out = []
    for i in range(len(data)):
        txn.receive_data(data[i:i + 1])
        event = txn.next_event()
        if event is not NEED_DATA:
            out.append(event)
    return out


# --- CRC -------------------------------------------------------------------------------


def test_crc_check_value_and_golden_frames() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # the CRC catalogue's check value
    assert with_crc(GOLDEN_REQUEST[:-2]) == GOLDEN_REQUEST
    assert with_crc(GOLDEN_REPLY[:-2]) == GOLDEN_REPLY
    assert crc_ok(GOLDEN_REQUEST) and crc_ok(GOLDEN_REPLY)
    assert not crc_ok(GOLDEN_REPLY[:-1] + b"\xcf")
    assert not crc_ok(b"\x01\x04\x00")  # too short to be a frame


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_crc_matches_pymodbus(data: bytes) -> None:
    """pymodbus's RTU framer is an independent implementation of the same CRC."""
    from pymodbus.framer.rtu import FramerRTU

    # pymodbus returns the CRC byte-swapped (it appends it big-endian); the wire bytes agree.
    assert crc16_modbus(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


def test_read_request_golden_and_limits() -> None:
    assert read_request(1, 4, 1, 2) == GOLDEN_REQUEST
    assert read_request(0x11, 3, 0x006B, 3) == with_crc(bytes.fromhex("11 03 00 6B 00 03"))  # spec example
    for bad in [(0, 4, 1, 2), (248, 4, 1, 2), (1, 6, 1, 2), (1, 4, 1, 0), (1, 4, 1, 126), (1, 4, 0xFFFF, 2)]:
        with pytest.raises(ValueError):
            read_request(*bad)


def test_response_builders_golden() -> None:
    assert registers_response(1, 4, [0x0131, 0x0222]) == GOLDEN_REPLY
    assert exception_response(1, 4, 2) == with_crc(b"\x01\x84\x02")


# --- the master's side -----------------------------------------------------------------


def test_golden_reply_whole_and_one_byte_at_a_time() -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    assert txn.request == GOLDEN_REQUEST
    assert txn.next_event() is NEED_DATA
    txn.receive_data(GOLDEN_REPLY)
    assert txn.next_event() == RegistersReply(1, 4, 1, (0x0131, 0x0222))
    assert txn.next_event() is NEED_DATA  # the reply is given once, and stays in .result
    assert txn.result == RegistersReply(1, 4, 1, (0x0131, 0x0222))

    txn = RtuReadTransaction(1, 4, 1, 2)
    assert feed_bytewise(txn, GOLDEN_REPLY) == [RegistersReply(1, 4, 1, (0x0131, 0x0222))]
    assert txn.discarded == 0 and txn.bad_crc == 0


@pytest.mark.parametrize("cut", range(1, len(GOLDEN_REPLY)))
def test_short_frame_waits_then_fails_as_garbage(cut: int) -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    txn.receive_data(GOLDEN_REPLY[:cut])
    assert txn.next_event() is NEED_DATA
    error = txn.failure("/dev/ttyX", 1.0)
    assert isinstance(error, DeviceGarbage)
    assert "not a Modbus RTU answer" in str(error) and "/dev/ttyX" in str(error)
    txn.receive_data(GOLDEN_REPLY[cut:])  # the rest arrives: the frame completes
    assert isinstance(txn.next_event(), RegistersReply)


def test_nothing_received_is_a_timeout() -> None:
    error = RtuReadTransaction(1, 4, 1, 2).failure("/dev/ttyX", 0.5)
    assert isinstance(error, DeviceTimeout)
    assert str(error).startswith("/dev/ttyX: no answer from Modbus unit 1, input registers 1..2 within 0.5s")


def test_bad_crc_is_skipped_counted_and_reported() -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    txn.receive_data(GOLDEN_REPLY[:-1] + bytes((GOLDEN_REPLY[-1] ^ 0x01,)))
    assert txn.next_event() is NEED_DATA
    assert txn.bad_crc == 1
    error = txn.failure("p", 1)
    assert isinstance(error, DeviceGarbage) and "bad CRC" in str(error)
    # A good frame after the bad one is still found.
    txn.receive_data(GOLDEN_REPLY)
    assert isinstance(txn.next_event(), RegistersReply)


def test_wrong_slave_is_skipped_and_named() -> None:
    foreign = registers_response(7, 4, [1, 2])
    txn = RtuReadTransaction(1, 4, 1, 2)
    txn.receive_data(foreign)
    assert txn.next_event() is NEED_DATA
    assert txn.foreign_units == {7}
    error = txn.failure("p", 1)
    assert isinstance(error, DeviceGarbage) and "unit 7 answered instead of unit 1" in str(error)
    txn.receive_data(GOLDEN_REPLY)
    assert txn.next_event() == RegistersReply(1, 4, 1, (0x0131, 0x0222))


def test_exception_responses() -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    assert feed_bytewise(txn, exception_response(1, 4, 2)) == [ExceptionReply(1, 4, 2)]
    assert ExceptionReply(1, 4, 2).name == "illegal data address"
    assert ExceptionReply(1, 4, 0x33).name == "exception 51"
    # An exception for another function code, or from another unit, is not our answer.
    txn = RtuReadTransaction(1, 4, 1, 2)
    txn.receive_data(exception_response(1, 3, 2) + exception_response(9, 4, 2))
    assert txn.next_event() is NEED_DATA
    assert txn.foreign_units == {9}


def test_wrong_byte_count_and_wrong_function_are_not_answers() -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    txn.receive_data(registers_response(1, 4, [1, 2, 3]))  # 6 bytes where 4 were asked
    txn.receive_data(registers_response(1, 3, [1, 2]))     # holding, not input registers
    assert txn.next_event() is NEED_DATA
    assert isinstance(txn.failure("p", 1), DeviceGarbage)


def test_local_echo_and_noise_before_the_answer() -> None:
    """Half-duplex RS-485 adapters can echo the request; lines pick up noise on switching."""
    txn = RtuReadTransaction(1, 4, 1, 2)
    stream = txn.request + b"\x00\xff\x04" + GOLDEN_REPLY + b"\x00"
    assert feed_bytewise(txn, stream) == [RegistersReply(1, 4, 1, (0x0131, 0x0222))]
    assert txn.discarded == len(txn.request) + 3


def test_exception_reply_inside_an_unfinished_candidate_is_found() -> None:
    # "07 04 04" looks like the start of a 9-byte answer from unit 7; the complete
    # exception answer from our unit inside it must not wait for bytes that never come.
    txn = RtuReadTransaction(1, 4, 1, 2)
    txn.receive_data(b"\x07\x04\x04" + exception_response(1, 4, 4))
    assert txn.next_event() == ExceptionReply(1, 4, 4)


def test_buffer_is_capped() -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    txn.receive_data(b"\x01\x04\x04" + b"\x00" * 2000)
    txn.next_event()
    assert len(txn._buffer) <= RtuReadTransaction.MAX_BUFFER
    assert txn.received == 2003


@settings(max_examples=500)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_random_bytes_in_random_splits_never_raise(data: bytes, splits: list[int]) -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    pos = 0
    for size in splits + [len(data)]:
        txn.receive_data(data[pos:pos + size])
        pos += size
        event = txn.next_event()
        assert event is NEED_DATA or isinstance(event, (RegistersReply, ExceptionReply))
    assert isinstance(txn.failure("p", 1), (DeviceTimeout, DeviceGarbage))


@settings(max_examples=500)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"\x01", b"\x02")), st.integers(1, 12),
       st.binary(max_size=20))
def test_resynchronises_on_the_next_good_frame(noise: bytes, chunk: int, tail: bytes) -> None:
    txn = RtuReadTransaction(1, 4, 1, 2)
    stream = noise + GOLDEN_REPLY + tail
    found = []
    for pos in range(0, len(stream), chunk):
        txn.receive_data(stream[pos:pos + chunk])
        event = txn.next_event()
        if event is not NEED_DATA:
            found.append(event)
    assert found == [RegistersReply(1, 4, 1, (0x0131, 0x0222))]


# --- the slave's side ------------------------------------------------------------------


def test_request_parser_golden_split_noise_and_bad_crc() -> None:
    parser = RtuRequestParser()
    for byte in GOLDEN_REQUEST[:-1]:
        parser.receive_data(bytes((byte,)))
        assert parser.next_request() is NEED_DATA
    parser.receive_data(GOLDEN_REQUEST[-1:])
    assert parser.next_request() == Request(1, 4, 1, 2)

    parser.receive_data(b"\xaa\x55" + GOLDEN_REQUEST[:-1] + b"\x00" + read_request(2, 3, 0x101, 1))
    assert parser.next_request() == Request(2, 3, 0x101, 1)  # the bad-CRC copy was skipped
    assert parser.next_request() is NEED_DATA


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_request_parser_survives_garbage(data: bytes) -> None:
    parser = RtuRequestParser()
    parser.receive_data(data)
    while parser.next_request() is not NEED_DATA:
        pass
    assert len(parser._buffer) < 8


# --- register map ----------------------------------------------------------------------


def test_default_map_decodes_the_golden_reply() -> None:
    assert DEFAULT_MAP.span() == (1, 2)
    assert DEFAULT_MAP.transaction().request == GOLDEN_REQUEST
    reading = DEFAULT_MAP.decode(RegistersReply(1, 4, 1, (0x0131, 0x0222)))
    assert (reading.celsius, reading.humidity_percent) == (30.5, 54.6)
    assert reading.as_dict()["registers"] == {"1": 0x0131, "2": 0x0222}


def test_signed_unsigned_and_scale() -> None:
    assert Register(1, 0.1, signed=True).decode(0xFF33) == -20.5  # the module manual's example
    assert Register(1, 0.1, signed=False).decode(0xFF33) == 6533.1
    assert Register(1, 0.01, signed=True).decode(0x0BEA) == 30.5
    assert Register(1, 1.0, signed=True).decode(0x8000) == -32768
    assert Register(1, 0.1, signed=True).encode(-20.5) == 0xFF33
    with pytest.raises(ValueError):
        Register(1, 0.1, signed=False).encode(-1.0)
    with pytest.raises(ValueError):
        Register(1, 0.0)


@given(st.integers(-400, 1250), st.integers(0, 1000))
def test_encode_decode_round_trip(t10: int, h10: int) -> None:
    values = DEFAULT_MAP.encode(t10 / 10, h10 / 10)
    reply = RegistersReply(1, 4, 1, (values[1], values[2]))
    reading = DEFAULT_MAP.decode(reply)
    assert (reading.celsius, reading.humidity_percent) == (t10 / 10, h10 / 10)


def test_gapped_map_reads_one_span() -> None:
    m = RegisterMap(temperature=Register(10, 0.01, True), humidity=Register(4, 0.01))
    assert m.span() == (4, 7)
    values = [0] * 7
    values[0], values[6] = 4550, 2105
    reading = m.decode(RegistersReply(1, 4, 4, tuple(values)))
    assert (reading.celsius, reading.humidity_percent) == (21.05, 45.5)


def test_implausible_values_are_garbage() -> None:
    # Unsigned temperature register at a sub-zero reading: 0xFF33 → 6533.1 °C.
    wrong = RegisterMap(temperature=Register(1, 0.1, signed=False))
    with pytest.raises(DeviceGarbage, match="implausible temperature 6533.1"):
        wrong.decode(RegistersReply(1, 4, 1, (0xFF33, 500)), where="/dev/ttyX")
    with pytest.raises(DeviceGarbage, match="implausible humidity 546"):
        RegisterMap(humidity=Register(2, 1.0)).decode(RegistersReply(1, 4, 1, (300, 546)))


def test_humidity_optional() -> None:
    m = RegisterMap(humidity=None)
    assert m.span() == (1, 1)
    assert m.decode(RegistersReply(1, 4, 1, (250,))).humidity_percent is None


def test_from_config() -> None:
    assert RegisterMap.from_config({}) == DEFAULT_MAP
    assert RegisterMap.from_config({"preset": "l-com-srth100"}) == PRESETS["l-com-srth100"]
    assert PRESETS["l-com-srth100"].transaction().request == read_request(1, 3, 0, 2)
    m = RegisterMap.from_config({"unit": 5, "function": 3, "temperature_register": 0, "temperature_scale": 1,
                                 "humidity_register": -1})
    assert (m.unit, m.function, m.temperature, m.humidity) == (5, 3, Register(0, 1.0, True), None)
    assert m.name == "xy-md02+custom"
    for bad, match in [({"function": 6}, "function must be 3"), ({"unit": 0}, "unit address"),
                       ({"preset": "nope"}, "unknown register-map preset"), ({"colour": 1}, "unknown register-map key"),
                       ({"unit": "1"}, "unit must be int"), ({"temperature_signed": 1}, "must be bool"),
                       ({"humidity_register": 1}, "share a register")]:
        with pytest.raises(ValueError, match=match):
            RegisterMap.from_config(bad)


# --- simulator answers (sans-IO) -------------------------------------------------------


def test_simulator_answers() -> None:
    sim = EnclosureSimulator(celsius=30.5, percent=54.6)
    try:
        assert sim.answer(Request(1, 4, 1, 2)) == GOLDEN_REPLY
        assert sim.answer(Request(2, 4, 1, 2)) is None and sim.requests == 1  # another unit's request
        assert sim.answer(Request(1, 4, 1, 1)) == registers_response(1, 4, [0x131])
        assert sim.answer(Request(1, 4, 0, 2)) == exception_response(1, 4, 2)   # outside the map
        assert sim.answer(Request(1, 3, 1, 2)) == exception_response(1, 3, 2)   # holding: not there
        assert sim.answer(Request(1, 6, 1, 2)) == exception_response(1, 6, 1)   # writes: not supported
        sim.set(celsius=-20.5)
        assert sim.answer(Request(1, 4, 1, 1)) == registers_response(1, 4, [0xFF33])
        sim.bad_crc = True
        assert not crc_ok(sim.answer(Request(1, 4, 1, 2)) or b"")
        sim.bad_crc, sim.exception_code = False, 4
        assert sim.answer(Request(1, 4, 1, 2)) == exception_response(1, 4, 4)
        sim.exception_code, sim.answer_as_unit = None, 9
        assert (sim.answer(Request(1, 4, 1, 2)) or b"")[0] == 9
        sim.answer_as_unit, sim.silent = None, True
        assert sim.answer(Request(1, 4, 1, 2)) is None
    finally:
        sim.close()


# --- monitor ---------------------------------------------------------------------------


def climate(c: float, h: float | None = 40.0) -> ClimateReading:
    return ClimateReading(celsius=c, humidity_percent=h)


def door(is_open: bool) -> DoorReading:
    return DoorReading(open=is_open, line="cts", asserted=not is_open)


def names(emits: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [name for name, _ in emits]


def test_emits_are_the_contract_events() -> None:
    """Every event the monitor returns is its daemon/core/events.py class, with exactly the
    fields the contract names."""
    m = EnclosureMonitor("rack1", stale_after=5, door_debounce=0)
    emitted = m.reading(climate(50, 95), 0) + m.reading(door(True), 0) + m.reading(door(False), 1) + m.tick(100)
    emitted += m.reading(climate(20), 101)
    emits = pairs(emitted)
    assert names(emits) == ["EnclosureTemperatureHigh", "EnclosureHumidityHigh", "EnclosureOpened",
                            "EnclosureClosed", "DeviceStale", "DeviceStale", "DeviceRecovered"]
    for event, (name, fields) in zip(emitted, emits):
        cls = getattr(events, name)
        assert type(event) is cls  # the monitor returns the daemon's own event objects
        declared = {f.name for f in dataclasses.fields(cls)} - {"source", "wall_time", "sequence"}
        assert set(fields) == declared, name
        assert event.kind == name


def test_temperature_threshold_and_hysteresis() -> None:
    m = Pairs(EnclosureMonitor("rack1", temperature_high=35, temperature_hysteresis=2))
    assert m.reading(climate(34.9), 0) == []
    assert m.reading(climate(35.0), 0.5) == []      # "above" the threshold, as the config says
    assert m.reading(climate(35.1), 1) == [("EnclosureTemperatureHigh",
                                            {"device": "rack1", "celsius": 35.1, "threshold_c": 35})]
    assert m.reading(climate(40), 2) == []          # still high: no repeat
    assert m.reading(climate(33.5), 3) == []        # inside the hysteresis band: still alarmed
    assert m.reading(climate(35.5), 4) == []
    assert m.reading(climate(33.0), 5) == []        # 35 - 2: re-armed
    assert names(m.reading(climate(35.2), 6)) == ["EnclosureTemperatureHigh"]


def test_humidity_threshold_and_hysteresis() -> None:
    m = Pairs(EnclosureMonitor("rack1", humidity_high=80, humidity_hysteresis=5))
    assert m.reading(climate(20, 79), 0) == []
    assert m.reading(climate(20, 81), 1) == [("EnclosureHumidityHigh",
                                              {"device": "rack1", "percent": 81, "threshold_percent": 80})]
    assert m.reading(climate(20, 76), 2) == []
    assert m.reading(climate(20, 82), 3) == []
    assert m.reading(climate(20, None), 4) == []    # a sensor without humidity changes nothing
    assert m.reading(climate(20, 75), 5) == []
    assert m.reading(climate(20, 80), 6) == []
    assert names(m.reading(climate(20, 80.1), 7)) == ["EnclosureHumidityHigh"]


def test_door_debounce() -> None:
    m = Pairs(EnclosureMonitor("rack1", door_debounce=0.5))
    assert m.reading(door(False), 0.0) == []        # closed at start: the normal state
    assert m.reading(door(True), 1.0) == []         # opened: not yet held long enough
    assert m.reading(door(False), 1.2) == []        # a bounce
    assert m.reading(door(True), 2.0) == []
    assert m.reading(door(True), 2.4) == []
    assert m.reading(door(True), 2.5) == [("EnclosureOpened", {"device": "rack1"})]
    assert m.reading(door(True), 3.0) == []         # once
    assert m.door_open
    assert m.reading(door(False), 4.0) == []
    assert m.tick(10.0) == []                       # a tick never confirms: only readings do
    assert m.reading(door(False), 10.0) == [("EnclosureClosed", {"device": "rack1"})]


def test_door_already_open_at_start_is_reported() -> None:
    m = Pairs(EnclosureMonitor("rack1", door_debounce=0))
    assert m.reading(door(True), 0) == [("EnclosureOpened", {"device": "rack1"})]


def test_stale_on_silence_and_recovery() -> None:
    m = Pairs(EnclosureMonitor("rack1", stale_after=10))
    assert m.tick(100.0) == []                      # the clock starts at the first tick
    assert m.reading(climate(20), 101.0) == []
    assert m.reading(door(False), 101.0) == []
    assert m.tick(110.9) == []
    assert m.tick(111.0) == [
        ("DeviceStale", {"device": "rack1", "device_type": "enclosure", "silent_s": 10.0}),
        ("DeviceStale", {"device": "rack1", "device_type": "door", "silent_s": 10.0}),
    ]
    assert m.tick(200.0) == []                      # once
    snap = m.snapshot(200.0)
    assert snap["climate"]["stale"] and snap["door"]["stale"]
    assert snap["climate"]["celsius"] == 20 and snap["climate"]["age_s"] == 99.0
    assert m.reading(climate(20), 201.0) == [("DeviceRecovered", {"device": "rack1", "device_type": "enclosure"})]
    assert not m.snapshot(201.0)["climate"]["stale"] and m.snapshot(201.0)["door"]["stale"]
    # the door went on being silent; the climate sensor is fresh: only the door is counted
    assert m.tick(300.0) == [("DeviceStale", {"device": "rack1", "device_type": "enclosure", "silent_s": 99.0})]


def test_never_answered_goes_stale_and_is_never_healthy() -> None:
    m = Pairs(EnclosureMonitor("rack1", stale_after=5, door=False))
    assert m.snapshot(0)["climate"]["stale"]        # no reading yet: not healthy
    assert "door" not in m.snapshot(0)
    assert m.tick(0) == []
    assert m.tick(5) == [("DeviceStale", {"device": "rack1", "device_type": "enclosure", "silent_s": 5})]
    with pytest.raises(ValueError, match="door=False"):
        m.reading(door(True), 6)


def test_recovery_keeps_a_standing_alarm_latched() -> None:
    m = Pairs(EnclosureMonitor("rack1", stale_after=5, temperature_high=30, door=False))
    assert names(m.reading(climate(31), 0)) == ["EnclosureTemperatureHigh"]
    assert names(m.tick(10)) == ["DeviceStale"]
    assert names(m.reading(climate(31), 11)) == ["DeviceRecovered"]  # still hot: no second alarm
    assert m.snapshot(11)["climate"]["temperature_high"]


def test_monitor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Pairs(EnclosureMonitor("x", stale_after=0))
    with pytest.raises(ValueError):
        Pairs(EnclosureMonitor("x", temperature_hysteresis=-1))
    with pytest.raises(TypeError):
        Pairs(EnclosureMonitor("x")).reading(struct, 0)  # type: ignore[arg-type]
