"""Times on the command line: instants (``--since``, ``--until``) and durations (a
backtest's ``--horizon 1d``), in milliseconds since the epoch like Kafka timestamps."""
from __future__ import annotations

import datetime as _dt
import re
import time

from streamlearn.errors import UserError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class TimeError(UserError, ValueError):
    """A time or duration that cannot be read."""


def duration_ms(text: str) -> int | None:
    """``"90s"``, ``"15min"``, ``"2h"``, ``"1d"`` -> milliseconds; None when ``text`` is no duration."""
    m = _DURATION.match(str(text))
    return None if m is None else int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def instant_ms(text: str, what: str, now_ms: int | None = None) -> int:
    """An ISO date or date-time (UTC unless it says otherwise), milliseconds since the epoch,
    or a duration meaning that long before now (``2h``)."""
    text = str(text).strip()
    ago = duration_ms(text)
    if ago is not None:
        return (int(time.time() * 1000) if now_ms is None else now_ms) - ago
    if re.fullmatch(r"\d{12,}", text):
        return int(text)
    try:
        moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TimeError(f"{what} takes an ISO date/time (2024-05-01T12:00), epoch milliseconds or a duration "
                        f"before now (2h, 1d), got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return int(moment.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as an ISO date-time (UTC)."""
    if ms is None:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds")


__all__ = ["TimeError", "duration_ms", "instant_ms", "iso"]
