"""Algorithms whose ``update`` raises, for the tests of the runtime's fault isolation.

Registered on import: a worker that should know them is started through
:func:`start_faulty_worker` (``python -c`` that imports this module, then runs the CLI).

- ``poisoned_counter``: the exact ``counter``, but a step holding a record whose first
  feature equals ``poison`` pushes part of its sums and then raises ``ValueError`` (so the
  runtime must drop those partial pushes);
- ``broken_counter``: raises ``RuntimeError`` on every non-empty batch (a bug, not data).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms.counter import Counter, CounterModel
from streamlearn.batch import Batch
from streamlearn.statestore.base import State

REPO = Path(__file__).resolve().parents[2]


class PoisonedCounter(Counter):
    name = "poisoned_counter"

    def __init__(self, dim: int = 1, poison: float = -1.0):
        super().__init__(dim=dim)
        self.poison = poison

    def update(self, state: State, batch: Batch) -> None:
        X = batch.dense()
        state.push("n", float(len(X)))  # a partial push before the failure
        bad = np.flatnonzero(X[:, 0] == self.poison)
        if len(bad):
            raise ValueError(f"poisoned record (value {self.poison:g})")
        state.push("n", -float(len(X)))
        super().update(state, batch)

    def finalize(self, state: State) -> "PoisonedCounterModel":
        counts = super().finalize(state)
        return PoisonedCounterModel(counts.n, counts.sum_, counts.xtx_)


class BrokenCounter(Counter):
    name = "broken_counter"

    def update(self, state: State, batch: Batch) -> None:
        if len(batch):
            state.push("n", 1.0)
            raise RuntimeError("the update step has a bug")


class PoisonedCounterModel(CounterModel):
    algorithm = "poisoned_counter"


class BrokenCounterModel(CounterModel):
    algorithm = "broken_counter"


register(PoisonedCounter, PoisonedCounterModel)
register(BrokenCounter, BrokenCounterModel)

_RUN = ("import sys; import tests.support.faulty_algorithms; from streamlearn.cli import main; "
        "sys.exit(main(sys.argv[1:]))")


def faulty_cli(*args: str, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    """``streamlearn ARGS`` in a process that knows these algorithms."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", _RUN, *args], stdout=stdout, stderr=stderr, env=env, cwd=REPO,
                            text=True)


def start_faulty_worker(job: str, log_dir: Path) -> subprocess.Popen:
    """A worker of ``job`` that knows these algorithms, logging to a file of ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob("worker-*.log")))
    return faulty_cli("worker", job, stdout=open(log_dir / f"worker-{n}.log", "w"), stderr=subprocess.STDOUT)
