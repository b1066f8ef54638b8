"""Frequencies of time series without pandas: period ordinals, time features, lags, seasonality.

A frequency is ``[n]unit`` with unit one of s, min (T), h (H), D, W, M (MS, ME), Q (QS, QE),
Y (A, YS, YE). A timestamp's *ordinal* is the number of whole periods since 1970-01-01
(numpy ``datetime64`` units; quarters are months // 3), so "the next point" of a series is
ordinal + 1 and a gap is a jump of more. Time features and lag sets are GluonTS's
(``time_features_from_frequency_str``, ``get_lags_for_frequency``) so the model sees what
GluonTS's DeepAR sees.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_UNITS = {"s": "s", "S": "s", "min": "m", "T": "m", "h": "h", "H": "h", "D": "D", "W": "W",
          "M": "M", "MS": "M", "ME": "M", "Q": "Q", "QS": "Q", "QE": "Q", "Y": "Y", "A": "Y", "YS": "Y", "YE": "Y"}
_STEP_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "D": 86_400_000, "W": 7 * 86_400_000}
_MONTHS = {"M": 1, "Q": 3, "Y": 12}
#: GluonTS's DEFAULT_SEASONALITIES
_SEASON = {"s": 3600, "m": 1440, "h": 24, "D": 1, "W": 1, "M": 12, "Q": 4, "Y": 1}


@dataclass(frozen=True)
class Freq:
    unit: str  # s m h D W M Q Y
    n: int = 1

    @classmethod
    def parse(cls, text: str) -> "Freq":
        m = re.fullmatch(r"\s*(\d*)\s*([A-Za-z]+)(?:-[A-Za-z]+)?\s*", str(text))
        if not m or m.group(2) not in _UNITS or (m.group(1) and int(m.group(1)) < 1):
            raise ValueError(f"unknown time frequency {text!r}; use [n]s, min, h, D, W, M, Q or Y")
        return cls(_UNITS[m.group(2)], int(m.group(1) or 1))

    # -- ordinals ------------------------------------------------------------------------
    def ordinal(self, ms: np.ndarray) -> np.ndarray:
        t = np.asarray(ms, dtype=np.int64).astype("datetime64[ms]")
        if self.unit in _MONTHS:
            base = t.astype("datetime64[M]").astype(np.int64)
            return np.floor_divide(base, _MONTHS[self.unit] * self.n)
        return np.floor_divide(t.astype(f"datetime64[{self.unit}]").astype(np.int64), self.n)

    def _period_start_ms(self, ordinal: np.ndarray) -> np.ndarray:
        o = np.asarray(ordinal, dtype=np.int64)
        if self.unit in _MONTHS:
            return (o * _MONTHS[self.unit] * self.n).astype("datetime64[M]").astype("datetime64[ms]").astype(np.int64)
        return (o * self.n).astype(f"datetime64[{self.unit}]").astype("datetime64[ms]").astype(np.int64)

    def times_after(self, ordinal: int, k: int, last_ms: int) -> np.ndarray:
        """UTC ms of the k periods after ``ordinal`` (a point at ``last_ms``), keeping the
        point's place in its period (start-, mid- or end-anchored data stay so)."""
        steps = np.arange(1, k + 1, dtype=np.int64)
        if self.unit in _STEP_MS:
            return int(last_ms) + steps * _STEP_MS[self.unit] * self.n
        starts = self._period_start_ms(ordinal + steps)
        ends = self._period_start_ms(ordinal + steps + 1)
        since_start = int(last_ms) - int(self._period_start_ms(np.array([ordinal]))[0])
        until_end = int(self._period_start_ms(np.array([ordinal + 1]))[0]) - int(last_ms)
        return ends - until_end if until_end < since_start else starts + since_start

    # -- features ------------------------------------------------------------------------
    def time_features(self, ordinal: np.ndarray) -> np.ndarray:
        """(len, k) GluonTS time features in [-0.5, 0.5] of the periods ``ordinal``."""
        t = self._period_start_ms(ordinal).astype("datetime64[ms]")
        day = t.astype("datetime64[D]")
        cols = []
        u = self.unit

        def norm(x, num):
            return np.asarray(x, dtype=np.float64) / (num - 1.0) - 0.5

        if u == "s":
            cols.append(norm(t.astype("datetime64[s]").astype(np.int64) % 60, 60))
        if u in ("s", "m"):
            cols.append(norm(t.astype("datetime64[m]").astype(np.int64) % 60, 60))
        if u in ("s", "m", "h"):
            cols.append(norm(t.astype("datetime64[h]").astype(np.int64) % 24, 24))
        if u in ("s", "m", "h", "D"):
            cols.append(norm((day.astype(np.int64) + 3) % 7, 7))  # 1970-01-01 was a Thursday
        if u in ("s", "m", "h", "D", "W"):
            cols.append(norm((day - day.astype("datetime64[M]")).astype(np.int64), 31))
        if u in ("s", "m", "h", "D"):
            cols.append(norm((day - day.astype("datetime64[Y]")).astype(np.int64), 366))
        if u == "W":
            cols.append(norm((day - day.astype("datetime64[Y]")).astype(np.int64) // 7, 53))
        if u in ("M", "Q"):  # a quarter's month is its last one (pandas' Period.month)
            last = 3 * self.n - 1 if u == "Q" else 0
            cols.append(norm((t.astype("datetime64[M]").astype(np.int64) + last) % 12, 12))
        return np.stack(cols, 1) if cols else np.zeros((len(t), 0))

    @property
    def n_time_features(self) -> int:
        return self.time_features(np.zeros(1, np.int64)).shape[1]

    def lags(self, lag_ub: int = 1200) -> list[int]:
        """GluonTS's ``get_lags_for_frequency``: 1..7 plus the same season in earlier cycles."""
        n, u = self.n, self.unit

        def around(mid, delta):
            return list(np.arange(mid - delta, mid + delta + 1))

        def week(mult, cycles=3):
            return [around(k * 52 // mult, 1) for k in range(1, cycles + 1)] + [[4 // mult, 8 // mult, 12 // mult]]

        def day(mult, cycles=4):
            return [around(k * 7 // mult, 1) for k in range(1, cycles + 1)] + [around(30 // mult, 1)]

        def hour(mult, cycles=7):
            return [around(k * 24 // mult, 1) for k in range(1, cycles + 1)]

        def minute(mult, cycles=3):
            return [around(k * 60 // mult, 2) for k in range(1, cycles + 1)]

        if u == "Y":
            lags = []
        elif u in ("M", "Q"):
            mult = n * (3.0 if u == "Q" else 1)
            lags = [around(k * 12 // mult, 1) for k in range(1, 4)]
        elif u == "W":
            lags = week(n)
        elif u == "D":
            lags = day(n) + week(n / 7.0)
        elif u == "h":
            lags = hour(n) + day(n / 24) + week(n / (24 * 7))
        elif u == "m":
            lags = minute(n) + hour(n / 60) + day(n / (60 * 24)) + week(n / (60 * 24 * 7))
        else:
            lags = minute(n) + minute(n / 60) + hour(n / 3600)
        extra = sorted({int(lag) for sub in lags for lag in sub if 7 < lag <= lag_ub})
        return list(range(1, 8)) + extra

    @property
    def seasonality(self) -> int:
        s, r = divmod(_SEASON[self.unit], self.n)
        return s if not r and s >= 1 else 1


__all__ = ["Freq"]
