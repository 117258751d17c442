"""The playbook format: a full playbook and its defaults, every refusal with its exact
message (source, dotted path, fix), all problems collected at once, the action registry,
exec programs, and garbage that never escapes as anything but PlaybookError."""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.playbook import (
    ACTIONS,
    PRECONDITIONS,
    Playbook,
    PlaybookError,
    Precondition,
    Step,
    Trigger,
    event_names,
    exec_programs,
    parse_playbook,
)

FULL = b'''\
name = "fibre-lost"
version = 3
expires = 2027-06-30T00:00:00Z
description = "Fibre is gone: pin Starlink, tell the desk."
requires_role = "primary"
cooldown = "10m"

[[trigger]]
event = "ActiveUplinkChanged"
where = { active = "starlink", change = "failover" }

[[trigger]]
event = "UpsOnBattery"

[[precondition]]
check = "role"
equals = "primary"

[[precondition]]
check = "event_seen"
event = "UplinkHealthChanged"
within = "2m"
where = { uplink = "fibre", state = "down" }

[[step]]
action = "uplink.use"
args = { name = "starlink" }
timeout = "10s"
on_failure = "rollback"
[step.rollback]
action = "uplink.auto"
timeout = "5s"

[[step]]
action = "notify"
args = { message = "fibre lost, on Starlink" }
on_failure = "continue"

[[step]]
action = "wait_for"
args = { event = "RoleChanged", where = { role = "primary" }, timeout = "1m" }
timeout = "90s"

[[step]]
action = "exec"
args = { argv = ["/usr/local/bin/page-desk", "--fibre"] }
'''


def test_a_full_playbook() -> None:
    pb = parse_playbook(FULL, "fibre-lost.toml")
    assert pb == Playbook(
        name="fibre-lost",
        version=3,
        expires=datetime(2027, 6, 30, tzinfo=timezone.utc),
        description="Fibre is gone: pin Starlink, tell the desk.",
        requires_role="primary",
        cooldown=600.0,
        triggers=(Trigger("ActiveUplinkChanged", {"active": "starlink", "change": "failover"}),
                  Trigger("UpsOnBattery", {})),
        preconditions=(Precondition("role", {"equals": "primary"}),
                       Precondition("event_seen", {"event": "UplinkHealthChanged", "within": 120.0,
                                                   "where": {"uplink": "fibre", "state": "down"}})),
        steps=(
            Step("uplink.use", {"name": "starlink"}, 10.0, "rollback",
                 Step("uplink.auto", {}, 5.0, "continue", None)),
            Step("notify", {"message": "fibre lost, on Starlink", "level": "info"}, 30.0, "continue", None),
            Step("wait_for", {"event": "RoleChanged", "where": {"role": "primary"}, "timeout": 60.0}, 90.0,
                 "abort", None),
            Step("exec", {"argv": ["/usr/local/bin/page-desk", "--fibre"]}, 30.0, "abort", None),
        ),
    )
    assert pb.expires.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        pb.version = 4  # type: ignore[misc]


def test_defaults() -> None:
    pb = parse_playbook(b'name = "x"\nversion = 1\nexpires = 2027-01-01T00:00:00+02:00\n'
                        b'description = "d"\n[[step]]\naction = "standby.demote"\n', "x.toml")
    assert pb.requires_role == "any"
    assert pb.cooldown == 300.0
    assert pb.triggers == () and pb.preconditions == ()
    assert pb.steps == (Step("standby.demote", {}, 30.0, "abort", None),)
    assert pb.expires.utcoffset() == timedelta(hours=2)
    assert type(pb.steps[0].timeout) is float and type(pb.cooldown) is float


def test_the_registry_is_exactly_the_built_ins() -> None:
    assert set(ACTIONS) == {"uplink.use", "uplink.auto", "standby.promote", "standby.demote", "engine.halt",
                            "engine.resume", "venue.cancel_all", "guard.kill", "notify", "wait_for", "exec"}
    schema = {name: {arg: (spec.type, spec.required) for arg, spec in a.args.items()} for name, a in ACTIONS.items()}
    assert schema == {
        "uplink.use": {"name": ("uplink", True)},
        "uplink.auto": {},
        "standby.promote": {"accept_loss": ("boolean", True)},
        "standby.demote": {},
        "engine.halt": {"reason": ("string", True)},
        "engine.resume": {},
        "venue.cancel_all": {"venue": ("string", True)},
        "guard.kill": {"reason": ("string", True), "venue": ("string", False), "symbol": ("string", False)},
        "notify": {"message": ("string", True), "level": ("level", False)},
        "wait_for": {"event": ("event", True), "where": ("where", False), "timeout": ("duration", True)},
        "exec": {"argv": ("argv", True)},
    }
    assert all(a.doc for a in ACTIONS.values())
    assert set(PRECONDITIONS) == {"role", "uplink_active", "event_seen"}


MINIMAL_ARGS = {
    "guard.kill": '{ reason = "breaker tripped" }',
    "uplink.use": '{ name = "starlink" }',
    "uplink.auto": "{}",
    "standby.promote": "{ accept_loss = false }",
    "standby.demote": "{}",
    "engine.halt": '{ reason = "drill" }',
    "engine.resume": "{}",
    "venue.cancel_all": '{ venue = "binance" }',
    "notify": '{ message = "hello", level = "warning" }',
    "wait_for": '{ event = "UpsOnBattery", timeout = "5s" }',
    "exec": '{ argv = ["/bin/true"] }',
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_loads_with_its_arguments(action: str) -> None:
    text = header() + f'[[step]]\naction = "{action}"\nargs = {MINIMAL_ARGS[action]}\n'
    pb = parse_playbook(text.encode(), "pb.toml")
    assert pb.steps[0].action == action
    assert set(pb.steps[0].args) == set(ACTIONS[action].args)  # optional ones filled in


def test_exec_programs_lists_steps_and_rollbacks_once_each() -> None:
    text = header() + (
        '[[step]]\naction = "exec"\nargs = { argv = ["/usr/local/bin/page-desk", "a"] }\n'
        '[step.rollback]\naction = "exec"\nargs = { argv = ["/usr/local/bin/unpage"] }\n'
        '[[step]]\naction = "uplink.auto"\n'
        '[[step]]\naction = "exec"\nargs = { argv = ["/usr/local/bin/page-desk", "b"] }\n'
    )
    assert exec_programs(parse_playbook(text.encode(), "pb.toml")) == [
        "/usr/local/bin/page-desk", "/usr/local/bin/unpage"]
    assert exec_programs(parse_playbook(FULL, "fibre-lost.toml")) == ["/usr/local/bin/page-desk"]


def test_event_names_come_from_the_event_classes() -> None:
    from daemon.core import events

    names = event_names()
    assert {"ActiveUplinkChanged", "RoleChanged", "UplinkHealthChanged"} <= names
    assert "Event" not in names
    expected = {obj.__name__ for obj in vars(events).values()
                if isinstance(obj, type) and issubclass(obj, events.Event) and obj is not events.Event}
    assert expected <= names


def test_an_event_class_defined_elsewhere_counts() -> None:
    from dataclasses import dataclass

    from daemon.core.events import Event

    @dataclass(frozen=True, kw_only=True)
    class DrillEventForPlaybookTest(Event):
        site: str

    text = header() + '[[trigger]]\nevent = "DrillEventForPlaybookTest"\nwhere = { site = "ld4" }\n' + STEP
    assert parse_playbook(text.encode(), "pb.toml").triggers[0].where == {"site": "ld4"}


def test_where_may_use_numbers_booleans_and_the_source() -> None:
    text = header() + (
        '[[trigger]]\nevent = "OperatorPromotion"\nwhere = { accept_loss = true, source = "roles" }\n'
        '[[trigger]]\nevent = "ActiveUplinkChanged"\nwhere = { detection_ms = 3 }\n'
        '[[trigger]]\nevent = "UpsOnBattery"\nwhere = { runtime_s = 1.5 }\n' + STEP)
    pb = parse_playbook(text.encode(), "pb.toml")
    assert [t.where for t in pb.triggers] == [{"accept_loss": True, "source": "roles"}, {"detection_ms": 3},
                                              {"runtime_s": 1.5}]


# --------------------------------------------------------------------------- refusals


H = {"name": '"fibre-lost"', "version": "3", "expires": "2027-06-30T00:00:00Z", "description": '"d"'}


def header(**changes: str | None) -> str:
    fields: dict[str, str | None] = dict(H)
    fields.update(changes)
    return "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


STEP = '[[step]]\naction = "uplink.auto"\n'


def with_header(body: str) -> str:
    return header() + body


def problems(text: str | bytes, source: str = "pb.toml") -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(PlaybookError) as info:
        parse_playbook(data, source)
    error = info.value
    assert error.source == source
    assert str(error) == "\n".join(error.problems)
    assert all(p.startswith(f"{source}: ") and "\n" not in p for p in error.problems)
    return error.problems


REFUSALS = [
    pytest.param(header(name=None) + STEP,
                 'name: missing required key; add name = "fibre-lost"', id='name missing'),
    pytest.param(header(name='"Fibre_Lost"') + STEP,
                 'name: expected 1-64 lowercase letters, digits or \'-\' (not starting with \'-\'), e.g. "fibre-lost", found "Fibre_Lost" (string)', id='name bad'),
    pytest.param(header(name='"-x"') + STEP,
                 'name: expected 1-64 lowercase letters, digits or \'-\' (not starting with \'-\'), e.g. "fibre-lost", found "-x" (string)', id='name dash'),
    pytest.param(header(version=None) + STEP,
                 'version: missing required key; add version = 1', id='version missing'),
    pytest.param(header(version="0") + STEP,
                 'version: expected an integer of at least 1, found 0: versions start at 1', id='version 0'),
    pytest.param(header(version='"3"') + STEP,
                 'version: expected an integer of at least 1 (version = 3), found "3" (string)', id='version str'),
    pytest.param(header(version="true") + STEP,
                 'version: expected an integer of at least 1 (version = 3), found true (boolean)', id='version bool'),
    pytest.param(header(version="1.5") + STEP,
                 'version: expected an integer of at least 1 (version = 3), found 1.5 (float)', id='version float'),
    pytest.param(header(expires="2027-06-30T00:00:00") + STEP,
                 'expires: 2027-06-30T00:00:00 has no UTC offset and would mean a different instant on each host: add "Z" or an offset, e.g. 2027-06-30T00:00:00Z', id='expires naive'),
    pytest.param(header(expires="2027-06-30") + STEP,
                 'expires: a date alone (2027-06-30) has no time or offset: write a date-time with an offset, e.g. 2027-06-30T00:00:00Z', id='expires date'),
    pytest.param(header(expires="07:00:00") + STEP,
                 'expires: a time alone (07:00:00) is not an expiry: write a date-time with an offset, e.g. 2027-06-30T00:00:00Z', id='expires time'),
    pytest.param(header(expires='"2027-06-30T00:00:00Z"') + STEP,
                 'expires: expected a TOML date-time, found "2027-06-30T00:00:00Z" (string): remove the quotes, e.g. expires = 2027-06-30T00:00:00Z', id='expires str'),
    pytest.param(header(expires="2027") + STEP,
                 'expires: expected a date-time with an offset, e.g. expires = 2027-06-30T00:00:00Z, found 2027 (integer)', id='expires int'),
    pytest.param(header(expires=None) + STEP,
                 'expires: missing required key; add expires = 2027-06-30T00:00:00Z', id='expires missing'),
    pytest.param(header(description=None) + STEP,
                 'description: missing required key; add description = "what it does and when"', id='description missing'),
    pytest.param(header(description='"  "') + STEP,
                 'description: expected a non-empty string, found "  " (string)', id='description blank'),
    pytest.param(header(requires_role='"master"') + STEP,
                 'requires_role: expected one of "primary", "standby", "any", found "master" (string)', id='requires_role'),
    pytest.param(header(cooldown="5") + STEP,
                 'cooldown: expected a duration such as "500ms", "10s" or "2m", found 5 (integer): write it as a string with a unit, e.g. "5s" for 5 seconds', id='cooldown int'),
    pytest.param(header(cooldown='"5 minutes"') + STEP,
                 'cooldown: expected a duration such as "500ms", "10s" or "2m" (units ms, s, m, h), found "5 minutes" (string)', id='cooldown words'),
    pytest.param(header(cooldown='"-1s"') + STEP,
                 'cooldown: expected a duration of at least 0s, found "-1s" (string)', id='cooldown neg'),
    pytest.param(header(steps="1") + STEP,
                 'steps: unknown key (did you mean "step"?); remove it: a playbook takes name, version, expires, description, requires_role, cooldown, trigger, precondition, step', id='unknown top'),
    pytest.param(header(),
                 'step: missing: a playbook needs at least one [[step]] table', id='no steps'),
    pytest.param(header(step="[]"),
                 'step: expected at least one [[step]] table, found none', id='empty steps'),
    pytest.param(header() + '[step]\naction = "uplink.auto"\n',
                 'step: expected an array of tables written [[step]], found a table', id='step table'),
    pytest.param(with_header('[[trigger]]\nwhere = {}\n' + STEP),
                 'trigger[0].event: missing required key; add event = "ActiveUplinkChanged"', id='trigger no event'),
    pytest.param(with_header('[[trigger]]\nevent = "UplinkChange"\n' + STEP),
                 'trigger[0].event: unknown event "UplinkChange" (did you mean "UplinkHealthChanged"?); use an event class name from daemon/core/events.py: ...', id='trigger unknown event'),
    pytest.param(with_header('[[trigger]]\nevent = 3\n' + STEP),
                 'trigger[0].event: unknown event 3 (integer); use an event class name from daemon/core/events.py: ...', id='trigger event int'),
    pytest.param(with_header('[[trigger]]\nevent = "RoleChanged"\nwhen = {}\n' + STEP),
                 'trigger[0].when: unknown key; remove it: a [[trigger]] takes event, where', id='trigger unknown key'),
    pytest.param(with_header('[[trigger]]\nevent = "RoleChanged"\nwhere = "primary"\n' + STEP),
                 'trigger[0].where: expected a table such as { active = "starlink" }, found "primary" (string)', id='where not table'),
    pytest.param(with_header('[[trigger]]\nevent = "RoleChanged"\nwhere = { rol = "primary" }\n' + STEP),
                 'trigger[0].where.rol: RoleChanged has no field "rol" (did you mean "role"?); its fields are: source, node, role, previous, epoch, reason, monotonic_ns', id='where unknown field'),
    pytest.param(with_header('[[trigger]]\nevent = "RoleChanged"\nwhere = { epoch = "3" }\n' + STEP),
                 'trigger[0].where.epoch: RoleChanged.epoch holds an integer, found "3" (string): write a value of that type', id='where wrong type'),
    pytest.param(with_header('[[trigger]]\nevent = "RoleChanged"\nwhere = { role = ["primary"] }\n' + STEP),
                 'trigger[0].where.role: where compares single values (string, number, true/false), found an array of 1', id='where list'),
    pytest.param(with_header('[[trigger]]\nevent = "DaemonReady"\nwhere = { services = "uplinks" }\n' + STEP),
                 'trigger[0].where.services: DaemonReady.services holds a list or table, which where cannot compare '
                 '(it compares single values): remove it', id='where list field'),
    pytest.param(with_header('[[trigger]]\nevent = "RoleChanged"\nwhere = { wall_time = 1.0 }\n' + STEP),
                 'trigger[0].where.wall_time: wall_time differs on every event, so it can never be matched: remove it', id='where wall_time'),
    pytest.param(with_header('[[precondition]]\nequals = "primary"\n' + STEP),
                 'precondition[0].check: missing required key; add check = one of "role", "uplink_active", "event_seen"', id='pre no check'),
    pytest.param(with_header('[[precondition]]\ncheck = "roles"\nequals = "primary"\n' + STEP),
                 'precondition[0].check: unknown check "roles" (did you mean "role"?); use one of "role", "uplink_active", "event_seen"', id='pre unknown check'),
    pytest.param(with_header('[[precondition]]\ncheck = "role"\n' + STEP),
                 'precondition[0].equals: missing required argument of check "role"; add equals = one of "waiting", "standby", "candidate", "primary", "fenced"', id='pre role missing equals'),
    pytest.param(with_header('[[precondition]]\ncheck = "role"\nequals = "master"\n' + STEP),
                 'precondition[0].equals: expected one of "waiting", "standby", "candidate", "primary", "fenced", found "master" (string)', id='pre role bad'),
    pytest.param(with_header('[[precondition]]\ncheck = "uplink_active"\nequals = "star link"\n' + STEP),
                 'precondition[0].equals: expected an uplink name (1-32 letters, digits, \'_\' or \'-\', as in [uplinks.NAME]), found "star link" (string)', id='pre uplink bad'),
    pytest.param(with_header('[[precondition]]\ncheck = "event_seen"\nevent = "UpsOnBattery"\n' + STEP),
                 'precondition[0].within: missing required argument of check "event_seen"; add within = a duration such as "500ms", "10s" or "2m"', id='pre event_seen within'),
    pytest.param(with_header('[[precondition]]\ncheck = "event_seen"\nevent = "UpsOnBattery"\nwithin = "1m"\nsince = "1m"\n' + STEP),
                 'precondition[0].since: unknown argument; remove it: check "event_seen" takes event, within, where?', id='pre event_seen unknown'),
    pytest.param(with_header('[[precondition]]\ncheck = "event_seen"\nevent = "UpsOnBattery"\nwithin = "1m"\nwhere = { dev = "ups0" }\n' + STEP),
                 'precondition[0].where.dev: UpsOnBattery has no field "dev"; its fields are: source, device, runtime_s', id='pre event_seen where'),
    pytest.param(with_header('[[step]]\nargs = {}\n'),
                 'step[0].action: missing required key; add action = one of "uplink.use", "uplink.auto", "standby.promote", "standby.demote", "engine.halt", "engine.resume", "venue.cancel_all", "guard.kill", "notify", "wait_for", "exec"', id='step no action'),
    pytest.param(with_header('[[step]]\naction = "uplink.switch"\n'),
                 'step[0].action: unknown action "uplink.switch"; use one of "uplink.use", "uplink.auto", "standby.promote", "standby.demote", "engine.halt", "engine.resume", "venue.cancel_all", "guard.kill", "notify", "wait_for", "exec"', id='step unknown action'),
    pytest.param(with_header('[[step]]\naction = "uplink.use"\nargs = "starlink"\n'),
                 'step[0].args: expected a table (args = { ... }), found "starlink" (string)', id='step args not table'),
    pytest.param(with_header('[[step]]\naction = "uplink.use"\nargs = { name = "starlink", nmae = "x" }\n'),
                 'step[0].args.nmae: unknown argument (did you mean "name"?); remove it: action "uplink.use" takes name', id='step unknown arg'),
    pytest.param(with_header('[[step]]\naction = "uplink.use"\n'),
                 'step[0].args.name: missing required argument of action "uplink.use"; add name = an uplink name (1-32 letters, digits, \'_\' or \'-\', as in [uplinks.NAME])', id='step missing arg'),
    pytest.param(with_header('[[step]]\naction = "standby.promote"\nargs = { accept_loss = "yes" }\n'),
                 'step[0].args.accept_loss: expected true or false, found "yes" (string)', id='step bool arg'),
    pytest.param(with_header('[[step]]\naction = "engine.resume"\nargs = { reason = "x" }\n'),
                 'step[0].args.reason: unknown argument; remove it: action "engine.resume" takes no arguments', id='step no-arg action'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\ntimeout = 10\n'),
                 'step[0].timeout: expected a duration such as "500ms", "10s" or "2m", found 10 (integer): write it as a string with a unit, e.g. "10s" for 10 seconds', id='timeout bare'),
    pytest.param(with_header('[[step]]\naction = "wait_for"\nargs = { event = "UpsOnBattery", timeout = 600.0 }\n'
                             'timeout = "11m"\n'),
                 'step[0].args.timeout: expected a duration such as "500ms", "10s" or "2m", found 600.0 (float): '
                 'write it as a string with a unit, e.g. "10m" for 600 seconds', id='wait_for float timeout'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\ntimeout = -3\n'),
                 'step[0].timeout: expected a duration such as "500ms", "10s" or "2m", found -3 (integer): '
                 'write it as a string with a unit, e.g. "10s"', id='timeout negative number'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\ntimeout = "0s"\n'),
                 'step[0].timeout: expected a duration above 0s, found "0s" (string)', id='timeout zero'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\ntimeout = "soon"\n'),
                 'step[0].timeout: expected a duration such as "500ms", "10s" or "2m" (units ms, s, m, h), found "soon" (string)', id='timeout junk'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\non_failure = "retry"\n'),
                 'step[0].on_failure: expected one of "abort", "continue", "rollback", found "retry" (string)', id='on_failure'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\nretries = 3\n'),
                 'step[0].retries: unknown key; remove it: a [[step]] takes action, args, timeout, on_failure, rollback', id='step unknown key'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\nrollback = "uplink.auto"\n'),
                 'step[0].rollback: expected a table [step.rollback] with action and args, found "uplink.auto" (string)', id='rollback not table'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\n[step.rollback]\naction = "uplink.auto"\non_failure = "abort"\n'),
                 'step[0].rollback.on_failure: unknown key; remove it: a rollback step takes action, args, timeout', id='rollback on_failure'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\n[step.rollback]\naction = "uplink.auto"\n[step.rollback.rollback]\naction = "uplink.auto"\n'),
                 'step[0].rollback.rollback: unknown key; remove it: a rollback step takes action, args, timeout', id='rollback nested'),
    pytest.param(with_header('[[step]]\naction = "uplink.auto"\n[step.rollback]\naction = "uplink.use"\nargs = { name = "" }\n'),
                 'step[0].rollback.args.name: expected an uplink name (1-32 letters, digits, \'_\' or \'-\', as in [uplinks.NAME]), found "" (string)', id='rollback arg'),
    pytest.param(with_header('[[step]]\naction = "notify"\nargs = { message = "hi", level = "loud" }\n'),
                 'step[0].args.level: expected one of "info", "warning", "error", found "loud" (string)', id='notify level'),
    pytest.param(with_header('[[step]]\naction = "notify"\nargs = { message = "" }\n'),
                 'step[0].args.message: expected a non-empty string, found "" (string)', id='notify empty'),
    pytest.param(with_header('[[step]]\naction = "wait_for"\nargs = { event = "RoleChanged", timeout = "1m" }\n'),
                 'step[0].timeout: the default 30s does not exceed args.timeout (1m), so the step would time out before the wait ends: set timeout = "65s" or more', id='wait_for timeout'),
    pytest.param(with_header('[[step]]\naction = "wait_for"\nargs = { event = "RoleChanged", timeout = "1m" }\ntimeout = "60s"\n'),
                 'step[0].timeout: 1m does not exceed args.timeout (1m), so the step would time out before the wait ends: set timeout = "65s" or more', id='wait_for timeout equal'),
    pytest.param(with_header('[[step]]\naction = "wait_for"\nargs = { event = "RoleChanged", timeout = "1s", where = { active = "x" } }\n'),
                 'step[0].args.where.active: RoleChanged has no field "active"; its fields are: source, node, role, previous, epoch, reason, monotonic_ns', id='wait_for where'),
    pytest.param(with_header('[[step]]\naction = "wait_for"\nargs = { event = "RoleChanged" }\n'),
                 'step[0].args.timeout: missing required argument of action "wait_for"; add timeout = a duration such as "500ms", "10s" or "2m"', id='wait_for no timeout'),
    pytest.param(with_header('[[step]]\naction = "exec"\nargs = { argv = "/bin/echo hi" }\n'),
                 'step[0].args.argv: expected an array of strings, the program first, e.g. ["/usr/local/bin/page-desk", "--now"], found "/bin/echo hi" (string): exec never runs a shell, split the command into its words', id='exec string'),
    pytest.param(with_header('[[step]]\naction = "exec"\nargs = { argv = [] }\n'),
                 'step[0].args.argv: expected an array of strings, the program first, e.g. ["/usr/local/bin/page-desk", "--now"], found an array of 0', id='exec empty'),
    pytest.param(with_header('[[step]]\naction = "exec"\nargs = { argv = ["page-desk"] }\n'),
                 'step[0].args.argv[0]: the program must be an absolute path (no PATH search), found "page-desk": write e.g. "/usr/local/bin/page-desk"', id='exec relative'),
    pytest.param(with_header('[[step]]\naction = "exec"\nargs = { argv = ["/usr/local/bin/../bin/x"] }\n'),
                 'step[0].args.argv[0]: "/usr/local/bin/../bin/x" is not a normalised path (".", "..", "//" or a trailing /): write the program\'s plain absolute path', id='exec dotdot'),
    pytest.param(with_header('[[step]]\naction = "exec"\nargs = { argv = ["/usr/local/bin/"] }\n'),
                 'step[0].args.argv[0]: "/usr/local/bin/" is not a normalised path (".", "..", "//" or a trailing /): write the program\'s plain absolute path', id='exec trailing'),
    pytest.param(with_header('[[step]]\naction = "exec"\nargs = { argv = ["/bin/x", "a\\u0000b"] }\n'),
                 'step[0].args.argv[1]: contains a NUL character, which no argument can carry: remove it', id='exec nul'),
    pytest.param(with_header('[[step]]\naction = "exec"\nargs = { argv = ["/bin/x", 3] }\n'),
                 'step[0].args.argv[1]: expected a string, found 3 (integer): quote it', id='exec int'),
    pytest.param(with_header('[[step]]\naction = "venue.cancel_all"\nargs = { venue = 3 }\n'),
                 'step[0].args.venue: expected a non-empty string, found 3 (integer)', id='venue int'),
    pytest.param(with_header('[[step]]\naction = "engine.halt"\n'),
                 'step[0].args.reason: missing required argument of action "engine.halt"; add reason = a non-empty string', id='halt no reason'),
]


@pytest.mark.parametrize(("text", "expected"), REFUSALS)
def test_refusal(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1, found
    if expected.endswith(" ..."):
        assert found[0].startswith("pb.toml: " + expected[:-4])
    else:
        assert found[0] == "pb.toml: " + expected


def test_unknown_events_list_every_known_name() -> None:
    (line,) = problems(with_header('[[trigger]]\nevent = "UplinkChange"\n' + STEP))
    assert line.endswith(", ".join(sorted(event_names())))


def test_every_problem_is_reported_at_once() -> None:
    text = (
        'name = "Fibre"\nversion = 0\nexpires = 2027-06-30\ncolor = "red"\n'
        '[[trigger]]\nevent = "RoleChanged"\nwhere = { rol = "primary" }\n'
        '[[step]]\naction = "uplink.use"\nargs = { nme = "starlink" }\n'
        '[[step]]\naction = "exec"\nargs = { argv = ["sh", "-c", "reboot"] }\ntimeout = "-1s"\n'
    )
    assert [p.split(": ")[1] for p in problems(text, "/etc/lifeline/playbooks/fibre-lost.toml")] == [
        "color", "name", "version", "expires", "description", "trigger[0].where.rol", "step[0].args.nme",
        "step[0].args.name", "step[1].args.argv[0]", "step[1].timeout",
    ]


def test_not_toml() -> None:
    (line,) = problems('name = "x"\nversion = \n')
    assert line.startswith("pb.toml: not valid TOML: ") and line.endswith(": fix the syntax there")


def test_not_utf8() -> None:
    assert problems(b'name = "\xff"\n') == ["pb.toml: not UTF-8 text (byte 8): save the playbook as UTF-8"]


# --------------------------------------------------------------------------- garbage


def check_outcome(data: bytes) -> None:
    try:
        pb = parse_playbook(data, "fuzz.toml")
    except PlaybookError as exc:
        assert exc.problems and all(p.startswith("fuzz.toml: ") for p in exc.problems)
    else:
        assert isinstance(pb, Playbook)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_raise_only_playbook_error(data: bytes) -> None:
    check_outcome(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_playbooks_raise_only_playbook_error(data: st.DataObject) -> None:
    text = bytearray(FULL)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            text[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "delete":
            del text[i]
        else:
            text.insert(i, data.draw(st.sampled_from(b'"[]{}=,.\n 0aZ#')))
    check_outcome(bytes(text))


TOML_VALUES = st.sampled_from([
    '""', '"x"', '"10s"', '"abort"', "0", "-1", "3", "1.5", "nan", "true", "[]", '["/bin/x"]', "[1]", "{}",
    '{ name = "x" }', "2027-06-30T00:00:00Z", "2027-06-30", "07:00:00", '"ActiveUplinkChanged"', '"primary"',
])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_value_anywhere_raises_only_playbook_error(data: st.DataObject) -> None:
    lines = FULL.decode().splitlines()
    assignable = [i for i, line in enumerate(lines) if " = " in line]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.sampled_from(assignable))
        key = lines[i].split(" = ", 1)[0]
        lines[i] = f"{key} = {data.draw(TOML_VALUES)}"
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    check_outcome(text.encode())


def test_what_a_playbook_error_looks_like() -> None:
    error = PlaybookError("a.toml", ["a.toml: version: x", "a.toml: name: y"])
    assert str(error) == "a.toml: version: x\na.toml: name: y"
    assert isinstance(error, Exception)
