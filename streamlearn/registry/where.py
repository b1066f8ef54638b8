"""``--where`` expressions: ``METRIC OP NUMBER [and METRIC OP NUMBER ...]``, parsed by a
tokenizer (never ``eval``): ``auc>0.8``, ``rmse <= 3.2 and records_applied>=1000``."""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

from streamlearn.errors import UserError

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
    "=": operator.eq,
}
_TOKEN = re.compile(r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>>=|<=|==|!=|>|<|=))")


class WhereError(UserError, ValueError):
    """A malformed ``--where`` expression."""


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def holds(self, scores: dict[str, Any]) -> bool:
        v = scores.get(self.metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            return False  # a model without that score matches no condition on it
        return _OPS[self.op](float(v), self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise WhereError(f"--where {text!r}: unexpected {text[pos:].strip()[:20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse_where(text: str) -> list[Condition]:
    """The conditions of ``text`` (all must hold)."""
    tokens = _tokens(text or "")
    if not tokens:
        raise WhereError("--where needs an expression such as 'auc>0.8'")
    conditions, i = [], 0
    while True:
        part = tokens[i:i + 3]
        if [k for k, _ in part] != ["name", "op", "num"] or part[0][1].lower() == "and":
            raise WhereError(f"--where {text!r}: expected METRIC OP NUMBER (e.g. auc>0.8), "
                             f"got {' '.join(v for _, v in part) or 'nothing'!r}")
        conditions.append(Condition(part[0][1], part[1][1], float(part[2][1])))
        i += 3
        if i == len(tokens):
            return conditions
        if tokens[i][0] != "name" or tokens[i][1].lower() != "and":
            raise WhereError(f"--where {text!r}: conditions are joined by 'and', got {tokens[i][1]!r}")
        i += 1
        if i == len(tokens):
            raise WhereError(f"--where {text!r}: a condition must follow 'and'")


__all__ = ["Condition", "WhereError", "parse_where"]
