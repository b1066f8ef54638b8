"""The pure parts of seeing a job: lag and progress from a status, the report's gate and drift
sections, the plots, and where -q / -v may stand on the command line."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from streamlearn import datasets
from streamlearn.cli import CHATTY_LIBRARIES, _configure_logging, _verbosity, build_parser
from streamlearn.config import LIBRDKAFKA_LOGGER
from streamlearn.reporting import plots
from streamlearn.reporting.report import _deepar_panels, _drift, _gates
from streamlearn.runtime.history import partition_lag, progress
from streamlearn.runtime.jobs import JobSpec

PNG = b"\x89PNG\r\n\x1a\n"


def spec(**kw) -> JobSpec:
    base = dict(name="j", algorithm="median", topic="t", start_offsets={0: 0, 1: 10}, end_offsets={0: 100, 1: 60})
    return JobSpec(**{**base, **kw})


def test_lag_of_a_bounded_job_counts_every_pass_left():
    status = {"partitions": {"0": 40, "1": 60}, "partition_epochs": {"0": 0, "1": 1}}
    s = spec(epochs=3)
    # partition 0: 60 to the end of pass 1, then 2 passes of 100; partition 1: pass 2 of 50 left
    assert partition_lag(s, status) == {0: 60 + 200, 1: 0 + 50}
    assert progress(s, status) == (3 * 150 - 310, 3 * 150)


def test_lag_of_an_unbounded_job_needs_the_high_watermarks():
    s = spec(until="never", end_offsets={})
    status = {"partitions": {"0": 40}, "partition_epochs": {}}
    assert partition_lag(s, status) == {}
    assert partition_lag(s, status, {0: 45, 1: 12}) == {0: 5, 1: 2}  # partition 1 from its start offset
    assert progress(s, status) is None


def test_gate_decisions_are_a_table_and_text_is_escaped():
    html = _gates([{"version": 1}, {"version": 2, "gate": {"status": "rejected", "reason": "auc < <0.7>",
                                                           "checks": {"auc": 0.61}}},
                   {"version": 3, "gate": {"status": "blessed", "reason": None, "checks": ["auc >= 0.7"]}},
                   {"version": 4, "gate": {"status": "forced", "reason": "new labels", "checks": []}}])
    assert "<span class='fail'>rejected</span>" in html and "auc &lt; &lt;0.7&gt;" in html
    assert "<span class='pass'>blessed</span>" in html and "auc: 0.61" in html
    assert "<span class='pass'>forced</span>" in html
    assert ">1<" not in html  # a snapshot without a decision has no row
    assert "no gate decision" in _gates([{"version": 1}])


def test_drift_is_drawn_from_the_monitored_windows():
    assert _drift([]) is None
    png = _drift([{"window": 0, "drift": False, "ks": {"f0": 0.02, "f1": None}},
                  {"window": 1, "drift": True, "ks": {"f0": 0.31, "f1": 0.05}}])
    assert png.startswith(PNG)


def test_learning_curve_needs_holdout_samples():
    assert plots.learning_curve([{"records_applied": 1}]) is None
    samples = [{"records_applied": n, "holdout": {"metric": "log_loss", "values": [0.7 - n / 1e4, None, 0.6],
                                                  "selected": 0}} for n in (100, 200, 300)]
    assert plots.learning_curve(samples).startswith(PNG)
    assert plots.over_time(samples[:1], "t", "y", {"a": [1]}) is None


@pytest.mark.parametrize("argv, verbosity", [
    (["job", "list"], 0), (["-q", "job", "list"], -1), (["job", "list", "-q"], -1),
    (["-v", "worker", "j"], 1), (["worker", "j", "--verbose"], 1), (["--quiet", "report", "j"], -1),
])
def test_quiet_and_verbose_stand_before_or_after_the_command(argv, verbosity):
    assert _verbosity(build_parser().parse_args(argv)) == verbosity


def test_quiet_and_verbose_exclude_each_other():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["job", "list", "-q", "-v"])


def test_library_log_levels_follow_the_verbosity():
    try:
        _configure_logging(0, "ingest")
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in CHATTY_LIBRARIES)
        assert not logging.getLogger(LIBRDKAFKA_LOGGER).isEnabledFor(logging.CRITICAL)
        _configure_logging(1, "ingest")
        assert all(logging.getLogger(n).level == logging.NOTSET for n in CHATTY_LIBRARIES)  # the root's (INFO)
        assert logging.getLogger(LIBRDKAFKA_LOGGER).isEnabledFor(logging.DEBUG)
    finally:
        for n in (*CHATTY_LIBRARIES, LIBRDKAFKA_LOGGER):
            logging.getLogger(n).setLevel(logging.NOTSET)


def test_deepar_forecasts_hold_back_the_last_periods_and_draw_them():
    pytest.importorskip("torch")
    from tests.unit.test_deepar import _fit  # it needs torch: imported only when torch is there

    model = _fit(datasets.seasonal_series(3, 40, period=7, seed=1), 0, prediction_length=5, lags_seq=[1, 2, 7],
                 num_cells=8, max_series=32, num_samples=50)
    panels = _deepar_panels(model)
    assert [p["series"] for p in panels] == model.series[:3]
    for p in panels:
        assert len(p["x"]) == len(p["median"]) == len(p["actual"][1]) == 5
        assert list(p["x"]) == [-4, -3, -2, -1, 0] and p["context"][0][-1] == -5  # held back: the last 5
        assert np.all(p["low"] <= p["median"]) and np.all(p["median"] <= p["high"])
        assert np.all(np.isfinite(p["actual"][1]))
    assert plots.forecasts(panels).startswith(PNG)
