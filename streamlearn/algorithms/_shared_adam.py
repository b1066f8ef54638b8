"""Adam whose parameters and moments are ``sum`` keys of the shared state, written so that N
workers pushing at once learn one model.

Plain deltas do not survive being summed: a worker that takes K steps from moments m0 pushes
``m_K - m0 = (b1^K - 1) m0 + fresh``, and N such pushes scale m0 by ``1 - N (1 - b1^K)``:
-2.3 for 4 workers of 16 steps (b1 = 0.9), a momentum that flips sign and grows every
commit, which is how 4 workers diverged (ItalyPowerDemand's backtest 0.86 -> 270). So:

* moments are averaged, not summed: each worker pushes ``(m_K - m0) / N`` (and so for v),
  and the committed moments are the mean of the workers' own (the moments are estimates of
  the gradient's statistics, which every worker samples);
* parameters are summed, so N workers together take the steps of one worker over the same
  points, except the part of each step that only carries the shared momentum m0 forward
  (``b1^k m0``, the same in every worker): each worker applies 1/N of it, so it is applied
  once, not N times.

The same key keeps the parameters' running average (``average``: an exponential moving
average whose decay ramps up to ``average_decay`` as ``(1 + t) / (10 + t)``, so that a
short job's average does not reach back to its first, untrained parameters), averaged
over the workers as the moments are. A stream's step holds windows of one moment and
consecutive steps walk through time, so the last parameters lean towards the latest
stretch of every pass; the average spans a few hundred steps (``DeepAR.average_decay``:
off by default, as it helped Covid3Month and macrodata but not ItalyPowerDemand,
benchmarks/README.md).

N is measured, not configured: between two refreshes of the state the global step count
``t`` grows by every worker's steps, this worker's own among them; their ratio (smoothed)
is the number of workers pushing. One worker always measures N = 1, and then every step
is exactly sequential Adam (a resumed job equals an uninterrupted one). The worker's own
moments between refreshes follow from what it pulls: ``pulled = base + (own - base) / N``.
"""
from __future__ import annotations

import numpy as np

from streamlearn.statestore.base import State

B1, B2, EPS = 0.9, 0.999, 1e-8
MAX_WORKERS = 64.0
ROWS = 3  # of the ``adam`` key: m, v and the parameters' running average (starts at theta)


def averaged_parameters(state: State, decay: float) -> np.ndarray:
    """The parameters a model uses: the running average, or (``decay`` = 0) the last ones."""
    return np.array(state.pull("adam")[2] if decay > 0 else state.pull("theta"), dtype=np.float64)


def average_decay(decay: float, step: float) -> float:
    return min(decay, (1 + step) / (10 + step))


class SharedAdam:
    """One worker's view of the shared optimizer (scratch: rebuilt from the state after a
    restart). ``theta``, ``adam`` (ROWS x P: m, v, average) and ``t`` are the keys it steps."""

    def __init__(self, learning_rate: float, average_decay: float = 0.0):
        self.learning_rate = float(learning_rate)
        self.average_decay = float(average_decay)
        self.workers = 1.0
        self._base_t: float | None = None  # t at this worker's last sight of others' commits
        self._base: np.ndarray | None = None  # the moments then
        self._expect = 0.0  # t this worker's next pull shows if nobody else committed

    def _sync(self, t: float, pulled: np.ndarray) -> None:
        """Rebase when the pulled step count is not what this worker's own steps explain
        (a refresh brought others' steps, a restart or a rollback); measure N from it."""
        if self._base is not None and t == self._expect:
            return
        if self._base_t is not None and t > self._expect:
            own, total = self._expect - self._base_t, t - self._base_t
            if own > 0:
                seen = min(MAX_WORKERS, max(1.0, total / own))
                self.workers = 0.5 * (self.workers + seen)
        self._base_t, self._base, self._expect = t, np.array(pulled, dtype=np.float64), t

    def step(self, state: State, theta: np.ndarray, grad: np.ndarray) -> None:
        """One Adam step from parameters ``theta`` (as pulled) with gradient ``grad``
        (weight decay included by the caller)."""
        t = float(state.pull("t"))
        pulled = state.pull("adam")
        self._sync(t, pulled)
        n, base = self.workers, self._base
        own = pulled if n == 1 else base + n * (pulled - base)  # this worker's moments
        m = B1 * own[0] + (1 - B1) * grad
        v = np.maximum(B2 * own[1] + (1 - B2) * grad * grad, 0.0)
        step = t + 1.0
        if n == 1:
            direction = m
        else:
            carry = B1 ** (step - self._base_t) * base[0]  # the shared momentum's share of m
            direction = (m - carry) + carry / n
        delta = -self.learning_rate * (direction / (1 - B1 ** step)) / (np.sqrt(v / (1 - B2 ** step)) + EPS)
        d = average_decay(self.average_decay, step)
        avg = d * own[2] + (1 - d) * (theta + delta) if self.average_decay > 0 else own[2]
        state.push("theta", delta)
        state.push("adam", np.stack([m - own[0], v - own[1], avg - own[2]]) / n)
        state.push("t", 1.0)
        self._expect = step
