"""GNSS receiver core: NMEA 0183 framing and decoding, epochs, gpsd JSON, the monitor.

Golden sentences are real receiver output: gpsd's regression logs (test/daemon/
bu353s4.log, a GlobalSat BU-353-S4 with SiRF IV; neo-m8n.log, a u-blox NEO-M8N), pynmea2's
test vectors, a u-blox CAM-M8C cold start and a u-blox F9 (NMEA 4.10) stream. Their
checksums are verified here, so a transcription error would show.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from datetime import UTC, date, datetime

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core import events
from hardware.gnss.gpsd import GpsdProtocol
from hardware.gnss.monitor import GnssMonitor
from hardware.gnss.nmea import (
    Sentence,
    EpochAssembler,
    Gga,
    GnssProtocol,
    GnssReading,
    Gsa,
    NmeaParser,
    Rmc,
    nmea_checksum,
    nmea_sentence,
)
from lab.sim.gnss import FakeGpsd, GnssSimulator
from tests.support.hardware import Pairs, pairs

Emit = tuple[str, dict[str, Any]]

# The bar is 100 000 examples per parser: LIFELINE_HYPOTHESIS_EXAMPLES=100000.
EXAMPLES = int(os.environ.get("LIFELINE_HYPOTHESIS_EXAMPLES", "300"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# gpsd test/daemon/bu353s4.log (SiRF IV, GPS only; order GGA, GSA, [GSV], RMC).
SIRF = [
    "$GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000*7D",
    "$GPGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5*33",
    "$GPRMC,030719.000,A,3747.0873,S,17518.8938,E,0.69,181.39,311214,,,A*7D",
    "$GPGGA,030720.000,3747.0875,S,17518.8938,E,1,08,1.1,59.8,M,23.7,M,,0000*70",
    "$GPGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5*33",
    "$GPRMC,030720.000,A,3747.0875,S,17518.8938,E,1.15,181.39,311214,,,A*7B",
    "$GPGGA,030721.000,3747.0876,S,17518.8934,E,1,08,1.1,60.1,M,23.7,M,,0000*7D",
    "$GPGSV,3,1,12,17,72,207,32,28,59,095,31,06,35,347,25,01,29,132,23*7B",
    "$GPGSV,3,3,12,11,12,132,04,08,38,008,,02,35,348,,03,14,091,*73",
    "$GPRMC,030721.000,A,3747.0876,S,17518.8934,E,0.89,181.39,311214,,,A*71",
    "$GPGGA,030730.000,3747.0878,S,17518.8942,E,1,07,1.1,60.5,M,23.7,M,,0000*79",
    "$GPGSA,A,3,17,28,06,01,30,20,26,,,,,,1.9,1.1,1.6*33",
    "$GPRMC,030730.000,A,3747.0878,S,17518.8942,E,0.72,181.39,311214,,,A*7A",
]
# The same log holds a sentence whose checksum does not match its text (7D computed).
SIRF_BAD_CHECKSUM = "$GPGSV,3,2,12,30,23,011,29,20,17,069,20,26,09,293,23,13,07,305,10*7C"

# gpsd test/daemon/neo-m8n.log (u-blox NEO-M8N, GPS + GLONASS: GN talker, two GNGSA).
UBLOX = [
    "$GLGSV,3,3,10,83,27,309,29,84,01,353,*63",
    "$GNGLL,4404.14066,N,12118.85481,W,171925.00,A,A*66",
    "$GNRMC,171926.00,A,4404.14063,N,12118.85478,W,0.117,,180315,,,A*76",
    "$GNVTG,,T,,M,0.117,N,0.216,K,A*3F",
    "$GNGGA,171926.00,4404.14063,N,12118.85478,W,1,12,0.91,1147.2,M,-21.3,M,,*44",
    "$GNGSA,A,3,01,11,31,14,22,32,04,25,03,,,,1.56,0.91,1.27*15",
    "$GNGSA,A,3,67,83,76,82,68,,,,,,,,1.56,0.91,1.27*1D",
    "$GPGSV,4,1,13,01,53,280,36,03,29,301,24,04,55,223,37,08,38,166,16*7C",
    "$GNRMC,171927.00,A,4404.14058,N,12118.85475,W,0.084,,180315,,,A*79",
    "$GNGGA,171927.00,4404.14058,N,12118.85475,W,1,12,0.91,1147.0,M,-21.3,M,,*42",
]

# pynmea2's test vectors (github.com/Knio/pynmea2, its NMEA test sentences), copied here.
PYNMEA2_RMC_FIX = "$GNRMC,001031.00,A,4404.13993,N,12118.86023,W,0.146,,100117,,,A*7B"
PYNMEA2_RMC_NOFIX = "$GNRMC,001032.00,V,,,,,,,100117,,,N*65"
PYNMEA2_GGA_FIX = "$GPGGA,184353.07,1929.045,S,02410.506,E,1,04,2.6,100.00,M,-33.9,M,,0000*6D"
PYNMEA2_GGA_NOFIX = "$GPGGA,184354.00,,,,,0,00,99.99,,,,,,*69"

# A u-blox CAM-M8C straight after power-on: no time, no fix, nothing in view.
UBLOX_COLD = [
    "$GNGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99*2E",
    "$GPGSV,1,1,00*79",
    "$GLGSV,1,1,00*65",
    "$GNGLL,,,,,,V,N*7A",
    "$GNRMC,,V,,,,,,,,,,N*4D",
    "$GNVTG,,,,,,,,,N*2E",
    "$GNGGA,,,,,,0,00,99.99,,,,,,*56",
]

# A u-blox F9 (NMEA 4.10: RMC navigational status, GSA system ID).
UBLOX_F9 = [
    "$GNRMC,141148.00,A,4604.15257,N,01108.97976,E,0.004,,051121,,,A,V*13",
    "$GNVTG,,T,,M,0.004,N,0.008,K,A*31",
    "$GNGGA,141148.00,4604.15257,N,01108.97976,E,1,12,0.59,372.1,M,46.1,M,,*4C",
    "$GNGSA,A,3,05,07,13,14,15,20,30,,,,,,0.97,0.59,0.77,1*03",
    "$GNGSA,A,3,78,69,68,70,80,79,,,,,,,0.97,0.59,0.77,2*0F",
]

# A MicroPython board's u-blox module waiting for its first fix (time known, no fix).
RTC_ONLY = "$GPRMC,021953.00,V,,,,,,,070720,,,N*73"

REAL = SIRF + UBLOX + [PYNMEA2_RMC_FIX, PYNMEA2_RMC_NOFIX, PYNMEA2_GGA_FIX, PYNMEA2_GGA_NOFIX] \
    + UBLOX_COLD + UBLOX_F9 + [RTC_ONLY]


def wire(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def parse(data: bytes, now: float = 100.0) -> tuple[list[Sentence], NmeaParser]:
    parser = NmeaParser()
    return parser.feed(data, now), parser


def one(line: str) -> Sentence:
    sentences, parser = parse(wire(line))
    assert len(sentences) == 1, parser.stats
    return sentences[0]


def readings(lines: list[str], now: float = 100.0) -> list[GnssReading]:
    proto = GnssProtocol()
    out = proto.feed(wire(*lines), now)
    last = proto.flush()
    return out + ([last] if last is not None else [])


def accounted(parser: NmeaParser) -> bool:
    s = parser.stats
    return s.bytes_in == s.accepted_bytes + s.dropped_bytes + parser.pending


# --- checksums and golden sentences ---------------------------------------------------


@pytest.mark.parametrize("line", REAL)
def test_every_real_sentence_passes_its_checksum(line: str) -> None:
    body, digits = line[1:].rsplit("*", 1)
    assert nmea_checksum(body) == int(digits, 16)
    _, parser = parse(wire(line))
    assert parser.stats.bad_checksum == 0 and parser.stats.garbage == 0
    assert parser.stats.sentences + parser.stats.ignored == 1
    assert parser.stats.accepted_bytes == len(line) + 2


def test_nmea_sentence_builds_what_receivers_send() -> None:
    assert nmea_sentence("GPGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5") == wire(SIRF[1])
    assert nmea_sentence("GPGGA,1", checksum=0x1FF) == b"$GPGGA,1*FF\r\n"


def test_sirf_gga() -> None:
    s = one(SIRF[0])
    assert s == Gga("GP", 3 * 3600 + 7 * 60 + 19.0, 1, 8, 100.0)


def test_sirf_rmc() -> None:
    s = one(SIRF[2])
    assert isinstance(s, Rmc)
    assert (s.talker, s.status, s.mode, s.valid) == ("GP", "A", "A", True)
    assert s.date == date(2014, 12, 31) and s.time_s == 11239.0


def test_sirf_gsa() -> None:
    assert one(SIRF[1]) == Gsa("GP", 3, 8, 100.0)
    assert one(SIRF[11]) == Gsa("GP", 3, 7, 100.0)


def test_ublox_gn_talker_and_two_gsa() -> None:
    sentences, parser = parse(wire(*UBLOX))
    kinds = [type(s).__name__ for s in sentences]
    assert kinds == ["Rmc", "Gga", "Gsa", "Gsa", "Rmc", "Gga"]
    assert parser.stats.ignored == 4  # GLGSV, GNGLL, GNVTG, GPGSV
    gga = sentences[1]
    assert isinstance(gga, Gga) and (gga.talker, gga.quality, gga.satellites) == ("GN", 1, 12)
    assert [s.used for s in sentences if isinstance(s, Gsa)] == [9, 5]


def test_pynmea2_vectors() -> None:
    fix = one(PYNMEA2_RMC_FIX)
    assert isinstance(fix, Rmc) and fix.valid and fix.date == date(2017, 1, 10) and fix.time_s == 631.0
    nofix = one(PYNMEA2_RMC_NOFIX)
    assert isinstance(nofix, Rmc) and not nofix.valid and nofix.mode == "N" and nofix.date == date(2017, 1, 10)
    gga = one(PYNMEA2_GGA_FIX)
    assert isinstance(gga, Gga) and gga.quality == 1 and gga.satellites == 4
    assert gga.time_s == pytest.approx(18 * 3600 + 43 * 60 + 53.07)
    assert one(PYNMEA2_GGA_NOFIX) == Gga("GP", 18 * 3600 + 43 * 60 + 54.0, 0, 0, 100.0)


def test_cold_start_has_no_time_and_no_fix() -> None:
    sentences, parser = parse(wire(*UBLOX_COLD))
    assert parser.stats.ignored == 4 and parser.stats.malformed == 0
    gsa, rmc, gga = sentences
    assert gsa == Gsa("GN", 1, 0, 100.0)
    assert isinstance(rmc, Rmc) and rmc.time_s is None and rmc.date is None and not rmc.valid
    assert gga == Gga("GN", None, 0, 0, 100.0)
    (reading,) = readings(UBLOX_COLD)
    assert not reading.fix and reading.utc is None and reading.offset_ms is None
    assert reading.reason == "RMC status V mode N; GGA quality 0 (invalid); GSA fix type 1 (no fix)"


def test_nmea_410_extra_fields_are_accepted() -> None:
    _, parser = parse(wire(*UBLOX_F9))
    assert parser.stats.sentences == 4 and parser.stats.malformed == 0
    (reading,) = readings(UBLOX_F9)
    assert reading.fix and reading.satellites == 12 and reading.fix_type == 3
    assert reading.utc == datetime(2021, 11, 5, 14, 11, 48, tzinfo=UTC)


def test_rtc_time_without_fix_gives_no_offset() -> None:
    (reading,) = readings([RTC_ONLY], now=1594088393.5)
    assert reading.utc == datetime(2020, 7, 7, 2, 19, 53, tzinfo=UTC)
    assert not reading.fix and reading.offset_ms is None and reading.quality == 0


@pytest.mark.parametrize("mode, valid, quality", [
    ("A", True, 1), ("D", True, 2), ("P", True, 3), ("R", True, 4), ("F", True, 5),
    ("E", False, 6), ("M", False, 7), ("S", False, 8), ("N", False, 0), ("", True, 1),
])
def test_rmc_mode_indicator(mode: str, valid: bool, quality: int) -> None:
    line = nmea_sentence(f"GPRMC,120000.00,A,4807.038,N,01131.000,E,0.0,,010124,,,{mode}").decode().strip()
    rmc = one(line)
    assert isinstance(rmc, Rmc) and rmc.valid is valid
    (reading,) = readings([line])  # an RMC-only epoch takes its quality from the mode
    assert reading.fix is valid and reading.quality == quality


def test_nmea_20_rmc_without_mode_field() -> None:
    line = nmea_sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W").decode().strip()
    rmc = one(line)
    assert isinstance(rmc, Rmc) and rmc.mode is None and rmc.valid and rmc.date == date(1994, 3, 23)


@pytest.mark.parametrize("body", [
    "GLGSA,A,3,65,67,80,81,82,88,66,,,,,,1.2,0.7,1.0",  # another talker's GSA
    "GPZDA,201530.00,04,07,2002,00,00",  # a sentence we do not decode
    "PUBX,00,081350.00,4717.113210,N",  # proprietary
    "GPRMCX,1",  # not a 5-letter address
    "GP",
])
def test_other_talkers_and_sentences_are_ignored_and_counted(body: str) -> None:
    sentences, parser = parse(nmea_sentence(body))
    assert sentences == [] and parser.stats.ignored == 1 and accounted(parser)


def test_ais_encapsulated_sentence_is_ignored() -> None:
    sentences, parser = parse(b"!AIVDM,1,1,,B,177KQJ5000G?tO`K>RA1wUbN0TKH,0*5C\r\n")
    assert sentences == [] and parser.stats.ignored == 1


# --- bad checksums and malformed fields -----------------------------------------------


@pytest.mark.parametrize("line", [
    SIRF[0][:-2] + "7C",  # wrong
    SIRF[0][:-3],  # no checksum at all
    SIRF[0].replace("*", ""),
    SIRF[0][:-1],  # one digit
    SIRF[0][:-2] + "G1",  # not hex
    SIRF[0][:-2] + "+D",  # int("+D", 16) would accept it
    SIRF[0] + " ",  # junk after the checksum
    SIRF[0].replace(",1,08,", ",1,09,"),  # a flipped digit in the body
    SIRF_BAD_CHECKSUM,
])
def test_bad_checksum_drops_the_sentence_and_counts_it(line: str) -> None:
    sentences, parser = parse(wire(line, SIRF[1]))
    assert sentences == [one(SIRF[1])]
    assert parser.stats.bad_checksum == 1 and parser.stats.sentences == 1
    assert parser.stats.dropped_bytes == len(line) + 2 and accounted(parser)


def test_lowercase_checksum_digits_are_accepted() -> None:
    line = nmea_sentence("GPGSA,A,2,17,28,06,,,,,,,,,,2.8,2.1,1.9").decode().strip()
    assert one(line[:-2] + line[-2:].lower()) == one(line)


@pytest.mark.parametrize("body", [
    "GPGGA,256199,,,,,1,08,,,,,,,",  # hour 25
    "GPGGA,12:00:00,,,,,1,08,,,,,,,",
    "GPGGA,120000.x,,,,,1,08,,,,,,,",
    "GPGGA,120000,,,,,Q,08,,,,,,,",  # quality
    "GPGGA,120000,,,,,1,-3,,,,,,,",  # satellites
    "GPGGA,120000,,,,,1",  # too few fields
    "GPRMC,120000,X,,,,,,,010124,,,A",  # status
    "GPRMC,120000,A,,,,,,,310224,,,A",  # 31 February
    "GPRMC,120000,A,,,,,,,0101,,,A",
    "GPRMC,120000,A,,,,,,,010124,,,Z",  # mode
    "GPRMC,120000,A,,,,",
    "GPGSA,A,4,01,02",  # fix type
    "GPGSA,A",
    "GPGGA,\u00b2\u00b3\u00b9\u00b2\u00b3\u00b9,,,,,1,08,,,,,,,",  # unicode digits
])
def test_malformed_fields_under_a_good_checksum(body: str) -> None:
    data = f"${body}*{nmea_checksum(body.encode('utf-8')):02X}\r\n".encode()
    sentences, parser = parse(data + wire(SIRF[1]))
    assert len(sentences) == 1 and isinstance(sentences[0], Gsa)
    assert parser.stats.malformed + parser.stats.garbage == 1 and accounted(parser)


def test_time_fractions_and_the_leap_second() -> None:
    line = nmea_sentence("GPRMC,235960.00,A,,,,,,,311216,,,A").decode().strip()
    rmc = one(line)
    assert isinstance(rmc, Rmc) and rmc.time_s == 86400.0
    (reading,) = readings([line])
    assert reading.utc == datetime(2017, 1, 1, tzinfo=UTC)  # 23:59:60 reads as 00:00:00
    gga = one(nmea_sentence("GPGGA,000000.123456,,,,,1,05,,,,,,,").decode().strip())
    assert isinstance(gga, Gga) and gga.time_s == pytest.approx(0.123456)


@pytest.mark.parametrize("ddmmyy, year", [("010180", 1980), ("311299", 1999), ("010100", 2000), ("311279", 2079)])
def test_two_digit_year(ddmmyy: str, year: int) -> None:
    rmc = one(nmea_sentence(f"GPRMC,000000,A,,,,,,,{ddmmyy},,,A").decode().strip())
    assert isinstance(rmc, Rmc) and rmc.date is not None and rmc.date.year == year


# --- framing --------------------------------------------------------------------------


def test_partial_lines_wait_for_the_rest() -> None:
    parser = NmeaParser()
    data = wire(SIRF[0])
    assert parser.feed(data[:30], 1.0) == []
    assert parser.pending == 30
    (gga,) = parser.feed(data[30:], 2.0)
    assert gga.arrival == 1.0  # timed by the chunk that held its "$"
    assert parser.pending == 0 and accounted(parser)


def test_byte_at_a_time_equals_one_chunk() -> None:
    data = wire(*SIRF, SIRF_BAD_CHECKSUM, *UBLOX)
    whole, one_shot = parse(data)
    parser = NmeaParser()
    trickled = [s for i in range(len(data)) for s in parser.feed(data[i:i + 1], 100.0)]
    assert trickled == whole
    assert parser.stats == one_shot.stats


def test_every_split_offset_gives_the_same_result() -> None:
    data = b"\x00noise" + wire(SIRF[0], SIRF_BAD_CHECKSUM) + b"$GPGGA,12" + wire(SIRF[1], SIRF[2]) + b"\xff" * 300 + wire(SIRF[3])
    whole, reference = parse(data)
    assert len(whole) == 4
    for cut in range(len(data) + 1):
        parser = NmeaParser()
        got = parser.feed(data[:cut], 100.0) + parser.feed(data[cut:], 100.0)
        assert got == whole, cut
        assert parser.stats == reference.stats, cut


def test_lf_only_line_ends_are_accepted() -> None:
    sentences, parser = parse((SIRF[0] + "\n" + SIRF[1] + "\n").encode())
    assert len(sentences) == 2 and parser.stats.garbage == 0


def test_noise_between_sentences_is_one_counted_fragment() -> None:
    sentences, parser = parse(b"\x00\x01 hello \xff\r\n more" + wire(SIRF[0]))
    assert len(sentences) == 1 and parser.stats.garbage == 1
    assert parser.stats.dropped_bytes == len(b"\x00\x01 hello \xff\r\n more") and accounted(parser)


def test_blank_lines_are_not_garbage() -> None:
    sentences, parser = parse(b"\r\n\r\n" + wire(SIRF[0]) + b"\n\r")
    assert len(sentences) == 1 and parser.stats.garbage == 0 and parser.stats.dropped_bytes == 6


def test_truncated_sentence_resynchronizes_on_the_next_dollar() -> None:
    sentences, parser = parse(b"$GPRMC,0307" + wire(SIRF[0]))
    assert sentences == [one(SIRF[0])] and parser.stats.garbage == 1 and accounted(parser)


def test_overlong_line_is_dropped_with_its_tail() -> None:
    data = b"$GPGGA," + b"9" * 400 + b"*00\r\ntail" + wire(SIRF[0])
    sentences, parser = parse(data)
    assert sentences == [one(SIRF[0])]
    assert parser.stats.garbage == 1 and parser.stats.dropped_bytes == len(data) - len(SIRF[0]) - 2


def test_binary_inside_a_line_is_garbage() -> None:
    sentences, parser = parse(b"$GPGGA,\x00\x01\x02*00\r\n$GPGGA,\xc3\xa9*00\r\n" + wire(SIRF[0]))
    assert len(sentences) == 1 and parser.stats.garbage == 2 and parser.stats.bad_checksum == 0


def test_reset_forgets_the_pending_line_without_calling_it_garbage() -> None:
    parser = NmeaParser()
    parser.feed(b"$GPGGA,0307", 1.0)
    parser.reset()
    assert parser.feed(wire(SIRF[0])[5:], 2.0) == [] and parser.pending == 0 and accounted(parser)
    assert parser.stats.garbage == 1  # the orphaned tail, not the forgotten head


# --- epochs ---------------------------------------------------------------------------


def test_sirf_epochs() -> None:
    got = readings(SIRF, now=1419995239.4)
    assert [r.utc.second if r.utc else None for r in got] == [19, 20, 21, 30]
    assert [r.satellites for r in got] == [8, 8, 8, 7]
    assert all(r.fix and r.quality == 1 and r.talker == "GP" and r.status == "A" for r in got)
    assert [r.sentences for r in got] == [("RMC", "GGA", "GSA")] * 4
    assert got[0].utc == datetime(2014, 12, 31, 3, 7, 19, tzinfo=UTC)
    assert got[0].offset_ms == pytest.approx(400.0, abs=1e-3)


def test_ublox_epochs_include_the_gsa_sent_after_gga() -> None:
    proto = GnssProtocol()
    first = proto.feed(wire(*UBLOX[:8]), 1426699166.2)
    assert first == []  # the epoch is open until the line goes quiet or the next one starts
    (r,) = proto.feed(wire(*UBLOX[8:]), 1426699167.2)
    assert r.fix and r.satellites == 12 and r.fix_type == 3 and r.talker == "GN"
    assert r.utc == datetime(2015, 3, 18, 17, 19, 26, tzinfo=UTC)
    assert r.offset_ms == pytest.approx(200.0, abs=1e-3)
    last = proto.flush()
    assert last is not None and last.utc is not None and last.utc.second == 27
    assert proto.flush() is None


def test_rmc_only_stream_ends_each_epoch_with_the_next() -> None:
    lines = [nmea_sentence(f"GPRMC,12000{i},A,,,,,,,010124,,,A").decode().strip() for i in range(3)]
    assembler = EpochAssembler()
    out = []
    for s in parse(wire(*lines))[0]:
        out += assembler.add(s)
    assert [r.utc.second for r in out if r.utc] == [0, 1]
    assert all(r.satellites is None and r.sentences == ("RMC",) for r in out)


def test_repeated_time_tag_of_the_same_type_is_a_new_epoch() -> None:
    got = readings([SIRF[0], SIRF[0]])
    assert len(got) == 2


def test_stale_gsa_is_not_used() -> None:
    proto = GnssProtocol()
    proto.feed(wire(nmea_sentence("GPGSA,A,1,,,,,,,,,,,,,,,").decode().strip()), 10.0)
    proto.feed(wire(SIRF[0], SIRF[2]), 13.0)
    r = proto.flush()
    assert r is not None and r.fix and r.fix_type is None and r.sentences == ("RMC", "GGA")


def test_gsa_saying_no_fix_vetoes_the_fix() -> None:
    gsa = nmea_sentence("GPGSA,A,1,,,,,,,,,,,,,,,").decode().strip()
    (r,) = readings([SIRF[0], gsa, SIRF[2]])
    assert not r.fix and r.reason == "GSA fix type 1 (no fix)" and r.offset_ms is None


@pytest.mark.parametrize("quality, fix", [(0, False), (1, True), (2, True), (3, True), (4, True), (5, True),
                                          (6, False), (7, False), (8, False)])
def test_gga_quality_decides_the_fix(quality: int, fix: bool) -> None:
    line = nmea_sentence(f"GPGGA,120000,4807.038,N,01131.000,E,{quality},06,0.9,545.4,M,46.9,M,,").decode().strip()
    (r,) = readings([line])
    assert r.fix is fix and r.quality == quality
    assert (r.reason == "") is fix


def test_reading_as_dict_is_plain_data() -> None:
    import json

    (r,) = readings(SIRF[:3], now=1419995239.25)
    d = r.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["utc"] == "2014-12-31T03:07:19.000Z" and d["offset_ms"] == 250.0
    assert d["quality_name"] == "GPS fix" and d["kind"] == "gnss"


# --- the simulator's bytes ------------------------------------------------------------


@pytest.fixture
def sim():
    s = GnssSimulator(interval=1.0)
    yield s
    s.close()


def test_simulator_epoch_with_fix_and_offset(sim: GnssSimulator) -> None:
    sim.set(satellites=9, clock_offset_ms=2500.0, talker="GN", quality=2)
    tick = 1_700_000_000.0
    proto = GnssProtocol()
    proto.feed(sim.epoch(tick), tick + 0.05)
    r = proto.flush()
    assert r is not None and r.fix and r.satellites == 9 and r.quality == 2 and r.fix_type == 3
    assert r.talker == "GN" and r.offset_ms == pytest.approx(2550.0, abs=1e-3)
    assert proto.stats.ignored == 2 and proto.stats.bad_checksum == 0


def test_simulator_without_fix(sim: GnssSimulator) -> None:
    sim.set(fix=False, satellites=2)
    proto = GnssProtocol()
    proto.feed(sim.epoch(1_700_000_000.0), 1_700_000_000.1)
    r = proto.flush()
    assert r is not None and not r.fix and r.satellites == 2 and r.fix_type == 1 and r.offset_ms is None


def test_simulator_garbage_bad_checksums_and_silence(sim: GnssSimulator) -> None:
    sim.set(garbage=True)
    _, parser = parse(sim.epoch(1_700_000_000.0))
    assert parser.stats.garbage == 2 and parser.stats.sentences == 3
    sim.set(garbage=False, bad_checksum=True)
    _, parser = parse(sim.epoch(1_700_000_000.0))
    assert parser.stats.bad_checksum == 5 and parser.stats.sentences == 0
    sim.set(silent=True)
    assert sim.epoch(1_700_000_000.0) == b""
    with pytest.raises(TypeError):
        sim.set(colour="red")


def test_simulator_ticks_at_tenth_of_a_second_are_distinct_epochs(sim: GnssSimulator) -> None:
    proto = GnssProtocol()
    got = []
    for i in range(5):
        got += proto.feed(sim.epoch(1_700_000_000.0 + i / 10), 1_700_000_000.0 + i / 10)
    assert len(got) == 4 and len({r.utc for r in got}) == 4


# --- gpsd JSON ------------------------------------------------------------------------

# gpsd_json(5)'s TPV example, and a SKY as gpsd 3.25 sends it.
GPSD_TPV = (b'{"class":"TPV","device":"/dev/pts/1","time":"2005-06-08T10:34:48.283Z","ept":0.005,'
            b'"lat":46.498293369,"lon":7.567411672,"alt":1343.127,"eph":36.000,"epv":32.321,'
            b'"track":10.3788,"speed":0.091,"climb":-0.085,"mode":3}\r\n')
GPSD_SKY = (b'{"class":"SKY","device":"/dev/pts/1","xdop":0.4,"ydop":0.43,"hdop":0.67,"nSat":3,"uSat":2,'
            b'"satellites":[{"PRN":17,"el":72.0,"az":207.0,"ss":32.0,"used":true},'
            b'{"PRN":28,"el":59.0,"az":95.0,"ss":31.0,"used":true},{"PRN":3,"el":14.0,"az":91.0,"ss":0.0,"used":false}]}\r\n')
GPSD_PREAMBLE = (b'{"class":"VERSION","release":"3.25","rev":"3.25","proto_major":3,"proto_minor":15}\r\n'
                 b'{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/pts/1","driver":"NMEA0183"}]}\r\n'
                 b'{"class":"WATCH","enable":true,"json":true,"nmea":false}\r\n')
GPSD_UTC = datetime(2005, 6, 8, 10, 34, 48, 283000, tzinfo=UTC)


def test_gpsd_tpv_with_sky() -> None:
    proto = GpsdProtocol()
    arrival = GPSD_UTC.timestamp() + 0.5
    (r,) = proto.feed(GPSD_PREAMBLE + GPSD_SKY + GPSD_TPV, arrival)
    assert r.source == "gpsd" and r.fix and r.fix_type == 3 and r.quality == 1 and r.satellites == 2
    assert r.utc == GPSD_UTC and r.offset_ms == pytest.approx(500.0, abs=1e-3) and r.complete
    assert proto.version is not None and proto.version["release"] == "3.25"
    assert proto.stats.ignored == 3 and proto.stats.garbage == 0


def test_gpsd_counts_used_satellites_when_sky_has_no_usat() -> None:
    proto = GpsdProtocol()
    sky = GPSD_SKY.replace(b'"uSat":2,', b"")
    (r,) = proto.feed(sky + GPSD_TPV, 1e9)
    assert r.satellites == 2


def test_gpsd_tpv_before_any_sky_and_split_anywhere() -> None:
    data = GPSD_TPV + GPSD_SKY + GPSD_TPV
    for cut in range(len(data) + 1):
        proto = GpsdProtocol()
        got = proto.feed(data[:cut], 1e9) + proto.feed(data[cut:], 1e9)
        assert [r.satellites for r in got] == [None, 2], cut


@pytest.mark.parametrize("mode, status, fix, quality", [
    (0, None, False, 0), (1, None, False, 0), (2, None, True, 1), (3, 2, True, 2),
    (3, 3, True, 4), (3, 5, False, 6), (3, 8, False, 8), (3, 7, True, 1),
])
def test_gpsd_mode_and_status(mode: int, status: int | None, fix: bool, quality: int) -> None:
    obj = f'{{"class":"TPV","mode":{mode}' + (f',"status":{status}' if status is not None else "") + "}\n"
    (r,) = GpsdProtocol().feed(obj.encode(), 1e9)
    assert r.fix is fix and r.quality == quality and r.fix_type == (mode or None)
    assert r.utc is None and r.offset_ms is None


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "yesterday", 1e300,
                                   float("nan"), True, None, [2005]])
def test_gpsd_impossible_times_are_no_time(value: object) -> None:
    import json

    obj = {"class": "TPV", "mode": 3, "time": value}
    (r,) = GpsdProtocol().feed(json.dumps(obj).encode() + b"\n", 1e9)
    assert r.utc is None and r.offset_ms is None and r.fix
    r.as_dict()


def test_gpsd_garbage_errors_and_device_filter() -> None:
    proto = GpsdProtocol(device="/dev/ttyS0")
    got = proto.feed(b"not json\n[1,2]\n{\"class\":\"TPV\"}\n{\"class\":\"TPV\",\"mode\":\"3\"}\n"
                     + b'{"class":"ERROR","message":"Unrecognized request"}\n' + GPSD_TPV
                     + b'{"class":"TPV","device":"/dev/ttyS0","mode":3}\n', 1e9)
    assert len(got) == 1 and got[0].talker == "/dev/ttyS0"
    assert proto.stats.garbage == 4 and proto.stats.errors == 1 and proto.stats.ignored == 1
    assert proto.last_error == "Unrecognized request"


def test_gpsd_overlong_line_is_skipped() -> None:
    proto = GpsdProtocol(max_line=100)
    got = proto.feed(b'{"class":"SKY","pad":"' + b"x" * 300, 1e9) + proto.feed(b'"}\n' + GPSD_TPV, 1e9)
    assert len(got) == 1 and proto.stats.garbage == 1


def test_fake_gpsd_objects_decode() -> None:
    fake = FakeGpsd(satellites=6, clock_offset_ms=-3000.0)
    proto = GpsdProtocol()
    (r,) = proto.feed(fake.objects(1_700_000_000.0), 1_700_000_000.0)
    assert r.fix and r.satellites == 6 and r.offset_ms == pytest.approx(-3000.0, abs=1e-3)
    fake.set(mode=1, garbage=True)
    (r,) = proto.feed(fake.objects(1_700_000_001.0), 1_700_000_001.0)
    assert not r.fix and r.reason == "gpsd TPV mode 1 (no fix)" and proto.stats.garbage == 1


# --- the monitor ----------------------------------------------------------------------


def reading(fix: bool = True, offset_ms: float | None = 100.0, satellites: int | None = 8,
            quality: int = 1) -> GnssReading:
    return GnssReading(fix=fix, reason="" if fix else "RMC status V", quality=quality if fix else 0,
                       satellites=satellites, fix_type=3 if fix else 1, utc=None,
                       offset_ms=offset_ms if fix else None, arrival=0.0)


def feed(monitor: GnssMonitor, rs: list[GnssReading], start: float = 0.0, step: float = 1.0) -> list[list[Emit]]:
    return [monitor.reading(r, start + i * step) for i, r in enumerate(rs)]


def flat(outs: list[list[Emit]]) -> list[Emit]:
    return [emit for out in outs for emit in out]


def names(emits: list[Emit]) -> list[str]:
    return [name for name, _ in emits]


def test_fix_acquired_after_confirmation() -> None:
    m = Pairs(GnssMonitor("gps0"))
    out = feed(m, [reading()] * 3)
    assert out[:2] == [[], []]
    assert out[2] == [("GnssFixAcquired", {"device": "gps0", "satellites": 8, "quality": 1})]
    assert m.fix is True and m.healthy
    assert feed(m, [reading()] * 5, start=3) == [[]] * 5


def test_fix_lost_after_confirmation_and_flicker_is_quiet() -> None:
    m = Pairs(GnssMonitor("gps0", fix_confirm=2))
    feed(m, [reading()] * 2)
    assert feed(m, [reading(False), reading(), reading(False), reading()], start=2) == [[]] * 4
    out = feed(m, [reading(False), reading(False)], start=6)
    assert out == [[], [("GnssFixLost", {"device": "gps0", "reason": "RMC status V"})]]
    assert m.fix is False and not m.healthy
    assert names(flat(feed(m, [reading()] * 2, start=8))) == ["GnssFixAcquired"]


def test_no_fix_from_the_start_is_reported() -> None:
    m = Pairs(GnssMonitor("gps0"))
    out = flat(feed(m, [reading(False)] * 3))
    assert out == [("GnssFixLost", {"device": "gps0", "reason": "RMC status V"})]


def test_clock_offset_high_with_hysteresis() -> None:
    m = Pairs(GnssMonitor("gps0", offset_threshold_ms=500.0, offset_confirm=2))
    feed(m, [reading()] * 3)
    assert m.reading(reading(offset_ms=900.0), 3) == []
    out = m.reading(reading(offset_ms=-950.0), 4)
    assert out == [("ClockOffsetHigh", {"device": "gps0", "offset_ms": -950.0, "threshold_ms": 500.0})]
    assert not m.healthy
    # inside the band (400 < |x| <= 500) nothing changes; still high, no repeat
    assert flat(feed(m, [reading(offset_ms=450.0), reading(offset_ms=2000.0)] * 2, start=5)) == []
    assert m.offset_high
    feed(m, [reading(offset_ms=100.0)] * 2, start=9)
    assert not m.offset_high and m.healthy
    out = flat(feed(m, [reading(offset_ms=5000.0)] * 2, start=11))
    assert names(out) == ["ClockOffsetHigh"]


def test_readings_without_offset_do_not_touch_the_offset_state() -> None:
    m = Pairs(GnssMonitor("gps0", offset_threshold_ms=500.0, offset_confirm=2))
    m.reading(reading(offset_ms=900.0), 0)
    m.reading(reading(offset_ms=None), 1)
    assert "ClockOffsetHigh" in names(m.reading(reading(offset_ms=900.0), 2))


def test_stale_then_recovered() -> None:
    m = Pairs(GnssMonitor("gps0", stale_after=3.0))
    feed(m, [reading()] * 3)  # at 0, 1, 2
    assert m.tick(4.9) == []
    out = m.tick(5.0)
    assert out == [("DeviceStale", {"device": "gps0", "device_type": "gnss", "silent_s": 3.0}),
                   ("GnssFixLost", {"device": "gps0", "reason": "no data from the receiver for 3.0 s"})]
    assert m.stale and m.fix is False and not m.healthy
    assert m.status(6.0)["healthy"] is False and m.status(6.0)["silent_s"] == 4.0
    assert m.tick(60.0) == []  # once
    out = feed(m, [reading()] * 3, start=61)
    assert out == [[("DeviceRecovered", {"device": "gps0", "device_type": "gnss"})], [],
                   [("GnssFixAcquired", {"device": "gps0", "satellites": 8, "quality": 1})]]


def test_stale_without_any_reading_counts_from_the_first_tick() -> None:
    m = Pairs(GnssMonitor("gps0", stale_after=5.0))
    assert m.tick(100.0) == [] and m.tick(104.0) == []
    assert m.tick(105.0) == [("DeviceStale", {"device": "gps0", "device_type": "gnss", "silent_s": 5.0})]
    assert m.fix is None and not m.healthy


def test_monitor_rejects_nonsense_thresholds() -> None:
    with pytest.raises(ValueError):
        Pairs(GnssMonitor("gps0", offset_threshold_ms=0))
    with pytest.raises(ValueError):
        Pairs(GnssMonitor("gps0", offset_threshold_ms=100, offset_clear_ms=200))


def test_emits_build_the_daemon_events() -> None:
    m = GnssMonitor("gps0", fix_confirm=1, offset_confirm=1, stale_after=1.0)
    emitted = m.reading(reading(offset_ms=5000.0), 0) + m.tick(2.0) + m.reading(reading(False), 3)
    emitted += m.reading(reading(), 4)
    emits = pairs(emitted)
    assert set(names(emits)) == {"GnssFixAcquired", "ClockOffsetHigh", "DeviceStale", "GnssFixLost",
                                 "DeviceRecovered"}
    for event, (name, fields) in zip(emitted, emits):
        # the monitor returns the daemon's own event objects (typed, not names resolved later)
        assert type(event) is getattr(events, name) and isinstance(event, events.Event)
        declared = {f.name for f in dataclasses.fields(event)} - {"source", "wall_time", "sequence"}
        assert declared == set(fields), name


# --- properties -----------------------------------------------------------------------

GOOD = wire(SIRF[0])
NMEA_ALPHABET = st.sampled_from(list(b"$!*,.0123456789ABCDEFGLNPRSVAM\r\n ") + [0, 0xFF])


@PROPERTY
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes_never_raise_and_every_byte_is_accounted(data: bytes, cuts: list[int]) -> None:
    parser = NmeaParser()
    proto = GnssProtocol()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        parser.feed(data[a:b], 1.0)
        proto.feed(data[a:b], 1.0)
    proto.flush()
    assert accounted(parser)
    assert parser.stats.sentences == 0 or b"*" in data


@PROPERTY
@given(st.lists(NMEA_ALPHABET, max_size=400).map(bytes), st.integers(0, 500))
def test_noise_then_a_good_sentence_resynchronizes(noise: bytes, cut: int) -> None:
    data = noise + GOOD + wire(SIRF[1])
    cut = min(cut, len(data))
    parser = NmeaParser()
    got = parser.feed(data[:cut], 1.0) + parser.feed(data[cut:], 1.0)
    assert got[-2:] == [one(SIRF[0]), one(SIRF[1])] or got[-2:] == [dataclasses.replace(one(SIRF[0]), arrival=1.0),
                                                                    dataclasses.replace(one(SIRF[1]), arrival=1.0)]
    assert accounted(parser) and parser.pending == 0


@PROPERTY
@given(st.lists(st.sampled_from(REAL + [SIRF_BAD_CHECKSUM]), max_size=12),
       st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=8)), max_size=5),
       st.lists(st.integers(0, 2000), max_size=8))
def test_real_stream_with_line_noise_split_anywhere(lines: list[str], noise: list[tuple[int, bytes]],
                                                    cuts: list[int]) -> None:
    data = bytearray(wire(*lines))
    for at, junk in noise:
        data[min(at, len(data)):min(at, len(data))] = junk
    data = bytes(data)
    whole, reference = parse(data)
    parser = NmeaParser()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    got = [s for a, b in itertools.pairwise(points) for s in parser.feed(data[a:b], 100.0)]
    assert got == whole and parser.stats == reference.stats and accounted(parser)
    if not noise:
        assert len(whole) + reference.stats.ignored + reference.stats.bad_checksum == len(lines)


@PROPERTY
@given(st.sampled_from(SIRF + UBLOX), st.integers(1, 200), st.integers(0, 255))
def test_one_corrupted_byte_never_decodes_as_something_else(line: str, where: int, value: int) -> None:
    data = bytearray(wire(line))
    at = where % (len(data) - 2)
    original = data[at]
    data[at] = value
    sentences, parser = parse(bytes(data))
    assert accounted(parser)
    if value != original and 0 < at < len(line) - 3:  # inside the checksummed body
        assert sentences == []


@PROPERTY
@given(st.binary(max_size=400))
def test_gpsd_random_bytes_never_raise(data: bytes) -> None:
    proto = GpsdProtocol(max_line=128)
    proto.feed(data, 1.0)
    proto.feed(data + b"\n", 1.0)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


ISO_TIMES = st.builds(lambda d, zone: d.isoformat() + zone, st.datetimes(),
                      st.sampled_from(["Z", "+14:00", "-14:00", "", "+00:00"]))


@PROPERTY
@given(st.dictionaries(st.sampled_from(["class", "mode", "status", "time", "uSat", "satellites", "device"]),
                       JSON | ISO_TIMES | st.integers(0, 3), max_size=6),
       st.sampled_from(["TPV", "SKY", "ERROR", "VERSION", None]))
def test_gpsd_odd_objects_never_raise(obj: dict, cls: str | None) -> None:
    import json

    if cls is not None:
        obj["class"] = cls
    proto = GpsdProtocol()
    for r in proto.feed(json.dumps(obj).encode() + b"\n" + b"[" * 5000 + b"\n", 1e9):
        r.as_dict()


@PROPERTY
@given(st.lists(st.tuples(st.booleans(), st.floats(-5000, 5000), st.floats(0, 8)), max_size=40))
def test_monitor_never_calls_a_stale_receiver_healthy(steps: list[tuple[bool, float, float]]) -> None:
    m = Pairs(GnssMonitor("gps0", offset_threshold_ms=1000.0, fix_confirm=2, offset_confirm=2, stale_after=3.0))
    now = 0.0
    fix_events: list[str] = []
    stale_events: list[str] = []
    for fix, offset, gap in steps:
        now += gap
        emits = m.tick(now)
        if gap < 4:
            emits += m.reading(reading(fix, offset), now)
        for name, _ in emits:
            if name.startswith("GnssFix"):
                fix_events.append(name)
            if name in ("DeviceStale", "DeviceRecovered"):
                stale_events.append(name)
        if m.stale:
            assert not m.healthy and m.fix is not True
    assert all(a != b for a, b in itertools.pairwise(fix_events))
    assert all(a != b for a, b in itertools.pairwise(stale_events))
