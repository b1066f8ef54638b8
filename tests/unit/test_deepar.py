"""DeepAR pieces against reference formulas: likelihoods (scipy), lags and time features
(GluonTS's tables), mean scaling, window/lag construction, the point decoder's dead
letters, forecasts' JSON shape and quantile order, and a small backtest."""
from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from scipy import stats  # noqa: E402

from streamlearn import datasets as D  # noqa: E402
from streamlearn.algorithms import _forecast_metrics as fm  # noqa: E402
from streamlearn.algorithms._deepar_net import distribution_args, log_prob  # noqa: E402
from streamlearn.timefreq import Freq  # noqa: E402
from streamlearn.algorithms.deepar import (DeepAR, History, _mean_scale, _rnn_inputs, _row_of_window,  # noqa: E402
                                         _window_of_row, decode_id, encode_id)
from streamlearn.algorithms.base import ParamError  # noqa: E402
from streamlearn.runtime.local import continue_local, fit_local  # noqa: E402
from streamlearn.runtime.rounds import Rounds  # noqa: E402
from streamlearn.statestore.buffered import CommitInfo  # noqa: E402
from streamlearn.series_batch import SeriesBatch  # noqa: E402
from streamlearn.algorithms.base import training_state  # noqa: E402
from streamlearn.snapshots.format import snapshot_of  # noqa: E402
from streamlearn.statestore.local import LocalState, MemoryBackend  # noqa: E402
from streamlearn.streams.timeseries import decode_points, encode_point, parse_time_ms  # noqa: E402

RNG = np.random.default_rng(0)
T64 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731


def _raw(n, k):
    return T64(RNG.normal(size=(n, k)))


def test_student_t_log_prob_matches_scipy():
    raw, y, scale = _raw(50, 3), RNG.normal(5, 3, 50), RNG.uniform(0.5, 4, 50)
    df, mu, s = distribution_args("student-t", raw)
    ours = log_prob("student-t", (df, mu, s), T64(y), T64(scale)).numpy()
    ref = stats.t.logpdf(y, df.numpy(), loc=mu.numpy() * scale, scale=s.numpy() * scale)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    assert np.all(df.numpy() > 2)


def test_gaussian_log_prob_matches_scipy():
    raw, y, scale = _raw(50, 2), RNG.normal(5, 3, 50), RNG.uniform(0.5, 4, 50)
    mu, s = distribution_args("gaussian", raw)
    ours = log_prob("gaussian", (mu, s), T64(y), T64(scale)).numpy()
    np.testing.assert_allclose(ours, stats.norm.logpdf(y, mu.numpy() * scale, s.numpy() * scale), rtol=1e-10)


def test_negative_binomial_log_prob_matches_scipy_and_scales_the_mean():
    raw, y, scale = _raw(50, 2), RNG.integers(0, 40, 50).astype(float), RNG.uniform(0.5, 4, 50)
    r, logits = distribution_args("negative-binomial", raw)
    ours = log_prob("negative-binomial", (r, logits), T64(y), T64(scale)).numpy()
    p_success = 1.0 / (1.0 + np.exp(-(logits.numpy() + np.log(scale))))  # torch's probs
    np.testing.assert_allclose(ours, stats.nbinom.logpmf(y, r.numpy(), 1 - p_success), rtol=1e-9)
    mean = stats.nbinom.mean(r.numpy(), 1 - p_success)
    np.testing.assert_allclose(mean, r.numpy() * np.exp(logits.numpy()) * scale, rtol=1e-9)


def test_lags_and_time_features_are_gluonts_tables():
    assert Freq.parse("Q").lags() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13]
    assert Freq.parse("M").lags() == [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 23, 24, 25, 35, 36, 37]
    assert Freq.parse("D").lags()[:14] == [1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 20, 21, 22]
    assert max(Freq.parse("D").lags()) == 1093 and len(Freq.parse("h").lags()) == 40
    f = Freq.parse("D")
    monday = parse_time_ms("2024-01-01")  # a Monday, the first day of the year and of the month
    feats = f.time_features(f.ordinal(np.array([monday, monday + 86_400_000 * 6])))
    np.testing.assert_allclose(feats[0], [-0.5, -0.5, -0.5])  # day of week, of month, of year
    np.testing.assert_allclose(feats[1], [0.5, 6 / 30 - 0.5, 6 / 365 - 0.5])
    q = Freq.parse("Q")
    assert q.time_features(q.ordinal(np.array([parse_time_ms("2020-01-01")])))[0, 0] == pytest.approx(2 / 11 - 0.5)
    assert (Freq.parse("Q").seasonality, Freq.parse("h").seasonality, Freq.parse("D").seasonality) == (4, 24, 1)


def test_mean_scale_is_gluonts_mean_scaler():
    vals = np.array([[1.0, -3.0, 2.0], [0.0, 0.0, 0.0], [4.0, 4.0, 100.0]])
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=float)
    default = (1 + 3 + 4 + 4) / 4
    np.testing.assert_allclose(_mean_scale(vals, mask), [2.0, default, 4.0])
    assert _mean_scale(np.array([[0.0, 1e-12]]), np.ones((1, 2)))[0] == 1e-10  # at least 1e-10
    assert _mean_scale(np.zeros((2, 3)), np.ones((2, 3))).tolist() == [1e-10, 1e-10]  # observed zeros
    assert _mean_scale(np.zeros((2, 3)), np.array([[1.0] * 3, [0.0] * 3])).tolist() == [1e-10, 1.0]  # no signal


def test_history_fills_gaps_and_lags_index_the_window():
    h = History(6, 1, 0)
    windows = [h.append(o, y, np.array([o * 10.0]), o, np.zeros(0)) for o, y in [(100, 1.0), (101, math.nan), (104, 4.0)]]
    vals, mask, feat, ordinal, age, _ = windows[-1]
    # window of 7 ending at period 104: 100 (1.0), 101 (missing), 102-103 (gap), 104 (4.0)
    np.testing.assert_array_equal(vals, [0, 0, 1, 0, 0, 0, 4])
    np.testing.assert_array_equal(mask, [0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(feat[:, 0], [0, 0, 1000, 1010, 0, 0, 1040])
    assert (ordinal, age, h.age, h.last) == (104, 5, 5, 104)
    c = {"lags": [1, 2, 4]}
    zs = torch.arange(14.0).reshape(2, 7)
    x = _rnn_inputs(None, c, zs, np.array([4, 6]), torch.zeros(2, 2, 0), torch.zeros(2, 2, 0), torch.zeros(2, 0))
    np.testing.assert_array_equal(x[0].numpy(), [[3, 2, 0], [5, 4, 2]])  # z[p - lag]
    assert decode_id(encode_id("Île-de-France/7")) == "Île-de-France/7"


def _points(values: list[bytes]):
    return [encode_point(*v) if isinstance(v, tuple) else v for v in values]


def test_decoder_dead_letters_bad_points_and_keeps_missing_values():
    day = 86_400_000
    msgs = _points([("a", 0, 1.0), ("a", "2021-13-45", 2.0), ("b", day, math.inf), ("b", day, None),
                    ("c", "2021-01-02T00:00:00", 3.0), b"junk", ("", 0, 1.0)])
    r = decode_points(msgs, partitions=[7, 7, 7, 8, 9, 9, 9])
    assert [x.index for x in r.rejected] == [1, 2, 5, 6] and list(r.points.partition) == [7, 8, 9]
    assert "unparsable time" in r.rejected[0].reason and "inf in target" in r.rejected[1].reason
    assert list(r.points.series) == ["a", "b", "c"] and np.isnan(r.points.target[1])
    assert r.points.time[2] == parse_time_ms("2021-01-02")


def test_messages_of_a_decoded_window_equal_decoding_them_alone():
    """A sync worker decodes its window once and cuts it into shares (``messages(a, b)``)."""
    day = 86_400_000
    msgs = _points([("a", 0, 1.0), ("b", "bad time", 2.0), ("a", day, None), b"junk", ("c", 2 * day, 3.0),
                    ("b", day, math.inf), ("c", 3 * day, 4.0)])
    parts = [0, 1, 0, 2, 1, 1, 1]
    window = decode_points(msgs, partitions=parts)
    for a, b in [(0, 1), (0, 3), (1, 5), (3, 7), (2, 4), (6, 7), (0, 7)]:
        part, alone = window.messages(a, b), decode_points(msgs[a:b], partitions=parts[a:b])
        assert list(part.index) == list(alone.index) and part.n_records == alone.n_records
        assert [(r.index, r.reason) for r in part.rejected] == [(r.index, r.reason) for r in alone.rejected]
        assert list(part.points.series) == list(alone.points.series)
        np.testing.assert_array_equal(part.points.time, alone.points.time)
        np.testing.assert_array_equal(part.points.target, alone.points.target)
        np.testing.assert_array_equal(part.points.partition, alone.points.partition)


def test_screen_rejects_time_going_backwards_against_the_stored_context():
    algo = DeepAR.from_params({"prediction_length": 2, "lags_seq": [1, 2], "max_series": 16, "num_cells": 4,
                               "likelihood": "negative-binomial"})
    state = LocalState()
    algo.initialize(state)
    day = 86_400_000
    first = algo.decode_window(state, _points([("a", 5 * day, 1.0), ("a", 6 * day, 2.0), ("a", 6 * day, 3.0)]))
    assert [x.index for x in first.rejected] == [2] and "does not move forward" in first.rejected[0].reason
    for step in first.steps(32):
        algo.update(state, step)
    state.commit()
    again = algo.decode_window(state, _points([("a", 4 * day, 1.0), ("a", 9 * day, -1.0), ("a", 9 * day, 7.0),
                                               ("b", 1 * day, 1.0)]))
    assert [x.index for x in again.rejected] == [0, 1]
    assert "negative target" in again.rejected[1].reason
    assert list(again.points.series) == ["a", "b"] and again.n_records == 2


def _fit(pts: SeriesBatch, passes: int, **params):
    algo = DeepAR.from_params(params)
    state = LocalState()
    algo.initialize(state)
    state.commit()
    steps = [pts.take(np.arange(a, min(a + 32, len(pts)))) for a in range(0, len(pts), 32)]
    for _ in range(passes):
        fit_local(algo, steps, state=state)
        algo.restart_series(state)
        state.commit()
    fit_local(algo, steps, state=state)  # the last pass leaves every series' context in place
    return algo.finalize(state)


def test_forecast_json_shape_quantile_order_and_stored_context():
    pts = D.seasonal_series(6, 40, period=7, seed=1)
    model = _fit(pts, 0, prediction_length=5, lags_seq=[1, 2, 7], num_cells=8, max_series=32, num_samples=50)
    recs = model.forecast(horizon=7, quantiles=(0.9, 0.1, 0.5), num_samples=64)
    assert sorted(r["series"] for r in recs) == sorted(f"s{i}" for i in range(6))
    for r in recs:
        json.dumps(r)
        assert set(r) == {"series", "start", "mean", "quantiles"} and r["start"] == "2021-02-10T00:00:00"
        q = {float(k): np.array(v) for k, v in r["quantiles"].items()}
        assert set(q) == {0.1, 0.5, 0.9} and all(len(v) == 7 for v in q.values()) and len(r["mean"]) == 7
        assert np.all(q[0.1] <= q[0.5]) and np.all(q[0.5] <= q[0.9])
    assert model.attrs["points"] == len(pts)
    with pytest.raises(ValueError, match="no series"):
        model.forecast(["nope"])


def test_small_backtest_beats_seasonal_naive_with_period_one():
    """Weekly seasonality in daily series: DeepAR (lag 7) must beat the last-value forecast."""
    pts = D.seasonal_series(16, 70, period=7, seed=3, counts=True)
    H = 7
    keep = np.concatenate([idx[:-H] for idx in pts.by_series().values()])
    model = _fit(pts.take(np.sort(keep)), 2, prediction_length=H, context_length=14, lags_seq=[1, 2, 3, 7, 14],
                 likelihood="negative-binomial", num_cells=16, max_series=64, learning_rate=0.005)
    wql = model.score(pts)
    y, naive, insample = [], [], []
    for idx in pts.by_series().values():
        y.append(pts.target[idx[-H:]])
        naive.append(np.repeat(pts.target[idx[-H - 1]], H))
        insample.append(pts.target[idx[:-H]])
    naive_wql = fm.mean_wql(np.array(y), {q: np.array(naive) for q in fm.QUANTILES})
    assert wql < 0.8 * naive_wql, (wql, naive_wql)


@pytest.mark.parametrize("likelihood", ["negative-binomial", "student-t"])
def test_sample_paths_stay_within_max_growth_of_the_context(likelihood):
    """A network whose output runs far above its inputs (as Covid3Month's China did with one
    seed: thousands a day in the far lags, ~100 in the context, a median path of 370,000
    after 14 days) samples no value beyond max_growth x the context's largest |value|."""
    pts = D.seasonal_series(4, 30, period=7, seed=2, counts=True)
    model = _fit(pts, 0, prediction_length=7, context_length=7, lags_seq=[1, 7], num_cells=4, max_series=16,
                 likelihood=likelihood, num_samples=64)
    arrays, attrs = model.to_arrays()
    theta = arrays["theta"].copy()
    # the projection's last two biases: NB total count and logits (a mean of ~e^14 scales),
    # student-t loc and scale (1e5 and 12 scales)
    theta[-2:] = (1e5, 12.0) if likelihood == "student-t" else (12.0, 12.0)
    hists = [model._stored(s) for s in model.series]
    top = np.array([np.abs(h.vals[-7:] * h.mask[-7:]).max() for h in hists])
    paths = {}
    for growth in (0.0, 5.0):
        m = type(model).from_arrays({**arrays, "theta": theta}, {**attrs, "max_growth": growth})
        paths[growth] = m.sample_paths(hists, horizon=14, seed=0)
    assert np.abs(paths[0.0]).max() > 100 * top.max()  # unbounded, it does run away
    assert np.all(np.isfinite(paths[5.0]))
    assert np.all(np.abs(paths[5.0]) <= 5.0 * top[:, None, None] * (1 + 1e-6))


RACE = {"prediction_length": 2, "context_length": 2, "lags_seq": [1], "num_cells": 4, "num_layers": 1,
        "max_series": 512}


def _members(params: dict, pts: SeriesBatch, workers: int):
    """(a DeepAR of ``params`` initialized on a fresh backend, the backend, ``pts`` with each
    series' partition by key hash as Kafka keys them, ``workers`` LocalStates over it)."""
    algo = DeepAR.from_params({**params, "partitions": workers})
    backend = MemoryBackend()
    first = LocalState(backend)
    algo.initialize(first)
    first.commit()
    part = np.array([zlib.crc32(s.encode()) % workers for s in pts.series])
    pts = SeriesBatch.of(pts.series, pts.time, pts.target, partition=part)
    return algo, backend, pts, [LocalState(backend) for _ in range(workers)]


def _workers_fit(pts: SeriesBatch, workers: int, window: int = 40, **params):
    """``workers`` LocalStates over one backend, each reading the series of its partitions
    (by key hash, as Kafka keys them), a window of points each, then all commit: every
    worker claims rows for its new series before any sees the others' claims."""
    algo, backend, pts, states = _members({**RACE, **params}, pts, workers)
    streams = [pts.take(np.flatnonzero(pts.partition == w)) for w in range(workers)]
    for a in range(0, max(len(s) for s in streams), window):
        for st, stream in zip(states, streams):
            st.refresh()
            win = stream.take(np.arange(a, min(a + window, len(stream))))
            for b in range(0, len(win), 32):
                algo.update(st, win.take(np.arange(b, min(b + 32, len(win)))))
        for st in states:
            st.commit()
    return algo, backend


def test_workers_claiming_rows_at_once_keep_every_series_context():
    """4 workers, 200 new series at once: two workers claiming the same free row in one commit
    window left it to the later commit and the other series restarted its context (4 of 200
    series, 5 of 1,800 training windows lost); rows striped by partition never collide."""
    length = 10
    pts = D.seasonal_series(200, length, period=7, seed=5)
    for workers in (1, 2, 4):
        algo, backend = _workers_fit(pts, workers)
        model = algo.finalize(LocalState(backend))
        assert model.attrs["unplaced"] == 0, workers
        assert sorted(model.series) == sorted(f"s{i}" for i in range(200)), workers
        assert np.all(model.ctx[:, 1] == length), workers  # age: every point of every series, in one context
        assert model.attrs["windows"] == 200 * (length - RACE["prediction_length"] + 1), workers


def test_lookahead_leaves_one_worker_alone_and_moves_where_several_workers_take_gradients():
    pts = D.seasonal_series(40, 10, period=7, seed=3)

    def theta(workers: int, lookahead: bool) -> np.ndarray:
        algo, backend = _workers_fit(pts, workers, lookahead=lookahead)
        return algo.finalize(LocalState(backend)).theta

    assert np.array_equal(theta(1, True), theta(1, False))
    assert not np.allclose(theta(2, True), theta(2, False), rtol=0, atol=1e-6)


SYNC = {"prediction_length": 2, "context_length": 4, "lags_seq": [1, 2], "num_cells": 8, "num_layers": 2,
        "dropout_rate": 0.2, "max_series": 512, "learning_rate": 0.01}


def _rounds_fit(pts: SeriesBatch, workers: int, aggregation: str, rows: int = 32,
                **params) -> tuple[DeepAR, MemoryBackend]:
    """``workers`` members over one backend, series split by key hash; every ``rows`` points
    of the stream are one round: each member contributes (sync) or steps on (async) those of
    its partition and commits, then (sync) the round is closed by the runtime's rounds."""
    algo, backend, pts, states = _members({**SYNC, "aggregation": aggregation, **params}, pts, workers)
    members = [Rounds(algo, st) for st in states] if algo.synchronous else []
    for a in range(0, len(pts), rows):
        chunk = pts.take(np.arange(a, min(a + rows, len(pts))))
        for w, st in enumerate(states):
            expect = members[w].begin() if members else {}
            if not members:
                st.refresh()
            algo.update(st, chunk.take(np.flatnonzero(chunk.partition == w)))
            st.commit(CommitInfo(expect=expect), keep_held=bool(members))
        for member in members:
            member.end()
    return algo, backend


@pytest.mark.parametrize("exact", [True, False])
def test_sync_rounds_of_several_workers_learn_the_one_worker_model(exact):
    """aggregation=sync: 2 and 4 workers sharing every round end with one worker's parameters
    (dropout on, windows without an observed context among them): bit for bit with
    ``exact_rounds`` (float64 gradients, float32 parameters), up to float32 rounding without
    it."""
    pts = D.seasonal_series(40, 12, period=7, seed=3)
    one_algo, one_backend = _rounds_fit(pts, 1, "sync", exact_rounds=exact)
    one = one_algo.finalize(LocalState(one_backend))
    assert one.attrs["steps"] >= len(pts) // 32 - 1 and one.attrs["windows"] == 40 * (12 - 2 + 1)
    gaps = []
    for workers in (2, 4):
        algo, backend = _rounds_fit(pts, workers, "sync", exact_rounds=exact)
        got = algo.finalize(LocalState(backend))
        assert got.attrs["steps"] == one.attrs["steps"] and got.attrs["windows"] == one.attrs["windows"]
        gaps.append(np.abs(got.theta - one.theta).max())
        assert float(LocalState(backend).pull("round")) == len(range(0, len(pts), 32))  # each round closed once
    if exact:
        assert gaps == [0.0, 0.0]
        np.testing.assert_array_equal(one.theta, one.theta.astype(np.float32))  # stored as float32 values
    else:  # a member's float32 partial sums round otherwise than one worker's whole batch
        assert 0 < max(gaps) < 1e-5


def test_async_workers_each_stepping_on_their_share_do_not_learn_the_one_worker_model():
    pts = D.seasonal_series(40, 12, period=7, seed=3)
    async_one = _rounds_fit(pts, 1, "async")
    async_four = _rounds_fit(pts, 4, "async")
    gap = np.abs(async_four[0].finalize(LocalState(async_four[1])).theta
                 - async_one[0].finalize(LocalState(async_one[1])).theta).max()
    assert gap > 1e-3


def test_sync_finalize_applies_the_round_not_closed_yet():
    pts = D.seasonal_series(10, 6, period=7, seed=4)
    algo = DeepAR.from_params({**SYNC, "aggregation": "sync"})
    state = LocalState()
    algo.initialize(state)
    state.commit()
    algo.update(state, pts)
    state.commit()
    pending = algo.finalize(state)
    assert not np.array_equal(pending.theta, state.pull("theta"))
    assert algo.close_round(state)
    state.commit()
    np.testing.assert_array_equal(pending.theta, algo.finalize(state).theta)
    assert not state.pull("g_theta").any() and float(state.pull("t")) == 1.0


def test_sync_refuses_replayed_windows():
    with pytest.raises(ParamError, match="replay_windows needs aggregation=async"):
        DeepAR.from_params({**SYNC, "aggregation": "sync", "replay_windows": 64}).check_params()


def test_continuing_a_striped_job_finds_every_series_whatever_the_new_partitions():
    """--from-snapshot: a parent trained on 4 partitions (rows in 4 stripes) continued on a
    topic of 3 partitions, or 1: every series keeps its context and goes on from it."""
    length = 10
    pts = D.seasonal_series(60, length + 2, period=7, seed=6)
    first = np.concatenate([i[:length] for i in pts.by_series().values()])
    algo, backend = _workers_fit(pts.take(np.sort(first)), 4)
    parent_state = LocalState(backend)
    model = algo.finalize(parent_state)
    snapshot = snapshot_of(model, {"params": algo.get_params()}, state=training_state(parent_state))
    rest = pts.take(np.sort(np.setdiff1d(np.arange(len(pts)), first)))
    for partitions in (3, 1):
        part = np.array([zlib.crc32(s.encode()) % partitions for s in rest.series])
        batch = SeriesBatch.of(rest.series, rest.time, rest.target, partition=part)
        child = continue_local(DeepAR.from_params({**RACE, "partitions": partitions}), snapshot, [batch])
        assert sorted(child.series) == sorted(model.series) and len(child.series) == 60
        assert np.all(child.ctx[:, 1] == length + 2), partitions  # the parent's 10 points and these 2


def test_replayed_windows_are_stored_windows_and_change_training():
    """replay_windows: each step stores its windows in the state and trains on as many
    stored ones as it has fresh ones; a stored row reads back as the window it was."""
    pts = D.seasonal_series(8, 30, period=7, seed=4)
    params = dict(prediction_length=3, context_length=4, lags_seq=[1, 7], num_cells=4, max_series=32)
    algo = DeepAR.from_params({**params, "replay_windows": 16})
    c = algo.config()
    state = LocalState()
    algo.initialize(state)
    steps = [pts.take(np.arange(a, min(a + 32, len(pts)))) for a in range(0, len(pts), 32)]
    replayed = fit_local(algo, steps, state=state)
    stored = state.pull("replay")
    ages = stored[:, -1]
    assert np.count_nonzero(ages) >= 12 and np.all(ages[ages > 0] >= 3)  # windows end where a forecast fits
    row = stored[np.flatnonzero(ages)[0]]
    np.testing.assert_array_equal(_row_of_window(_window_of_row(row, c)), row)
    vals, mask = _window_of_row(row, c)[:2]
    assert len(vals) == c["history"] + 1 and mask[-1] == 1.0
    plain = _fit(pts, 0, **params)
    assert replayed.attrs["windows"] == plain.attrs["windows"]  # fresh windows counted once
    assert not np.allclose(replayed.theta, plain.theta)
