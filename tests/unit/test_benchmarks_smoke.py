"""The benchmark harness itself (no services): case selection, a real in-process case, the table."""
from __future__ import annotations

import pytest

import benchmarks
from benchmarks import _core
from benchmarks.__main__ import main


def test_select_groups_and_names():
    cases = benchmarks.all_cases()
    for must in ("limits.ingest", "limits.redis", "e2e.linear_learner", "e2e.median", "state.push_pull",
                 "state.push_cost", "scaling.workers", "peers.spark_lr", "peers.kmeans", "peers.fm",
                 "quality.linear_learner_sparse"):
        assert must in cases
    assert benchmarks.select(["e2e"]) == ["e2e.linear_learner", "e2e.median"]
    assert benchmarks.select(["e2e.median", "e2e"]) == ["e2e.median", "e2e.linear_learner"]
    with pytest.raises(SystemExit):
        benchmarks.select(["nope"])


def test_check_and_table():
    assert _core.check(0.6, 0.5) == "pass"
    assert _core.check(0.4, 0.5) == "FAIL"
    assert _core.check(9.0, 8.0, extra_ok=False) == "FAIL"
    assert _core.check(None, 1.0) == "FAIL"
    table = _core.format_table([_core.Row("a.b", "1 rows/s", "2 rows/s", 0.5, ">= 0.50", "pass", "n")])
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "case" and "a.b" in lines[2] and "0.5" in lines[2]


def test_smoke_profile_runs_an_in_process_case_and_prints_the_table(capsys):
    # sklearn SGD vs our fit_local needs no Kafka/Redis: the stack must not even start
    assert main(["--profile", "smoke", "-q", "peers.sklearn_sgd"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "cores" in out and "versions:" in out and "numpy" in out
    row = next(line for line in out.splitlines() if line.startswith("| peers.sklearn_sgd"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("rows/s") and cells[2].endswith("rows/s")
    assert float(cells[3]) > 0 and cells[5] == "info"
    assert "acc 0." in cells[6]


def test_sync_rounds_sim_of_one_worker_is_the_one_worker_job():
    # scaling.quality_sim's synchronous-rounds rows are read against its 1-worker model: with
    # one worker a round is one message's step, so both simulations must give the same model
    from benchmarks import scaling
    from streamlearn import datasets

    X, y = datasets.sparse_classification(600, 2 ** 10)
    sync = scaling._fm_sync_rounds(X, y, 600, 100, 1, 4)
    lockstep = scaling._fm_concurrent(X, y, 600, 100, 1, 1, 4)
    assert sync.w0 == lockstep.w0 and sync.w0 != 0.0
    assert (sync.w == lockstep.w).all() and (sync.v == lockstep.v).all()
