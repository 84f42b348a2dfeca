"""Durations as people write them: '11h30m', '45m', '90s', or seconds."""

from __future__ import annotations

import math
import re

from airv.core.errors import ConfigError

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def parse_duration(text: str) -> float:
    """'11h30m', '90s', '1.5h' or a plain number of seconds -> seconds."""
    s = text.strip().lower()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):  # nan would make every comparison with it false
            raise ConfigError(f"duration must be a finite number: {text!r}")
        if value < 0:
            raise ConfigError(f"duration must not be negative: {text!r}")
        return value
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 11h30m, 45m, 90s or 3600")
    return total


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
