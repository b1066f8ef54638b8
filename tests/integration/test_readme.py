"""The README's Python API example, run exactly as written against the real stack."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python_example() -> str:
    text = README.read_text()
    section = text[text.index("\n## Python API\n"):]
    match = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert match, "README's Python API section has a ```python block"
    return match.group(1)


def test_readme_python_example_runs_as_written(stack, capsys):
    namespace: dict = {"__name__": "readme_example"}
    try:
        exec(compile(readme_python_example(), str(README), "exec"), namespace)
    finally:
        for worker in namespace.get("workers", []):
            try:  # a worker still shutting down (its "worker stopped" printed) must not be SIGTERMed
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.stop(timeout=30)
    status, model = namespace["status"], namespace["model"]
    X, y, test = namespace["X"], namespace["y"], namespace["test"]
    assert status["state"] == "finished" and status["records_applied"] == 450 * status["epochs"]
    assert all(w.returncode == 0 for w in namespace["workers"]), "workers leave by themselves when the job finishes"
    assert model.score(X[test], y[test], "accuracy") > 0.85
    assert np.isin(model.predict(X[test]), [0, 1]).all()
    out = capsys.readouterr().out
    assert f"finished {status['epochs']} {450 * status['epochs']}" in out and "held-out accuracy" in out
