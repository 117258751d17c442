"""The config loader: every kind of error names the file, the key path and the reason;
defaults, relative paths, durations and the TOML round trip; the shipped examples; and
`lifeline config check` / `config show` as a user runs them."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import tomllib
import types
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import (
    Config,
    ConfigError,
    ControlConfig,
    Duration,
    EventsConfig,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    SystemConfig,
    dump_toml,
    format_duration,
    load_config,
    parse_config,
    parse_host_port,
    to_dict,
)
from tests.support.cli import ROOT as REPO, cli

EXAMPLES = REPO / "examples"
PRIMARY = EXAMPLES / "lifeline.toml"
STANDBY = EXAMPLES / "standby.toml"

MINIMAL = '[node]\nname = "edge-a"\n'


# ----------------------------------------------------------------------------- helpers


def write(tmp_path: Path, text: str, name: str = "lifeline.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert problems, "a ConfigError must list at least one problem"
    assert str(info.value) == "\n".join(problems)
    return problems


def only_problem(tmp_path: Path, text: str) -> str:
    """Load ``text`` from a file; exactly one problem; it starts with the file's name."""
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.startswith(f"{path}: "), problem
    return problem


def assert_names(problem: str, key_path: str, *fragments: str) -> None:
    """The problem names ``key_path`` as its key and contains every fragment."""
    assert re.search(rf": {re.escape(key_path)}: ", problem), (key_path, problem)
    for fragment in fragments:
        assert fragment in problem, (fragment, problem)


# ------------------------------------------------------------------------ unknown keys


def test_unknown_top_level_section_with_hint(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[sytem]\ninterval = "2s"\n')
    assert_names(problem, "sytem", "unknown key", 'did you mean "system"?', "known keys here: node, log")
    assert "source" not in problem  # the internal field is not a key


def test_unknown_nested_key_with_hint(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[system]\ncpu_treshold = 0.8\n")
    assert_names(problem, "system.cpu_treshold", "unknown key", 'did you mean "cpu_threshold"?')


def test_unknown_key_without_close_match_has_no_hint(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[log]\nwhatever = 1\n")
    assert_names(problem, "log.whatever", "unknown key", "known keys here: level")
    assert "did you mean" not in problem


def test_unknown_key_does_not_hide_other_values(tmp_path: Path) -> None:
    # The typo is reported, and the rest of the section still loads and validates.
    path = write(tmp_path, '[node]\nname = "bad name"\nnmae = "x"\n')
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert_names(problems[0], "node.nmae", 'did you mean "name"?')
    assert_names(problems[1], "node.name", "found 'bad name'")


# -------------------------------------------------------------------------- wrong type


def test_string_for_int(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[control]\nmax_request_bytes = "4MiB"\n')
    assert_names(problem, "control.max_request_bytes", "expected an integer", 'found "4MiB" (string)')


def test_int_for_duration(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[system]\ninterval = 2\n")
    assert_names(problem, "system.interval", 'expected a duration such as "200ms"', "found 2 (integer)")


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[events]\nsubscriber_buffer = true\n")
    assert_names(problem, "events.subscriber_buffer", "expected an integer", "found true (boolean)")


def test_bool_is_not_a_float(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[system]\ncpu_threshold = false\n")
    assert_names(problem, "system.cpu_threshold", "expected a number", "found false (boolean)")


def test_float_for_int(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[events]\nsubscriber_buffer = 1024.5\n")
    assert_names(problem, "events.subscriber_buffer", "expected an integer", "found 1024.5 (float)")


def test_int_for_float_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + "[system]\ntemperature_threshold_c = 80\n"))
    assert config.system.temperature_threshold_c == 80.0
    assert isinstance(config.system.temperature_threshold_c, float)


def test_nan_is_not_a_number(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[system]\ncpu_threshold = nan\n")
    assert_names(problem, "system.cpu_threshold", "expected a number", "found nan (float)")


def test_array_for_table(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, 'log = ["info"]\n' + MINIMAL)
    assert_names(problem, "log", "expected a table", "found an array of 1")


def test_array_of_tables_for_table(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[[metrics]]\nenabled = true\n[[metrics]]\nenabled = false\n')
    assert_names(problem, "metrics", "expected a table", "found an array of 2")


def test_scalar_for_table(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, 'node = "edge-a"\n')
    assert_names(problem, "node", "expected a table", 'found "edge-a" (string)')


def test_string_for_bool(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[metrics]\nenabled = "yes"\n')
    assert_names(problem, "metrics.enabled", "expected true or false", 'found "yes" (string)')


def test_int_for_path_and_empty_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "a"\nstate_dir = 5\nruntime_dir = ""\n')
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert_names(problems[0], "node.state_dir", "expected a path (string)", "found 5 (integer)")
    assert_names(problems[1], "node.runtime_dir", "expected a path (string)", 'found "" (string)')


# ---------------------------------------------------------------------- missing values


def test_missing_node_name(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, '[node]\nstate_dir = "/var/lib/lifeline"\n')
    assert_names(problem, "node.name", "missing required key", "expected a string")


def test_missing_node_section(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nlevel = "info"\n')
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert_names(problems[0], "node", "missing required section [node]")
    assert_names(problems[1], "node.name", "missing required key", "expected a string")


def test_empty_file(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, ""))
    assert_names(problems[0], "node", "missing required section [node]")


# ------------------------------------------------------------------------ out of range


def test_negative_duration(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[system]\nsustain = "-1s"\n')
    assert_names(problem, "system.sustain", "expected a value of at least 0s", "found -1s")


def test_zero_interval_where_above_zero(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[system]\ninterval = "0ms"\n')
    assert_names(problem, "system.interval", "expected a value above 0s", "found 0s")


def test_zero_sustain_is_allowed(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + '[system]\nsustain = "0s"\n')).system.sustain == 0


def test_threshold_above_one(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[system]\ncpu_threshold = 1.5\n")
    assert_names(problem, "system.cpu_threshold", "expected a value of at most 1", "found 1.5")


def test_threshold_zero_where_above_zero(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[system]\ndisk_threshold = 0\n")
    assert_names(problem, "system.disk_threshold", "expected a value above 0", "found 0")


def test_max_request_bytes_below_minimum(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[control]\nmax_request_bytes = 1023\n")
    assert_names(problem, "control.max_request_bytes", "expected a value of at least 1024", "found 1023")


def test_max_request_bytes_above_maximum(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + f"[control]\nmax_request_bytes = {64 * 1024 * 1024 + 1}\n")
    assert_names(problem, "control.max_request_bytes", f"at most {64 * 1024 * 1024}", "found 67108865")


@pytest.mark.parametrize("value", [1024, 64 * 1024 * 1024])
def test_range_bounds_are_inclusive(tmp_path: Path, value: int) -> None:
    config = load_config(write(tmp_path, MINIMAL + f"[control]\nmax_request_bytes = {value}\n"))
    assert config.control.max_request_bytes == value


# ---------------------------------------------------------------------- invalid choice


def test_invalid_log_level(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[log]\nlevel = "verbose"\n')
    assert_names(
        problem, "log.level", 'expected one of "debug", "info", "warning", "error"', 'found "verbose" (string)'
    )


def test_log_level_is_case_sensitive_and_typed(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + '[log]\nlevel = "INFO"\n')
    assert_names(problem, "log.level", "expected one of", 'found "INFO"')
    problem = only_problem(tmp_path, MINIMAL + "[log]\nlevel = 1\n")
    assert_names(problem, "log.level", "expected one of", "found 1 (integer)")


# ----------------------------------------------------------------- malformed durations


@pytest.mark.parametrize("text", ["3q", "ms", "1.5.2s", "", "3", "s3", "3 sec", "1e3ms", "+3s", ".5s", "3s3"])
def test_malformed_duration(tmp_path: Path, text: str) -> None:
    problem = only_problem(tmp_path, MINIMAL + f'[system]\ninterval = "{text}"\n')
    assert_names(problem, "system.interval", "expected a duration", "units ms, s, m, h", f'found "{text}" (string)')


@pytest.mark.parametrize("text", ["3q", "ms", "1.5.2s", "1e3ms", "٣s", "3s\nx"])
def test_duration_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Duration.parse(text)


# ------------------------------------------------------------------------ invalid TOML


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, '[node]\nname = "edge-a"\n\n[log]\nlevel = info\n')
    assert "not valid TOML" in problem
    assert "line 5" in problem, problem


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, '[node]\nname = "a"\nname = "b"\n')
    assert "not valid TOML" in problem and "line 3" in problem, problem


# ------------------------------------------------------------------------ missing file


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "lifeline.toml"
    problems = problems_of(path)
    assert len(problems) == 1
    assert str(path) in problems[0]
    assert "no such file" in problems[0]
    assert "--config" in problems[0]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path)
    assert problems[0].startswith(f"{tmp_path}: cannot read")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "lifeline.toml"
    path.write_bytes(b'[node]\nname = "\xff"\n')
    assert problems_of(path)[0].startswith(f"{path}: cannot read")


# ---------------------------------------------------------------------- metrics.listen


@pytest.mark.parametrize(
    ("listen", "fragments"),
    [
        ("foo", ['expected "HOST:PORT"', "found 'foo'"]),
        ("1.2.3.4:99999", ["expected a port from 0 to 65535", "found 99999"]),
        (":9469", ['expected "HOST:PORT"']),
        ("::1:9469", ['expected "HOST:PORT"']),
        ("[zz::1]:9469", ['expected "HOST:PORT"']),
        ("[1::2::3]:9469", ["expected an IPv6 address", "found '1::2::3'"]),
        ("[1.2.3.4]:80", ["expected an IPv6 address"]),
        ("host:port", ['expected "HOST:PORT"']),
    ],
)
def test_bad_metrics_listen(tmp_path: Path, listen: str, fragments: list[str]) -> None:
    problem = only_problem(tmp_path, MINIMAL + f'[metrics]\nlisten = "{listen}"\n')
    assert_names(problem, "metrics.listen", *fragments)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("[::1]:9469", ("::1", 9469)),
        ("127.0.0.1:9469", ("127.0.0.1", 9469)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("metrics.lan:65535", ("metrics.lan", 65535)),
        ("[fe80::1%eth0]:80", None),
    ],
)
def test_metrics_listen_forms(tmp_path: Path, listen: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        # A zone index is not accepted (the endpoint binds a plain address).
        with pytest.raises(ValueError):
            parse_host_port(listen)
        return
    config = load_config(write(tmp_path, MINIMAL + f'[metrics]\nlisten = "{listen}"\n'))
    assert config.metrics.listen == listen
    assert config.metrics.host_port == expected


# ------------------------------------------------------------------------ control.mode


@pytest.mark.parametrize(
    ("mode", "fragments"),
    [
        ("rw-rw----", ['expected octal permission bits such as "0660"', "found 'rw-rw----'"]),
        ("0860", ["expected octal permission bits", "found '0860'"]),
        ("06600", ["expected octal permission bits"]),
        ("0460", ["needs read and write (0600)", "found '0460'"]),
        ("0066", ["needs read and write (0600)"]),
    ],
)
def test_bad_control_mode(tmp_path: Path, mode: str, fragments: list[str]) -> None:
    problem = only_problem(tmp_path, MINIMAL + f'[control]\nmode = "{mode}"\n')
    assert_names(problem, "control.mode", *fragments)


def test_control_mode_as_integer(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "[control]\nmode = 660\n")
    assert_names(problem, "control.mode", "expected a string", "found 660 (integer)")


@pytest.mark.parametrize(("mode", "bits"), [("0660", 0o660), ("600", 0o600), ("0700", 0o700)])
def test_good_control_mode(tmp_path: Path, mode: str, bits: int) -> None:
    config = load_config(write(tmp_path, MINIMAL + f'[control]\nmode = "{mode}"\n'))
    assert config.control.mode_bits == bits


# --------------------------------------------------------------------------- node.name


@pytest.mark.parametrize("name", ["", "edge a", "-edge", ".edge", "edge/a", "é", "a" * 64])
def test_bad_node_name(tmp_path: Path, name: str) -> None:
    problem = only_problem(tmp_path, f'[node]\nname = "{name}"\n')
    assert_names(problem, "node.name", "expected 1-63 letters, digits", f"found {name!r}")


@pytest.mark.parametrize("name", ["a", "edge-a", "edge_b.lon1", "9", "a" * 63])
def test_good_node_name(name: str) -> None:
    assert parse_config(f'[node]\nname = "{name}"\n').node.name == name


def test_node_name_as_integer(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "[node]\nname = 7\n")
    assert_names(problem, "node.name", "expected a string", "found 7 (integer)")


# ------------------------------------------------------------- several problems at once


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tpo = 1
        [node]
        name = "bad name"
        [log]
        level = "loud"
        [control]
        mode = "abc"
        max_request_bytes = 10
        [metrics]
        listen = "foo"
        [system]
        interval = "3q"
        cpu_threshold = 2
        sustain = "-5s"
        [events]
        subscriber_buffer = "many"
        """,
    )
    problems = problems_of(path)
    expected = [
        "tpo", "node.name", "log.level", "control.mode", "control.max_request_bytes",
        "metrics.listen", "system.interval", "system.cpu_threshold", "system.sustain",
        "events.subscriber_buffer",
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for key_path in expected:
        assert sum(f"{path}: {key_path}: " in p for p in problems) == 1, (key_path, problems)


def test_cross_key_check_still_runs_next_to_a_rejected_value(tmp_path: Path) -> None:
    # Regression: a rejected max_request_bytes used to hide the bad mode in the same section.
    path = write(tmp_path, MINIMAL + '[control]\nmode = "abc"\nmax_request_bytes = 10\n')
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert_names(problems[0], "control.max_request_bytes", "at least 1024")
    assert_names(problems[1], "control.mode", "expected octal permission bits")


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[node]\nname = ""\n', source="inline.toml")
    assert info.value.problems == [
        "inline.toml: node.name: expected 1-63 letters, digits, '.', '_' or '-', found ''"
    ]


# ---------------------------------------------------------------------------- defaults


def test_defaults_applied(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(path)
    assert config == Config(node=NodeConfig(name="edge-a"))
    assert config.source == path
    assert config.node.state_dir == Path("/var/lib/lifeline")
    assert config.node.runtime_dir == Path("/run/lifeline")
    assert config.log == LogConfig(level="info")
    assert config.control == ControlConfig(
        socket=Path("/run/lifeline/control.sock"), mode="0660", group="lifeline",
        max_request_bytes=64 * 1024,
    )
    assert config.control.mode_bits == 0o660
    assert config.metrics == MetricsConfig(enabled=True, listen="127.0.0.1:9469")
    assert config.system == SystemConfig(
        interval=Duration(2.0), cpu_threshold=0.9, memory_threshold=0.9, disk_threshold=0.9,
        temperature_threshold_c=85.0, sustain=Duration(10.0), recover_margin=0.05,
    )
    assert isinstance(config.system.interval, Duration)
    assert config.events == EventsConfig(subscriber_buffer=1024)


def test_partial_section_keeps_other_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + '[system]\ninterval = "500ms"\n'))
    assert config.system.interval == 0.5
    assert config.system.sustain == 10.0
    assert config.system.cpu_threshold == 0.9


def test_empty_sections_are_fine(tmp_path: Path) -> None:
    text = MINIMAL + "[log]\n[control]\n[metrics]\n[system]\n[events]\n"
    assert load_config(write(tmp_path, text)) == Config(node=NodeConfig(name="edge-a"))


# ---------------------------------------------------------------------- relative paths


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch) -> None:
    conf_dir = tmp_path / "etc" / "lifeline"
    conf_dir.mkdir(parents=True)
    path = write(
        conf_dir,
        '[node]\nname = "a"\nstate_dir = "state"\nruntime_dir = "/run/x"\n'
        '[control]\nsocket = "sub/control.sock"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    base = conf_dir.resolve()
    assert config.node.state_dir == base / "state"
    assert config.node.runtime_dir == Path("/run/x")  # absolute stays as written
    assert config.control.socket == base / "sub" / "control.sock"
    assert config.node.state_dir.is_absolute()

    # The same file, loaded through a relative path from its own directory.
    monkeypatch.chdir(conf_dir)
    assert load_config("lifeline.toml").node.state_dir == base / "state"


def test_parse_config_relative_paths_use_base_dir(tmp_path: Path) -> None:
    config = parse_config('[node]\nname = "a"\nstate_dir = "s"\n', base_dir=tmp_path)
    assert config.node.state_dir == tmp_path / "s"


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2), ("3s", 3.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5),
        ("0.5ms", 0.0005), (" 3s ", 3.0), ("3 s", 3.0), ("0s", 0.0), ("-1s", -1.0),
        ("300ms", 0.3), ("9ms", 0.009), ("100ms", 0.1), ("1.5h", 5400.0),
    ],
)
def test_duration_parse(text: str, seconds: float) -> None:
    value = Duration.parse(text)
    assert isinstance(value, Duration)
    assert value == seconds  # exactly: "300ms" is the same float as 0.3


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "200ms"), (120, "2m"), (3, "3s"), (3600, "1h"), (7200, "2h"), (90, "90s"),
        (5400, "90m"), (0, "0s"), (1.5, "1500ms"), (0.0005, "0.5ms"), (0.00001, "0.01ms"), (-0.2, "-200ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert str(Duration(seconds)) == text
    assert repr(Duration(seconds)) == f"Duration({text!r})"


def test_format_duration_refuses_non_finite() -> None:
    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            format_duration(value)


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_round_trip_integer_ms(ms: int) -> None:
    x = ms / 1000
    text = format_duration(x)
    assert Duration.parse(text) == x
    assert Duration.parse(f"{ms}ms") == x


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_duration_round_trip_any_float(x: float) -> None:
    text = format_duration(x)
    assert re.fullmatch(r"-?\d+(\.\d+)?(ms|s|m|h)", text), text  # never an exponent
    assert Duration.parse(text) == x


# ----------------------------------------------------------------- to_dict / dump_toml


def round_trip(config: Config) -> Config:
    return parse_config(dump_toml(to_dict(config)), source="dump")


def test_to_dict_is_plain() -> None:
    data = to_dict(Config(node=NodeConfig(name="a")))
    assert "source" not in data
    assert data["system"]["interval"] == "2s"
    assert data["node"]["state_dir"] == "/var/lib/lifeline"
    assert tomllib.loads(dump_toml(data)) == data


def test_round_trip_defaults() -> None:
    config = Config(node=NodeConfig(name="edge-a"))
    assert round_trip(config) == config


@pytest.mark.parametrize("example", [PRIMARY, STANDBY], ids=lambda p: p.name)
def test_round_trip_examples(example: Path) -> None:
    config = load_config(example)
    assert round_trip(config) == config


def test_dump_toml_escapes_control_characters() -> None:
    # Regression: raw \r, \x00 or \x7f in a string made dump_toml write invalid TOML.
    group = 'a\rb\x00c\x7fd"e\\f\tg\nh\x1b'
    config = Config(node=NodeConfig(name="a"), control=ControlConfig(group=group))
    assert round_trip(config).control.group == group


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
durations_ms = st.integers(min_value=1, max_value=10**7).map(lambda ms: Duration(ms / 1000))
fractions = st.floats(min_value=0, max_value=1, exclude_min=True)
abs_paths = st.lists(st.from_regex(r"[a-z0-9_.-]{1,8}", fullmatch=True).filter(lambda s: s not in (".", "..")),
                     min_size=1, max_size=4).map(lambda parts: Path("/", *parts))


@settings(max_examples=200)
@given(
    name=names,
    state_dir=abs_paths,
    level=st.sampled_from(["debug", "info", "warning", "error"]),
    mode=st.sampled_from(["0600", "0660", "0640", "700", "0666"]),
    group=texts,
    max_request_bytes=st.integers(min_value=1024, max_value=64 * 1024 * 1024),
    enabled=st.booleans(),
    port=st.integers(min_value=0, max_value=65535),
    interval=durations_ms,
    sustain=st.integers(min_value=0, max_value=10**7).map(lambda ms: Duration(ms / 1000)),
    cpu=fractions,
    temperature=st.floats(min_value=0, max_value=150, exclude_min=True),
    margin=st.floats(min_value=0, max_value=0.5),
    buffer=st.integers(min_value=16, max_value=1_000_000),
)
def test_round_trip_any_config(
    name, state_dir, level, mode, group, max_request_bytes, enabled, port, interval, sustain,
    cpu, temperature, margin, buffer,
) -> None:
    config = Config(
        node=NodeConfig(name=name, state_dir=state_dir),
        log=LogConfig(level=level),
        control=ControlConfig(mode=mode, group=group, max_request_bytes=max_request_bytes),
        metrics=MetricsConfig(enabled=enabled, listen=f"[::1]:{port}"),
        system=SystemConfig(
            interval=interval, sustain=sustain, cpu_threshold=cpu,
            temperature_threshold_c=temperature, recover_margin=margin,
        ),
        events=EventsConfig(subscriber_buffer=buffer),
    )
    again = round_trip(config)
    assert again == config
    assert isinstance(again.system.interval, Duration)


# ------------------------------------------------------------------------ the examples


@pytest.mark.parametrize(("example", "name"), [(PRIMARY, "edge-a"), (STANDBY, "edge-b")], ids=["primary", "standby"])
def test_examples_load(example: Path, name: str) -> None:
    config = load_config(example)
    assert config.node.name == name
    assert config.source == example


def _schema_keys(cls: type, prefix: str = "") -> set[str]:
    """Every key path of the schema; named sections (dict[str, Section]) as NAME = "*"."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        optional_section = typing.get_origin(tp) in (typing.Union, types.UnionType) and any(
            dataclasses.is_dataclass(a) for a in typing.get_args(tp))
        if optional_section:
            tp = next(a for a in typing.get_args(tp) if dataclasses.is_dataclass(a))
        if dataclasses.is_dataclass(tp):
            keys |= _schema_keys(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is dict:
            keys |= _schema_keys(typing.get_args(tp)[1], f"{prefix}{f.name}.*.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


NAMED_SECTIONS = {"uplinks", "venues"}
#: Sections whose absence means "off" (no defaults to compare).
OPTIONAL_SECTIONS = {"standby", "recovery", "hardware"}


def _document_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        if isinstance(value, dict):
            shown = "*" if prefix.rstrip(".") in NAMED_SECTIONS else key
            keys |= _document_keys(value, f"{prefix}{shown}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _commented_keys(text: str) -> set[str]:
    """Optional keys shown commented out (``# route_metric = 50``), with their section."""
    keys, section = set(), ""
    for line in text.splitlines():
        header = re.match(r"\[([A-Za-z0-9_.]+)\]", line)
        if header:
            parts = header.group(1).split(".")
            section = ".".join("*" if i == 1 and parts[0] in NAMED_SECTIONS else p for i, p in enumerate(parts))
        commented = re.match(r"#\s*([a-z_]+) = ", line)
        if commented and section:
            keys.add(f"{section}.{commented.group(1)}")
    return keys


def test_primary_example_shows_every_key_of_the_schema() -> None:
    text = PRIMARY.read_text(encoding="utf-8")
    document = tomllib.loads(text)
    assert _document_keys(document) | _commented_keys(text) == _schema_keys(Config)


def test_primary_example_shows_defaults() -> None:
    example = to_dict(load_config(PRIMARY))
    defaults = to_dict(Config(node=NodeConfig(name="edge-a")))
    # Named sections (uplinks) have no defaults of their own; every other section must
    # show its defaults.
    for section in NAMED_SECTIONS | OPTIONAL_SECTIONS:
        example.pop(section, None)
        defaults.pop(section, None)
    assert example == defaults


def test_primary_example_comments_every_key_and_section() -> None:
    lines = PRIMARY.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*(\[|[A-Za-z_]+\s*=)", line):
            before = lines[i - 1].strip()
            assert before.startswith("#"), f"line {i + 1} ({line!r}) has no comment above it"


def test_primary_example_header() -> None:
    text = PRIMARY.read_text(encoding="utf-8")
    for fragment in ("/etc/lifeline/lifeline.toml", "lifeline config check", "lifeline config show",
                     '"200ms"', '"3s"', '"2m"', '"1h"', "Unknown keys are refused", "Relative paths"):
        assert fragment in text, fragment


# ------------------------------------------------------------------------------- CLI


def lifeline(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return cli(*map(str, args), timeout=60)


@pytest.mark.parametrize("example", [PRIMARY, STANDBY], ids=lambda p: p.name)
def test_cli_config_check_example(example: Path) -> None:
    # --no-host: the examples name interfaces and keys of a real edge host, not this one
    result = lifeline("config", "check", "--no-host", example)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert result.stderr == ""


def test_cli_config_check_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "edge-a"\n[system]\ninterval = "3q"\ncpu_threshold = 7\n')
    result = lifeline("config", "check", path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{path}: INVALID, 2 problem(s)" in result.stderr
    assert f"{path}: system.interval: expected a duration" in result.stderr
    assert f"{path}: system.cpu_threshold: expected a value of at most 1, found 7" in result.stderr


def test_cli_config_check_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = lifeline("config", "check", path)
    assert result.returncode == 1
    assert str(path) in result.stderr and "--config" in result.stderr


@pytest.mark.parametrize("example", [PRIMARY, STANDBY], ids=lambda p: p.name)
def test_cli_config_show_reparses_to_the_same_config(example: Path) -> None:
    result = lifeline("config", "show", example)
    assert result.returncode == 0, result.stderr
    assert parse_config(result.stdout, source="shown") == load_config(example)


def test_cli_config_show_fills_defaults_and_resolves_paths(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "x"\nstate_dir = "state"\n')
    result = lifeline("config", "show", path)
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["node"]["state_dir"] == str(tmp_path.resolve() / "state")
    assert shown["system"]["interval"] == "2s"
    assert shown["control"]["max_request_bytes"] == 64 * 1024


def test_cli_config_show_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "x"\n[log]\nlevl = "info"\n')
    result = lifeline("config", "show", path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{path}: log.levl: unknown key" in result.stderr


# ------------------------------------------------------------------------- the lease

LEASED = MINIMAL + '''
[standby]
key_file = "k"
peer = "10.0.0.2:7470"

[standby.lease]
backend = "witness"
witness = "10.0.0.3:7480"
'''


def test_a_leased_pair_loads_with_the_default_timings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, LEASED))
    assert config.standby is not None and config.standby.role is None
    lease = config.standby.lease
    assert lease is not None and lease.timings().problems() == []
    assert (lease.timings().ttl, lease.timings().renew, lease.timings().safety_margin) == (1.5, 0.5, 0.3)


@pytest.mark.parametrize(("extra", "key", "fragments"), [
    ('ttl = "1s"\nrenew_interval = "500ms"', "standby.lease.renew_interval",
     ("renew_interval + 2 * retry_timeout must be <= ttl", "raise ttl to at least 1.5s")),
    ('safety_margin = "10ms"\nmax_clock_rate_error = 0.01', "standby.lease.safety_margin",
     ("must exceed 2 * max_clock_rate_error * ttl", "raise safety_margin")),
    ('watchdog = "required"\nwatchdog_timeout = "2s"', "standby.lease.watchdog_timeout",
     ("below ttl - safety_margin", "lower watchdog_timeout or raise ttl")),
    ('watchdog = "optional"\nwatchdog_timeout = "500ms"', "standby.lease.watchdog_timeout", ("whole seconds",)),
    ('on_primary = ["notify-send", "x"]', "standby.lease.on_primary", ("absolute path", "no shell")),
])
def test_lease_timing_and_hook_problems_name_the_value_to_change(
        tmp_path: Path, extra: str, key: str, fragments: tuple[str, ...]) -> None:
    problem = only_problem(tmp_path, LEASED + extra + "\n")
    assert_names(problem, key, *fragments)


def test_a_fixed_role_next_to_a_lease_is_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, LEASED.replace('key_file = "k"', 'key_file = "k"\nrole = "primary"'))
    assert_names(problem, "standby.role", "the lease decides the role", "two primaries")


def test_a_lease_needs_its_store_and_the_peer(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, LEASED.replace('witness = "10.0.0.3:7480"\n', "")
                                 .replace('peer = "10.0.0.2:7470"\n', "")))
    assert any(": standby.lease.witness: required" in p for p in problems), problems
    assert any(": standby.peer: required with [standby.lease]" in p for p in problems), problems
    etcd = LEASED.replace('backend = "witness"', 'backend = "etcd"\netcd_endpoints = ["10.0.0.5:2379"]')
    assert_names(only_problem(tmp_path, etcd), "standby.lease.etcd_endpoints", "http://HOST:PORT")


def test_neither_role_nor_lease_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + '[standby]\nkey_file = "k"\n'
    assert_names(only_problem(tmp_path, text), "standby.role", "or add a [standby.lease] table")


def test_a_control_socket_path_too_long_for_the_kernel_is_refused(tmp_path: Path) -> None:
    deep = "/run/" + "x" * 120 + "/control.sock"
    problem = only_problem(tmp_path, MINIMAL + f'[control]\nsocket = "{deep}"\n')
    assert_names(problem, "control.socket", "too long for a unix socket path", "choose a shorter path")
