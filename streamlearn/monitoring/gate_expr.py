"""``--gate`` expressions: ``METRIC OP THRESHOLD`` or ``METRIC OP published[±DELTA]``.

``OP`` is one of ``<= >= < >``; ``THRESHOLD`` and ``DELTA`` are decimal numbers. Parsed
with one regular expression into a :class:`GateExpr` — never evaluated as code — so a
malformed expression is a :class:`GateError` (one line, exit 2) before anything exists.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from streamlearn.errors import UserError

_UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_EXPR = re.compile(rf"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|<|>)\s*"
                   rf"(?:(?P<published>published)\s*(?:(?P<sign>[+-])\s*(?P<delta>{_UNSIGNED}))?|(?P<number>[+-]?{_UNSIGNED}))\s*$")
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
#: a metric every job reports (the records its state applied)
RECORDS = "records_applied"


class GateError(UserError, ValueError):
    """A ``--gate`` expression that does not parse, or names a metric the job cannot measure."""


@dataclass(frozen=True)
class GateExpr:
    metric: str
    op: str
    threshold: float | None  # None: relative to the published version
    delta: float = 0.0  # published + delta

    @property
    def relative(self) -> bool:
        return self.threshold is None

    def bound(self, published: float | None) -> float | None:
        """The number the metric is compared with (None: relative, and nothing published)."""
        if not self.relative:
            return self.threshold
        return None if published is None else published + self.delta

    def holds(self, value: float, bound: float) -> bool:
        return OPS[self.op](value, bound)

    def __str__(self) -> str:
        if not self.relative:
            return f"{self.metric}{self.op}{self.threshold!r}"
        sign = "-" if self.delta < 0 else "+"
        return f"{self.metric}{self.op}published" + (f"{sign}{abs(self.delta)!r}" if self.delta else "")


def parse_gate(text: str) -> GateExpr:
    """The expression ``text`` as a :class:`GateExpr`; :class:`GateError` when malformed."""
    m = _EXPR.match(text or "")
    if m is None:
        raise GateError(f"--gate {text!r}: expected METRIC OP NUMBER or METRIC OP published[+-NUMBER] "
                        f"with OP one of <= >= < > (e.g. 'rmse<=3.2', 'accuracy>=published-0.005')")
    if m["published"]:
        delta = float(m["delta"]) if m["delta"] else 0.0
        expr = GateExpr(m["metric"], m["op"], None, -delta if m["sign"] == "-" else delta)
    else:
        expr = GateExpr(m["metric"], m["op"], float(m["number"]))
    if not math.isfinite(expr.threshold if expr.threshold is not None else expr.delta):
        raise GateError(f"--gate {text!r}: the number must be finite")
    return expr


def parse_gates(texts: list[str] | None, metrics: tuple[str, ...], hint: str = "") -> list[str]:
    """Check every expression and that its metric is one of ``metrics`` (what the job can
    measure; ``hint``: how to measure more); returns them normalized, as the job spec stores them."""
    out = []
    for text in texts or []:
        expr = parse_gate(text)
        if expr.metric not in metrics:
            raise GateError(f"--gate {text!r}: metric {expr.metric!r} is not measured for this job; "
                            f"it measures {list(metrics)}{hint}")
        if expr.metric == RECORDS and expr.relative:
            raise GateError(f"--gate {text!r}: {RECORDS} is compared with a number, not the published version")
        out.append(str(expr))
    return out
