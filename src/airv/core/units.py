"""Durations and sizes as people write them: '11h30m', '45m', '90s' or seconds; '20G',
'500M', '1.5GiB' or bytes."""

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


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)")
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5GiB', '64k' or a plain number of bytes -> bytes. The units are
    binary (G = GiB = 2**30 bytes), as disks' free space is reported by df -h."""
    s = text.strip().lower()
    m = _SIZE.fullmatch(s)
    if m is None or (m.group(3) and not m.group(2) and m.group(3) != "b"):
        raise ConfigError(f"cannot read size {text!r}: use e.g. 20G, 500M, 1.5GiB or bytes")
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not math.isfinite(value):
        raise ConfigError(f"size must be finite: {text!r}")
    return int(value)


def format_size(n: float) -> str:
    """Bytes as a person reads them: 1.5 GiB, 300.0 MiB, 12.0 KiB, 512 B."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{max(0, int(n))} B"
