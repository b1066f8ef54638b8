"""DeepAR against seasonal naive and GluonTS's PyTorch DeepAR on real series that ship inside
wheels (issue 14): sktime's Covid3Month (H=14, negative binomial) and ItalyPowerDemand (H=4,
context 20), statsmodels' macrodata (H=8), with rolling origins.

Per data set: the last window (each series' last H points held out) with 3 seeds for both
DeepARs (the headline: mean weighted quantile loss over 0.1..0.9, median MASE, sMAPE, median
MSIS, OWA against seasonal naive), plus the two earlier windows forecast by one model per
method (seed 0) trained on the points before the earliest of them. Both DeepARs get the same
context/prediction lengths, the same network (2 x 40 LSTM, dropout 0.1), batches of 32, Adam
1e-3 and about the same number of training windows (``deepar_windows``: GluonTS epochs x 50
batches x 32). Ours trains in-process (``fit_local`` semantics, a commit every 500 points,
as a worker's window) over repeated passes; ``quality.deepar_workers`` trains with 1, 2 and 4
simulated workers (LocalStates over one backend, series partitioned by key hash) in
synchronous rounds (``aggregation=sync``) and compares the backtest scores, seed by seed and
their medians. Needs
``pip install .[torch,bench]``.
"""
from __future__ import annotations

import os
import time
import zlib

import numpy as np

from benchmarks._core import Context, Row

SETS = {  # name: (prediction length, context length, freq, likelihood, season for MASE)
    "covid": (14, 28, "D", "negative-binomial", 1),
    "italy": (4, 20, "h", "student-t", 1),
    "macro": (8, 16, "Q", "student-t", 4),
}
START = {"covid": "2020-01-22", "italy": "2000-01-01", "macro": "1959-01-01"}
# a pass over macrodata walks 50 years and ends on the calm quarters before its test window:
# replayed windows from any time (4.8 MB of state; the daily and hourly sets' long lag
# histories would make 8,192 windows 98-149 MB)
# several workers on ItalyPowerDemand (a time-ordered stream that moves the optimum every hour)
# overshoot without the lookahead; Covid3Month's are worse with it (benchmarks/README.md)
OURS = {"macro": {"replay_windows": 8192}, "italy": {"lookahead": True}}
QS = (0.025, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.975)
COMMIT_POINTS = 500
WORKER_SEEDS = 3  # quality.deepar_workers: seeds per data set and worker count (18 fits)


def load(name: str) -> list[np.ndarray]:
    if name == "macro":
        import statsmodels.api as sm

        d = sm.datasets.macrodata.load_pandas().data.drop(columns=["year", "quarter"])
        return [d[c].to_numpy(np.float64) for c in d.columns]
    import sktime
    from sktime.datasets import load_from_tsfile_to_dataframe

    folder = {"covid": "Covid3Month", "italy": "ItalyPowerDemand"}[name]
    base = os.path.join(os.path.dirname(sktime.__file__), "datasets", "data", folder, folder)
    out = []
    for part in ("_TRAIN.ts", "_TEST.ts"):
        X, _ = load_from_tsfile_to_dataframe(base + part)
        out += [np.asarray(s, dtype=np.float64) for s in X.iloc[:, 0]]
    return out


def _points(name: str, series: list[np.ndarray], freq: str):
    """Interleaved points (k-th of every series before any (k+1)-th) of the given series."""
    from streamlearn.timefreq import Freq
    from streamlearn.series_batch import SeriesBatch
    from streamlearn.streams.timeseries import parse_time_ms

    f = Freq.parse(freq)
    t0 = parse_time_ms(START[name])
    times = f.times_after(f.ordinal(np.array([t0]))[0] - 1, max(len(s) for s in series), t0)
    rows = [(f"{name}{i}", times[k], s[k]) for k in range(max(len(s) for s in series))
            for i, s in enumerate(series) if k < len(s)]
    return SeriesBatch.of(*zip(*rows))


def fit_ours(name, train: list[np.ndarray], seed: int, windows: int, workers: int = 1,
             commit_points: int = COMMIT_POINTS, nudge: float = 0.0, **params):
    """Train over repeated passes (contexts restarted between passes) until about ``windows``
    training windows; ``workers`` LocalStates over one backend take the series by key hash,
    committing every ``commit_points`` points each; ``nudge``: the initial parameters times
    (1 + nudge N(0, 1)), a perturbation of float32 rounding's size that shows how far a
    seed's result moves on rounding alone; ``params``: DeepAR parameters beyond the data
    set's."""
    from streamlearn.algorithms.deepar import DeepAR
    from streamlearn.series_batch import SeriesBatch
    from streamlearn.statestore.local import LocalState, MemoryBackend

    H, ctx, freq, lik, _ = SETS[name]
    algo = DeepAR(prediction_length=H, context_length=ctx, time_freq=freq, likelihood=lik, seed=seed,
                  max_series=max(64, 2 * len(train)), partitions=workers, **{**OURS.get(name, {}), **params})
    algo.check_params()
    per_pass = sum(max(0, len(s) - H + 1) for s in train)
    passes = max(1, windows // per_pass)
    # the rest of the budget: a first pass over only the last ``tail`` points of every series
    # (ItalyPowerDemand's 18,632 windows a pass would otherwise give 18,632 or 37,264, not ~24,000)
    tail = max((k for k in range(H, max(len(s) for s in train) + 1)
                if sum(max(0, min(k, len(s)) - H + 1) for s in train) <= windows - passes * per_pass), default=0)
    pts = _points(name, train, freq)
    part = np.array([zlib.crc32(s.encode()) % workers for s in pts.series])  # a partition per worker
    pts = SeriesBatch.of(pts.series, pts.time, pts.target, partition=part)
    backend = MemoryBackend()
    first = LocalState(backend)
    algo.initialize(first)
    if nudge:
        theta = np.asarray(first.pull("theta"))
        first.push("theta", theta * nudge * np.random.default_rng(99).standard_normal(theta.shape))
    first.commit()
    states = [LocalState(backend) for _ in range(workers)]
    seen: dict[str, int] = {}
    k = np.empty(len(pts), np.int64)  # each point's index within its series
    for i, x in enumerate(pts.series.tolist()):
        k[i] = seen.get(x, 0)
        seen[x] = k[i] + 1
    in_tail = np.flatnonzero(k >= np.array([seen[x] for x in pts.series.tolist()]) - tail)
    t0 = time.perf_counter()
    for p in range(passes + bool(tail)):
        if algo.synchronous:
            _rounds(algo, states, pts.take(in_tail) if tail and p == 0 else pts)
            if p + 1 < passes + bool(tail):
                algo.restart_series(states[0])
                states[0].commit()
            continue
        pick = [np.flatnonzero(part == w) for w in range(workers)]
        if tail and p == 0:
            pick = [np.intersect1d(i, in_tail) for i in pick]
        streams = [pts.take(i) for i in pick]
        pos = [0] * workers
        while any(pos[w] < len(streams[w]) for w in range(workers)):
            for w in range(workers):  # each worker takes its next window, then all commit
                if pos[w] < len(streams[w]):
                    states[w].refresh()
                    win = streams[w].take(np.arange(pos[w], min(pos[w] + commit_points, len(streams[w]))))
                    for a in range(0, len(win), algo.step_rows):
                        algo.update(states[w], win.take(np.arange(a, min(a + algo.step_rows, len(win)))))
                    pos[w] += commit_points
            for st in states:
                st.commit()
        if p + 1 < passes + bool(tail):
            algo.restart_series(states[0])
            states[0].commit()
    seconds = time.perf_counter() - t0
    model = algo.finalize(LocalState(backend))
    return model, seconds, model.attrs["windows"]


def _rounds(algo, states: list, stream) -> None:
    """``aggregation=sync``: every ``step_rows`` points of the stream are a round (workers that
    keep up with a live stream); each worker contributes the points of its partition, then
    one closes the round (what :mod:`streamlearn.runtime.rounds` does, without its barrier)."""
    for a in range(0, len(stream), algo.step_rows):
        chunk = stream.take(np.arange(a, min(a + algo.step_rows, len(stream))))
        for w, st in enumerate(states):
            st.refresh()
            algo.update(st, chunk.take(np.flatnonzero(chunk.partition == w)))
            st.commit()
        states[0].refresh()
        algo.close_round(states[0])
        states[0].commit()


def paths_ours(model, name, series: list[np.ndarray], origin: int, seed: int) -> np.ndarray:
    """(n, 100, H) sample paths after each series' first ``len - origin`` points."""
    H = SETS[name][0]
    hist = [s[: len(s) - origin] for s in series]
    pts = _points(name, hist, SETS[name][2])
    at = model.histories_at_points(pts)
    last = {}
    for i, s in enumerate(pts.series.tolist()):
        last[s] = i
    return model.sample_paths([at[last[f"{name}{i}"]] for i in range(len(series))], H, 100, seed)


def fit_gluonts(name, train: list[np.ndarray], seed: int, epochs: int):
    import lightning.pytorch as pl
    import pandas as pd
    import torch
    from gluonts.dataset.common import ListDataset
    from gluonts.torch.distributions import NegativeBinomialOutput, StudentTOutput
    from gluonts.torch.model.deepar import DeepAREstimator

    H, ctx, freq, lik, _ = SETS[name]
    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    ds = ListDataset([{"start": pd.Period(START[name], freq), "target": s} for s in train], freq=freq)
    est = DeepAREstimator(freq=freq, prediction_length=H, context_length=ctx, num_layers=2, hidden_size=40,
                          dropout_rate=0.1, batch_size=32, num_batches_per_epoch=50, lr=1e-3,
                          distr_output=NegativeBinomialOutput() if lik == "negative-binomial" else StudentTOutput(),
                          trainer_kwargs={"max_epochs": epochs, "enable_progress_bar": False, "logger": False,
                                          "enable_model_summary": False})
    t0 = time.perf_counter()
    predictor = est.train(ds)
    return predictor, time.perf_counter() - t0


def paths_gluonts(predictor, name, series: list[np.ndarray], origin: int, seed: int) -> np.ndarray:
    import pandas as pd
    import torch
    from gluonts.dataset.common import ListDataset

    freq = SETS[name][2]
    torch.manual_seed(seed)
    ds = ListDataset([{"start": pd.Period(START[name], freq), "target": s[: len(s) - origin]} for s in series],
                     freq=freq)
    return np.stack([f.samples for f in predictor.predict(ds, num_samples=100)])


def scores(name, series, origin, qf: dict) -> dict:
    from streamlearn.algorithms import _forecast_metrics as fm

    H, m = SETS[name][0], SETS[name][4]
    y = np.stack([s[len(s) - origin: len(s) - origin + H] for s in series])
    return fm.all_metrics(y, qf, [s[: len(s) - origin] for s in series], m)


def _qf(paths):
    return {q: v for q, v in zip(QS, np.quantile(paths, QS, axis=1))}


def naive_qf(name, series, origin) -> dict:
    H, m = SETS[name][0], SETS[name][4]
    point = np.stack([np.resize(s[len(s) - origin - m: len(s) - origin], H) for s in series])
    return {q: point for q in QS}


def _with_owa(s: dict, naive: dict) -> dict:
    return {**s, "OWA": 0.5 * (s["sMAPE"] / naive["sMAPE"] + s["MASE"] / naive["MASE"])}


def _fmt(vals: list[dict], key: str) -> str:
    v = [d[key] for d in vals]
    return f"{np.mean(v):.3f}" + (f" [{min(v):.3f}-{max(v):.3f}]" if len(v) > 1 else "")


def case_deepar(ctx: Context) -> list[Row]:
    full = ctx.profile_name == "full"
    seeds = [0, 1, 2] if full else [0]
    windows = 24_000 if full else 1_500
    epochs = windows // (50 * 32) if full else 1
    rows = []
    for name in SETS:
        series = load(name)
        if not full:
            series = series[:40]
        H = SETS[name][0]
        naive = scores(name, series, H, naive_qf(name, series, H))
        ours, peer, speed = [], [], []
        for seed in seeds:
            model, secs, nwin = fit_ours(name, [s[:-H] for s in series], seed, windows)
            t0 = time.perf_counter()
            paths = paths_ours(model, name, series, H, seed)
            fc_s = (time.perf_counter() - t0) / len(series)
            ours.append(_with_owa(scores(name, series, H, _qf(paths)), naive))
            pred, gsecs = fit_gluonts(name, [s[:-H] for s in series], seed, epochs)
            peer.append(_with_owa(scores(name, series, H, _qf(paths_gluonts(pred, name, series, H, seed))), naive))
            speed.append((nwin / secs, epochs * 50 * 32 / gsecs, fc_s))
            ctx.log(f"{name} seed {seed}: ours wQL {ours[-1]['mean_wQuantileLoss']:.3f} ({secs:.0f} s), "
                    f"gluonts {peer[-1]['mean_wQuantileLoss']:.3f} ({gsecs:.0f} s)")
        wq = [d["mean_wQuantileLoss"] for d in ours]
        gq = [d["mean_wQuantileLoss"] for d in peer]
        floor_ok = np.mean(wq) <= max(gq)
        naive_ok = np.mean(wq) < naive["mean_wQuantileLoss"] or np.mean(gq) >= naive["mean_wQuantileLoss"]
        rows.append(Row(f"quality.deepar.{name}.last",
                        f"wQL {_fmt(ours, 'mean_wQuantileLoss')}, MASE {_fmt(ours, 'MASE')}, sMAPE "
                        f"{_fmt(ours, 'sMAPE')}, MSIS {_fmt(ours, 'MSIS')}, OWA {_fmt(ours, 'OWA')}",
                        f"GluonTS wQL {_fmt(peer, 'mean_wQuantileLoss')}, MASE {_fmt(peer, 'MASE')}, sMAPE "
                        f"{_fmt(peer, 'sMAPE')}, MSIS {_fmt(peer, 'MSIS')}, OWA {_fmt(peer, 'OWA')}; naive wQL "
                        f"{naive['mean_wQuantileLoss']:.3f}, MASE {naive['MASE']:.3f}, sMAPE {naive['sMAPE']:.3f}, "
                        f"MSIS {naive['MSIS']:.3f}",
                        max(gq) / np.mean(wq), "wQL <= GluonTS worst seed; < naive where GluonTS is",
                        "pass" if floor_ok and naive_ok else "FAIL",
                        f"{len(series)} series, H={H}, {len(seeds)} seed(s), ~{windows} windows each; seed spread "
                        f"ours {max(wq) / min(wq):.2f}x, GluonTS {max(gq) / min(gq):.2f}x"))
        tr, gtr, fc = np.mean(speed, axis=0)
        rows.append(Row(f"speed.deepar.{name}", f"{tr:,.0f} windows/s, forecast {fc * 1e3:.1f} ms/series",
                        f"GluonTS {gtr:,.0f} windows/s", tr / gtr, "info", "info",
                        "1 CPU thread each; 100 sample paths; forecast time includes building the histories"))
        # the two earlier origins, one model per method trained before the earliest (seed 0)
        model, _, _ = fit_ours(name, [s[:-3 * H] for s in series], 0, windows // 3)
        pred, _ = fit_gluonts(name, [s[:-3 * H] for s in series], 0, max(1, epochs // 3))
        for k in (3, 2):
            o = k * H
            nv = scores(name, series, o, naive_qf(name, series, o))
            a = scores(name, series, o, _qf(paths_ours(model, name, series, o, 0)))
            b = scores(name, series, o, _qf(paths_gluonts(pred, name, series, o, 0)))
            rows.append(Row(f"quality.deepar.{name}.origin-{o}", f"wQL {a['mean_wQuantileLoss']:.3f}, MASE "
                            f"{a['MASE']:.3f}", f"GluonTS wQL {b['mean_wQuantileLoss']:.3f}, MASE {b['MASE']:.3f}; "
                            f"naive wQL {nv['mean_wQuantileLoss']:.3f}, MASE {nv['MASE']:.3f}",
                            b["mean_wQuantileLoss"] / a["mean_wQuantileLoss"], "info", "info",
                            "seed 0, a third of the windows (CPU budget), no refit between the two origins"))
    return rows


def case_deepar_workers(ctx: Context) -> list[Row]:
    """1, 2, 4 simulated workers in synchronous rounds (``aggregation=sync``) on
    ItalyPowerDemand's and Covid3Month's last windows, the same seeds for every worker count,
    judged on the medians and on the largest gap of one seed (a round's step does not depend
    on how its windows were split among the workers, and with ``exact_rounds``, the default,
    float64 gradients and float32-valued parameters make them train the same parameters, so
    each seed should agree, not only their medians); the floor row is one worker whose
    initial parameters are nudged by 1e-7, about one float32 step of the stored parameters:
    how far differences of rounding's size would move a seed. The smoke profile runs one seed
    on 60 series of each and says so."""
    full = ctx.profile_name == "full"
    seeds = list(range(WORKER_SEEDS)) if full else [0]
    rows = []
    for name in ("italy", "covid"):
        series = load(name) if full else load(name)[:60]
        H = SETS[name][0]
        got: dict[int, list[float]] = {}
        theta_gap = 0.0  # the largest parameter difference of a seed's N workers from its one worker
        one_theta: dict[int, np.ndarray] = {}
        for w in (1, 2, 4):
            for seed in seeds:
                model, secs, _ = fit_ours(name, [s[:-H] for s in series], seed, 24_000 if full else 1_500, workers=w,
                                          aggregation="sync")
                if w == 1:
                    one_theta[seed] = model.theta
                theta_gap = max(theta_gap, float(np.abs(model.theta - one_theta[seed]).max()))
                got.setdefault(w, []).append(
                    scores(name, series, H, _qf(paths_ours(model, name, series, H, seed)))["mean_wQuantileLoss"])
                ctx.log(f"{name}, {w} worker(s), seed {seed}: wQL {got[w][-1]:.4f} ({secs:.0f} s)")
        for seed in seeds:  # the floor: one worker against itself, nudged by a float32 step
            model, _, _ = fit_ours(name, [s[:-H] for s in series], seed, 24_000 if full else 1_500,
                                   aggregation="sync", nudge=1e-7)
            got.setdefault(0, []).append(
                scores(name, series, H, _qf(paths_ours(model, name, series, H, seed)))["mean_wQuantileLoss"])
        floor = abs(float(np.median(got[0])) / float(np.median(got[1])) - 1)
        floor_seed = max(abs(a / b - 1) for a, b in zip(got.pop(0), got[1]))
        med = {w: float(np.median(v)) for w, v in got.items()}
        gap = max(abs(med[w] / med[1] - 1) for w in med)
        seed_gap = max(abs(a / b - 1) for w in got for a, b in zip(got[w], got[1]))
        rows.append(Row(f"quality.deepar_workers.{name}", ", ".join(f"{w}w median wQL {v:.4f}" for w, v in med.items()),
                        "1 worker", 1 - gap, "medians within 3%", "pass" if gap <= 0.03 else "FAIL",
                        f"{len(series)} series; median over {len(seeds)} seed(s)"
                        + (" (ONE seed: not evidence)" if len(seeds) == 1 else "")
                        + f"; largest gap of one seed {seed_gap:.2%}, of a parameter {theta_gap:.3g}; one worker "
                        f"nudged by 1e-7 (a float32 step: the floor without exact rounds): median {floor:.2%}, "
                        f"one seed up to {floor_seed:.2%}; per seed "
                        + ", ".join(f"{w}w " + "/".join(f"{x:.3f}" for x in v) for w, v in got.items())
                        + "; aggregation=sync: a round every 32 points of the stream"))
    return rows


CASES = {"quality.deepar": case_deepar, "quality.deepar_workers": case_deepar_workers}
