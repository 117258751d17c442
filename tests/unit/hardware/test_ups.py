"""The UPS protocol core, runtime estimate, NUT line parsing, monitor and the simulator's
device side — no I/O. Hypothesis example counts: LIFELINE_HYPOTHESIS_EXAMPLES (default 300;
the issue's acceptance run uses 100000)."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError
from hardware.ups.monitor import UpsMonitor
from hardware.ups.nut import NutError, nut_error, parse_nut_url, parse_nut_var, quote_nut, split_nut_line
from hardware.ups.q1 import (
    LineFramer,
    Q1Info,
    Q1Ratings,
    Q1Status,
    format_info,
    format_q1,
    format_ratings,
    parse_info,
    parse_q1,
    parse_ratings,
    request,
)
from hardware.ups.reading import UpsReading, parse_nut_status, reading_from_nut, reading_from_q1
from hardware.ups.runtime import RuntimeCalibration, RuntimeEstimator, battery_packs
from lab.sim.ups import FakeUpsd, Simulator, UpsSimState
from tests.support.hardware import Pairs

EXAMPLES = int(os.environ.get("LIFELINE_HYPOTHESIS_EXAMPLES", "300"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# megatec.txt's example (bypass active, UPS failed) and NUT's canned test replies.
MEGATEC_EXAMPLE = b"(208.4 140.0 208.4 034 59.9 2.05 35.0 00110000\r"
NUT_TESTING = b"(215.0 195.0 230.0 014 49.0 22.7 30.0 00000000\r"
NUT_CODE_COMMENT = b"(226.0 195.0 226.0 014 49.0 27.5 30.0 00001000\r"
GOOD = b"(230.0 230.0 230.0 020 50.0 2.27 30.0 00000001\r"


def q1(bits: str, *, vi: str = "230.0", vo: str = "230.0") -> bytes:
    return f"({vi} 230.0 {vo} 020 50.0 2.27 30.0 {bits}\r".encode()


# ------------------------------------------------------------------ Q1 golden frames


def test_megatec_example_every_field() -> None:
    s = parse_q1(MEGATEC_EXAMPLE)
    assert (s.input_v, s.input_fault_v, s.output_v, s.load_percent, s.frequency_hz, s.battery_v,
            s.temperature_c) == (208.4, 140.0, 208.4, 34.0, 59.9, 2.05, 35.0)
    assert s.bits == "00110000"
    assert s.bypass_active and s.ups_failed
    assert not (s.utility_fail or s.battery_low or s.standby_type or s.test_in_progress
                or s.shutdown_active or s.beeper_on)
    assert s.nut_status() == ("OL", "BYPASS")
    r = reading_from_q1(s)
    assert r.alarm == "UPS selftest failed!" and r.ups_type == "online" and r.beeper is False
    assert not r.on_battery and not r.battery_low


def test_nut_canned_replies() -> None:
    s = parse_q1(NUT_TESTING)
    assert s.battery_v == 22.7 and s.nut_status() == ("OL",)
    s = parse_q1(NUT_CODE_COMMENT)
    assert s.standby_type and reading_from_q1(s).ups_type == "offline / line interactive"


@pytest.mark.parametrize(
    "index, name, tokens",
    [
        (0, "utility_fail", ("OB",)),
        (1, "battery_low", ("OL", "LB")),
        (2, "bypass_active", ("OL", "BYPASS")),
        (3, "ups_failed", ("OL",)),
        (4, "standby_type", ("OL",)),
        (5, "test_in_progress", ("OL", "CAL")),
        (6, "shutdown_active", ("OL", "FSD")),
        (7, "beeper_on", ("OL",)),
    ],
)
def test_each_status_bit(index: int, name: str, tokens: tuple[str, ...]) -> None:
    bits = "".join("1" if i == index else "0" for i in range(8))
    s = parse_q1(q1(bits))
    set_flags = [n for n in ("utility_fail", "battery_low", "bypass_active", "ups_failed", "standby_type",
                             "test_in_progress", "shutdown_active", "beeper_on") if getattr(s, n)]
    assert set_flags == [name]
    assert s.nut_status() == tokens
    assert s.bits == bits


def test_fsd_counts_as_on_battery_and_low() -> None:
    r = reading_from_q1(parse_q1(q1("00000010")))
    assert r.on_battery and r.battery_low
    assert r.alarm == "Shutdown imminent!"


def test_on_battery_low_together() -> None:
    r = reading_from_q1(parse_q1(q1("11000000")))
    assert r.status == ("OB", "LB") and r.on_battery and r.battery_low


@pytest.mark.parametrize(
    "vi, vo, token",
    [("230.0", "200.0", "TRIM"), ("230.0", "230.0", "BYPASS"), ("200.0", "230.0", "BOOST"),
     ("230.0", "100.0", None), ("100.0", "230.0", None)],
)
def test_bypass_bit_is_trim_bypass_or_boost_by_voltage_ratio(vi: str, vo: str, token: str | None) -> None:
    status = parse_q1(q1("00100000", vi=vi, vo=vo)).nut_status()
    assert status == (("OL", token) if token else ("OL",))


def test_unsupported_fields_are_none() -> None:
    s = parse_q1(b"(230.0 @@@@@ 230.0 @@@ 50.0 @.@@ @@@@ 00000000\r")
    assert s.input_fault_v is None and s.load_percent is None and s.battery_v is None
    assert s.temperature_c is None and s.input_v == 230.0
    s = parse_q1(b"(230.0 230.0 230.0 020 50.0 27.4 --.- 00000000")
    assert s.temperature_c is None and s.battery_v == 27.4


def test_standby_unit_battery_voltage_and_no_cr() -> None:
    assert parse_q1(b"(230.0 230.0 230.0 020 50.0 13.6 30.0 00001000").battery_v == 13.6


def test_format_q1_round_trips_and_is_47_bytes() -> None:
    for frame in (MEGATEC_EXAMPLE, NUT_TESTING, NUT_CODE_COMMENT, GOOD):
        assert format_q1(parse_q1(frame)) == frame
        assert len(frame) == 47
    assert format_q1(Q1Status()) == b"(@@@@@ @@@@@ @@@@@ @@@ @@@@ @@@@ @@@@ 00000000\r"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\r",
        b"Q1\r",  # echoed: the UPS does not know Q1
        b"230.0 230.0 230.0 020 50.0 2.27 30.0 00000000\r",  # no '('
        b"#230.0 230.0 230.0 020 50.0 2.27 30.0 00000000\r",
        b"(230.0 230.0 230.0 020 50.0 2.27 30.0\r",  # 7 fields
        b"(230.0 230.0 230.0 020 50.0 2.27 30.0 00000000 1\r",  # 9 fields
        b"(230.0 230.0 230.0 020 50.0 2.27 30.0 0000000\r",  # 7 bits
        b"(230.0 230.0 230.0 020 50.0 2.27 30.0 000000002\r",
        b"(230.0 230.0 230.0 020 50.0 2.27 30.0 0000x000\r",
        b"(230.0 230.0 2x0.0 020 50.0 2.27 30.0 00000000\r",
        b"(230.0 230.0 230.0 020 50.0 2.2.7 30.0 00000000\r",
        b"(230.0 230.0 230.0 020 50.0 inf 30.0 00000000\r",
        b"(230.0 230.0 230.0 020 50.0 nan 30.0 00000000\r",
        b"(230.0 230.0 230.0 020 50.0 1e3 30.0 00000000\r",
        b"(230.0 230.0 \xff230.0 020 50.0 2.27 30.0 00000000\r",
        b"(230.0 230.0 230.0\x00 020 50.0 2.27 30.0 00000000\r",
        b"(ACK\r",
        b"(NAK\r",
    ],
)
def test_q1_garbage(line: bytes) -> None:
    with pytest.raises(DeviceGarbage):
        parse_q1(line)


def test_q1_echo_message_says_unsupported() -> None:
    with pytest.raises(DeviceGarbage, match="does not know"):
        parse_q1(b"Q1\r")


# ------------------------------------------------------------------ F and I


def test_ratings_golden() -> None:
    r = parse_ratings(b"#230.0 000 024.0 50.0\r")
    assert r == Q1Ratings(230.0, 0.0, 24.0, 50.0)
    assert format_ratings(r) == b"#230.0 000 024.0 50.0\r"
    assert parse_ratings(b"#220.0 000 024.0 50.0") == Q1Ratings(220.0, 0.0, 24.0, 50.0)
    assert parse_ratings(b"#120.0 004 @@.@@ 60.0\r").battery_v is None


@pytest.mark.parametrize("line", [b"F\r", b"(230.0 000 024.0 50.0\r", b"#230.0 000 024.0\r",
                                  b"#230.0 000 024.0 50.0 1\r", b"#230.0 abc 024.0 50.0\r", b"#\xff\r"])
def test_ratings_garbage(line: bytes) -> None:
    with pytest.raises(DeviceGarbage):
        parse_ratings(line)


def test_info_golden() -> None:
    assert parse_info(b"#NOT_A_LIVE_UPS  TESTING    TESTING   \r") == Q1Info("NOT_A_LIVE_UPS", "TESTING", "TESTING")
    assert parse_info(b"#-------------   ------     VT12046Q  \r") == Q1Info("-------------", "------", "VT12046Q")
    info = Q1Info("Megatec", "SU1000", "V1.2")
    assert parse_info(format_info(info)) == info
    assert len(format_info(info)) == 39
    assert parse_info(b"#ACME") == Q1Info("ACME", "", "")


@pytest.mark.parametrize("line", [b"I\r", b"#\r", b"#    \r", b"(ACME\r", b"#AC\x01ME\r"])
def test_info_garbage(line: bytes) -> None:
    with pytest.raises(DeviceGarbage):
        parse_info(line)


def test_request_bytes() -> None:
    assert request("Q1") == b"Q1\r" and request("F") == b"F\r" and request("I") == b"I\r"


# ------------------------------------------------------------------ framing


def test_framer_every_split_offset() -> None:
    stream = GOOD + NUT_TESTING + b"\n" + MEGATEC_EXAMPLE
    for cut in range(len(stream) + 1):
        framer = LineFramer()
        lines = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert [parse_q1(line) for line in lines] == [parse_q1(GOOD), parse_q1(NUT_TESTING),
                                                     parse_q1(MEGATEC_EXAMPLE)]


def test_framer_one_byte_at_a_time() -> None:
    framer = LineFramer()
    lines = [line for b in GOOD * 3 for line in framer.feed(bytes([b]))]
    assert lines == [GOOD[:-1]] * 3


def test_framer_drops_an_overlong_run_and_resynchronizes() -> None:
    framer = LineFramer()
    assert framer.feed(b"x" * 500) == []
    assert framer.feed(b"y" * 500) == []
    assert framer.feed(b"tail\r" + GOOD) == [GOOD[:-1]]
    assert framer.dropped == 1
    assert framer.feed(b"z" * 200 + b"\r") == []
    assert framer.dropped == 2


def test_framer_clear_drops_a_partial_line() -> None:
    framer = LineFramer()
    framer.feed(b"(230.0 23")
    framer.clear()
    assert framer.feed(GOOD) == [GOOD[:-1]]


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_device_garbage(data: bytes) -> None:
    for parse in (parse_q1, parse_ratings, parse_info):
        try:
            parse(data)
        except DeviceGarbage:
            pass


@PROPERTY
@given(st.text(alphabet="()#@-. 0123456789\r", max_size=80))
def test_plausible_text_only_ever_raises_device_garbage(text: str) -> None:
    for parse in (parse_q1, parse_ratings, parse_info):
        try:
            parse(text.encode())
        except DeviceGarbage:
            pass


@PROPERTY
@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=8))
def test_noise_then_a_good_frame_resynchronizes_at_any_split(noise: bytes, cuts: list[int]) -> None:
    stream = noise + b"\r" + GOOD
    framer = LineFramer()
    lines: list[bytes] = []
    start = 0
    for cut in sorted(c for c in cuts if c <= len(stream)) + [len(stream)]:
        lines += framer.feed(stream[start:cut])
        start = cut
    assert lines and lines[-1] == GOOD[:-1]
    for line in lines[:-1]:
        try:
            parse_q1(line)
        except DeviceGarbage:
            pass
    assert parse_q1(lines[-1]) == parse_q1(GOOD)


@pytest.mark.parametrize("at", range(1, len(GOOD) - 1))
def test_every_truncation_is_garbage(at: int) -> None:
    with pytest.raises(DeviceGarbage):
        parse_q1(GOOD[:at])


@PROPERTY
@given(st.integers(1, len(GOOD) - 2), st.binary(min_size=1, max_size=20))
def test_truncated_frame_with_line_noise_never_raises_anything_else(at: int, junk: bytes) -> None:
    try:
        parse_q1(GOOD[:at] + junk)
    except DeviceGarbage:
        pass


@PROPERTY
@given(st.builds(
    Q1Status,
    *[st.one_of(st.none(), st.decimals(0, 999, places=1).map(float)) for _ in range(3)],
    st.one_of(st.none(), st.integers(0, 999).map(float)),
    st.one_of(st.none(), st.decimals(0, 99, places=1).map(float)),
    st.one_of(st.none(), st.decimals(0, "9.99", places=2).map(float), st.decimals(10, 99, places=1).map(float)),
    st.one_of(st.none(), st.decimals(0, 99, places=1).map(float)),
    *[st.booleans() for _ in range(8)],
))
def test_format_parse_round_trip(status: Q1Status) -> None:
    assert parse_q1(format_q1(status)) == status


# ------------------------------------------------------------------ runtime estimate


def test_calibration_like_blazer() -> None:
    cal = RuntimeCalibration.parse("300,100,900,50")
    assert cal.exponent == pytest.approx(math.log(3) / math.log(2))
    assert cal.nominal_s == pytest.approx(300)
    cal = RuntimeCalibration(240, 80, 720, 40)
    assert cal.nominal_s == pytest.approx(240 * 0.8 ** cal.exponent)


@pytest.mark.parametrize("text", ["", "1,2,3", "a,b,c,d", "0,100,900,50", "900,100,300,50",
                                  "300,50,900,100", "300,100,900,0", "300,120,900,50", "300,50,900,50"])
def test_calibration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        RuntimeCalibration.parse(text)


def test_battery_packs_like_blazer() -> None:
    assert battery_packs(24.0, 2.27) == 12  # per-cell report of a 24 V battery
    assert battery_packs(24.0, 27.3) == 1
    assert battery_packs(12.0, 13.6) == 1
    assert battery_packs(240.0, 2.25) == 120
    assert battery_packs(24.0, 200.0) is None


def test_estimator_anchors_on_voltage_then_drains_and_recharges() -> None:
    cal = RuntimeCalibration(300, 100, 900, 50)  # nominal 300 s at 100 %
    est = RuntimeEstimator(cal, battery_v_nominal=24.0)
    online = Q1Status(load_percent=50.0, battery_v=2.27)
    charge, runtime = est.update(online, now=0.0)
    assert est.packs == 12
    expected_charge = 100 * (12 * 2.27 - 24) / (0.15 * 24)
    assert charge == pytest.approx(expected_charge)
    load_eff = 0.5 ** cal.exponent  # 1/3
    assert runtime == pytest.approx(300 * expected_charge / 100 / load_eff)
    # 100 s on battery at 50 % load drains 100 * load_eff seconds of full-load runtime.
    on_battery = Q1Status(load_percent=50.0, battery_v=2.10, utility_fail=True)
    before = est.estimate_s
    _, runtime = est.update(on_battery, now=100.0)
    assert est.estimate_s == pytest.approx(before - 100 * load_eff)
    assert runtime == pytest.approx(est.estimate_s / load_eff)
    # Drains to zero, never below.
    charge, runtime = est.update(on_battery, now=10_000.0)
    assert charge == 0 and runtime == 0
    # Back on line: recharges nominal * dt / chargetime.
    charge, _ = est.update(online, now=10_000.0 + 4320.0)
    assert charge == pytest.approx(10.0)
    charge, _ = est.update(online, now=1e9)
    assert charge == pytest.approx(100.0)


def test_estimator_idle_load_floor_and_unknown_load() -> None:
    est = RuntimeEstimator(RuntimeCalibration(300, 100, 900, 50), battery_v_nominal=24.0, idle_load=0.1)
    assert est.effective_load(0.0) == 0.1
    assert est.effective_load(None) == 1.0
    assert est.effective_load(100.0) == pytest.approx(1.0)


def test_estimator_without_nominal_voltage_gives_none_until_it_knows() -> None:
    est = RuntimeEstimator(RuntimeCalibration(300, 100, 900, 50))
    s = Q1Status(load_percent=50.0, battery_v=27.6)
    assert est.update(s, 0.0) == (None, None)
    est.battery_v_nominal = 24.0
    charge, runtime = est.update(s, 1.0)
    assert charge == pytest.approx(100.0) and runtime is not None
    assert RuntimeEstimator(RuntimeCalibration(300, 100, 900, 50), battery_v_nominal=24.0).update(
        Q1Status(load_percent=50.0), 0.0) == (None, None)


def test_estimator_charge_is_clamped() -> None:
    est = RuntimeEstimator(RuntimeCalibration(300, 100, 900, 50), battery_v_nominal=24.0, battery_packs=1)
    assert est.update(Q1Status(battery_v=20.0), 0.0)[0] == 0.0
    est = RuntimeEstimator(RuntimeCalibration(300, 100, 900, 50), battery_v_nominal=24.0, battery_packs=1)
    assert est.update(Q1Status(battery_v=30.0), 0.0)[0] == 100.0


# ------------------------------------------------------------------ NUT lines


def test_split_nut_line() -> None:
    assert split_nut_line('VAR su700 ups.status "OL"') == ["VAR", "su700", "ups.status", "OL"]
    assert split_nut_line('VAR su700 ups.mfr "American Power"') == ["VAR", "su700", "ups.mfr", "American Power"]
    assert split_nut_line(r'VAR u x "a \"q\" b\\c"') == ["VAR", "u", "x", 'a "q" b\\c']
    assert split_nut_line('VAR u x ""') == ["VAR", "u", "x", ""]
    assert split_nut_line("  BEGIN   LIST VAR u ") == ["BEGIN", "LIST", "VAR", "u"]
    for value in ("plain", 'with "quotes"', "back\\slash", ""):
        assert split_nut_line(f"VAR u x {quote_nut(value)}")[3] == value
    with pytest.raises(DeviceGarbage):
        split_nut_line('VAR u x "open')
    with pytest.raises(DeviceGarbage):
        split_nut_line("VAR u x trailing\\")


@PROPERTY
@given(st.text(max_size=200))
def test_split_nut_line_only_raises_device_garbage(text: str) -> None:
    try:
        split_nut_line(text)
    except DeviceGarbage:
        pass


@PROPERTY
@given(st.text(max_size=80))
def test_nut_quote_round_trip(value: str) -> None:
    assert split_nut_line(f"VAR u x {quote_nut(value)}") == ["VAR", "u", "x", value]


@pytest.mark.parametrize(
    "value, tokens",
    [("OL", ("OL",)), ("OB DISCHRG", ("OB", "DISCHRG")), ("OB LB", ("OB", "LB")), ("ol chrg", ("OL", "CHRG")),
     ("FSD OB LB", ("FSD", "OB", "LB")), ("OL BYPASS", ("OL", "BYPASS"))],
)
def test_nut_status(value: str, tokens: tuple[str, ...]) -> None:
    assert parse_nut_status(value) == tokens


@pytest.mark.parametrize("value", [None, "", "WAIT", "OFF", "LB", "CHRG"])
def test_nut_status_without_ol_or_ob_is_garbage(value: str | None) -> None:
    with pytest.raises(DeviceGarbage):
        parse_nut_status(value)


def test_reading_from_nut() -> None:
    r = reading_from_nut({"ups.status": "OB DISCHRG", "battery.runtime": "540", "battery.charge": "63",
                          "battery.voltage": "25.1", "input.voltage": "0.0", "ups.load": "41",
                          "ups.temperature": "bogus", "ups.beeper.status": "enabled"})
    assert r.on_battery and not r.battery_low and r.runtime_s == 540 and r.battery_charge == 63
    assert r.battery_v == 25.1 and r.load_percent == 41 and r.temperature_c is None and r.beeper is True
    assert r.source == "nut"
    fsd = reading_from_nut({"ups.status": "FSD OL"})
    assert fsd.on_battery and fsd.battery_low and fsd.runtime_s is None
    assert reading_from_nut({"ups.status": "OL", "battery.runtime": "nan"}).runtime_s is None


def test_nut_errors_map_to_hardware_errors() -> None:
    assert isinstance(nut_error("DATA-STALE", "w"), DeviceTimeout)
    assert isinstance(nut_error("DRIVER-NOT-CONNECTED", "w"), DeviceTimeout)
    err = nut_error("UNKNOWN-UPS", "w")
    assert isinstance(err, NutError) and isinstance(err, HardwareError) and "UPS name" in str(err)
    with pytest.raises(DeviceTimeout):
        parse_nut_var(["ERR", "DATA-STALE"], "u", "w")
    with pytest.raises(DeviceGarbage):
        parse_nut_var(["VAR", "other", "x", "1"], "u", "w")
    with pytest.raises(DeviceGarbage):
        parse_nut_var(["VAR", "u", "x"], "u", "w")
    assert parse_nut_var(["VAR", "u", "battery.runtime", "300"], "u", "w") == ("battery.runtime", "300")


@pytest.mark.parametrize(
    "url, parsed",
    [("nut://10.0.0.5:3493/su700", ("10.0.0.5", 3493, "su700")), ("nut://localhost/ups", ("localhost", 3493, "ups")),
     ("nut://[::1]:4000/ups", ("::1", 4000, "ups"))],
)
def test_parse_nut_url(url: str, parsed: tuple[str, int, str]) -> None:
    assert parse_nut_url(url) == parsed


@pytest.mark.parametrize("url", ["nut://host", "nut://host:3493/", "nut://:3493/ups", "nut://h:x/ups",
                                 "tcp://h/ups", "nut://h/a/b"])
def test_parse_nut_url_rejects(url: str) -> None:
    with pytest.raises(HardwareError):
        parse_nut_url(url)


def test_fake_upsd_answers_like_upsd() -> None:
    fake = FakeUpsd("su700")
    assert fake.respond("GET VAR su700 ups.status") == ['VAR su700 ups.status "OL"']
    assert fake.respond("GET VAR su700 nope") == ["ERR VAR-NOT-SUPPORTED"]
    assert fake.respond("GET VAR other ups.status") == ["ERR UNKNOWN-UPS"]
    lines = fake.respond("LIST VAR su700")
    assert lines is not None and lines[0] == "BEGIN LIST VAR su700" and lines[-1] == "END LIST VAR su700"
    variables = dict(parse_nut_var(split_nut_line(line), "su700", "w") for line in lines[1:-1])
    assert reading_from_nut(variables).status == ("OL",)
    fake.set(on_battery=True, runtime_s=300)
    assert fake.variables["ups.status"] == "OB" and fake.variables["battery.runtime"] == "300"
    fake.set(battery_low=True)
    assert fake.variables["ups.status"] == "OB LB"
    fake.set(on_battery=False, battery_low=False)
    assert fake.variables["ups.status"] == "OL"
    fake.set(mode="stale")
    assert fake.respond("LIST VAR su700") == ["ERR DATA-STALE"]
    fake.set(mode="silent")
    assert fake.respond("LIST VAR su700") is None
    with pytest.raises(ValueError):
        fake.set(mode="bogus")


# ------------------------------------------------------------------ monitor


def reading(status: str = "OL", *, runtime: float | None = None, battery_v: float | None = 2.2) -> UpsReading:
    return UpsReading(source="q1", status=tuple(status.split()), runtime_s=runtime, battery_v=battery_v)


def names(emits: list) -> list[str]:
    return [name for name, _ in emits]


def test_monitor_outage_sequence() -> None:
    m = Pairs(UpsMonitor("ups1", runtime_threshold_s=300, runtime_hysteresis_s=60, stale_after=10))
    assert m.reading(reading("OL", runtime=1800), 0) == []
    assert m.reading(reading("OB", runtime=900), 1) == [("UpsOnBattery", {"device": "ups1", "runtime_s": 900})]
    assert m.reading(reading("OB", runtime=600), 2) == []
    assert m.reading(reading("OB", runtime=299), 3) == [
        ("UpsRuntimeBelow", {"device": "ups1", "runtime_s": 299, "threshold_s": 300})]
    # Jitter around the threshold (load changes) stays quiet inside the hysteresis band.
    assert m.reading(reading("OB", runtime=340), 4) == []
    assert m.reading(reading("OB", runtime=290), 5) == []
    # Rising past threshold + hysteresis re-arms; falling again reports again.
    assert m.reading(reading("OB", runtime=360), 6) == []
    assert names(m.reading(reading("OB", runtime=200), 7)) == ["UpsRuntimeBelow"]
    assert m.reading(reading("OB LB", runtime=100, battery_v=1.9), 8) == [
        ("UpsBatteryLow", {"device": "ups1", "battery_v": 1.9})]
    assert m.reading(reading("OB", runtime=90), 9) == []  # LB flapping on battery: once per outage
    assert m.reading(reading("OB LB", runtime=80), 10) == []
    assert m.reading(reading("OL", runtime=80), 11) == [("UpsOnline", {"device": "ups1"})]
    assert m.reading(reading("OL", runtime=100), 12) == []
    # The next outage reports everything again.
    assert names(m.reading(reading("OB LB", runtime=60), 13)) == ["UpsOnBattery", "UpsBatteryLow", "UpsRuntimeBelow"]


def test_monitor_first_reading() -> None:
    assert Pairs(UpsMonitor("u")).reading(reading("OL"), 0) == []
    assert names(Pairs(UpsMonitor("u")).reading(reading("OB"), 0)) == ["UpsOnBattery"]
    assert names(Pairs(UpsMonitor("u")).reading(reading("OL LB"), 0)) == ["UpsBatteryLow"]  # recharging, still low
    assert names(Pairs(UpsMonitor("u")).reading(reading("FSD"), 0)) == ["UpsOnBattery", "UpsBatteryLow"]


def test_monitor_runtime_on_line_raises_nothing_and_none_runtime_is_ignored() -> None:
    m = Pairs(UpsMonitor("u", runtime_threshold_s=300))
    assert m.reading(reading("OL", runtime=100), 0) == []
    assert names(m.reading(reading("OB", runtime=None), 1)) == ["UpsOnBattery"]
    assert m.reading(reading("OB", runtime=None), 2) == []
    assert names(m.reading(reading("OB", runtime=10), 3)) == ["UpsRuntimeBelow"]
    assert Pairs(UpsMonitor("u")).reading(reading("OB", runtime=1), 0) == [("UpsOnBattery", {"device": "u", "runtime_s": 1})]


def test_monitor_low_battery_rearms_only_on_line_without_lb() -> None:
    m = Pairs(UpsMonitor("u"))
    m.reading(reading("OL LB"), 0)
    assert m.reading(reading("OL LB"), 1) == []
    assert m.reading(reading("OL"), 2) == []
    assert names(m.reading(reading("OL LB"), 3)) == ["UpsBatteryLow"]


def test_monitor_staleness() -> None:
    m = Pairs(UpsMonitor("u", stale_after=30))
    assert m.tick(100) == []  # the first call starts the clock
    assert m.tick(129.9) == []
    assert m.tick(130) == [("DeviceStale", {"device": "u", "device_type": "ups", "silent_s": 30})]
    assert m.tick(500) == []  # once
    snap = m.snapshot(500)
    assert snap["stale"] and not snap["healthy"] and snap["reading"] is None
    assert m.reading(reading("OL"), 501) == [("DeviceRecovered", {"device": "u", "device_type": "ups"})]
    assert m.snapshot(502)["healthy"]
    assert m.tick(530) == []
    assert m.snapshot(531.5)["stale"] and not m.snapshot(531.5)["healthy"]  # silent past stale_after, before tick
    assert m.tick(531) == [("DeviceStale", {"device": "u", "device_type": "ups", "silent_s": 30})]


def test_monitor_change_while_stale_is_reported_after_recovery() -> None:
    m = Pairs(UpsMonitor("u", stale_after=5))
    m.reading(reading("OL"), 0)
    assert names(m.tick(10)) == ["DeviceStale"]
    assert names(m.reading(reading("OB"), 20)) == ["DeviceRecovered", "UpsOnBattery"]
    assert names(m.tick(30)) == ["DeviceStale"]
    assert names(m.reading(reading("OL"), 40)) == ["DeviceRecovered", "UpsOnline"]


def test_monitor_on_battery_is_not_healthy_and_rejects_bad_thresholds() -> None:
    m = Pairs(UpsMonitor("u"))
    m.reading(reading("OB"), 0)
    assert not m.snapshot(1)["healthy"]
    assert m.snapshot(1)["reading"]["on_battery"] is True
    with pytest.raises(ValueError):
        Pairs(UpsMonitor("u", stale_after=0))
    with pytest.raises(ValueError):
        Pairs(UpsMonitor("u", runtime_hysteresis_s=-1))


# ------------------------------------------------------------------ simulator, device side


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_simulator_answers_q1_f_i_and_echoes_unknown() -> None:
    with Simulator() as sim:
        assert parse_q1(sim.feed(b"Q1\r")).nut_status() == ("OL",)
        assert parse_ratings(sim.feed(b"F\r")).battery_v == 24.0
        assert parse_info(sim.feed(b"I\r")).manufacturer == "LIFELINE-SIM"
        assert sim.feed(b"XYZ\r") == b"XYZ\r"
        assert sim.feed(b"Q1") == b""  # no CR yet
        assert parse_q1(sim.feed(b"\r"))
        assert sim.received[-1] == b"Q1"


def test_simulator_commands_change_bits() -> None:
    with Simulator() as sim:
        assert sim.feed(b"Q\r") == b""
        assert not parse_q1(sim.feed(b"Q1\r")).beeper_on
        sim.feed(b"T\r")
        assert parse_q1(sim.feed(b"Q1\r")).test_in_progress
        sim.feed(b"CT\r")
        sim.feed(b"S.3R0005\r")
        s = parse_q1(sim.feed(b"Q1\r"))
        assert not s.test_in_progress and s.shutdown_active
        sim.feed(b"C\r")
        assert not parse_q1(sim.feed(b"Q1\r")).shutdown_active


def test_simulator_scripting() -> None:
    clock = Clock()
    with Simulator(clock=clock, state=UpsSimState(low_runtime_s=60)) as sim:
        sim.on_battery(runtime_s=300)
        s = parse_q1(sim.feed(b"Q1\r"))
        assert s.utility_fail and not s.battery_low and s.input_v == 0.0
        clock.now = 200.0
        assert sim.remaining_runtime() == 100.0
        clock.now = 250.0
        s = parse_q1(sim.feed(b"Q1\r"))
        assert s.battery_low  # 50 s left < low_runtime_s
        assert s.battery_v == round(2.0 + 0.27 * 50 / 1800, 2)
        sim.online()
        clock.now = 1000.0
        assert sim.remaining_runtime() == 50.0  # frozen on line
        assert not parse_q1(sim.feed(b"Q1\r")).battery_low
        sim.battery_low()
        assert parse_q1(sim.feed(b"Q1\r")).nut_status() == ("OL", "LB")
        sim.silent()
        assert sim.feed(b"Q1\r") == b""
        sim.normal()
        sim.set(ratings=None)
        assert sim.feed(b"F\r") == b"F\r"
        with pytest.raises(TypeError):
            sim.set(bogus=1)
        with pytest.raises(ValueError):
            sim.set(mode="bogus")


def test_simulator_garbage_is_always_device_garbage() -> None:
    with Simulator(seed=7) as sim:
        sim.garbage()
        for _ in range(200):
            answer = sim.feed(b"Q1\r")
            assert answer.endswith(b"\r")
            with pytest.raises(DeviceGarbage):
                parse_q1(answer)
