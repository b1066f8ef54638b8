"""Factorization machines (Rendle 2010) trained by mini-batch SGD or Adagrad.

    y_hat(x) = w0 + sum_j w_j x_j + 1/2 sum_f [ (sum_j v_jf x_j)^2 - sum_j v_jf^2 x_j^2 ]

State (parameters and accumulators ``step`` keys: concurrent workers' steps are averaged,
see ``statestore.buffered._KeyView.merge``; counters ``sum``): ``b`` =
[w0, its Adagrad accumulator]; ``wv`` (d, 2 (1 + k)) = per feature [w_j, v_j1 .. v_jk]
followed by their Adagrad accumulators (sgd: (d, 1 + k), no accumulators); ``n`` examples
seen; for regression ``y_n/y_sum/y_sq`` (label standardization). A feature's parameters
and accumulators share one row because an update gathers and scatters exactly the rows of
the columns its batch touched (``rows=``): one pull and one push of 18 floats a row cost
less than four of 1 to 8 (the random row accesses dominated a 2^20-feature step).
float32 when ``n_features >= BIG_FEATURES``; stored in ~1 MiB chunks (automatic) when a worker
holds ``wv`` whole (:data:`~streamlearn.statestore.buffered.PREFETCH_MAX_BYTES`), else in
``SPARSE_CHUNK_ROWS``-row chunks (see :meth:`FactorizationMachines._keyargs`); l2
regularization acts lazily on the touched rows. ``v`` starts as seeded N(0, init_sigma)
noise written at ``initialize``.
Dense input is accepted and treated as rows with every column present.

``aggregation="sync"``: synchronous data-parallel rounds (1 or N workers learn the same
model). An update step does not step: it adds its rows' loss gradient, taken at the round's
parameters, into ``g_wv`` (d, 1 + k + 1): per feature the weighted gradient sum and a count of
contributions, so the rows a round touched are known) and ``g_b`` ([gradient sum, weight
sum]); :meth:`close_round` turns the round's sums into one step on their weighted mean (L2
on the touched rows) and clears them, once per round (``round`` counts rounds; the runtime
applies it as a check-and-set, :mod:`streamlearn.runtime.rounds`). ``finalize`` includes a
round not yet closed. ``wv`` and ``g_wv`` are then row journals (``statestore.journal``): a
commit sends the ~12,000 rows a 1,000-row round of 2^20 hashed features touches, not the
chunks holding them (all of the 75 + 42 MB).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms import _metrics as metrics
from streamlearn.algorithms._common import (BACKEND_PARAMS, NUMPY_BACKEND, ColumnIndex, backend_of, check_backend,
                                            check_classes, coding_of, feature_count, model_coding, sigmoid,
                                            step_rows_of)
from streamlearn.algorithms.base import AUTO, Algorithm, Model, training_state
from streamlearn.algorithms.params import Interval, ListOf, Options, Param
from streamlearn.backends import kernels
from streamlearn.batch import Batch, SparseRows
from streamlearn.labels import LabelCoding
from streamlearn.statestore.base import State
from streamlearn.statestore.buffered import PREFETCH_MAX_BYTES, read_only

SPARSE_CHUNK_ROWS = 256
BIG_FEATURES = 1 << 16
#: the training-state key a snapshot keeps instead of ``wv`` (see ``kept_state``)
ACCUMULATORS = "wv_accumulators"
PREDICTOR_TYPES = ("binary_classifier", "regressor")
SCORE_METRICS = {"binary_classifier": ("accuracy", "log_loss", "auc"), "regressor": ("mse", "rmse", "mae", "r2")}


def _to_sparse(X) -> SparseRows:
    if isinstance(X, SparseRows):
        return X
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    return SparseRows(np.arange(0, n * d + 1, d, dtype=np.int64), np.tile(np.arange(d, dtype=np.int64), n),
                      X.ravel(), d)


class FactorizationMachines(Algorithm):
    name = "factorization_machines"
    accepts_sparse = True
    needs_label = True
    multi_pass = True
    #: the step of ``mini_batch_size="auto"`` when the data size is not known
    default_step_rows = 500
    #: a synchronous round: its counter, then the key every contribution writes (a check-and-set
    #: on their versions closes the round once, over every contribution it saw)
    round_keys = ("round", "g_b")
    round_state = ("wv", "b")
    param_spec = {
        "n_features": Param("features per record (the input width, e.g. 2**20 hashed); auto = inferred from "
                            "the topic at job create",
                            Interval(int, 1, None), Options("auto")),
        "predictor_type": Param("what is predicted: a 0/1 class or a value", Options(*PREDICTOR_TYPES)),
        "classes": Param("the user's label of each class, in class order (e.g. 1,2); auto = 0/1, or inferred "
                         "from the topic at job create", ListOf(int, float), Options("auto")),
        "mini_batch_size": Param("examples per update step; auto = sized from a bounded job's data at job create",
                                 Interval(int, 1, None), Options("auto")),
        "num_factors": Param("latent factors per feature (the rank of the pairwise interactions)",
                             Interval(int, 1, None)),
        "optimizer": Param("update rule", Options("adagrad", "sgd")),
        "learning_rate": Param("step size", Interval(float, 0, None, closed="neither")),
        "bias_l2": Param("L2 regularization of the global bias", Interval(float, 0, None)),
        "linear_l2": Param("L2 regularization of the linear weights (lazy, on touched rows)", Interval(float, 0, None)),
        "factors_l2": Param("L2 regularization of the factors (lazy, on touched rows)", Interval(float, 0, None)),
        "init_sigma": Param("standard deviation of the factors' random start", Interval(float, 0, None)),
        "seed": Param("seed of the factors' random start", Interval(int, 0, None)),
        "aggregation": Param("how workers' steps combine: async = each worker steps and commits on its own "
                             "(concurrent steps averaged); sync = synchronous rounds: the workers' gradients of "
                             "one mini_batch_size-row round, taken from the same parameters, make one step (the "
                             "same model from 1 or N workers when messages hold at most mini_batch_size / N "
                             "rows; workers wait for each other every round)", Options("async", "sync")),
        **BACKEND_PARAMS,
    }

    def __init__(self, n_features: int | str = AUTO, predictor_type: str = "binary_classifier",
                 classes: list[float] | str = AUTO, mini_batch_size: int | str = AUTO, num_factors: int = 8,
                 optimizer: str = "adagrad", learning_rate: float = 0.1, bias_l2: float = 0.0,
                 linear_l2: float = 1e-5, factors_l2: float = 1e-5, init_sigma: float = 0.05, seed: int = 0,
                 aggregation: str = "async", backend: str = "numpy", device: str = "cpu"):
        self.n_features = feature_count(n_features)
        self.predictor_type = predictor_type
        self.classes = classes
        self.mini_batch_size = mini_batch_size
        self.num_factors = num_factors
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.bias_l2 = bias_l2
        self.linear_l2 = linear_l2
        self.factors_l2 = factors_l2
        self.init_sigma = init_sigma
        self.seed = seed
        self.aggregation = aggregation
        self.backend = backend
        self.device = device
        self._columns = ColumnIndex()  # scratch for sparse batches, not a parameter

    def check_params(self) -> None:
        super().check_params()
        check_classes(self, {"binary_classifier": 2})
        check_backend(self)

    @property
    def step_rows(self) -> int:
        return step_rows_of(self)

    def label_coding(self) -> LabelCoding:
        """Binary: ``classes`` or 0/1 (``classes="auto"`` is inferred at job create); regressor:
        any finite number."""
        return coding_of(self.predictor_type, self.classes, 2)

    def _keyargs(self) -> dict:
        d = int(self.n_features)
        dtype = "float32" if d >= BIG_FEATURES else "float64"
        if self.synchronous:
            # a round commits the rows it changed as one patch (a row journal); its ~12,000 rows
            # of 2^20 touched every small chunk, and ~1 MiB chunks (automatic) are cheapest to fold
            return {"chunk_rows": 0, "dtype": dtype, "journal": True}
        # A key a worker holds whole is rewritten whole by any window of hashed rows (500 rows of
        # 40 features touch 99 % of a 2^20-row key's 256-row chunks), so ~1 MiB chunks
        # (automatic) cost no more bytes and halve a commit and a read (4,096 chunk replies and
        # writes of 18 KB were ~0.14 s of a 75 MB key, 72 of 1 MiB ~0.08 s). A larger key is
        # read row by row and rewritten chunk by chunk: small chunks keep a commit to the rows
        # its window touched.
        whole = d * (2 if self._adagrad() else 1) * self._width() * np.dtype(dtype).itemsize <= PREFETCH_MAX_BYTES
        return {"chunk_rows": 0 if whole else SPARSE_CHUNK_ROWS, "dtype": dtype}

    def _width(self) -> int:
        """Parameters per feature: w_j and v_j1 .. v_jk."""
        return 1 + int(self.num_factors)

    def _adagrad(self) -> bool:
        return self.optimizer == "adagrad"

    @property
    def synchronous(self) -> bool:
        """Whether updates only accumulate a round's gradient, stepped by :meth:`close_round`."""
        return self.aggregation == "sync"

    def initialize(self, state: State) -> None:
        d, m = int(self.n_features), self._width()
        rng = np.random.default_rng([int(self.seed), 0xF4])
        kw = self._keyargs()
        dt = np.dtype(kw["dtype"])
        # parameters and accumulators are "step" keys: concurrent workers' steps are averaged,
        # not added (statestore.buffered._KeyView.merge)
        state.initialize("b", np.zeros(2 if self._adagrad() else 1), aggregator="step")
        wv = np.zeros((d, 2 * m if self._adagrad() else m), dtype=dt)
        # drawn in the key's dtype (float64 normals for a 2^20 x 8 key were 0.1 s per job) and
        # scaled straight into place (a scaled temporary and its copy were 28 ms more)
        np.multiply(rng.standard_normal((d, m - 1), dtype=dt.type), dt.type(self.init_sigma), out=wv[:, 1:m])
        state.initialize("wv", wv, aggregator="step", **kw)
        state.initialize("n", 0.0)
        if self.synchronous:  # the open round's gradient sums (sum keys: contributions add up)
            state.initialize("g_wv", np.zeros((d, m + 1), dtype=dt), **kw)
            state.initialize("g_b", np.zeros(2))
            state.initialize("round", 0.0)
        if self.predictor_type == "regressor":
            for key in ("y_n", "y_sum", "y_sq"):
                state.initialize(key, 0.0)

    def update(self, state: State, batch: Batch) -> None:
        if len(batch) == 0:
            return
        X = _to_sparse(batch.X)
        y = self.label_coding().encode(batch.y)
        sw = batch.weights * np.isfinite(y)
        y = np.where(np.isfinite(y), y, 0.0)
        wsum = float(sw.sum())
        if wsum <= 0:
            return
        tau = float(state.pull("n"))
        m = self._width()
        rows, local = self._columns(X)
        b = state.pull("b").astype(np.float64)
        held = state.pull("wv", rows=rows).astype(np.float64)  # (r, m) parameters [+ (r, m) accumulators]
        if self.predictor_type == "regressor":
            state.push("y_n", wsum)
            state.push("y_sum", float(sw @ y))
            state.push("y_sq", float(sw @ (y * y)))
            mu, sd = _label_moments(state)
            t = (y - mu) / sd
        else:
            t = y
        l2 = np.full(m, float(self.factors_l2))
        l2[0] = float(self.linear_l2)
        # arithmetic on the backend (numpy: the arrays themselves); state and pushes stay numpy
        bk = backend_of(self)
        if self.synchronous:
            self._contribute(state, bk, X, rows, local, held, float(b[0]), t, sw, wsum)
            return
        if bk is NUMPY_BACKEND and kernels.compiled():
            lr = float(self.learning_rate)
            delta, g_b = kernels.fm_step(X.indptr, local, np.asarray(X.values, dtype=np.float64), held, m,
                                         float(b[0]), t, sw / wsum, self.predictor_type == "binary_classifier", l2,
                                         self._adagrad(), lr, lr / np.sqrt(1.0 + tau / 10_000.0))
        else:
            g, g_b = self._gradient_on(bk, X, local, held, float(b[0]), t, sw / wsum, l2)
            delta = self._delta(bk, g, held[:, m:], tau)
        g_b += float(self.bias_l2) * float(b[0])
        state.push("b", self._delta(NUMPY_BACKEND, np.array([[g_b]]), b[None, 1:], tau)[0])
        state.push("wv", delta, rows=rows)
        state.push("n", wsum)

    def _contribute(self, state: State, bk, X: SparseRows, rows: np.ndarray, local: np.ndarray, held: np.ndarray,
                    w0: float, t: np.ndarray, sw: np.ndarray, wsum: float) -> None:
        """A synchronous round's share: the loss gradient of this step's rows at the round's
        parameters, weighted by the rows' weight (L2 is the round's, added at its close),
        into the round's sums, and a contribution counted on every touched row."""
        m = self._width()
        no_l2 = np.zeros(m)
        if bk is NUMPY_BACKEND and kernels.compiled():  # SGD with a step of -1 returns the gradient itself
            g, g_b = kernels.fm_step(X.indptr, local, np.asarray(X.values, dtype=np.float64), held, m, w0, t,
                                     sw / wsum, self.predictor_type == "binary_classifier", no_l2, False, 0.0, -1.0)
        else:
            g, g_b = self._gradient_on(bk, X, local, held, w0, t, sw / wsum, no_l2)
            g = bk.to_numpy(g)
        out = np.empty((len(rows), m + 1))
        np.multiply(g, wsum, out=out[:, :m])
        out[:, m] = 1.0
        state.push("g_wv", out, rows=rows)
        state.push("g_b", np.array([g_b * wsum, wsum]))
        state.push("n", wsum)

    def close_round(self, state: State) -> bool:
        """Step the parameters once on the open round's mean gradient, clear its sums and
        count the round (``round`` + 1, also for an empty round); False when no rows were
        contributed. Applied once per round by the runtime's check-and-set commit."""
        state.push("round", 1.0)
        step = self._round_step(state)
        if step is None:
            return False
        rows, delta, sums, b_delta, b_sums = step
        state.push("wv", delta, rows=rows)
        state.push("b", b_delta)
        state.push("g_wv", -sums, rows=rows)
        state.push("g_b", -b_sums)
        return True

    def _round_step(self, state: State) -> tuple | None:
        """The open round's step: (touched rows, their [parameters, accumulators] delta, the
        round's sums on them, the bias delta, the bias sums), or None for an empty round. The
        same Adagrad (or SGD) rule as an async step, on the weighted mean gradient of every
        contribution plus L2 on the touched rows."""
        b_sums = np.array(state.pull("g_b"), dtype=np.float64)
        weight = float(b_sums[1])
        if weight <= 0:
            return None
        m = self._width()
        whole = state.pull("g_wv")
        rows = np.flatnonzero(whole[:, m])
        sums = whole[rows].astype(np.float64)
        held = state.pull("wv", rows=rows).astype(np.float64)
        b = state.pull("b").astype(np.float64)
        tau = float(state.pull("n")) - weight  # examples seen before the round (SGD's decay)
        l2 = np.full(m, float(self.factors_l2))
        l2[0] = float(self.linear_l2)
        delta = self._delta(NUMPY_BACKEND, sums[:, :m] / weight + l2 * held[:, :m], held[:, m:], tau)
        g_b = b_sums[0] / weight + float(self.bias_l2) * float(b[0])
        b_delta = self._delta(NUMPY_BACKEND, np.array([[g_b]]), b[None, 1:], tau)[0]
        return rows, delta, sums, b_delta, b_sums

    def _gradient_on(self, bk, X: SparseRows, local: np.ndarray, held: np.ndarray, w0: float, t: np.ndarray,
                     weight: np.ndarray, l2: np.ndarray) -> tuple:
        """(gradient of the mean loss + L2 on the touched rows, on the backend; d mean-loss /
        d w0): what :func:`kernels.fm_step` computes in one compiled pass."""
        m = self._width()
        xp, dev = bk.xp, bk.asarray
        A = bk.csr(X.indptr, local, X.values, len(held))
        P = dev(held[:, :m])
        vals = A.data
        vals2 = vals * vals
        xv = P[A.cols] * vals[:, None]  # (nnz, 1 + k): x_j [w_j, v_j]
        vn = (P[:, 1:] * P[:, 1:]).sum(1)  # |v_j|^2 per touched column
        z, S = _forward_on(bk, A, w0, xv, vn[A.cols] * vals2)
        r = (sigmoid(z, xp) - dev(t)) if self.predictor_type == "binary_classifier" else (z - dev(t))
        r = r * dev(weight)  # d mean-loss / d z
        # d z / d w_j = x_j; d z / d v_jf = x_j s_f - v_jf x_j^2: the x_j s_f part sums per
        # column the rows' [r, r s] times x_j (one pass over the stored values), the
        # v_jf x_j^2 part is v_jf times a per-column scalar sum of r x_j^2
        T = S * r[:, None]
        T[:, 0] = r
        g = bk.group_sum(A, T[A.rows] * vals[:, None])
        g[:, 1:] -= P[:, 1:] * bk.group_sum(A, r[A.rows] * vals2)[:, None]
        g += dev(l2) * P
        return g, float(bk.to_numpy(r.sum()))

    def _delta(self, bk, g, acc: np.ndarray, tau: float) -> np.ndarray:
        """The host delta of a [parameters, accumulators] block for gradient ``g``: Adagrad
        (``acc`` the accumulators as held; the delta's second half adds g^2 to them) or SGD
        with a decaying step."""
        lr = float(self.learning_rate)
        if not self._adagrad():
            return bk.to_numpy(-lr / np.sqrt(1.0 + tau / 10_000.0) * g)
        g2 = g * g
        step = -lr * g / (bk.xp.sqrt(bk.asarray(acc) + g2) + 1e-8)
        m = acc.shape[1]
        out = np.empty((len(acc), 2 * m))
        out[:, :m] = bk.to_numpy(step)
        out[:, m:] = bk.to_numpy(g2)
        return out

    def kept_state(self, state: State, model: Model) -> dict[str, np.ndarray]:
        """The training state without ``wv``'s parameter columns, which are the model's ``w``
        and ``v`` (a 2^20-feature snapshot stores 38 MB of accumulators beside the 38 MB model,
        not 75 MB); :meth:`initialize_from` puts them back. Sync keeps ``wv`` whole: its model
        has the open round applied, its ``wv`` not."""
        kept = training_state(state)
        if self.synchronous:
            return kept
        wv = kept.pop("wv")
        if wv.shape[1] > self._width():
            kept[ACCUMULATORS] = wv[:, self._width():]
        return kept

    def initialize_from(self, state: State, model: Model,
                        training_state: dict[str, np.ndarray] | None = None) -> None:
        super().initialize_from(state, model, self._with_parameters(model, training_state))

    def check_continuable(self, model: Model, training_state: dict[str, np.ndarray] | None) -> None:
        super().check_continuable(model, self._with_parameters(model, training_state))

    @staticmethod
    def _with_parameters(model: Model, training_state: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
        """``training_state`` with ``wv`` rebuilt from ``model``'s ``w`` and ``v`` (and the
        accumulators kept) where :meth:`kept_state` left it out."""
        if not training_state or "wv" in training_state or not isinstance(model, FMModel):
            return training_state
        columns = [np.asarray(model.w)[:, None], np.asarray(model.v)]
        if ACCUMULATORS in training_state:
            columns.append(np.asarray(training_state[ACCUMULATORS]))
        rest = {k: v for k, v in training_state.items() if k != ACCUMULATORS}
        return {**rest, "wv": np.concatenate(columns, axis=1)}

    def finalize(self, state: State) -> "FMModel":
        mu, sd = _label_moments(state) if self.predictor_type == "regressor" else (0.0, 1.0)
        attrs = {"predictor_type": self.predictor_type, "n_features": int(self.n_features),
                 "num_factors": int(self.num_factors), "classes": self.label_coding().to_json(), "label_mean": mu, "label_std": sd,
                 "examples_seen": float(state.pull("n"))}
        m = self._width()
        wv = state.pull("wv")  # copies of the columns: the model need not keep the accumulators alive
        w0 = float(state.pull("b")[0])
        step = self._round_step(state) if self.synchronous else None
        if step is not None:  # a round not closed yet (the last, partial one): as its close would apply it
            rows, delta, _, b_delta, _ = step
            wv = wv[:, :m].copy()
            wv[rows] = wv[rows] + delta[:, :m]  # added in float64, stored in the key's dtype, as a commit does
            w0 += float(b_delta[0])
        return FMModel(w0, wv[:, 0].copy(), wv[:, 1:m].copy(), attrs)


def _forward_on(bk, A, w0: float, xv, xv2):
    """The FM's z for the rows of ``A`` (a batch prepared by ``bk.csr``): ``xv`` its stored
    values times the [w, v] rows of their columns, ``xv2`` per stored value x_j^2 |v_j|^2.
    Returns (z, X [w, v]). Uses sum_j (x_j v_jf)^2 summed over f = sum_j x_j^2 |v_j|^2: a
    scalar per stored value instead of a second (nnz, k) product and row sum."""
    S = bk.row_sum(A, xv)
    s = S[:, 1:]
    z = w0 + S[:, 0] + 0.5 * ((s * s).sum(1) - bk.row_sum(A, xv2))
    return z, S


def _label_moments(state: State) -> tuple[float, float]:
    n = max(float(state.pull("y_n")), 1.0)
    mu = float(state.pull("y_sum")) / n
    var = max(float(state.pull("y_sq")) / n - mu * mu, 0.0)
    return mu, (float(np.sqrt(var)) if var > 1e-12 else 1.0)


def _params(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


class FMModel(Model):
    algorithm = "factorization_machines"

    def __init__(self, w0: float, w: np.ndarray, v: np.ndarray, attrs: dict[str, Any]):
        self.w0 = float(w0)
        # float32 stays float32 (the state of a >= 2^16-feature model is float32): a 2^20 x 8
        # model is 38 MB instead of 75 MB, within what the snapshot topic carries (64 MiB)
        self.w = _params(w)
        self.v = _params(v)
        self.attrs = attrs

    def decision_function(self, batch: Batch) -> np.ndarray:
        X = _to_sparse(batch.X)
        A = NUMPY_BACKEND.csr(X.indptr, X.indices, X.values, len(self.w))
        xv = np.empty((len(A.cols), 1 + self.v.shape[1]))
        xv[:, 0] = self.w[A.cols]
        xv[:, 1:] = self.v[A.cols]
        xv *= A.data[:, None]
        z, _ = _forward_on(NUMPY_BACKEND, A, self.w0, xv, (xv[:, 1:] ** 2).sum(1))
        if self.attrs["predictor_type"] == "regressor":
            return z * self.attrs["label_std"] + self.attrs["label_mean"]
        return z

    def evaluate(self, batch: Batch) -> np.ndarray:
        """Predicted class in the user's label coding (classifier) or value (regressor) per example."""
        z = self.decision_function(batch)
        return model_coding(self.attrs).decode(z > 0) if self.attrs["predictor_type"] == "binary_classifier" else z

    def metric_names(self) -> tuple[str, ...]:
        return SCORE_METRICS[self.attrs["predictor_type"]]

    def score(self, batch: Batch, metric: str | None = None) -> float:
        pt = self.attrs["predictor_type"]
        metric = metrics.check_metric(self.algorithm, metric or SCORE_METRICS[pt][0 if pt == "regressor" else 1],
                                      SCORE_METRICS[pt])
        z = self.decision_function(batch)
        if metric in ("log_loss", "auc"):
            y = model_coding(self.attrs).encode(batch.y)
            return metrics.log_loss(y, sigmoid(z), batch.w) if metric == "log_loss" else metrics.auc(y, z, batch.w)
        return getattr(metrics, metric)(batch.y, self.evaluate(batch), batch.w)

    def predict_records(self, batch: Batch) -> list[dict[str, Any]]:
        z = self.decision_function(batch)
        if self.attrs["predictor_type"] == "binary_classifier":
            pred = model_coding(self.attrs).decode(z > 0).tolist()
            return [{"prediction": a, "score": float(p)} for a, p in zip(pred, sigmoid(z).tolist())]
        return [{"prediction": float(v)} for v in z.tolist()]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # read-only views: a finalize asks for them up to three times (gate, size, snapshot), and
        # copies of a 2^20-feature model's 38 MB were 0.1 s of it
        return {"w0": np.array([self.w0]), "w": read_only(self.w), "v": read_only(self.v)}, dict(self.attrs)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "FMModel":
        return cls(float(np.asarray(arrays["w0"]).ravel()[0]), np.array(arrays["w"]), np.array(arrays["v"]),
                   dict(attrs))


register(FactorizationMachines, FMModel)
