"""Adam whose parameters and moments are ``sum`` keys of the shared state, written so that N
workers pushing at once learn what one worker learns from the same points.

The reference is one worker's sequential Adam over every worker's steps, interleaved: N
workers that each take K steps between commits stand for N K sequential steps, and each
gradient keeps the weight it has there; only the order within a commit window is lost.

* Parameters are summed: each worker's step is one of the N K steps.
* The moments are exponential averages over *all* gradients, one decay per global step.
  Each worker pushes its own gradients' increments (its fresh part: decayed by ``b^N`` per
  own step, as N steps pass for each of its own, and weighted ``(1 - b^N) / N``, the mean
  weight of N interleaved values) plus 1/N of the shared moment's decay ``b^(N K) - 1``.
  The committed moment is then ``b^(N K) m0`` plus every gradient once. Summing the
  workers' moment changes instead counts m0's decay N times (a factor ``1 - N (1 - b^K)``
  on the momentum every commit: -2.3 for 4 workers of 16 steps, which diverged); averaging
  them leaves a gradient ``(1 - b) + b / N`` of its weight (1 / 3 of the progress for 4
  workers committing every step: worse backtests the more workers).
* A step uses the moment's mean over the N interleaved steps it stands for: m0 and the
  fresh parts decayed by ``b^i``, i = 1..N, with the new gradient entering the rest. The
  others' fresh parts of the window are not known before the commit; the worker's own stand
  in for them (N times its own), so a window's steps keep the speed of sequential Adam.

* ``lookahead`` (opt-in): a step's gradient is taken at the parameters the commit will
  leave if the others step as this worker does: the shared parameters at its last rebase
  plus N times its own steps since (``parameters``; the workers' extrapolations average to
  what the commit leaves). Taken at the pulled parameters (the shared ones plus only its
  own steps), N workers each follow their gradient for a whole commit window unseen by the
  others, and the sum overshoots up to N-fold wherever they pull alike (a stream in time
  order moves the optimum: ItalyPowerDemand, 4 workers, median weighted quantile loss
  +13-14.5 % on one worker with collapsed runs; +5 % over 16 seeds and none with it). Off by
  default: Covid3Month's 4 workers were worse with it (benchmarks/README.md).

The same key keeps the parameters' running average (``average``: an exponential moving
average whose decay ramps up to ``average_decay`` as ``(1 + t) / (10 + t)``, so that a
short job's average does not reach back to its first, untrained parameters), averaged
over the workers (``DeepAR.average_decay``: off by default, benchmarks/README.md).

N is measured, not configured: between two refreshes of the state the global step count
``t`` grows by every worker's steps, this worker's own among them; their ratio (smoothed)
is the number of workers pushing. One worker always measures N = 1, and then every step
is exactly sequential Adam (a resumed job equals an uninterrupted one). The worker's own
pushes since its last refresh follow from what it pulls (read-your-writes), so a restart or
a rollback only rebases it.
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

    def __init__(self, learning_rate: float, average_decay: float = 0.0, lookahead: bool = False):
        self.learning_rate = float(learning_rate)
        self.average_decay = float(average_decay)
        self.lookahead = bool(lookahead)
        self.workers = 1.0
        self._base_t: float | None = None  # t at this worker's last sight of others' commits
        self._base: np.ndarray | None = None  # the moments then
        self._base_theta: np.ndarray | None = None  # and the parameters
        self._expect = 0.0  # t this worker's next pull shows if nobody else committed

    def _sync(self, state: State, t: float, pulled: np.ndarray) -> None:
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
        self._base_theta = np.array(state.pull("theta"), dtype=np.float64)

    def parameters(self, state: State) -> np.ndarray:
        """The parameters to take this worker's next gradient at: the pulled ones for one
        worker (or without ``lookahead``); for N, the shared ones at the rebase plus N times
        its own steps since."""
        self._sync(state, float(state.pull("t")), state.pull("adam"))
        theta = np.array(state.pull("theta"), dtype=np.float64)
        if self.workers == 1 or not self.lookahead:
            return theta
        return self._base_theta + self.workers * (theta - self._base_theta)

    def step(self, state: State, theta: np.ndarray, grad: np.ndarray) -> None:
        """One Adam step from parameters ``theta`` (``parameters``) with gradient ``grad``
        taken there (weight decay included by the caller)."""
        t = float(state.pull("t"))
        pulled = state.pull("adam")
        self._sync(state, t, pulled)
        n, base = self.workers, self._base
        if n == 1:  # sequential Adam, exactly
            delta, moves = adam_step(theta, grad, pulled, t, self.learning_rate, self.average_decay)
        else:
            k = t - self._base_t  # own steps since the rebase
            m, dm = _moment(B1, n, k, base[0], pulled[0], grad)
            v, dv = _moment(B2, n, k, base[1], pulled[1], grad * grad)
            v = np.maximum(v, 0.0)
            own = base + n * (pulled - base)  # the running average is averaged over the workers
            step = self._base_t + n * (k + 1)  # this step's place among the interleaved ones
            delta = _adam_delta(self.learning_rate, m, v, step)
            d = average_decay(self.average_decay, step)
            avg = d * own[2] + (1 - d) * (theta + delta) if self.average_decay > 0 else own[2]
            moves = np.stack([dm, dv, (avg - own[2]) / n])
        state.push("theta", delta)
        state.push("adam", moves)
        state.push("t", 1.0)
        self._expect = t + 1.0


def adam_step(theta: np.ndarray, grad: np.ndarray, adam: np.ndarray, t: float, learning_rate: float,
              decay: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Sequential Adam's step ``t + 1`` from parameters ``theta`` and the ``adam`` key's rows
    (m, v, running average): (the parameters' change, the rows' change)."""
    m = B1 * adam[0] + (1 - B1) * grad
    v = np.maximum(B2 * adam[1] + (1 - B2) * grad * grad, 0.0)
    delta = _adam_delta(learning_rate, m, v, t + 1.0)
    d = average_decay(decay, t + 1.0)
    avg = d * adam[2] + (1 - d) * (theta + delta) if decay > 0 else adam[2]
    return delta, np.stack([m - adam[0], v - adam[1], avg - adam[2]])


def _adam_delta(learning_rate: float, m: np.ndarray, v: np.ndarray, step: float) -> np.ndarray:
    return -learning_rate * (m / (1 - B1 ** step)) / (np.sqrt(v / (1 - B2 ** step)) + EPS)


def _moment(beta: float, n: float, k: float, m0: np.ndarray, pulled: np.ndarray, x: np.ndarray):
    """A moment ``b m + (1 - b) x`` of N workers whose steps stand for N interleaved ones, at a
    worker's own step ``k + 1`` since the shared moment was ``m0``: (the mean of the moment
    over those N steps, which its step uses; the push that adds its share). Its pushes so far
    hold 1/N of m0's decay over its k steps (``b^(N k)``) and its fresh part ``f``; the
    committed moment is m0's decay plus every worker's f. Over the N steps m0 and the fresh
    parts decay by ``b^i``, i = 1..N (mean ``r``), and the N new values enter with the rest."""
    decay = beta ** n
    r = beta * (1 - decay) / (n * (1 - beta))
    fresh = pulled - m0 * (1 + (decay ** k - 1) / n)
    use = r * (decay ** k * m0 + n * fresh) + (1 - r) * x  # the others' fresh parts: like its own
    fresh_next = decay * fresh + (1 - decay) / n * x  # N values weigh (1 - b) b^i, i < N: (1 - b^N) / N each
    push = m0 * (decay ** (k + 1) - decay ** k) / n + (fresh_next - fresh)
    return use, push
