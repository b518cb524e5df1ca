"""Slurm time strings <-> seconds (pure functions, shared by validation and parsers)."""

from __future__ import annotations

import re

_HUMAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|hours?|d|days?)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400}


def parse_duration(text: str) -> int:
    """Seconds in a Slurm time: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``;
    also ``90m``, ``2h``, ``1d``. Raises ValueError on anything else or on zero."""
    s = str(text).strip()
    m = _HUMAN.match(s)
    if m:
        seconds = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        days = 0
        rest = s
        if "-" in s:
            d, _, rest = s.partition("-")
            if not d.isdigit():
                raise ValueError(f"unparsable time {text!r}; use e.g. 90, 02:00:00, 1-12:00:00, 2h or 30m")
            days = int(d)
        parts = rest.split(":") if rest else []
        if not parts or len(parts) > 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"unparsable time {text!r}; use e.g. 90, 02:00:00, 1-12:00:00, 2h or 30m")
        nums = [int(p) for p in parts]
        if "-" in s:  # D-H, D-H:M, D-H:M:S
            nums += [0] * (3 - len(nums))
            h, mi, sec = nums
        elif len(nums) == 1:
            h, mi, sec = 0, nums[0], 0
        elif len(nums) == 2:
            h, mi, sec = 0, nums[0], nums[1]
        else:
            h, mi, sec = nums
        seconds = days * 86400 + h * 3600 + mi * 60 + sec
    if seconds <= 0:
        raise ValueError(f"time {text!r} must be positive")
    return seconds


def parse_slurm_elapsed(text: str) -> int | None:
    """Seconds from squeue/scontrol fields (``1-02:03:04``, ``12:34``, ``UNLIMITED`` -> None)."""
    s = (text or "").strip()
    if not s or s.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", "INVALID"):
        return None
    days = 0
    if "-" in s:
        d, _, s = s.partition("-")
        days = int(d)
    parts = [int(p) for p in s.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, sec = parts[-3:]
    return days * 86400 + h * 3600 + m * 60 + sec


def format_duration(seconds: int | float | None) -> str:
    """``D-HH:MM:SS`` / ``HH:MM:SS`` as Slurm prints them."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"
