"""DeepAR (Salinas et al. 2020; SageMaker's forecasting algorithm) trained on a stream of points.

One global autoregressive LSTM over many series, as GluonTS's PyTorch ``DeepARModel``:
inputs are the lagged targets (GluonTS's lag set of ``time_freq``) divided by the window's
mean scale, the time features of ``time_freq``, the age log10(2 + index), dynamic features,
static-category embeddings and log(scale); the output is a likelihood (student-t, gaussian
or negative binomial) whose negative log-likelihood over the observed values of a window
(context + prediction range) is the loss. Forecasts are sample paths.

Streaming context. Points of a series arrive in time order (keyed by series id, so in one
partition). Each series owns a row of two ``replace`` keys: ``slots`` (its id, found by
hashing and probing) and ``ctx`` (last ordinal, age, last time, categories and its last
``history`` values, observed mask and dynamic features, where ``history`` is what a
training window ending at the next point needs). An update step pulls the rows of the
series it sees, appends the points (a gap is filled with unobserved values), trains on the
windows that end at arriving points (GluonTS's instance sampling with ``window_rate`` = 1:
every point whose prediction range lies inside its series ends one window) and pushes the
rows back: committed with the offsets, so a point is in exactly one committed context, a
partition that moves keeps its series' context, and a worker holds only the rows it touches.

Claiming a row. A new series claims a free row it pulled; two workers that claimed the same
row before either committed would leave it to the last committer, and the other series
would lose its context (4 workers over ItalyPowerDemand: 22,622 training windows instead of
23,016). So the rows are striped by Kafka partition (``partitions``: the topic's, set at
job create): a series claims only in its partition's stripe, and a partition has one owner
at a time (a former owner's commits are fenced). A series is found in its stripe or at its
rows by hash over the whole table, where ``initialize_from`` puts a parent job's series (its
topic's partitions need not be this job's) and where a job of one partition keeps them.

Optimizer and concurrency. The flat parameter vector ``theta`` and Adam's moments ``adam``
are ``sum`` keys: a step pulls them (read-your-writes), computes the gradient of its
windows and pushes Adam's step, its share of both moments and one step count. One worker
is plain sequential Adam. N workers (each sees 1/N of the points, each step computed
against parameters at most one commit window old) stand for one worker taking all their
steps interleaved (``_shared_adam.SharedAdam``): parameter steps are summed, the
moments keep every gradient once with one decay per global step, so N workers make the
progress of one. With ``lookahead`` a gradient is taken where the commit will leave the
parameters if the others step alike (the shared ones plus N times the worker's own steps
since), so the sum of N windows does not overshoot N-fold where the workers pull alike
(ItalyPowerDemand); off by default, as Covid3Month's workers did worse with it. Averaging
the moments instead left each gradient ``0.1 + 0.9 / N`` of its weight, and summing them
counted the shared momentum's decay N times (it diverged).

``aggregation="sync"``: synchronous rounds (:mod:`streamlearn.runtime.rounds`), so that 1
or N workers learn the same model by construction rather than on average. An update step
appends its points to their contexts as above but does not step: it adds its windows'
gradient, taken at the round's parameters, to the round's sum (``g_theta``); the round's
close takes one Adam step on the mean gradient (clipped, weight decay added) and clears
the sum. Nothing a member adds depends on which member holds which windows: dropout masks
are drawn per window (seed, round, series, period) instead of by the LSTM for its batch,
and a window without an observed context is scaled by the mean |value| of the contexts of
every closed round (``level``) instead of its batch's. N workers sharing a round then
compute one worker's step on the round's points up to the rounding of the sums: a member's
partial sum against one worker's whole batch, and the order the members' sums add up in.
Float32 rounding of that size grows where training is chaotic (Covid3Month: a 1e-7 nudge of
one worker's parameters moves its backtest by a seed's spread), so with ``exact_rounds``
(the default) a member computes in float64 and the close stores the parameters as float32
values: the float64 sums differ by ~1e-16, which almost never moves a rounded parameter, and
1, 2 and 4 workers train the same parameters bit for bit (Covid3Month: 751 rounds, seeds
0-5). The model forecasts in float32 with exactly those parameters. Not with
``replay_windows`` (the members of a round would draw the same reservoir rows).

Randomness (dropout, sampled windows) is seeded by the step count (sync: the round) and the
point, never by the worker, so a resumed job equals an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import zlib
from typing import Any, ClassVar

import numpy as np

from streamlearn.algorithms import _forecast_metrics as fm
from streamlearn.algorithms import register
from streamlearn.algorithms._shared_adam import ROWS, SharedAdam, adam_step, averaged_parameters
from streamlearn.algorithms.base import Algorithm, Model, ParamError, require
from streamlearn.algorithms.params import Interval, ListOf, Options, Param
from streamlearn.series_batch import SeriesBatch
from streamlearn.statestore.base import State
from streamlearn.streams.timeseries import decode_points, ms_to_iso
from streamlearn.timefreq import Freq

ID_FLOATS = 10  # a series id of <= 60 UTF-8 bytes, 6 bytes per float64 (exact as an integer)
PROBES = 16  # rows a series may occupy from its hash row on (a stripe is a small table: runs of full rows)
AUTO_CARDINALITY = 1024  # table rows of a static category when cardinality=auto
AUTO_EMBEDDING = 10
ROUND_SUMS = 3  # g_theta's tail: windows, sum of |observed context value|, observed context values
HEAD = 3  # ctx row: last ordinal, age (periods since the series' first point), last time (ms)
TORCH_THREADS = 1
LIKELIHOODS = ("student-t", "gaussian", "negative-binomial")
METRICS = ("mean_wQuantileLoss", "MASE", "sMAPE", "MSIS", "RMSE")


def encode_id(series: str) -> np.ndarray:
    b = series.encode()[: 6 * ID_FLOATS].ljust(6 * ID_FLOATS, b"\0")
    return np.array([int.from_bytes(b[6 * i: 6 * i + 6], "big") for i in range(ID_FLOATS)], dtype=np.float64)


def decode_id(row: np.ndarray) -> str:
    return b"".join(int(v).to_bytes(6, "big") for v in row).rstrip(b"\0").decode()


def _hash_row(series: str, n: int) -> int:
    return zlib.crc32(series.encode()) % n


class DeepAR(Algorithm):
    name = "deepar"
    #: points per update step: each ends at most one training window (GluonTS's batch of 32)
    step_rows = 32
    #: a second pass over the same points would look like time going backwards in every series
    single_pass = True
    #: aggregation=sync: the round counter, then the key every contribution writes
    round_keys: ClassVar[tuple[str, ...]] = ("round", "g_theta")
    round_state: ClassVar[tuple[str, ...]] = ("theta", "adam", "t", "level")
    param_spec = {
        "prediction_length": Param("periods each forecast covers", Interval(int, 1, None)),
        "context_length": Param("periods the network is unrolled over before a forecast (0: prediction_length)",
                                Interval(int, 0, None)),
        "time_freq": Param("the series' frequency, [n]unit with unit s, min, h, D, W, M, Q or Y (e.g. 'D', '15min')",
                           str),
        "likelihood": Param("distribution of a value given the network's output", Options(*LIKELIHOODS)),
        "num_layers": Param("LSTM layers", Interval(int, 1, None)),
        "num_cells": Param("cells of each LSTM layer", Interval(int, 1, None)),
        "dropout_rate": Param("dropout between LSTM layers while training", Interval(float, 0, 1, closed="left")),
        "learning_rate": Param("Adam's step size", Interval(float, 0, None, closed="neither")),
        "weight_decay": Param("L2 decay of the parameters", Interval(float, 0, None)),
        "average_decay": Param("decay of the parameters' running average that the model uses (0: the last ones)",
                               Interval(float, 0, 1, closed="left")),
        "lookahead": Param("with several async workers, take each gradient where the commit will leave the parameters if "
                           "the others step alike (the shared ones plus N times the worker's own steps since)", bool),
        "aggregation": Param("how workers' steps combine: async = each worker steps and commits on its own (steps "
                             "summed, SharedAdam); sync = synchronous rounds: the workers' gradients of a round's "
                             "windows, taken at the same parameters, are summed and one Adam step is taken on "
                             "them (1 or N workers learn the same model)", Options("async", "sync")),
        "exact_rounds": Param("with aggregation=sync: a round's gradients computed in float64 and the parameters "
                              "kept float32 values (rounded after each step), so that 1 or N workers train the same "
                              "parameters bit for bit whatever order their sums add up in (a step computes 2-2.5x "
                              "as long as in float32); false: float32 gradients, the same up to float32 rounding, which "
                              "chaotic training grows (no effect with async)", bool),
        "clip_gradient": Param("largest absolute gradient component", Interval(float, 0, None, closed="neither")),
        "lags_seq": Param("lagged values the network sees, e.g. [1,2,7] ('auto': GluonTS's lags of time_freq)",
                          Options("auto"), ListOf(int)),
        "num_dynamic_feat": Param("dynamic (time-varying) features of every point", Interval(int, 0, None)),
        "num_static_cat": Param("static categories of every series", Interval(int, 0, None)),
        "cardinality": Param(f"values of each static category ('auto': {AUTO_CARDINALITY} each)",
                             Options("auto"), ListOf(int, distinct=False)),
        "max_series": Param("series the job keeps a context for (rows of its state)", Interval(int, 1, None)),
        "window_rate": Param("share of arriving points that end a training window",
                             Interval(float, 0, 1, closed="right")),
        "replay_windows": Param("training windows kept in the state; each step also trains on as many of them as it "
                                "has fresh ones (0: none)", Interval(int, 0, None)),
        "num_samples": Param("sample paths behind each forecast", Interval(int, 1, None)),
        "max_growth": Param("bound of a sampled value: this many times the context's largest |value| (0: none)",
                            Interval(float, 0, None)),
        "partitions": Param("partitions of the topic: each claims context rows in its own 1/partitions of them "
                            "(set from the topic at job create)", Interval(int, 1, None)),
        "seed": Param("seed of the initial weights, dropout and sampled windows", Interval(int, 0, None)),
        "device": Param("where torch computes: 'cpu', 'cuda' or 'cuda:N'", str),
    }

    def __init__(self, prediction_length: int = 14, context_length: int = 0, time_freq: str = "D",
                 likelihood: str = "student-t", num_layers: int = 2, num_cells: int = 40, dropout_rate: float = 0.1,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-8, average_decay: float = 0.0,
                 lookahead: bool = False, aggregation: str = "async", exact_rounds: bool = True,
                 clip_gradient: float = 10.0,
                 lags_seq: str | list[int] = "auto", num_dynamic_feat: int = 0, num_static_cat: int = 0,
                 cardinality: str | list[int] = "auto", max_series: int = 4096, window_rate: float = 1.0,
                 replay_windows: int = 0, num_samples: int = 100, max_growth: float = 10.0, partitions: int = 1, seed: int = 0,
                 device: str = "cpu"):
        self.prediction_length = prediction_length
        self.context_length = context_length
        self.time_freq = time_freq
        self.likelihood = likelihood
        self.num_layers = num_layers
        self.num_cells = num_cells
        self.dropout_rate = dropout_rate
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.average_decay = average_decay
        self.lookahead = lookahead
        self.aggregation = aggregation
        self.exact_rounds = exact_rounds
        self.clip_gradient = clip_gradient
        self.lags_seq = lags_seq
        self.num_dynamic_feat = num_dynamic_feat
        self.num_static_cat = num_static_cat
        self.cardinality = cardinality
        self.max_series = max_series
        self.window_rate = window_rate
        self.replay_windows = replay_windows
        self.num_samples = num_samples
        self.max_growth = max_growth
        self.partitions = partitions
        self.seed = seed
        self.device = device
        self._net_cache = None  # scratch: the module whose parameters each step overwrites
        self._adam: SharedAdam | None = None  # scratch: this worker's view of the shared optimizer

    # -- parameters -----------------------------------------------------------------------
    def check_params(self) -> None:
        n = self.name
        super().check_params()
        try:
            Freq.parse(self.time_freq)
        except ValueError as exc:
            raise ParamError(f"{n}: time_freq: {exc}") from None
        require(all(v >= 1 for v in self.lags()), n, "lags_seq must be 'auto' or a list of integers >= 1")
        card = self.cardinalities()
        require(len(card) == self.num_static_cat and all(c >= 1 for c in card), n,
                "cardinality must be 'auto' or a list of num_static_cat integers >= 1")
        require(not (self.synchronous and self.replay_windows), n,
                "replay_windows needs aggregation=async (a round's members would draw the same reservoir rows)")
        require(self.device in ("cpu", "cuda") or str(self.device).startswith("cuda:"), n,
                "device must be 'cpu', 'cuda' or 'cuda:N'")
        try:
            import torch
        except ImportError:
            raise ParamError(f"{n}: needs PyTorch (pip install 'streamlearn[torch]')") from None
        require(self.device == "cpu" or torch.cuda.is_available(), n, f"device={self.device} but CUDA is not available")

    @property
    def synchronous(self) -> bool:
        """Whether updates only add a round's gradient, stepped by :meth:`close_round`."""
        return self.aggregation == "sync"

    def lags(self) -> list[int]:
        if self.lags_seq == "auto":
            return Freq.parse(self.time_freq).lags()
        return sorted({int(x) for x in self.lags_seq})

    def cardinalities(self) -> list[int]:
        if self.cardinality == "auto":
            return [AUTO_CARDINALITY] * int(self.num_static_cat)
        return [int(c) for c in self.cardinality]

    def config(self) -> dict[str, Any]:
        """Everything the network's shape and inputs depend on (the model carries it)."""
        lags = self.lags()
        ctx = int(self.context_length) or int(self.prediction_length)
        card = self.cardinalities()
        emb = [AUTO_EMBEDDING if self.cardinality == "auto" else min(50, (c + 1) // 2) for c in card]
        freq = Freq.parse(self.time_freq)
        F = int(self.num_dynamic_feat)
        input_size = len(lags) + sum(emb) + 1 + freq.n_time_features + 1 + F
        H = int(self.prediction_length)
        return {"time_freq": self.time_freq, "lags": lags, "context_length": ctx, "prediction_length": H,
                "past_length": ctx + max(lags) - 1, "history": ctx + max(lags) + H - 2, "likelihood": self.likelihood,
                "num_layers": int(self.num_layers), "num_cells": int(self.num_cells),
                "dropout_rate": float(self.dropout_rate), "cardinalities": card, "embedding_dims": emb,
                "num_dynamic_feat": F, "num_static_cat": int(self.num_static_cat), "input_size": input_size,
                "num_samples": int(self.num_samples), "max_growth": float(self.max_growth), "seed": int(self.seed)}

    def _row_width(self) -> int:
        c = self.config()
        return HEAD + c["num_static_cat"] + c["history"] * (2 + c["num_dynamic_feat"])

    # -- the algorithm ---------------------------------------------------------------------
    def _net(self):
        if self._net_cache is None:
            self._net_cache = build_net(self.config(), self.device)
            if self.synchronous and self.exact_rounds:
                self._net_cache.double()
        return self._net_cache

    def initialize(self, state: State) -> None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            net = build_net(self.config(), "cpu")
        theta = torch.nn.utils.parameters_to_vector(net.parameters()).detach().double().numpy()
        state.initialize("theta", theta)
        state.initialize("adam", np.concatenate([np.zeros((ROWS - 1, len(theta))), theta[None, :]]))
        state.initialize("t", 0.0)
        if self.synchronous:  # the open round's sums (sum keys: contributions add up), see _contribute
            state.initialize("g_theta", np.zeros(len(theta) + ROUND_SUMS))
            state.initialize("level", np.zeros(2))
            state.initialize("round", 0.0)
        state.initialize("points", 0.0)
        state.initialize("windows", 0.0)
        state.initialize("unplaced", 0.0)  # points of series that found no free slot
        rows = int(self.max_series)
        state.initialize("slots", np.zeros((rows, ID_FLOATS)), aggregator="replace", chunk_rows=256)
        width = self._row_width()
        state.initialize("ctx", np.zeros((rows, width)), aggregator="replace",
                         chunk_rows=max(1, min(256, (1 << 16) // (8 * width))))
        if self.num_static_cat:
            state.initialize("card", np.zeros(int(self.num_static_cat)), aggregator="max")
        if self.replay_windows:
            width = _window_width(self.config())
            state.initialize("replay", np.zeros((int(self.replay_windows), width)), aggregator="replace",
                             chunk_rows=max(1, min(256, (1 << 16) // (8 * width))))

    def _probe_rows(self, series: str, partition: int) -> tuple[np.ndarray, np.ndarray]:
        """(the rows ``series`` may claim: probes in its partition's stripe; the rows it may
        also be found at: probes over the whole table)."""
        n = int(self.max_series)
        stripes = max(1, min(int(self.partitions), n))
        q = int(partition) % stripes
        lo, size = q * n // stripes, (q + 1) * n // stripes - q * n // stripes
        # independent probes (runs of full rows in a stripe, a small table, made linear probing
        # miss); not crc32, which librdkafka's partitioner takes modulo the partitions: a
        # stripe's series would share their residues and hash to a fraction of its rows
        digest = hashlib.blake2b(series.encode(), digest_size=4 * PROBES).digest()
        own = lo + np.unique(np.frombuffer(digest, dtype=">u4") % size)[: min(PROBES, size)]
        anywhere = (_hash_row(series, n) + np.arange(min(PROBES, n))) % n
        return (own, anywhere) if stripes > 1 else (anywhere, anywhere[:0])

    def _find_slots(self, state: State, partition_of: dict[str, int], claim: bool) -> dict[str, int]:
        """Slot row of each series id (-> its partition): its own row, else (``claim``) a free
        one of its stripe, pushed."""
        probes = {s: self._probe_rows(s, p) for s, p in partition_of.items()}
        rows = (np.unique(np.concatenate([np.concatenate(pr) for pr in probes.values()])) if probes
                else np.zeros(0, np.int64))
        held = state.pull("slots", rows=rows)
        where = {int(r): i for i, r in enumerate(rows.tolist())}
        taken: set[int] = set()
        out, claims = {}, []
        for s, (own, anywhere) in probes.items():
            code = encode_id(s)
            found = [r for r in np.concatenate([own, anywhere]).tolist() if np.array_equal(held[where[r]], code)]
            if found:
                out[s] = found[0]
                continue
            free = [r for r in own.tolist() if held[where[r], 0] == 0 and r not in taken]
            if claim and free:
                out[s] = free[0]
                taken.add(free[0])
                claims.append((free[0], code))
        if claims:
            state.push("slots", np.stack([c for _, c in claims]), rows=np.array([r for r, _ in claims]))
        return out

    def update(self, state: State, batch: SeriesBatch) -> None:
        if len(batch) == 0:
            return
        c = self.config()
        freq = Freq.parse(c["time_freq"])
        groups = batch.by_series()
        slots = self._find_slots(state, {s: int(batch.partition[i[0]]) for s, i in groups.items()}, claim=True)
        placed = [s for s in groups if s in slots]
        rows = np.array([slots[s] for s in placed], dtype=np.int64)
        held = state.pull("ctx", rows=rows) if len(rows) else np.zeros((0, self._row_width()))
        t = float(state.pull("t"))
        windows: list[tuple] = []
        keys: list[tuple[int, int]] = []  # each window's series hash and last ordinal (its dropout)
        new_rows = np.empty_like(held)
        unplaced = sum(len(g) for s, g in groups.items() if s not in slots)
        applied = 0
        for i, s in enumerate(placed):
            idx = groups[s]
            hist = History.from_row(held[i], c)
            ords = freq.ordinal(batch.time[idx])
            for k, j in enumerate(idx.tolist()):
                o = int(ords[k])
                if hist.last is not None and o <= hist.last:
                    continue  # the worker dead-letters these; in-process callers are skipped
                w = hist.append(o, float(batch.target[j]), batch.feat[j], int(batch.time[j]), batch.cat[j])
                applied += 1
                if hist.age >= c["prediction_length"] and _sampled(self.seed, s, o, self.window_rate):
                    windows.append(w)
                    keys.append((zlib.crc32(s.encode()), o))
            new_rows[i] = hist.to_row(c)
        if len(rows):
            state.push("ctx", new_rows, rows=rows)
        if self.num_static_cat and len(batch):
            state.push("card", batch.cat.max(0).astype(np.float64) + 1.0)
        state.push("points", float(applied))
        if unplaced:
            state.push("unplaced", float(unplaced))
        if windows and self.synchronous:
            self._contribute(state, c, freq, windows, keys)
        elif windows:
            self._train(state, c, freq, windows, t)

    def _train(self, state: State, c: dict, freq: Freq, windows: list[tuple], t: float) -> None:
        import torch

        net = self._net()
        if self._adam is None:
            self._adam = SharedAdam(self.learning_rate, self.average_decay, bool(self.lookahead))
        theta = self._adam.parameters(state)
        dev = _train_at(net, theta)
        replayed = self._replay(state, c, windows, t) if self.replay_windows else []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed) * 1_000_003 + int(t))
            loss = window_loss(net, c, freq, windows + replayed, dev)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), float(self.clip_gradient))
        g = _gradient(net) + float(self.weight_decay) * theta
        self._adam.step(state, theta, g)
        state.push("windows", float(len(windows)))

    def _contribute(self, state: State, c: dict, freq: Freq, windows: list[tuple],
                    keys: list[tuple[int, int]]) -> None:
        """A synchronous round's share: the gradient of the mean loss of this step's windows at
        the round's parameters, times their number, into the round's sum (``g_theta``: the sum,
        then the windows and their observed contexts' |value| sum and count). Nothing in it
        depends on how the round's windows were split among members: dropout is drawn per
        window (from the seed, the round, the series and the window's last period), and a
        window without an observed context is scaled by the mean |value| of every context
        of the rounds closed before (``level``), not by its batch's. The network computes in
        float64 with ``exact_rounds`` (:meth:`_net`)."""
        net = self._net()
        dev = _train_at(net, np.asarray(state.pull("theta"), dtype=np.float64))
        masks = _dropout_masks(c, int(self.seed), int(state.pull("round")), keys, dev, next(net.parameters()).dtype)
        level = state.pull("level")
        window_loss(net, c, freq, windows, dev, masks, level[0] / level[1] if level[0] > 0 else 1.0).backward()
        g = _gradient(net)
        vals, mask = _contexts(c, np.stack([w[0] for w in windows]), np.stack([w[1] for w in windows]))
        tail = [float(len(windows)), float(np.abs(vals * mask).sum()), float(mask.sum())]
        state.push("g_theta", np.concatenate([g * len(windows), tail]))
        state.push("windows", float(len(windows)))

    def close_round(self, state: State) -> bool:
        """One Adam step on the open round's mean gradient (clipped, weight decay added), the
        round's sum cleared and the round counted (``round`` + 1, also when it was empty);
        False when no window was contributed. Applied once per round by the runtime's
        check-and-set commit (:mod:`streamlearn.runtime.rounds`)."""
        state.push("round", 1.0)
        step = self._round_step(state)
        if step is None:
            return False
        delta, moves, sums = step
        state.push("theta", delta)
        state.push("adam", moves)
        state.push("t", 1.0)
        state.push("level", sums[-2:])
        state.push("g_theta", -sums)
        return True

    def _round_step(self, state: State) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The open round's step: (the parameters' change, the ``adam`` rows' change, the
        round's sum), or None for a round without windows. The gradient is clipped as one
        worker's step clips its batch's (torch's ``clip_grad_norm_``)."""
        sums = np.array(state.pull("g_theta"), dtype=np.float64)
        windows = sums[-ROUND_SUMS]
        if windows <= 0:
            return None
        g = sums[:-ROUND_SUMS] / windows
        norm = float(np.linalg.norm(g))
        g = g * min(1.0, float(self.clip_gradient) / (norm + 1e-6))
        theta = np.asarray(state.pull("theta"), dtype=np.float64)
        g = g + float(self.weight_decay) * theta
        delta, moves = adam_step(theta, g, state.pull("adam"), float(state.pull("t")), float(self.learning_rate),
                                 float(self.average_decay))
        if self.exact_rounds:  # parameters that differ by less than half a float32 step are stored alike
            delta = (theta + delta).astype(np.float32).astype(np.float64) - theta
        return delta, moves, sums

    def _replay(self, state: State, c: dict, windows: list[tuple], t: float) -> list[tuple]:
        """As many stored windows as ``windows`` (rows drawn by the step count; empty rows
        skipped), and ``windows`` stored over rows drawn likewise. A stream's steps hold
        windows of one moment, and its order may end on one regime (macrodata's passes end on
        the calm quarters before its test window); GluonTS draws windows from any time."""
        rng = np.random.default_rng([int(self.seed), int(t)])
        R = int(self.replay_windows)
        held = state.pull("replay", rows=np.unique(rng.integers(0, R, len(windows))))
        old = [_window_of_row(row, c) for row in held if row[-1 - c["num_static_cat"]] > 0]  # age > 0: stored
        rows, first = np.unique(rng.integers(0, R, len(windows)), return_index=True)
        state.push("replay", np.stack([_row_of_window(windows[i]) for i in first]), rows=rows)
        return old

    # -- the worker's reader ---------------------------------------------------------------
    def decode_window(self, state: State, values: list, shared=None, confluent=None,
                      partitions: list[int] | None = None):
        """Decode a window of ``timeseries_point`` messages and screen them against the stored
        contexts: a point whose time does not move forward within its series, a category
        beyond its cardinality, or a negative count (negative binomial) is rejected with
        the reason (the worker dead-letters it in the same commit as the window).
        ``partitions``: each message's Kafka partition."""
        result = decode_points(values, shared=shared, confluent=confluent, n_feat=int(self.num_dynamic_feat),
                               n_cat=int(self.num_static_cat), partitions=partitions)
        pts = result.points
        if not len(pts):
            return result
        freq = Freq.parse(self.time_freq)
        ords = freq.ordinal(pts.time)
        groups = pts.by_series()
        slots = self._find_slots(state, {s: int(pts.partition[i[0]]) for s, i in groups.items()}, claim=False)
        last = {}
        if slots:
            names = list(slots)
            held = state.pull("ctx", rows=np.array([slots[s] for s in names]))
            last = {s: (held[i, 0], held[i, 1]) for i, s in enumerate(names)}
        bad, why = [], []
        card = self.cardinalities()
        for s, idx in groups.items():
            prev = int(last[s][0]) if s in last and last[s][1] > 0 else None
            for j in idx.tolist():
                o = int(ords[j])
                reason = None
                if prev is not None and o <= prev:
                    reason = f"time does not move forward within series {s!r} (period {o} after {prev})"
                elif card and np.any(pts.cat[j] >= np.array(card)):
                    reason = f"static category beyond cardinality {card}"
                elif self.likelihood == "negative-binomial" and pts.target[j] < 0:
                    reason = "negative target for the negative-binomial likelihood"
                if reason is None:
                    prev = o
                else:
                    bad.append(j)
                    why.append(reason)
        return result.reject(np.array(bad, dtype=np.int64), why)

    def initialize_from(self, state: State, model: Model,
                        training_state: dict[str, np.ndarray] | None = None) -> None:
        """Continue a parent job's state with every series' row at its rows by hash over the
        whole table, where a worker of any partition finds it (the parent's stripes were its
        topic's partitions). A series with none of those rows free is forgotten."""
        if training_state and "slots" in training_state and "ctx" in training_state:
            slots, ctx = _rows_anywhere(np.asarray(training_state["slots"]), np.asarray(training_state["ctx"]))
            training_state = {**training_state, "slots": slots, "ctx": ctx}
        super().initialize_from(state, model, training_state)

    def restart_series(self, state: State) -> None:
        """Forget every series' context (a new pass over a bounded range starts each series
        afresh; the network and optimizer state are kept)."""
        rows = np.arange(int(self.max_series))
        state.push("slots", np.zeros((len(rows), ID_FLOATS)), rows=rows)
        state.push("ctx", np.zeros((len(rows), self._row_width())), rows=rows)

    def finalize(self, state: State) -> "DeepARModel":
        c = self.config()
        slots = state.pull("slots")
        used = np.flatnonzero(slots[:, 0] != 0)
        ctx = state.pull("ctx")
        ctx_used = ctx[used]
        live = ctx_used[:, 1] > 0
        names = [decode_id(slots[r]) for r in used[live].tolist()]
        attrs = {**c, "series": names, "points": float(state.pull("points")), "windows": float(state.pull("windows")),
                 "steps": float(state.pull("t")), "unplaced": float(state.pull("unplaced"))}
        if self.num_static_cat:
            attrs["observed_cardinality"] = [int(v) for v in state.pull("card")]
        params = averaged_parameters(state, float(self.average_decay))
        step = self._round_step(state) if self.synchronous else None
        if step is not None:  # a round not closed yet (the last, partial one): as its close would apply it
            delta, moves, _ = step
            params = params + (moves[2] if self.average_decay > 0 else delta)
        return DeepARModel(params, ctx_used[live].copy(), attrs)


def _train_at(net, theta: np.ndarray):
    """``net`` set to the parameters ``theta`` (at its own precision), in training mode, its
    gradients zeroed; returns its device."""
    import torch

    p = next(net.parameters())
    torch.nn.utils.vector_to_parameters(torch.tensor(theta, dtype=p.dtype, device=p.device), net.parameters())
    net.train()
    net.zero_grad(set_to_none=False)
    return p.device


def _gradient(net) -> np.ndarray:
    """``net``'s gradients as one float64 vector (the parameters' order)."""
    import torch

    return torch.nn.utils.parameters_to_vector(p.grad for p in net.parameters()).double().cpu().numpy()


def _window_width(c: dict) -> int:
    """Floats of a stored training window: values, mask and features of its ``history`` + 1
    periods, its last ordinal and age, and its categories."""
    return (c["history"] + 1) * (2 + c["num_dynamic_feat"]) + 2 + c["num_static_cat"]


def _row_of_window(w: tuple) -> np.ndarray:
    vals, mask, feat, ordinal, age, cats = w
    return np.concatenate([vals, mask, np.asarray(feat).ravel(), [ordinal, age], np.asarray(cats, np.float64)])


def _window_of_row(row: np.ndarray, c: dict) -> tuple:
    W, F, C = c["history"] + 1, c["num_dynamic_feat"], c["num_static_cat"]
    end = W * (2 + F)
    return (row[:W], row[W:2 * W], row[2 * W:end].reshape(W, F), int(row[end]), int(row[end + 1]),
            row[end + 2:end + 2 + C].astype(np.int64))


def _rows_anywhere(slots: np.ndarray, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slots, ctx) with every used row at one of its series' probes over the whole table:
    rows already there stay (a parent of one partition is unchanged), the others move to the
    first free one."""
    n = len(slots)
    new_slots, new_ctx = np.zeros_like(slots), np.zeros_like(ctx)
    used = np.flatnonzero(slots[:, 0] != 0).tolist()
    probes = {r: (_hash_row(decode_id(slots[r]), n) + np.arange(min(PROBES, n))) % n for r in used}
    moving = []
    for r in used:
        if r in probes[r]:
            new_slots[r], new_ctx[r] = slots[r], ctx[r]
        else:
            moving.append(r)
    for r in moving:
        free = [q for q in probes[r].tolist() if new_slots[q, 0] == 0]
        if free:
            new_slots[free[0]], new_ctx[free[0]] = slots[r], ctx[r]
    return new_slots, new_ctx


def _sampled(seed: int, series: str, ordinal: int, rate: float) -> bool:
    if rate >= 1.0:
        return True
    return zlib.crc32(f"{seed}:{series}:{ordinal}".encode()) < rate * 2 ** 32


def _torch_net():
    """The network module: it imports torch (seconds), which creating or validating a job,
    and listing the algorithms, should not pay for."""
    return importlib.import_module("streamlearn.algorithms._deepar_net")


def build_net(c: dict, device: str = "cpu"):
    import torch

    DeepARNet = _torch_net().DeepARNet

    # workers (processes) are the unit of parallelism, as for BLAS (consumers/worker.py): torch's
    # own intra-op threads on a busy 2-core machine made a 32-window LSTM step 75x slower
    # (0.70 s instead of 9 ms)
    torch.set_num_threads(TORCH_THREADS)

    return DeepARNet(c["input_size"], c["num_cells"], c["num_layers"], c["dropout_rate"], c["likelihood"],
                     c["cardinalities"], c["embedding_dims"]).to(device)


class History:
    """One series' stored context: its last ``history`` values, observed mask and dynamic
    features, last ordinal, age and time, and static categories (a ``ctx`` row)."""

    __slots__ = ("vals", "mask", "feat", "last", "age", "last_ms", "cats")

    def __init__(self, L: int, F: int, C: int):
        self.vals, self.mask, self.feat = np.zeros(L), np.zeros(L), np.zeros((L, F))
        self.last, self.age, self.last_ms, self.cats = None, 0, 0, np.zeros(C, np.int64)

    @classmethod
    def from_row(cls, row: np.ndarray, c: dict) -> "History":
        L, F, C = c["history"], c["num_dynamic_feat"], c["num_static_cat"]
        h = cls(L, F, C)
        if row[1] > 0:
            h.last, h.age, h.last_ms = int(row[0]), int(row[1]), int(row[2])
            h.cats = row[HEAD:HEAD + C].astype(np.int64)
            body = row[HEAD + C:]
            h.vals, h.mask = body[:L].copy(), body[L:2 * L].copy()
            h.feat = body[2 * L:].reshape(L, F).copy()
        return h

    def to_row(self, c: dict) -> np.ndarray:
        head = np.array([self.last, self.age, self.last_ms], dtype=np.float64)
        return np.concatenate([head, self.cats.astype(np.float64), self.vals, self.mask, self.feat.ravel()])

    def append(self, ordinal: int, y: float, feat: np.ndarray, ms: int, cats: np.ndarray) -> tuple:
        """Add a point (periods skipped since the last one are unobserved); returns the
        training window that ends at it: (values, mask, features, ordinal, age, cats)."""
        L = len(self.vals)
        shift = 1 if self.last is None else ordinal - self.last
        gap = min(shift - 1, L)
        observed = not math.isnan(y)
        vals = np.concatenate([self.vals[gap:], np.zeros(gap), [y if observed else 0.0]])
        mask = np.concatenate([self.mask[gap:], np.zeros(gap), [1.0 if observed else 0.0]])
        feat = np.concatenate([self.feat[gap:], np.zeros((gap, self.feat.shape[1])), np.asarray(feat)[None, :]])
        self.vals, self.mask, self.feat = vals[1:], mask[1:], feat[1:]
        self.age += shift
        self.last, self.last_ms, self.cats = ordinal, ms, np.asarray(cats, dtype=np.int64)
        return vals, mask, feat, ordinal, self.age, self.cats


def _features(c: dict, freq: Freq, end_ordinal: np.ndarray, end_age: np.ndarray, positions: np.ndarray,
              length: int) -> np.ndarray:
    """(B, T, k + 1) time features and age of window positions ``positions`` (of windows of
    ``length`` whose last position is ``end_ordinal`` / has age ``end_age``); zero before a
    series' first point, as GluonTS pads."""
    back = (length - 1) - positions  # periods before the window's end
    ords = end_ordinal[:, None] - back[None, :]
    idx = (end_age[:, None] - 1) - back[None, :]
    tf = freq.time_features(ords.ravel()).reshape(ords.shape + (-1,))
    age = np.log10(2.0 + np.maximum(idx, 0))[..., None]
    out = np.concatenate([tf, age], axis=-1)
    out[idx < 0] = 0.0
    return out


def _mean_scale(vals: np.ndarray, mask: np.ndarray, default: float | None = None) -> np.ndarray:
    """GluonTS's MeanScaler: mean |value| over the observed context, the batch's (or
    ``default``) where a context has none, at least 1e-10. (B,) from (B, ctx). One change: where the whole step
    has no non-zero observed value, a window without observations gets scale 1, not 1e-10.
    A stream's step holds windows of one moment (GluonTS's batches mix times), so steps of
    windows padded before their series' start and of zeros are common early in count data
    (Covid3Month: 81 % zeros), and log(1e-10) = -23 as an input set the network back (mean
    weighted quantile loss 0.731 -> 0.709 on Covid3Month's last window, seed 0)."""
    s, n = np.abs(vals * mask).sum(1), mask.sum(1)
    if default is None:
        default = s.sum() / n.sum() if s.sum() > 0 else 1.0
    return np.maximum(np.where(n > 0, s / np.maximum(n, 1.0), default), 1e-10)


def _sample_bound(vals: np.ndarray, mask: np.ndarray, scale: np.ndarray, growth: float) -> np.ndarray:
    """(B,) largest |value| a forecast may sample: ``growth`` times the context's largest
    observed |value| (at least its scale). The network feeds its samples back as lags, so
    a series whose far lags hold a level unlike its context's (Covid3Month's China:
    thousands a day 56 days back, ~100 in the context, scaled lags ~40) gets inputs outside
    anything it trained on, and a path that samples high feeds itself higher without end.
    ``growth`` = 0: no bound."""
    if growth <= 0:
        return np.full(len(vals), np.inf)
    top = np.abs(vals * mask).max(axis=1) if vals.shape[1] else np.zeros(len(vals))
    return growth * np.maximum(top, scale)


def _rnn_inputs(net, c, zs, positions, feats, dyn, static):
    """(B, T, input): lags of the scaled values ``zs`` at ``positions``, static, time, dynamic."""
    import torch

    lags = np.asarray(c["lags"])
    lagged = zs[:, torch.as_tensor(positions[:, None] - lags[None, :])]
    B, T = lagged.shape[:2]
    st = static[:, None, :].expand(B, T, static.shape[1])
    return torch.cat([lagged, st, feats, dyn], dim=-1)


def _dropout_masks(c: dict, seed: int, round_: int, keys: list[tuple[int, int]], dev, dtype):
    """(layers - 1, B, T, cells) dropout masks between the LSTM's layers, divided by the keep
    rate, each window's drawn from (seed, round, series hash, last period); None without
    dropout."""
    import torch

    p, layers = c["dropout_rate"], c["num_layers"]
    if p <= 0 or layers < 2:
        return None
    T = c["history"] + 1 - max(c["lags"])
    shape = (layers - 1, T, c["num_cells"])
    masks = np.stack([np.random.default_rng([seed, round_, h, o % 2 ** 63]).random(shape) >= p for h, o in keys], axis=1)
    return torch.as_tensor(masks, dtype=dtype, device=dev) / (1.0 - p)


def _contexts(c: dict, vals: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The context ranges (the ``context_length`` periods before the prediction range) of
    training windows' values and mask, what their mean scale is taken over."""
    lo = max(c["lags"]) - 1
    return vals[:, lo: lo + c["context_length"]], mask[:, lo: lo + c["context_length"]]


def window_loss(net, c: dict, freq: Freq, windows: list[tuple], dev, dropout_masks=None,
                default_scale: float | None = None):
    """Mean negative log-likelihood over the windows' context and prediction ranges
    (``dropout_masks``: per window, see ``_dropout_masks``; None: the LSTM draws them;
    ``default_scale``: of a window without an observed context, None: the batch's)."""
    import torch

    log_prob = _torch_net().log_prob

    vals = np.stack([w[0] for w in windows])
    mask = np.stack([w[1] for w in windows])
    dyn = np.stack([w[2] for w in windows])
    W = vals.shape[1]
    maxlag = max(c["lags"])
    scale = _mean_scale(*_contexts(c, vals, mask), default_scale)
    positions = np.arange(maxlag, W)
    feats = _features(c, freq, np.array([w[3] for w in windows]), np.array([w[4] for w in windows]), positions, W)
    dtype = next(net.parameters()).dtype  # the inputs' precision is the network's
    T = lambda a: torch.as_tensor(a, dtype=dtype, device=dev)  # noqa: E731
    sc = T(scale)
    cats = torch.as_tensor(np.stack([w[5] for w in windows]).reshape(len(windows), -1), device=dev)
    x = _rnn_inputs(net, c, T(vals) / sc[:, None], positions, T(feats), T(dyn[:, positions]), net.static(cats, sc))
    args, _ = net(x, dropout_masks=dropout_masks)
    lp = log_prob(c["likelihood"], args, T(vals[:, positions]), sc[:, None])
    return -(lp * T(mask[:, positions])).mean()


class DeepARModel(Model):
    """The network, its configuration and every series' stored context (forecasts need no
    training data). ``forecast`` gives JSON-able quantile forecasts of stored series;
    ``evaluate`` the sample paths after every point of a batch (history from the batch)."""

    algorithm = "deepar"

    def __init__(self, theta: np.ndarray, ctx: np.ndarray, attrs: dict[str, Any]):
        import torch

        self.theta = np.asarray(theta, dtype=np.float64)
        self.ctx = np.asarray(ctx, dtype=np.float64)
        self.attrs = attrs
        self.freq = Freq.parse(attrs["time_freq"])
        self.net = build_net(attrs, "cpu")
        torch.nn.utils.vector_to_parameters(torch.tensor(self.theta, dtype=torch.float32), self.net.parameters())
        self.net.eval()
        self._row = {s: i for i, s in enumerate(attrs["series"])}

    @property
    def series(self) -> list[str]:
        return list(self.attrs["series"])

    # -- sampling ------------------------------------------------------------------------
    def sample_paths(self, histories: list[History], horizon: int | None = None, num_samples: int | None = None,
                     seed: int | None = None, future_feat: np.ndarray | None = None) -> np.ndarray:
        """(B, S, horizon) sample paths after each history's last point."""
        import torch

        sample = _torch_net().sample

        c, freq = self.attrs, self.freq
        H = int(horizon or c["prediction_length"])
        S = int(num_samples or c["num_samples"])
        F = c["num_dynamic_feat"]
        B = len(histories)
        if B == 0:
            return np.zeros((0, S, H))
        if F and future_feat is None:
            raise ParamError("deepar: forecasts of a model with dynamic features need their future values")
        P, ctx, maxlag = c["past_length"], c["context_length"], max(c["lags"])
        vals = np.stack([h.vals[-P:] for h in histories])
        mask = np.stack([h.mask[-P:] for h in histories])
        dyn = np.stack([h.feat[-P:] for h in histories])
        last = np.array([h.last for h in histories])
        age = np.array([h.age for h in histories])
        cats = torch.as_tensor(np.stack([h.cats for h in histories]).reshape(B, -1))
        scale = _mean_scale(vals[:, -ctx:], mask[:, -ctx:])
        sc = torch.as_tensor(scale, dtype=torch.float32)
        bound = _sample_bound(vals[:, -ctx:], mask[:, -ctx:], scale, c.get("max_growth", 0.0))
        fut_dyn = np.zeros((B, H, F)) if future_feat is None else np.asarray(future_feat, dtype=np.float64).reshape(B, H, F)
        full_len = P + H
        feats = _features(c, freq, last + H, age + H, np.arange(maxlag, full_len), full_len)
        dyn_all = np.concatenate([dyn, fut_dyn], axis=1)
        T32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(c["seed"] if seed is None else seed))
            static = self.net.static(cats, sc)
            zs = torch.zeros((B, full_len))
            zs[:, :P] = T32(vals) / sc[:, None]
            warm = np.arange(maxlag, P + 1)  # context steps and the first future step's input
            x = _rnn_inputs(self.net, c, zs, warm, T32(feats[:, : len(warm)]), T32(dyn_all[:, warm]), static)
            args, state = self.net(x)
            rep = lambda a: a.repeat_interleave(S, dim=0)  # noqa: E731
            state = tuple(rep(s.transpose(0, 1)).transpose(0, 1).contiguous() for s in state)
            zs, sc_s, static_s, bound_s = rep(zs), rep(sc), rep(static), rep(T32(bound))
            feats_s, dyn_s = rep(T32(feats)), rep(T32(dyn_all))
            args = tuple(rep(a[:, -1:]) for a in args)
            out = torch.zeros((B * S, H))
            for k in range(H):
                y = sample(c["likelihood"], args, sc_s[:, None]).clamp(-bound_s[:, None], bound_s[:, None])
                out[:, k] = y[:, 0]
                zs[:, P + k] = y[:, 0] / sc_s
                if k + 1 < H:
                    pos = np.array([P + k + 1])
                    fi = len(warm) + k
                    x = _rnn_inputs(self.net, c, zs, pos, feats_s[:, fi:fi + 1], dyn_s[:, P + k + 1:P + k + 2], static_s)
                    args, state = self.net(x, state)
        return out.numpy().astype(np.float64).reshape(B, S, H)

    def _stored(self, name: str) -> History:
        if name not in self._row:
            raise ParamError(f"deepar: no series {name!r} in the model's context")
        return History.from_row(self.ctx[self._row[name]], self.attrs)

    def forecast(self, series: list[str] | None = None, horizon: int | None = None,
                 quantiles: tuple[float, ...] = (0.1, 0.5, 0.9), num_samples: int | None = None,
                 seed: int | None = None) -> list[dict[str, Any]]:
        """``{"series", "start", "mean", "quantiles": {"0.1": [...], ...}}`` per stored series,
        from the stored context only."""
        names = self.series if series is None else list(series)
        hists = [self._stored(s) for s in names]
        H = int(horizon or self.attrs["prediction_length"])
        paths = self.sample_paths(hists, H, num_samples, seed)
        qs = [float(q) for q in quantiles]
        out = []
        for s, h, p in zip(names, hists, paths):
            qv = np.quantile(p, qs, axis=0)
            out.append({"series": s, "start": ms_to_iso(int(self.freq.times_after(h.last, 1, h.last_ms)[0])),
                        "mean": p.mean(0).tolist(), "quantiles": {_qkey(q): v.tolist() for q, v in zip(qs, qv)}})
        return out

    # -- the Model contract --------------------------------------------------------------
    def histories_at_points(self, batch: SeriesBatch) -> list[History]:
        """Each point's series history up to and including it, built from the batch alone."""
        c = self.attrs
        ords = self.freq.ordinal(batch.time)
        out: list[History | None] = [None] * len(batch)
        for s, idx in batch.by_series().items():
            h = History(c["history"], c["num_dynamic_feat"], c["num_static_cat"])
            for j in idx.tolist():
                if h.last is None or ords[j] > h.last:
                    h.append(int(ords[j]), float(batch.target[j]), batch.feat[j], int(batch.time[j]), batch.cat[j])
                snap = History(0, 0, 0)
                snap.vals, snap.mask, snap.feat = h.vals, h.mask, h.feat
                snap.last, snap.age, snap.last_ms, snap.cats = h.last, h.age, h.last_ms, h.cats
                out[j] = snap
        return out

    def evaluate(self, batch: SeriesBatch) -> np.ndarray:
        """(n, samples, prediction_length) sample paths of the periods after each point."""
        return self.sample_paths(self.histories_at_points(batch))

    def predict_records(self, batch: SeriesBatch) -> list[dict[str, Any]]:
        paths = self.evaluate(batch)
        qs = (0.1, 0.5, 0.9)
        return [{"series": s, "prediction": p.mean(0).tolist(),
                 "quantiles": {_qkey(q): v.tolist() for q, v in zip(qs, np.quantile(p, qs, axis=0))}}
                for s, p in zip(batch.series.tolist(), paths)]

    def score(self, batch: SeriesBatch, metric: str | None = None) -> float:
        """Backtest on complete series: each series' last ``prediction_length`` points are
        forecast from the points before them. Metric: mean_wQuantileLoss (default), MASE
        (median over series), sMAPE, MSIS, RMSE; lower is better."""
        metric = metric or "mean_wQuantileLoss"
        if metric not in METRICS:
            raise ValueError(f"deepar: unknown metric {metric!r}; use one of {METRICS}")
        H = self.attrs["prediction_length"]
        past, future = [], []
        for s, idx in batch.by_series().items():
            if len(idx) > H:
                past.append(idx[:-H])
                future.append(batch.target[idx[-H:]])
        hist = self.histories_at_points(batch.take(np.concatenate(past)))
        ends = np.cumsum([len(p) for p in past]) - 1
        paths = self.sample_paths([hist[e] for e in ends])
        insample = [batch.target[p] for p in past]
        return fm.score(metric, np.stack(future), paths, insample, self.freq.seasonality)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"theta": self.theta.copy(), "ctx": self.ctx.copy()}, dict(self.attrs)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "DeepARModel":
        return cls(arrays["theta"], arrays["ctx"], attrs)


def _qkey(q: float) -> str:
    return format(q, "g")


register(DeepAR, DeepARModel)
