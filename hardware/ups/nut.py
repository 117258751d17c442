"""NUT's ``upsd`` network protocol, sans-IO: line splitting and quoting, ``VAR`` lines, ``ERR``
codes, ``nut://`` URLs. The client over TCP is :class:`hardware.ups.driver.NutClient`.

NUT's upsd (docs/net-protocol.txt)
----------------------------------
TCP 3493, one request per line; ``LIST VAR <ups>`` → ``BEGIN LIST VAR <ups>``, ``VAR <ups>
<name> "<value>"`` lines, ``END LIST VAR <ups>``; ``GET VAR <ups> <name>`` → one ``VAR`` line;
errors ``ERR <CODE>``. ``ERR DATA-STALE`` / ``ERR DRIVER-NOT-CONNECTED`` mean upsd's driver lost
the UPS: we report :class:`DeviceTimeout`, so the monitor goes stale instead of trusting an
old value. A ``ups.status`` with neither ``OL``, ``OB`` nor ``FSD`` is garbage for the same
reason. Operator ports: ``nut://HOST[:PORT]/UPSNAME``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError


NUT_PORT = 3493

# ------------------------------------------------------------------ NUT line protocol


def split_nut_line(line: str) -> list[str]:
    """One upsd line → its words: blanks separate, ``"..."`` groups, ``\\`` escapes (the
    parseconf rules net-protocol.txt names). An open quote is DeviceGarbage."""
    words: list[str] = []
    current: list[str] = []
    in_word = quoted = escaped = False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = in_word = True
        elif ch == '"':
            quoted = not quoted
            in_word = True
        elif ch in " \t" and not quoted:
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(ch)
            in_word = True
    if quoted or escaped:
        raise DeviceGarbage(f"upsd: unterminated quote in {line[:60]!r}")
    if in_word:
        words.append("".join(current))
    return words


def quote_nut(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NutError(HardwareError):
    """upsd answered ``ERR <code>`` (one the monitor cannot treat as a silent device)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


_NUT_STALE = {"DATA-STALE", "DRIVER-NOT-CONNECTED"}


def nut_error(code: str, where: str) -> HardwareError:
    if code in _NUT_STALE:
        return DeviceTimeout(f"{where}: upsd says {code} (its driver lost the UPS)")
    hint = {"UNKNOWN-UPS": " (check the UPS name in the port URL)",
            "ACCESS-DENIED": " (check upsd.conf LISTEN and the allowed hosts)"}.get(code, "")
    return NutError(f"{where}: upsd says {code}{hint}", code)


def parse_nut_var(words: list[str], ups: str, where: str) -> tuple[str, str]:
    """``VAR <ups> <name> <value>`` words → (name, value)."""
    if words and words[0] == "ERR":
        raise nut_error(words[1] if len(words) > 1 else "?", where)
    if len(words) != 4 or words[0] != "VAR" or words[1] != ups:
        raise DeviceGarbage(f"{where}: unexpected line {' '.join(words)[:60]!r}")
    return words[2], words[3]


def parse_nut_url(port: str) -> tuple[str, int, str]:
    """``nut://HOST[:PORT]/UPSNAME`` → (host, port, ups)."""
    parts = urlsplit(port)
    ups = parts.path.strip("/")
    try:
        tcp_port = parts.port or NUT_PORT
    except ValueError:
        raise HardwareError(f"{port}: bad port number (expected nut://HOST:PORT/UPSNAME)") from None
    if parts.scheme != "nut" or not parts.hostname or not ups or "/" in ups:
        raise HardwareError(f"{port}: expected nut://HOST[:PORT]/UPSNAME")
    return parts.hostname, tcp_port, ups
