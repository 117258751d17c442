"""The playbook format: a TOML runbook parsed and validated completely before it can run.

A playbook names itself, carries a version and an expiry, may list the events that start
it (``[[trigger]]``), the checks that must hold first (``[[precondition]]``) and its
ordered ``[[step]]``s, each a built-in action from :data:`ACTIONS`. Loading collects
*every* problem (like :mod:`daemon.config`) and raises one :class:`PlaybookError` whose
lines each name the source, the dotted path (``step[2].args.name``) and the fix. An
unknown key, action, argument, event or precondition is an error at load time, never a
surprise at run time. This module is sans-IO: it reads no clock and no file and does no I/O.

Decisions where the shared contract (spec/issue7.md) is silent:

* Paths index arrays from 0, as :mod:`daemon.config` does: the first step is ``step[0]``.
  A step's rollback is ``step[0].rollback``, its arguments ``step[0].rollback.args.NAME``.
* ``name`` is 1-64 of ``[a-z0-9-]`` and may not start with ``-`` (file names beginning with
  a dash read as options). Whether it equals the file's stem is the verifier's check
  ("name_mismatch"), not this parser's: ``source`` may be ``"<memory>"``.
* ``description`` is required and non-empty: signers must be told what they sign.
* ``expires`` must be a TOML *offset* date-time (``2027-06-30T00:00:00Z``); a local
  date-time, a date or a quoted string is refused. Whether it has passed is checked by
  the verifier with its ``now``: parsing never reads the clock.
* Durations are strings with a unit (:class:`daemon.config.Duration`); a bare number is
  refused (``timeout = 10`` is ambiguous). Timeouts must be above zero; ``cooldown`` may
  be ``"0s"``. Parsed durations are plain ``float`` seconds, in the dataclasses and in
  ``args``/``params`` (``wait_for``'s ``timeout``, ``event_seen``'s ``within``).
* ``args`` may be omitted (``{}``). Optional arguments are filled with their default
  (``notify.level = "info"``, ``wait_for.where = {}``), so the runner sees every argument.
* A rollback step has only ``action``, ``args`` and ``timeout`` (default 30s): it has no
  rollback of its own and no ``on_failure`` (every rollback step is attempted, whatever
  happened to the one before). In the dataclass it reads ``on_failure="continue"``,
  ``rollback=None``.
* ``wait_for`` waits for an event (not an arbitrary condition). Its step's ``timeout`` must
  exceed ``args.timeout``, otherwise the step would always time out before the wait
  could report a miss.
* ``exec``'s ``argv[0]`` must be absolute and normalised (no ``.``/``..`` components, no
  trailing ``/``); no argument may contain a NUL. The keyring's allow-list is checked by
  the verifier, with :func:`exec_programs`.
* Trigger events and ``where`` keys are checked against the :class:`daemon.core.events.Event`
  subclasses known when the playbook is parsed (collected recursively, so an event
  class defined outside daemon/core/events.py counts once its module is imported). ``where``
  compares scalar fields only (strings, numbers, booleans) and the TOML value's type
  must fit the field's annotation; ``wall_time`` and ``sequence`` cannot be matched.

Preconditions (:data:`PRECONDITIONS`, deliberately small; the daemon's runner evaluates
them through ``ActionRunner.check(name, params)``, ``params`` being the table without
``check``):

* ``role``: ``equals`` one of waiting, standby, candidate, primary, fenced: this node's
  current role.
* ``uplink_active``: ``equals`` an uplink name: the uplink carrying the default route.
* ``event_seen``: ``event`` (an event class name), ``within`` (a duration), optional
  ``where`` (as in triggers): such an event was published within the last ``within``.

``requires_role`` (primary | standby | any, default any) is not a precondition in the
file but the executor evaluates it as one (``role equals X``) before the listed ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import PurePosixPath
from typing import Any, Literal, NamedTuple, Union

from daemon.core.config import describe_value

from daemon.core.durations import Duration, format_duration
from daemon.core.events import event_classes as known
from recovery.errors import RecoveryError

OnFailure = Literal["abort", "continue", "rollback"]
ON_FAILURE: tuple[str, ...] = ("abort", "continue", "rollback")
REQUIRES_ROLE: tuple[str, ...] = ("primary", "standby", "any")
ROLES: tuple[str, ...] = ("waiting", "standby", "candidate", "primary", "fenced")
LEVELS: tuple[str, ...] = ("info", "warning", "error")

DEFAULT_TIMEOUT = 30.0
DEFAULT_COOLDOWN = 300.0

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}", re.ASCII)


def valid_name(name: object) -> bool:
    """Whether ``name`` is spelled as a playbook name (``fibre-lost``): no path, no dots."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None
#: The same spelling as config's ``[uplinks.NAME]`` tables.
_UPLINK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", re.ASCII)
_EXAMPLE_EXPIRES = "2027-06-30T00:00:00Z"


class PlaybookError(RecoveryError):
    """The playbook cannot be used. ``problems`` holds one line per problem, each naming
    the source, the dotted path and the fix; ``str()`` joins them with newlines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Trigger:
    event: str
    where: dict[str, Any]


@dataclass(frozen=True)
class Precondition:
    check: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Step:
    action: str
    args: dict[str, Any]
    timeout: float = DEFAULT_TIMEOUT
    on_failure: OnFailure = "abort"
    rollback: Step | None = None


@dataclass(frozen=True)
class Playbook:
    name: str
    version: int
    expires: datetime
    description: str
    requires_role: str
    cooldown: float
    triggers: tuple[Trigger, ...]
    preconditions: tuple[Precondition, ...]
    steps: tuple[Step, ...]


# --------------------------------------------------------------------------- registries


class ArgSpec(NamedTuple):
    """One argument: its ``type`` (a kind named in :data:`ARG_TYPES`), whether it is
    ``required``, what it means, and the value filled in when an optional one is absent."""

    type: str
    required: bool
    doc: str = ""
    default: Any = None


class ActionSpec(NamedTuple):
    args: Mapping[str, ArgSpec]
    doc: str


class PreconditionSpec(NamedTuple):
    params: Mapping[str, ArgSpec]
    doc: str


#: What each argument type accepts (shown in errors and in ``lifeline playbook actions``).
ARG_TYPES: dict[str, str] = {
    "string": "a non-empty string",
    "boolean": "true or false",
    "duration": 'a duration such as "500ms", "10s" or "2m"',
    "uplink": "an uplink name (1-32 letters, digits, '_' or '-', as in [uplinks.NAME])",
    "event": "an event name (a class in daemon/core/events.py)",
    "where": "a table of event fields to equal, e.g. { active = \"starlink\" }",
    "argv": 'an array of strings, the program first, e.g. ["/usr/local/bin/page-desk", "--now"]',
    "level": "one of " + ", ".join(f'"{v}"' for v in LEVELS),
    "role": "one of " + ", ".join(f'"{v}"' for v in ROLES),
}

ACTIONS: dict[str, ActionSpec] = {
    "uplink.use": ActionSpec(
        {"name": ArgSpec("uplink", True, "The uplink to move the default route to (pinned until uplink.auto).")},
        "Pin the default route to one uplink.",
    ),
    "uplink.auto": ActionSpec({}, "Give the choice of uplink back to the failover policy."),
    "standby.promote": ActionSpec(
        {"accept_loss": ArgSpec("boolean", True, "Take the lease although this node may lack acknowledged records.")},
        "Promote this node to primary (an operator promotion).",
    ),
    "standby.demote": ActionSpec({}, "Step down: release the lease and become standby."),
    "engine.halt": ActionSpec(
        {"reason": ArgSpec("string", True, "Why, for the engine's operators and the log.")},
        "Stop the trading engine sending orders (the journal refuses appends).",
    ),
    "engine.resume": ActionSpec({}, "Let the trading engine send orders again."),
    "venue.cancel_all": ActionSpec(
        {"venue": ArgSpec("string", True, "The venue whose open orders are cancelled.")},
        "Cancel every open order at one venue.",
    ),
    "guard.kill": ActionSpec(
        {
            "reason": ArgSpec("string", True, "Why, for the audit log and the engine's refusals."),
            "venue": ArgSpec("string", False, "Only this venue (default: every venue).", None),
            "symbol": ArgSpec("string", False, "Only this symbol (default: every symbol).", None),
        },
        "The kill switch: refuse new orders on the scope and cancel every open order there.",
    ),
    "notify": ActionSpec(
        {
            "message": ArgSpec("string", True, "The text for the operators."),
            "level": ArgSpec("level", False, "How loudly.", "info"),
        },
        "A message to the log and the control socket's subscribers.",
    ),
    "wait_for": ActionSpec(
        {
            "event": ArgSpec("event", True, "The event to wait for."),
            "where": ArgSpec("where", False, "Equality on the event's fields.", {}),
            "timeout": ArgSpec("duration", True, "How long to wait before the step fails."),
        },
        "Wait until a matching event is published (the step fails after args.timeout).",
    ),
    "exec": ActionSpec(
        {"argv": ArgSpec("argv", True, "The program (absolute, on the keyring's exec_allow) and its arguments.")},
        "Run a program directly, never through a shell.",
    ),
}

PRECONDITIONS: dict[str, PreconditionSpec] = {
    "role": PreconditionSpec(
        {"equals": ArgSpec("role", True, "The role this node must hold.")},
        "This node's current role equals the one named.",
    ),
    "uplink_active": PreconditionSpec(
        {"equals": ArgSpec("uplink", True, "The uplink that must carry the default route.")},
        "The active uplink is the one named.",
    ),
    "event_seen": PreconditionSpec(
        {
            "event": ArgSpec("event", True, "The event that must have been published."),
            "within": ArgSpec("duration", True, "How far back to look."),
            "where": ArgSpec("where", False, "Equality on the event's fields.", {}),
        },
        "A matching event was published within the last `within`.",
    ),
}


def event_classes() -> dict[str, type]:
    """Every :class:`daemon.core.events.Event` subclass known now, by name."""
    return dict(known())


def event_names() -> frozenset[str]:
    return frozenset(event_classes())


def exec_programs(playbook: Playbook) -> list[str]:
    """The programs (``argv[0]``) of every ``exec`` step and rollback step, in order of
    appearance, each once: what the verifier checks against the keyring's exec_allow."""
    programs: list[str] = []
    for step in playbook.steps:
        for s in (step, step.rollback):
            if s is not None and s.action == "exec":
                program = s.args["argv"][0]
                if program not in programs:
                    programs.append(program)
    return programs


# --------------------------------------------------------------------------- parsing


def parse_playbook(data: bytes, source: str) -> Playbook:
    """Parse and validate a playbook's bytes; raise :class:`PlaybookError` listing every
    problem, each naming ``source``, the dotted path and the fix."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlaybookError(
            source, [f"{source}: not UTF-8 text (byte {exc.start}): save the playbook as UTF-8"]
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlaybookError(source, [f"{source}: not valid TOML: {exc}: fix the syntax there"]) from None
    parser = _Parser(source)
    playbook = parser.playbook(document)
    if parser.problems or playbook is None:
        raise PlaybookError(source, parser.problems or [f"{source}: invalid playbook"])
    return playbook


_INVALID: Any = object()

_TOP_KEYS = ("name", "version", "expires", "description", "requires_role", "cooldown",
             "trigger", "precondition", "step")
_TRIGGER_KEYS = ("event", "where")
_STEP_KEYS = ("action", "args", "timeout", "on_failure", "rollback")
_ROLLBACK_KEYS = ("action", "args", "timeout")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.events = event_classes()

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def unknown_keys(self, table: Mapping[str, Any], known: Iterable[str], path: str, what: str) -> None:
        known = list(known)
        for key in table:
            if key not in known:
                close = _closest(key, known)
                hint = f' (did you mean "{close}"?)' if close else ""
                listed = ", ".join(known) if known else "none"
                self.problem(_join(path, key), f"unknown key{hint}; remove it: {what} takes {listed}")

    # -- the document

    def playbook(self, doc: dict[str, Any]) -> Playbook | None:
        self.unknown_keys(doc, _TOP_KEYS, "", "a playbook")
        name = self.required(doc, "name", "", self.name_value)
        version = self.required(doc, "version", "", self.version_value)
        expires = self.required(doc, "expires", "", self.expires_value)
        description = self.required(doc, "description", "", self.text)
        requires_role = self.optional(doc, "requires_role", "", "any", self.requires_role_value)
        cooldown = self.optional(doc, "cooldown", "", DEFAULT_COOLDOWN, self.cooldown_value)
        triggers = self.array(doc, "trigger", self.trigger, required=False)
        preconditions = self.array(doc, "precondition", self.precondition, required=False)
        steps = self.array(doc, "step", self.step, required=True)
        values = (name, version, expires, description, requires_role, cooldown, triggers, preconditions, steps)
        if any(v is _INVALID for v in values):
            return None
        return Playbook(
            name=name, version=version, expires=expires, description=description,
            requires_role=requires_role, cooldown=cooldown, triggers=tuple(triggers),
            preconditions=tuple(preconditions), steps=tuple(steps),
        )

    def required(self, table: Mapping[str, Any], key: str, path: str, convert: Callable[[Any, str], Any]) -> Any:
        key_path = _join(path, key)
        if key not in table:
            self.problem(key_path, f"missing required key; add {key} = {_EXAMPLES.get(key, '...')}")
            return _INVALID
        return convert(table[key], key_path)

    def optional(self, table: Mapping[str, Any], key: str, path: str, default: Any,
                 convert: Callable[[Any, str], Any]) -> Any:
        if key not in table:
            return default
        return convert(table[key], _join(path, key))

    def array(self, doc: Mapping[str, Any], key: str, item: Callable[[Any, str], Any], *, required: bool) -> Any:
        if key not in doc:
            if required:
                self.problem(key, f"missing: a playbook needs at least one [[{key}]] table")
                return _INVALID
            return []
        data = doc[key]
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            self.problem(key, f"expected an array of tables written [[{key}]], found {describe_value(data)}")
            return _INVALID
        if required and not data:
            self.problem(key, f"expected at least one [[{key}]] table, found none")
            return _INVALID
        items = [item(x, f"{key}[{i}]") for i, x in enumerate(data)]
        return _INVALID if any(x is _INVALID for x in items) else items

    # -- scalars

    def name_value(self, data: Any, path: str) -> Any:
        if not isinstance(data, str) or not _NAME.fullmatch(data):
            self.problem(path, "expected 1-64 lowercase letters, digits or '-' (not starting with '-'), "
                               f'e.g. "fibre-lost", found {describe_value(data)}')
            return _INVALID
        return data

    def version_value(self, data: Any, path: str) -> Any:
        if isinstance(data, bool) or not isinstance(data, int):
            self.problem(path, f"expected an integer of at least 1 (version = 3), found {describe_value(data)}")
            return _INVALID
        if data < 1:
            self.problem(path, f"expected an integer of at least 1, found {data}: versions start at 1")
            return _INVALID
        return data

    def expires_value(self, data: Any, path: str) -> Any:
        if isinstance(data, datetime):
            if data.tzinfo is None or data.utcoffset() is None:
                self.problem(path, f"{data.isoformat()} has no UTC offset and would mean a different instant on "
                                   f'each host: add "Z" or an offset, e.g. {_EXAMPLE_EXPIRES}')
                return _INVALID
            return data
        if isinstance(data, date):
            self.problem(path, f"a date alone ({data.isoformat()}) has no time or offset: write a date-time "
                               f"with an offset, e.g. {data.isoformat()}T00:00:00Z")
        elif isinstance(data, time):
            self.problem(path, f"a time alone ({data.isoformat()}) is not an expiry: write a date-time "
                               f"with an offset, e.g. {_EXAMPLE_EXPIRES}")
        elif isinstance(data, str):
            self.problem(path, f"expected a TOML date-time, found {describe_value(data)}: remove the quotes, "
                               f"e.g. expires = {_EXAMPLE_EXPIRES}")
        else:
            self.problem(path, f"expected a date-time with an offset, e.g. expires = {_EXAMPLE_EXPIRES}, "
                               f"found {describe_value(data)}")
        return _INVALID

    def text(self, data: Any, path: str) -> Any:
        if not isinstance(data, str) or not data.strip():
            self.problem(path, f"expected {ARG_TYPES['string']}, found {describe_value(data)}")
            return _INVALID
        return data

    def requires_role_value(self, data: Any, path: str) -> Any:
        return self.choice(data, path, REQUIRES_ROLE)

    def on_failure_value(self, data: Any, path: str) -> Any:
        return self.choice(data, path, ON_FAILURE)

    def choice(self, data: Any, path: str, choices: tuple[str, ...]) -> Any:
        if not isinstance(data, str) or data not in choices:
            close = _closest(data, choices) if isinstance(data, str) else None
            hint = f' (did you mean "{close}"?)' if close else ""
            self.problem(path, f"expected one of {_quoted(choices)}, found {describe_value(data)}{hint}")
            return _INVALID
        return data

    def duration(self, data: Any, path: str, *, positive: bool) -> Any:
        if isinstance(data, bool) or not isinstance(data, str):
            fix = ""
            if isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data) and data > 0:
                fix = f': write it as a string with a unit, e.g. "{format_duration(data)}" for {data:g} seconds'
            elif isinstance(data, (int, float)) and not isinstance(data, bool):
                fix = ': write it as a string with a unit, e.g. "10s"'
            self.problem(path, f"expected {ARG_TYPES['duration']}, found {describe_value(data)}{fix}")
            return _INVALID
        try:
            value = float(Duration.parse(data))
        except ValueError:
            self.problem(path, f"expected {ARG_TYPES['duration']} (units ms, s, m, h), found {describe_value(data)}")
            return _INVALID
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "above 0s" if positive else "of at least 0s"
            self.problem(path, f"expected a duration {bound}, found {describe_value(data)}")
            return _INVALID
        return value

    def cooldown_value(self, data: Any, path: str) -> Any:
        return self.duration(data, path, positive=False)

    def timeout_value(self, data: Any, path: str) -> Any:
        return self.duration(data, path, positive=True)

    def event_value(self, data: Any, path: str) -> Any:
        if not isinstance(data, str) or data not in self.events:
            close = _closest(data, self.events) if isinstance(data, str) else None
            hint = f' (did you mean "{close}"?)' if close else ""
            known = ", ".join(sorted(self.events))
            self.problem(path, f"unknown event {_named(data)}{hint}; use an event class name from "
                               f"daemon/core/events.py: {known}")
            return _INVALID
        return data

    def where_value(self, data: Any, path: str, event: str | None) -> Any:
        """``where`` against the event's fields; ``event`` is None when the event itself
        was invalid (then only the shape is checked)."""
        if not isinstance(data, dict):
            self.problem(path, f'expected a table such as {{ active = "starlink" }}, found {describe_value(data)}')
            return _INVALID
        fields = _event_fields(self.events[event]) if event is not None else None
        ok = True
        for key, value in data.items():
            key_path = _join(path, key)
            if fields is not None and key in ("wall_time", "sequence"):
                self.problem(key_path, f"{key} differs on every event, so it can never be matched: remove it")
                ok = False
                continue
            if fields is not None and key not in fields:
                close = _closest(key, fields)
                hint = f' (did you mean "{close}"?)' if close else ""
                known = ", ".join(fields) or "none"
                self.problem(key_path, f'{event} has no field "{key}"{hint}; its fields are: {known}')
                ok = False
                continue
            if isinstance(value, (dict, list)) or not isinstance(value, (str, int, float, bool)):
                self.problem(key_path, f"where compares single values (string, number, true/false), "
                                       f"found {describe_value(value)}")
                ok = False
                continue
            if fields is not None:
                expected = fields[key]
                if expected is _CONTAINER:
                    self.problem(key_path, f"{event}.{key} holds a list or table, which where cannot compare "
                                           f"(it compares single values): remove it")
                    ok = False
                elif expected is not None and not _fits(value, expected):
                    self.problem(key_path, f"{event}.{key} holds {_TYPE_WORDS[expected]}, found "
                                           f"{describe_value(value)}: write a value of that type")
                    ok = False
        return dict(data) if ok else _INVALID

    # -- tables

    def trigger(self, data: dict[str, Any], path: str) -> Any:
        self.unknown_keys(data, _TRIGGER_KEYS, path, "a [[trigger]]")
        event = self.required(data, "event", path, self.event_value)
        where: Any = {}
        if "where" in data:
            where = self.where_value(data["where"], _join(path, "where"), None if event is _INVALID else event)
        if event is _INVALID or where is _INVALID:
            return _INVALID
        return Trigger(event=event, where=where)

    def precondition(self, data: dict[str, Any], path: str) -> Any:
        check_path = _join(path, "check")
        if "check" not in data:
            self.problem(check_path, f"missing required key; add check = one of {_quoted(PRECONDITIONS)}")
            return _INVALID
        check = data["check"]
        if not isinstance(check, str) or check not in PRECONDITIONS:
            close = _closest(check, PRECONDITIONS) if isinstance(check, str) else None
            hint = f' (did you mean "{close}"?)' if close else ""
            self.problem(check_path, f"unknown check {_named(check)}{hint}; use one of {_quoted(PRECONDITIONS)}")
            return _INVALID
        params = {k: v for k, v in data.items() if k != "check"}
        checked = self.args(PRECONDITIONS[check].params, params, path, f'check "{check}"')
        if checked is _INVALID:
            return _INVALID
        return Precondition(check=check, params=checked)

    def step(self, data: dict[str, Any], path: str, *, rollback: bool = False) -> Any:
        self.unknown_keys(data, _ROLLBACK_KEYS if rollback else _STEP_KEYS, path,
                          "a rollback step" if rollback else "a [[step]]")
        action_path = _join(path, "action")
        action: Any = _INVALID
        if "action" not in data:
            self.problem(action_path, f"missing required key; add action = one of {_quoted(ACTIONS)}")
        elif not isinstance(data["action"], str) or data["action"] not in ACTIONS:
            found = data["action"]
            close = _closest(found, ACTIONS) if isinstance(found, str) else None
            hint = f' (did you mean "{close}"?)' if close else ""
            self.problem(action_path, f"unknown action {_named(found)}{hint}; use one of {_quoted(ACTIONS)}")
        else:
            action = data["action"]
        args: Any = _INVALID
        args_path = _join(path, "args")
        raw_args = data.get("args", {})
        if not isinstance(raw_args, dict):
            self.problem(args_path, f"expected a table (args = {{ ... }}), found {describe_value(raw_args)}")
        elif action is not _INVALID:
            args = self.args(ACTIONS[action].args, raw_args, args_path, f'action "{action}"')
        timeout = self.optional(data, "timeout", path, DEFAULT_TIMEOUT, self.timeout_value)
        on_failure: Any = "continue" if rollback else "abort"
        undo: Any = None
        if not rollback:
            on_failure = self.optional(data, "on_failure", path, "abort", self.on_failure_value)
            if "rollback" in data:
                undo = self.rollback(data["rollback"], _join(path, "rollback"))
        if (action == "wait_for" and args is not _INVALID and timeout is not _INVALID
                and not timeout > args["timeout"]):
            shown = "the default 30s" if "timeout" not in data else format_duration(timeout)
            self.problem(_join(path, "timeout"),
                         f"{shown} does not exceed args.timeout ({format_duration(args['timeout'])}), so the "
                         f'step would time out before the wait ends: set timeout = '
                         f'"{format_duration(args["timeout"] + 5)}" or more')
            timeout = _INVALID
        if any(v is _INVALID for v in (action, args, timeout, on_failure, undo)):
            return _INVALID
        return Step(action=action, args=args, timeout=timeout, on_failure=on_failure, rollback=undo)

    def rollback(self, data: Any, path: str) -> Any:
        if not isinstance(data, dict):
            self.problem(path, f"expected a table [step.rollback] with action and args, found {describe_value(data)}")
            return _INVALID
        return self.step(data, path, rollback=True)

    def args(self, schema: Mapping[str, ArgSpec], data: Mapping[str, Any], path: str, what: str) -> Any:
        """Check ``data`` against ``schema``; return the arguments with defaults filled."""
        ok = True
        for key in data:
            if key not in schema:
                close = _closest(key, schema)
                hint = f' (did you mean "{close}"?)' if close else ""
                takes = ", ".join(f"{k}{'' if s.required else '?'}" for k, s in schema.items()) or "no arguments"
                self.problem(_join(path, key), f"unknown argument{hint}; remove it: {what} takes {takes}")
                ok = False
        out: dict[str, Any] = {}
        # "event" first: "where" is checked against the event it names.
        for key in sorted(schema, key=lambda k: schema[k].type != "event"):
            spec = schema[key]
            key_path = _join(path, key)
            if key not in data:
                if spec.required:
                    self.problem(key_path, f"missing required argument of {what}; add {key} = "
                                           f"{ARG_TYPES[spec.type]}")
                    ok = False
                else:
                    out[key] = _copy(spec.default)
                continue
            value = self.arg(spec.type, data[key], key_path, out.get("event", None))
            if value is _INVALID:
                ok = False
            else:
                out[key] = value
        if not ok:
            return _INVALID
        return {k: out[k] for k in schema if k in out}

    def arg(self, kind: str, data: Any, path: str, event: str | None) -> Any:
        if kind == "string":
            return self.text(data, path)
        if kind == "boolean":
            if not isinstance(data, bool):
                self.problem(path, f"expected true or false, found {describe_value(data)}")
                return _INVALID
            return data
        if kind == "duration":
            return self.timeout_value(data, path)
        if kind == "uplink":
            if not isinstance(data, str) or not _UPLINK.fullmatch(data):
                self.problem(path, f"expected {ARG_TYPES['uplink']}, found {describe_value(data)}")
                return _INVALID
            return data
        if kind == "event":
            return self.event_value(data, path)
        if kind == "where":
            return self.where_value(data, path, event)
        if kind == "argv":
            return self.argv(data, path)
        if kind == "level":
            return self.choice(data, path, LEVELS)
        if kind == "role":
            return self.choice(data, path, ROLES)
        raise TypeError(f"playbook schema: unknown argument type {kind!r} at {path}")  # pragma: no cover

    def argv(self, data: Any, path: str) -> Any:
        if isinstance(data, str):
            self.problem(path, f"expected {ARG_TYPES['argv']}, found {describe_value(data)}: exec never runs a shell, "
                               "split the command into its words")
            return _INVALID
        if not isinstance(data, list) or not data:
            self.problem(path, f"expected {ARG_TYPES['argv']}, found {describe_value(data)}")
            return _INVALID
        ok = True
        for i, word in enumerate(data):
            if not isinstance(word, str):
                self.problem(f"{path}[{i}]", f"expected a string, found {describe_value(word)}: quote it")
                ok = False
            elif "\0" in word:
                self.problem(f"{path}[{i}]", "contains a NUL character, which no argument can carry: remove it")
                ok = False
        program = data[0]
        if isinstance(program, str) and "\0" not in program:
            pure = PurePosixPath(program)
            if not pure.is_absolute():
                self.problem(f"{path}[0]", f'the program must be an absolute path (no PATH search), found '
                                           f'"{program}": write e.g. "/usr/local/bin/{pure.name or "tool"}"')
                ok = False
            elif str(pure) != program or any(part in (".", "..") for part in program.split("/")):
                self.problem(f"{path}[0]", f'"{program}" is not a normalised path (".", "..", "//" or a '
                                           f"trailing /): write the program's plain absolute path")
                ok = False
        return list(data) if ok else _INVALID


_EXAMPLES = {
    "name": '"fibre-lost"',
    "version": "1",
    "expires": _EXAMPLE_EXPIRES,
    "description": '"what it does and when"',
    "event": '"ActiveUplinkChanged"',
}

#: An event field holding a list or a dict: ``where`` cannot compare it.
_CONTAINER: Any = object()

#: Field types ``where`` can compare, as the words shown in errors.
_TYPE_WORDS: dict[Any, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


@functools.lru_cache(maxsize=None)
def _event_fields(cls: type) -> dict[str, Any]:
    """The fields ``where`` may name, with their scalar type (None: not checked)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation we cannot resolve: check names only
        hints = {}
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in ("wall_time", "sequence"):
            continue
        tp = hints.get(f.name)
        origin = typing.get_origin(tp)
        if origin is Union or origin is types.UnionType:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else None
        if tp in _TYPE_WORDS:
            fields[f.name] = tp
        elif tp is list or tp is dict or typing.get_origin(tp) in (list, dict, tuple):
            fields[f.name] = _CONTAINER
        else:
            fields[f.name] = None
    return fields


def _fits(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if tp is int:
        return isinstance(value, int)
    if tp is float:
        return isinstance(value, (int, float))
    return isinstance(value, tp)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _closest(key: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.7)
    return matches[0] if matches else None


def _named(value: Any) -> str:
    """A name as found: quoted when it is a string, described otherwise."""
    return f'"{value}"' if isinstance(value, str) else describe_value(value)


