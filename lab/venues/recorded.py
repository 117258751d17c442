"""The recorded ccxt responses the emulator serves (ccxt's offline "static" test
responses, shipped in lab/data/ccxt_static; see lab/data/README.md)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Where the recorded ccxt responses live: shipped in the repository (see lab/data/README.md).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "ccxt_static"


class RecordedDataError(ValueError):
    """The recorded ccxt responses are missing something the emulator serves."""


def load_recorded(venue: str, data_dir: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{ccxtMethod: [case, ...]}`` from ``<data_dir>/<venue>.response.json`` (ccxt's
    static responses; each case has description, method, input, httpResponse,
    parsedResponse)."""
    path = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / f"{venue}.response.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: recorded ccxt responses not found; the repository ships "
                                f"them in lab/data/ccxt_static (see lab/data/README.md); --data names another folder") from None
    except (OSError, ValueError) as exc:
        raise RecordedDataError(f"{path}: cannot read the recorded ccxt responses: {exc}") from None
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict):
        raise RecordedDataError(f"{path}: no \"methods\" object; expected ccxt's static response format")
    return methods



def recorded_body(recorded: Mapping[str, list[dict[str, Any]]], method: str, index: int = 0) -> Any:
    cases = recorded.get(method) or []
    if len(cases) <= index:
        raise RecordedDataError(f"recorded responses: no case {index} for {method}; the ccxt_static file is incomplete")
    return copy.deepcopy(cases[index]["httpResponse"])

