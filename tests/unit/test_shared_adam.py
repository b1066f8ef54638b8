"""SharedAdam (DeepAR's optimizer on the shared state): one worker is plain Adam; N workers
taking many steps between commits learn one model (no momentum that flips sign and grows),
make the progress of one worker taking all their steps and settle where it settles."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn.algorithms._shared_adam import B1, B2, EPS, ROWS, SharedAdam, average_decay, averaged_parameters
from streamlearn.statestore.local import LocalState, MemoryBackend

TARGET = np.linspace(-1.0, 1.0, 6)
LR = 0.01


def _states(n: int) -> tuple[MemoryBackend, list[LocalState]]:
    backend = MemoryBackend()
    first = LocalState(backend)
    first.initialize("theta", np.zeros(len(TARGET)))
    first.initialize("adam", np.zeros((ROWS, len(TARGET))))
    first.initialize("t", 0.0)
    first.commit()
    return backend, [LocalState(backend) for _ in range(n)]


def _run(workers: int, windows: int, steps: int, noise: float = 0.5,
         lookahead: bool = False) -> tuple[np.ndarray, float]:
    """``workers`` each take ``steps`` steps between commits on gradients of
    0.5 |theta - TARGET|^2 plus noise (each its own, as each its own data), taken where
    ``parameters`` says (``lookahead``); returns the final (averaged) parameters and the
    largest |m| committed."""
    backend, states = _states(workers)
    opts = [SharedAdam(LR, 0.9, lookahead) for _ in range(workers)]
    rngs = [np.random.default_rng(w) for w in range(workers)]
    largest = 0.0
    for _ in range(windows):
        for st, o, rng in zip(states, opts, rngs):
            st.refresh()
            for _ in range(steps):
                theta = o.parameters(st)
                o.step(st, theta, theta - TARGET + rng.normal(0, noise, len(TARGET)))
        for st in states:
            st.commit()
        view = LocalState(backend)
        largest = max(largest, float(np.abs(view.pull("adam")[0]).max()))
    return averaged_parameters(LocalState(backend), 0.9), largest


def test_one_worker_is_plain_adam_with_a_running_average():
    _, (state,) = _states(1)
    opt = SharedAdam(LR, average_decay=0.9)
    theta, m, v, avg = np.zeros(len(TARGET)), np.zeros(len(TARGET)), np.zeros(len(TARGET)), np.zeros(len(TARGET))
    assert average_decay(0.9, 1) == 2 / 11 and average_decay(0.9, 100) == 0.9
    for t in range(1, 41):
        g = theta - TARGET
        m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g
        theta = theta - LR * (m / (1 - B1 ** t)) / (np.sqrt(v / (1 - B2 ** t)) + EPS)
        d = min(0.9, (1 + t) / (10 + t))
        avg = d * avg + (1 - d) * theta
        pulled = state.pull("theta")
        opt.step(state, pulled, pulled - TARGET)
        if t % 8 == 0:
            state.commit()
            state.refresh()
    assert np.allclose(state.pull("theta"), theta, rtol=0, atol=1e-12)
    assert np.allclose(averaged_parameters(state, 0.9), avg, rtol=0, atol=1e-12)
    assert np.array_equal(averaged_parameters(state, 0.0), state.pull("theta"))
    assert opt.workers == 1.0


def test_four_workers_with_long_windows_converge_like_one():
    """16 steps each between commits: summed plain deltas scale the momentum by
    1 - 4 (1 - 0.9^16) = -2.3 every commit and diverge."""
    one, _ = _run(1, 160, 16)  # the same steps in all as the four workers take
    four, largest = _run(4, 40, 16)
    assert np.abs(one - TARGET).max() < 0.1, one
    assert np.abs(four - TARGET).max() < 0.15, four  # summed plain deltas: ~1e7
    assert largest < 10.0, largest  # summed plain deltas: ~1e14


def test_four_workers_with_long_windows_settle_at_the_optimum_like_one_with_lookahead():
    """Without noise one worker reaches TARGET. Gradients taken at the pulled parameters
    (the shared ones plus only the worker's own steps: ``lookahead`` off) let four workers
    each follow theirs for 16 steps and the sum overshoot fourfold: still ~0.1 away."""
    one, _ = _run(1, 160, 16, noise=0.0)
    four, _ = _run(4, 40, 16, noise=0.0, lookahead=True)
    pulled, _ = _run(4, 40, 16, noise=0.0)
    assert np.abs(one - TARGET).max() < 0.01, one
    assert np.abs(four - TARGET).max() < 0.01, four
    assert np.abs(pulled - TARGET).max() > 0.05, pulled


def _progress(workers: int, windows: int, steps: int) -> tuple[float, float]:
    """Distance moved and committed momentum on the constant gradient 1 (sequential Adam:
    the learning rate a step, momentum 1)."""
    backend, states = _states(workers)
    opts = [SharedAdam(LR) for _ in range(workers)]
    for _ in range(windows):
        for st, o in zip(states, opts):
            st.refresh()
            for _ in range(steps):
                theta = o.parameters(st)
                o.step(st, theta, np.ones(len(theta)))
        for st in states:
            st.commit()
    view = LocalState(backend)
    assert view.pull("t") == workers * windows * steps
    return float(-view.pull("theta")[0]), float(view.pull("adam")[0][0])


@pytest.mark.parametrize("workers,steps", [(2, 16), (4, 16), (4, 4), (4, 1)])
def test_workers_make_the_progress_of_one_worker_taking_all_their_steps(workers, steps):
    """640 steps in all. Moment changes averaged over the workers moved 4 workers 5.97
    (16 steps a commit) down to 3.69 (one step a commit) of sequential Adam's 6.4."""
    one, m_one = _progress(1, 640 // steps, steps)
    assert one == pytest.approx(640 * LR) and m_one == pytest.approx(1.0)
    moved, m = _progress(workers, 640 // (workers * steps), steps)
    assert moved == pytest.approx(one, rel=0.05), moved
    assert m == pytest.approx(1.0, abs=1e-6), m
