"""Canary and shadow traffic: a share of requests also goes to a candidate version.

``canary``: that share is answered by the candidate, and the served model predicts the same
rows for comparison; ``shadow``: the served model answers everything and the candidate
predicts that share on the side. Either way every compared example counts towards the
*agreement*: the share of examples whose ``prediction`` is the same (a class or cluster
index exactly; a value or projection within 1e-3 relative). The share is kept exactly
(every ``1/share``-th request), not drawn at random, so a small test sees the figure asked.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from streamlearn.serving.metrics import ServeMetrics
from streamlearn.serving.slot import Served

__all__ = ["Route", "Canary", "agreeing"]


class Route(NamedTuple):
    """Who answers a request (``serve``) and who predicts the same rows for comparison."""

    serve: Served
    compare: Served | None = None


def agreeing(answered: list[dict[str, Any]], compared: list[dict[str, Any]]) -> int:
    """How many examples two models predicted alike."""
    return sum(bool(np.allclose(np.asarray(a["prediction"], np.float64), np.asarray(b["prediction"], np.float64),
                                rtol=1e-3, atol=1e-9))
               for a, b in zip(answered, compared))


class Canary:
    def __init__(self, candidate: Served, share: float, shadow: bool, metrics: ServeMetrics):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"the canary share must be in (0, 1], got {share}")
        self.candidate = candidate
        self.share = share
        self.shadow = shadow
        self._metrics = metrics
        self._requests = 0  # counted on the event loop only: no lock
        self.compared = 0
        self.agreed = 0

    def route(self, primary: Served) -> Route:
        i = self._requests
        self._requests += 1
        if math.floor((i + 1) * self.share) == math.floor(i * self.share):
            return Route(primary)
        return Route(primary, self.candidate) if self.shadow else Route(self.candidate, primary)

    def record(self, answered: list[dict[str, Any]], compared: list[dict[str, Any]]) -> None:
        agreed = agreeing(answered, compared)
        self.compared += len(answered)
        self.agreed += agreed
        self._metrics.candidate_rows.inc(len(answered))
        self._metrics.candidate_agreed.inc(agreed)
        self._metrics.candidate_agreement.set(self.agreed / self.compared)

    def describe(self) -> dict[str, Any]:
        return {"version": self.candidate.version, "mode": "shadow" if self.shadow else "canary",
                "share": self.share, "examples_compared": self.compared,
                "agreement": self.agreed / self.compared if self.compared else None}
