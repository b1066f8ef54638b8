"""Golden snapshots: one file per algorithm, written by format version 1 (before snapshots
carried the training state). Every later version of the code must still load them and
rebuild a model that answers exactly as the model that wrote them (GluonTS-style version
stamp and old-format loader)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamlearn.algorithms import BUILTIN
from streamlearn.batch import Batch
from streamlearn.snapshots.format import decode_snapshot, load_model

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = json.loads((GOLDEN / "v1_expected.json").read_text())


#: the algorithms that shipped while snapshots were format 1 (later ones never wrote one)
BORN_IN_FORMAT_2 = {"ntm", "deepar"}


def test_every_builtin_algorithm_has_a_v1_golden_file():
    assert set(EXPECTED) == set(BUILTIN) - BORN_IN_FORMAT_2


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_v1_golden_snapshot_loads_and_answers_as_written(name):
    snap = decode_snapshot((GOLDEN / f"{name}.v1.snapshot").read_bytes(), key=None)
    assert snap.metadata["format_version"] == 1
    assert snap.metadata["algorithm"] == name and snap.metadata["job"] == f"golden-{name}"
    model = load_model(snap)
    X = np.asarray(EXPECTED[name]["X"], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(model.evaluate(Batch(X)), dtype=np.float64),
                                  np.asarray(EXPECTED[name]["evaluate"], dtype=np.float64))
