"""Request parameters as the SDK sends them: query and form body merged, lists flattened as ``Name.N.Field``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from alb_emulator.errors import error

_INDEXED = re.compile(r"^(?P<name>[A-Za-z]+)\.(?P<index>\d+)(?:\.(?P<field>[A-Za-z]+))?$")


def unflatten(params: Mapping[str, str]) -> dict[str, Any]:
    """``Servers.2.Port=80`` -> ``{"Servers": [.., {"Port": "80"}]}``; ``JobIds.1=x`` -> ``{"JobIds": ["x"]}``.

    Numbering starts at 1 and must have no gaps, as the SDK produces it.
    """
    out: dict[str, Any] = {}
    indexed: dict[str, dict[int, Any]] = {}
    for key, value in params.items():
        match = _INDEXED.match(key)
        if not match:
            out[key] = value
            continue
        slots = indexed.setdefault(match["name"], {})
        index = int(match["index"])
        if match["field"]:
            slot = slots.setdefault(index, {})
            if not isinstance(slot, dict):
                raise error("MissingParameter", f"{key} mixes list and object forms")
            slot[match["field"]] = value
        else:
            slots[index] = value
    for name, slots in indexed.items():
        if sorted(slots) != list(range(1, len(slots) + 1)):
            raise error("MissingParameter", f"{name} must be numbered 1..N without gaps")
        out[name] = [slots[i] for i in range(1, len(slots) + 1)]
    return out


def parse_bool(value: str | None, name: str) -> bool:
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise error("MissingParameter", f"{name} must be true or false, not {value!r}")


def parse_int(value: str | None, name: str, default: int, low: int, high: int, code: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise error(code, f"{name} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise error(code, f"{name} must be between {low} and {high}, not {number}")
    return number


def required(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if value in (None, "", []):
        raise error(
            "MissingParameter",
            f"The input parameter {name} that is mandatory for processing this request is not supplied.",
        )
    return value
