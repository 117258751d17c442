"""Durations: a float of seconds written with a unit (``"200ms"``, ``"3s"``, ``"2m"``, ``"1h"``)."""

from __future__ import annotations

import decimal
import fractions
import math
import re


class Duration(float):
    """A length of time in seconds, written in config as ``"200ms"``, ``"3s"``, ``"2m"``."""

    _UNITS = {
        "ms": fractions.Fraction(1, 1000),
        "s": fractions.Fraction(1),
        "m": fractions.Fraction(60),
        "h": fractions.Fraction(3600),
    }
    _PATTERN = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", re.ASCII)

    @classmethod
    def parse(cls, text: str) -> "Duration":
        match = cls._PATTERN.fullmatch(text)
        if not match:
            raise ValueError(text)
        # Exact arithmetic, rounded once: "300ms" is exactly 0.3, the same float as "0.3s".
        return cls(float(fractions.Fraction(match.group(1)) * cls._UNITS[match.group(2)]))

    def __str__(self) -> str:
        return format_duration(self)

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: ``0.2`` → ``"200ms"``, ``120`` → ``"2m"``.

    Exact means ``Duration.parse(format_duration(x)) == x`` for every finite ``x``.
    """
    seconds = float(seconds)
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {seconds!r}")
    if seconds == int(seconds):
        whole = int(seconds)
        if whole >= 3600 and whole % 3600 == 0:
            return f"{whole // 3600}h"
        if whole >= 60 and whole % 60 == 0:
            return f"{whole // 60}m"
        return f"{whole}s"
    ms = round(seconds * 1000)
    if ms / 1000 == seconds:
        return f"{ms}ms"
    for text in (_decimal(seconds * 1000) + "ms", _decimal(seconds) + "s"):
        if float(Duration.parse(text)) == seconds:
            return text
    return _decimal(seconds) + "s"  # pragma: no cover - the seconds spelling is always exact


def format_duration_short(seconds: float) -> str:
    """A short age for tables: ``45s``, ``3m05s``, ``2h07m``, ``1d03h``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _decimal(value: float) -> str:
    """``repr``'s shortest round-tripping digits, without an exponent (``1e-05`` → ``0.00001``)."""
    text = format(decimal.Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
