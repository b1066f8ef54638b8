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


class SharedAdam:
    """One worker's view of the shared optimizer (scratch: rebuilt from the state after a
    restart). ``theta``, ``adam`` (2 x P: m and v) and ``t`` are the keys it steps."""

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)
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

    def step(self, state: State, grad: np.ndarray) -> None:
        """One Adam step with gradient ``grad`` (weight decay included by the caller)."""
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
        state.push("theta", delta)
        state.push("adam", np.stack([m - own[0], v - own[1]]) / n)
        state.push("t", 1.0)
        self._expect = step
