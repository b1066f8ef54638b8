"""Linear learner with model packing (the paper's Section 3 and "Expressive State").

``num_models`` linear models with different learning rates and l1/l2 strengths are
trained at once, as columns of one weight matrix ``w`` (n_features x num_models*C, C = 1
or num_classes), one pass, mini-batch Adagrad (or plain SGD). A holdout slice chosen
from each record's content (a vectorized hash, never trained on, the same on every run
and resume) accumulates every packed model's validation loss and metric; finalize keeps
the best one and records every model's score in the model's attrs.

State keys (all ``sum``-aggregated: every push is a delta, so concurrent workers' pushes
add up exactly, as in asynchronous SGD):

====================  ===========================  ======================================
key                   shape                        meaning
====================  ===========================  ======================================
``w``, ``b``          (d, M*C), (M*C,)             weights, in normalized feature space
``g2_w``, ``g2_b``    like ``w``, ``b``            Adagrad sums of squared gradients
``u_w``, ``u_b``      like ``w``, ``b``            averaging: sum of tau * step (see below)
``n``                 ()                           training examples (weighted) seen
``feat_n/sum/sq``     (), (d,), (d,)               dense inputs: streaming mean/variance
``y_n/sum/sq``        ()                           regressor: label mean/variance
``val``               (3, M)                       holdout: [weight, metric a, metric b] sums
====================  ===========================  ======================================

Sparse input (``SparseRows``, e.g. 2**20 hashed features): only the rows of the columns a
batch touched are pulled and pushed (``rows=``); the per-feature keys are declared with
``chunk_rows = SPARSE_CHUNK_ROWS`` and, when ``n_features >= BIG_FEATURES``, float32.
Sparse features are not centered or scaled (that would densify them; Adagrad's per-
coordinate step already adapts to feature scale); l2/l1 act lazily on touched rows.

Averaged SGD without a dense push ("polynomial-decay" averaging: iterate weights grow with
the examples seen, so early, poor iterates fade): with ``tau`` = examples seen before a
step and ``delta`` the step, ``sum_s a_s w_s / sum_s a_s`` with ``a(tau) = tau`` is
``w_avg = w - u / (n**2 / 2)`` where ``u = sum(tau**2 / 2 * delta)`` — a sum of deltas,
pushed row-sparsely.

Normalization is estimated on the fly (sum of x and x**2 over training rows) and the
weights live in the normalized space; finalize folds mean and scale back into raw-space
weights, so the model needs no separate preprocessing step.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms import _metrics as metrics
from streamlearn.algorithms._common import (BACKEND_PARAMS, NUMPY_BACKEND, ColumnIndex, as_pair, backend_of, check_backend,
                                            check_classes, coding_of, feature_count, holdout_mask, model_coding,
                                            sigmoid, softmax, step_rows_of)
from streamlearn.algorithms.base import AUTO, Algorithm, Model, require
from streamlearn.algorithms.params import Interval, ListOf, Options, Param, Span
from streamlearn.backends import kernels
from streamlearn.batch import Batch, SparseRows
from streamlearn.labels import LabelCoding
from streamlearn.statestore.base import State

SPARSE_CHUNK_ROWS = 256
BIG_FEATURES = 1 << 16

PREDICTOR_TYPES = ("binary_classifier", "multiclass_classifier", "regressor")
LOSSES = {"binary_classifier": ("logistic", "hinge"), "multiclass_classifier": ("softmax",),
          "regressor": ("squared", "absolute")}
#: the two validation metrics accumulated per predictor type (rows 1 and 2 of ``val``)
VAL_METRICS = {"binary_classifier": ("log_loss", "accuracy"), "multiclass_classifier": ("log_loss", "accuracy"),
               "regressor": ("mse", "mae")}
SCORE_METRICS = {"binary_classifier": ("accuracy", "log_loss", "auc", "hinge"),
                 "multiclass_classifier": ("accuracy", "log_loss"),
                 "regressor": ("mse", "rmse", "mae", "r2")}


class LinearLearner(Algorithm):
    name = "linear_learner"
    accepts_sparse = True
    needs_label = True
    multi_pass = True
    #: SageMaker's default mini_batch_size, the step of ``mini_batch_size="auto"`` when the
    #: data size is not known (job create sizes steps of bounded jobs from the data:
    #: streamlearn.runtime.contract.default_step_rows). A dense 100-feature, 32-model step is
    #: mostly per-call overhead at 500 rows (fit_local 0.67 -> 0.77 M rows/s at 1,000, same
    #: accuracy 0.7721 on the benchmark set); larger steps were slower (BLAS threads).
    default_step_rows = 1_000
    param_spec = {
        "n_features": Param("features per record (the input width); auto = inferred from the topic at job create",
                            Interval(int, 1, None), Options("auto")),
        "predictor_type": Param("what is predicted: a 0/1 class, one of num_classes classes, or a value",
                                Options(*PREDICTOR_TYPES)),
        "num_classes": Param("classes of a multiclass_classifier (labels 0 .. num_classes - 1 unless classes maps "
                             "them); auto = inferred from the topic at job create", Interval(int, 2, None),
                             Options("auto")),
        "classes": Param("the user's label of each class, in class order (e.g. 1,2 or 1,2,...,10); auto = "
                         "0 .. num_classes - 1, or inferred from the topic at job create", ListOf(int, float),
                         Options("auto")),
        "mini_batch_size": Param("examples per update step; auto = sized from a bounded job's data at job create",
                                 Interval(int, 1, None), Options("auto")),
        "loss": Param("training loss; auto = logistic, softmax or squared by predictor_type",
                      Options("auto", *sorted({loss for losses in LOSSES.values() for loss in losses}))),
        "num_models": Param("models trained at once in one pass (model packing); the holdout picks the best",
                            Interval(int, 1, 1024)),
        "learning_rate": Param("step size; a range spreads the packed models over it (log-uniform)",
                               Span(Interval(float, 0, None, closed="neither"))),
        "l1": Param("L1 regularization; a range spreads the packed models over it", Span(Interval(float, 0, None))),
        "l2": Param("L2 regularization; a range spreads the packed models over it", Span(Interval(float, 0, None))),
        "pack": Param("how the packed models' hyperparameters are chosen: random draws or a grid",
                      Options("random", "grid")),
        "optimizer": Param("update rule", Options("adagrad", "sgd")),
        "averaging": Param("average the iterates (polynomial decay) for the final weights", bool),
        "normalize": Param("standardize dense features on the fly (folded into the weights at finalize)", bool),
        "holdout_fraction": Param("share of records (chosen by content hash) held out to pick the best model",
                                  Interval(float, 0, 1, closed="left")),
        "validation_metric": Param("holdout metric that picks the best model; auto = by the loss",
                                   Options("auto", *sorted({m for ms in VAL_METRICS.values() for m in ms}))),
        "seed": Param("seed of the packed models' hyperparameter draws", Interval(int, 0, None)),
        **BACKEND_PARAMS,
    }

    def __init__(self, n_features: int | str = AUTO, predictor_type: str = "binary_classifier",
                 num_classes: int | str = AUTO, classes: list[float] | str = AUTO, mini_batch_size: int | str = AUTO,
                 loss: str = "auto", num_models: int = 32,
                 learning_rate: float | tuple[float, float] = (0.02, 2.0),
                 l1: float | tuple[float, float] = (0.0, 0.0), l2: float | tuple[float, float] = (0.0, 1e-3),
                 pack: str = "random",
                 optimizer: str = "adagrad", averaging: bool = True, normalize: bool = True,
                 holdout_fraction: float = 0.05, validation_metric: str = "auto", seed: int = 0,
                 backend: str = "numpy", device: str = "cpu"):
        self.n_features = feature_count(n_features)
        self.predictor_type = predictor_type
        self.num_classes = num_classes
        self.classes = classes
        self.mini_batch_size = mini_batch_size
        self.loss = loss
        self.num_models = num_models
        self.learning_rate = learning_rate
        self.l1 = l1
        self.l2 = l2
        self.pack = pack
        self.optimizer = optimizer
        self.averaging = averaging
        self.normalize = normalize
        self.holdout_fraction = holdout_fraction
        self.validation_metric = validation_metric
        self.seed = seed
        self.backend = backend
        self.device = device
        self._columns = ColumnIndex()  # scratch for sparse batches, not a parameter

    # -- parameters -----------------------------------------------------------------------
    def check_params(self) -> None:
        n = self.name
        super().check_params()
        check_classes(self, {"binary_classifier": 2, "multiclass_classifier": self.num_classes})
        require(self.loss == "auto" or self.loss in LOSSES[self.predictor_type], n,
                f"loss {self.loss!r} does not fit predictor_type {self.predictor_type!r}; use 'auto' or one of "
                f"{LOSSES[self.predictor_type]}")
        require(self.validation_metric == "auto" or self.validation_metric in VAL_METRICS[self.predictor_type],
                n, f"validation_metric must be 'auto' or one of {VAL_METRICS[self.predictor_type]}")
        check_backend(self)

    # -- derived settings --------------------------------------------------------------------
    @property
    def step_rows(self) -> int:
        return step_rows_of(self)

    def unresolved(self) -> list[str]:
        multiclass_unsized = (self.predictor_type == "multiclass_classifier" and self.num_classes == AUTO
                              and self.classes == AUTO)
        return super().unresolved() + (["num_classes"] if multiclass_unsized else [])

    def label_coding(self) -> LabelCoding:
        """Binary: ``classes`` or 0/1; multiclass: ``classes`` or 0..num_classes-1; regressor:
        any finite number. (``classes="auto"`` is inferred at job create; in-process it is the
        identity coding.)"""
        cache = self.__dict__.get("_coding_cache")
        sig = (self.predictor_type, repr(self.classes), self.num_classes)
        if cache is None or cache[0] != sig:
            cache = (sig, coding_of(self.predictor_type, self.classes, self.num_classes))
            self.__dict__["_coding_cache"] = cache
        return cache[1]

    @property
    def _d(self) -> int:
        return int(self.n_features)

    @property
    def _C(self) -> int:
        return len(self.label_coding().classes) if self.predictor_type == "multiclass_classifier" else 1

    @property
    def _loss(self) -> str:
        if self.loss != "auto":
            return self.loss
        return {"binary_classifier": "logistic", "multiclass_classifier": "softmax", "regressor": "squared"}[
            self.predictor_type]

    @property
    def _metric(self) -> str:
        if self.validation_metric != "auto":
            return self.validation_metric
        return {"logistic": "log_loss", "softmax": "log_loss", "hinge": "accuracy", "squared": "mse",
                "absolute": "mae"}[self._loss]

    def hyperparameters(self) -> dict[str, np.ndarray]:
        """Per packed model: learning rate, l1, l2 (seeded; the same for every worker)."""
        M = int(self.num_models)
        rng = np.random.default_rng([int(self.seed), 0x11])
        lr_lo, lr_hi = as_pair(self.learning_rate, "learning_rate")
        out = {}
        if self.pack == "grid":
            regs = [_levels(*as_pair(self.l1, "l1")), _levels(*as_pair(self.l2, "l2"))]
            n_lr = max(1, -(-M // (len(regs[0]) * len(regs[1]))))
            lrs = np.geomspace(lr_lo, lr_hi, n_lr) if n_lr > 1 else np.array([np.sqrt(lr_lo * lr_hi)])
            grid = np.array(np.meshgrid(lrs, regs[0], regs[1], indexing="ij")).reshape(3, -1)[:, :M]
            if grid.shape[1] < M:
                grid = np.concatenate([grid] * (-(-M // grid.shape[1])), axis=1)[:, :M]
            out = {"learning_rate": grid[0], "l1": grid[1], "l2": grid[2]}
        else:
            lr = np.exp(rng.uniform(np.log(lr_lo), np.log(lr_hi), M))
            out = {"learning_rate": lr, "l1": _draw(rng, *as_pair(self.l1, "l1"), M),
                   "l2": _draw(rng, *as_pair(self.l2, "l2"), M)}
            # model 0 is always the "plain" one: mid learning rate, lowest regularization
            out["learning_rate"][0] = np.sqrt(lr_lo * lr_hi)
            out["l1"][0] = as_pair(self.l1, "l1")[0]
            out["l2"][0] = as_pair(self.l2, "l2")[0]
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}

    def _sparse_keys(self) -> tuple[int, str]:
        big = self._d >= BIG_FEATURES
        return SPARSE_CHUNK_ROWS, ("float32" if big else "float64")

    # -- the three functions ------------------------------------------------------------------
    def initialize(self, state: State) -> None:
        d, MC, M = self._d, int(self.num_models) * self._C, int(self.num_models)
        chunk, dtype = self._sparse_keys()
        # the weights and their optimizer state are "step" keys: concurrent workers' steps are
        # averaged, not added (statestore.buffered._KeyView.merge); counts and sums stay "sum"
        for key in ("w", "g2_w") + (("u_w",) if self.averaging else ()):
            state.initialize(key, np.zeros((d, MC)), aggregator="step", dtype=dtype, chunk_rows=chunk)
        for key in ("b", "g2_b") + (("u_b",) if self.averaging else ()):
            state.initialize(key, np.zeros(MC), aggregator="step")
        state.initialize("n", 0.0)
        if self.normalize:
            state.initialize("feat_n", 0.0)
            state.initialize("feat_sum", np.zeros(d), dtype=dtype, chunk_rows=chunk)
            state.initialize("feat_sq", np.zeros(d), dtype=dtype, chunk_rows=chunk)
        if self.predictor_type == "regressor":
            for key in ("y_n", "y_sum", "y_sq"):
                state.initialize(key, 0.0)
        state.initialize("val", np.zeros((3, M)))

    def update(self, state: State, batch: Batch) -> None:
        n_rows = len(batch)
        if n_rows == 0:
            return
        hp = self._hp()
        C, M = self._C, int(self.num_models)
        y = self.label_coding().encode(batch.y)
        sw = batch.weights * np.isfinite(y)
        y = np.where(np.isfinite(y), y, 0.0)
        hold = holdout_mask(batch, float(self.holdout_fraction), salt=int(self.seed))
        tr_w = np.where(hold, 0.0, sw)
        ho_w = np.where(hold, sw, 0.0)
        sparse = isinstance(batch.X, SparseRows)
        tau = float(state.pull("n"))
        # the arithmetic runs on the backend (numpy: these are the numpy arrays themselves);
        # pulls, pushes, holdout choice and validation metrics stay numpy on the host
        bk = backend_of(self)
        xp, dev = bk.xp, bk.asarray
        # a sparse batch's products as compiled loops over the stored values (the numpy
        # path's reduceat/bincount over nnz x M*C temporaries bound the step)
        compiled = sparse and bk is NUMPY_BACKEND and kernels.compiled()

        # --- features in normalized space; pull only what the batch touches
        if sparse:
            X: SparseRows = batch.X
            rows, local = self._columns(X)
            A = bk.csr(X.indptr, local, X.values, len(rows))
            W = dev(state.pull("w", rows=rows).astype(np.float64))
        else:
            A = None
            X = dev(np.asarray(batch.X, dtype=np.float64))
            rows = None
            W = dev(state.pull("w").astype(np.float64))
            if self.normalize:
                trw = dev(tr_w)
                state.push("feat_n", float(tr_w.sum()))
                state.push("feat_sum", bk.to_numpy(trw @ X))
                state.push("feat_sq", bk.to_numpy(trw @ (X * X)))
                mean, inv_std = _moments(state.pull("feat_n"), state.pull("feat_sum"), state.pull("feat_sq"))
                X = (X - dev(mean)) * dev(inv_std)
        b = dev(state.pull("b"))
        if self.predictor_type == "regressor":
            state.push("y_n", float(tr_w.sum()))
            state.push("y_sum", float(tr_w @ y))
            state.push("y_sq", float(tr_w @ (y * y)))
            y_mu, y_sd = _label_moments(state)
            t = (y - y_mu) / y_sd
        else:
            y_mu, y_sd, t = 0.0, 1.0, y

        def matmul(Wm):
            if compiled:
                return kernels.csr_matmul(A.indptr, A.cols, A.data, Wm, np.arange(n_rows), n_rows, False)
            return (bk.spmm(A, Wm) if sparse else X @ Wm)

        # --- holdout: every packed model's loss, with the weights the model would ship
        if ho_w.any():
            h = ho_w > 0
            if self.averaging and tau > 0:
                Asq = tau * tau / 2.0
                Wa = W - dev(state.pull("u_w", rows=rows) if sparse else state.pull("u_w")) / Asq
                ba = b - dev(state.pull("u_b")) / Asq
            else:
                Wa, ba = W, b
            # dense: only the holdout rows (5 % by default) go through the product
            if compiled:  # the holdout rows only
                Zh = kernels.csr_matmul(A.indptr, A.cols, A.data, Wa, np.flatnonzero(h), int(h.sum()), False) + ba
            else:
                Zh = bk.to_numpy(bk.take(matmul(Wa), h) + ba if sparse else bk.take(X, h) @ Wa + ba)
            a, c = self._val_metrics(Zh, y[h], t[h], y_mu, y_sd)
            wv = ho_w[h] * (tau + 1.0)  # later evaluations weigh more: they describe the final model better
            state.push("val", np.stack([np.full(M, wv.sum()), wv @ a, wv @ c]))

        wsum = float(tr_w.sum())
        if wsum <= 0:
            return
        # --- gradient of the mean training loss for every packed model at once
        Z = matmul(W) + b
        R = self._dloss(Z, dev(y), dev(t), y, xp, bk) * dev(tr_w / wsum)[:, None]  # (n, M*C)
        if compiled:
            gW = kernels.csr_matmul(A.indptr, A.cols, A.data, R, np.arange(n_rows), A.n_cols, True)
        elif sparse:
            gW = bk.group_sum(A, A.data[:, None] * R[A.rows])
        else:
            gW = X.T @ R
        gb = R.sum(0)
        l1c, l2c, lrc = (np.repeat(hp[k], C) for k in ("l1", "l2", "learning_rate"))
        gW += dev(l2c) * W
        self._step(state, bk, "w", W, gW, lrc, l1c, tau, rows)
        self._step(state, bk, "b", b, gb, lrc, 0.0 * l1c, tau, None)
        state.push("n", wsum)

    def _step(self, state: State, bk, key: str, P, g, lr, l1, tau: float, rows) -> None:
        xp, dev = bk.xp, bk.asarray
        if self.optimizer == "adagrad":
            held = state.pull("g2_" + key, rows=rows) if rows is not None else state.pull("g2_" + key)
            if bk is NUMPY_BACKEND and kernels.compiled():
                delta, g2 = (a.reshape(P.shape) for a in kernels.adagrad_step(
                    np.atleast_2d(P), np.atleast_2d(g), np.atleast_2d(held), lr, l1))
                state.push("g2_" + key, g2, rows=rows)
                self._push_step(state, key, delta, tau, rows)
                return
            g2 = g * g
            G = dev(held) + g2
            scale = dev(lr) / (xp.sqrt(G) + 1e-8)
            state.push("g2_" + key, bk.to_numpy(g2), rows=rows)
        else:
            scale = dev(lr / np.sqrt(1.0 + tau / 10_000.0)) * xp.ones_like(P)
        new = P - scale * g
        if np.any(l1 > 0):
            thr = scale * dev(l1)
            new = xp.sign(new) * xp.maximum(xp.abs(new) - thr, 0.0)
        self._push_step(state, key, bk.to_numpy(new - P), tau, rows)

    def _push_step(self, state: State, key: str, delta: np.ndarray, tau: float, rows) -> None:
        state.push(key, delta, rows=rows)
        if self.averaging:
            state.push("u_" + key, (tau * tau / 2.0) * delta, rows=rows)

    def _hp(self) -> dict[str, np.ndarray]:
        cache = self.__dict__.get("_hp_cache")
        sig = (self.num_models, repr(self.learning_rate), repr(self.l1), repr(self.l2), self.pack, self.seed)
        if cache is None or cache[0] != sig:
            cache = (sig, self.hyperparameters())
            self.__dict__["_hp_cache"] = cache
        return cache[1]

    # -- losses ---------------------------------------------------------------------------
    def _dloss(self, Z, y, t, y_host: np.ndarray, xp=np, bk=None):
        """d loss / d Z on the backend (``y``, ``t`` backend arrays, ``y_host`` the labels)."""
        loss = self._loss
        if loss == "logistic":
            return sigmoid(Z, xp) - y[:, None]
        if loss == "hinge":
            s = 2.0 * y[:, None] - 1.0
            return xp.where(s * Z < 1.0, -s, 0.0)
        if loss == "softmax":
            n, C = len(y_host), self._C
            P = softmax(Z.reshape(n, -1, C), xp=xp)
            onehot = np.eye(C)[y_host.astype(np.int64)]  # P - onehot == P[i, :, y_i] -= 1, exactly
            P = P - (onehot if bk is None else bk.asarray(onehot))[:, None, :]
            return P.reshape(n, -1)
        if loss == "squared":
            return Z - t[:, None]
        return xp.sign(Z - t[:, None])  # absolute

    def _val_metrics(self, Z, y, t, y_mu, y_sd) -> tuple[np.ndarray, np.ndarray]:
        """Per-example values of the two validation metrics, (n, M) each."""
        if self.predictor_type == "binary_classifier":
            p = np.clip(sigmoid(Z), 1e-15, 1 - 1e-15)
            ll = -(y[:, None] * np.log(p) + (1 - y[:, None]) * np.log(1 - p))
            return ll, ((Z > 0) == (y[:, None] > 0.5)).astype(np.float64)
        if self.predictor_type == "multiclass_classifier":
            n, C = len(y), self._C
            Z3 = Z.reshape(n, -1, C)
            P = softmax(Z3)
            yi = y.astype(np.int64)
            ll = -np.log(np.clip(P[np.arange(n), :, yi], 1e-15, 1.0))
            return ll, (Z3.argmax(axis=2) == yi[:, None]).astype(np.float64)
        err = (Z * y_sd + y_mu) - y[:, None]
        return err * err, np.abs(err)

    # -- finalize -------------------------------------------------------------------------
    def _holdout(self, val: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """(which packed models have holdout weight, each validation metric per model, the
        model the metric picks) from the ``val`` sums."""
        metric, have = self._metric, val[0] > 0
        scores = {nm: (val[i + 1] / np.where(have, val[0], 1.0)) for i, nm in enumerate(VAL_METRICS[self.predictor_type])}
        chosen = scores[metric]
        if have.any() and np.all(np.isfinite(chosen)):
            return have, scores, int(np.argmax(chosen) if metrics.higher_is_better(metric) else np.argmin(chosen))
        return have, scores, 0

    def holdout_scores(self, state: State) -> dict[str, Any] | None:
        have, scores, best = self._holdout(state.pull("val"))
        if not have.any():
            return None
        values = scores[self._metric]
        return {"metric": self._metric, "values": [float(v) if h else None for v, h in zip(values, have)],
                "selected": best}

    def finalize(self, state: State) -> "LinearModel":
        d, C, M = self._d, self._C, int(self.num_models)
        n = float(state.pull("n"))
        val = state.pull("val")
        names = VAL_METRICS[self.predictor_type]
        metric = self._metric
        have, scores, best = self._holdout(val)
        # only the chosen model's columns are folded (all 32 of a 2^20-row key: ~2 s of array passes)
        cols = slice(best * C, (best + 1) * C)
        W = state.pull("w")[:, cols].astype(np.float64)
        b = state.pull("b")[cols].astype(np.float64)
        if self.averaging and n > 0:
            W = W - state.pull("u_w")[:, cols] / (n * n / 2.0)
            b = b - state.pull("u_b")[cols] / (n * n / 2.0)
        if self.normalize and "feat_n" in state.keys():
            mean, inv_std = _moments(state.pull("feat_n"), state.pull("feat_sum"), state.pull("feat_sq"))
            W = W * inv_std[:, None]
            b = b - mean @ W
        y_mu, y_sd = _label_moments(state) if self.predictor_type == "regressor" else (0.0, 1.0)
        hp = self._hp()
        attrs = {
            "predictor_type": self.predictor_type, "loss": self._loss, "num_classes": C if C > 1 else 2,
            "classes": self.label_coding().to_json(),
            "n_features": d, "selected_model": best, "validation_metric": metric,
            "validation_weight": float(val[0].max()) if have.any() else 0.0,
            "models": [{"learning_rate": float(hp["learning_rate"][i]), "l1": float(hp["l1"][i]),
                        "l2": float(hp["l2"][i]),
                        **{nm: (float(scores[nm][i]) if have[i] else None) for nm in names}} for i in range(M)],
            "examples_seen": n, "params": _jsonable_params(self.get_params()),
        }
        weights = W * y_sd
        bias = b * y_sd + (y_mu if self.predictor_type == "regressor" else 0.0)
        return LinearModel(weights, bias, attrs)


def _levels(lo: float, hi: float) -> list[float]:
    return [lo] if hi == lo else [lo, hi]


def _draw(rng, lo: float, hi: float, M: int) -> np.ndarray:
    if hi == 0:
        return np.zeros(M)
    base = lo if lo > 0 else hi * 1e-3
    v = np.exp(rng.uniform(np.log(base), np.log(hi), M))
    if lo == 0:
        v[rng.random(M) < 0.25] = 0.0  # a quarter of the pack unregularized
    return v


def _moments(n, s, sq) -> tuple[np.ndarray, np.ndarray]:
    n = max(float(n), 1.0)
    mean = np.asarray(s, np.float64) / n
    var = np.maximum(np.asarray(sq, np.float64) / n - mean * mean, 0.0)
    inv = np.where(var > 1e-12, 1.0 / np.sqrt(np.where(var > 1e-12, var, 1.0)), 1.0)
    return mean, inv


def _label_moments(state: State) -> tuple[float, float]:
    n = max(float(state.pull("y_n")), 1.0)
    mu = float(state.pull("y_sum")) / n
    var = max(float(state.pull("y_sq")) / n - mu * mu, 0.0)
    return mu, (np.sqrt(var) if var > 1e-12 else 1.0)


def _jsonable_params(p: dict) -> dict:
    out = {}
    for k, v in p.items():
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


class LinearModel(Model):
    algorithm = "linear_learner"

    def __init__(self, weights: np.ndarray, bias: np.ndarray, attrs: dict[str, Any]):
        self.weights = np.asarray(weights, dtype=np.float64)  # (d, C)
        self.bias = np.asarray(bias, dtype=np.float64)  # (C,)
        self.attrs = attrs

    @property
    def predictor_type(self) -> str:
        return self.attrs["predictor_type"]

    @property
    def coding(self) -> LabelCoding:
        """The user's label coding (snapshots from before label mappings: the identity)."""
        return model_coding(self.attrs)

    def decision_function(self, batch: Batch) -> np.ndarray:
        X = batch.X
        Z = X.dot(self.weights) if isinstance(X, SparseRows) else np.asarray(X, np.float64) @ self.weights
        return Z + self.bias

    def predict_proba(self, batch: Batch) -> np.ndarray:
        Z = self.decision_function(batch)
        if self.predictor_type == "binary_classifier":
            return sigmoid(Z[:, 0])
        if self.predictor_type == "multiclass_classifier":
            return softmax(Z)
        raise ValueError("linear_learner: a regressor has no class probabilities")

    def predict_index(self, batch: Batch) -> np.ndarray:
        """Predicted class index (classifiers) or value (regressor) for every example."""
        Z = self.decision_function(batch)
        if self.predictor_type == "binary_classifier":
            return (Z[:, 0] > 0).astype(np.int64)
        if self.predictor_type == "multiclass_classifier":
            return Z.argmax(axis=1)
        return Z[:, 0]

    def evaluate(self, batch: Batch) -> np.ndarray:
        """Predicted class in the user's label coding (classifiers) or value (regressor)."""
        pred = self.predict_index(batch)
        return pred if self.predictor_type == "regressor" else self.coding.decode(pred)

    def metric_names(self) -> tuple[str, ...]:
        return SCORE_METRICS[self.predictor_type]

    def score(self, batch: Batch, metric: str | None = None) -> float:
        pt = self.predictor_type
        metric = metrics.check_metric(self.algorithm, metric or self.attrs["validation_metric"], SCORE_METRICS[pt])
        y, w = batch.y, batch.w
        if metric == "accuracy":  # in the user's coding: a label outside the classes counts as wrong
            return metrics.accuracy(y, self.evaluate(batch), w)
        if pt != "regressor":
            y = self.coding.encode(y)
        if metric == "log_loss":
            return metrics.log_loss(y, self.predict_proba(batch), w)
        if metric == "auc":
            return metrics.auc(y, self.decision_function(batch)[:, 0], w)
        if metric == "hinge":
            return metrics.hinge(y, self.decision_function(batch)[:, 0], w)
        return getattr(metrics, metric)(y, self.evaluate(batch), w)

    def predict_records(self, batch: Batch) -> list[dict[str, Any]]:
        pt = self.predictor_type
        if pt == "regressor":
            return [{"prediction": float(v)} for v in self.evaluate(batch).tolist()]
        index = self.predict_index(batch)
        pred = self.coding.decode(index).tolist()
        if pt == "binary_classifier":  # score: the probability of the second class (classes[1])
            p = self.predict_proba(batch)
            return [{"prediction": a, "score": float(s)} for a, s in zip(pred, p.tolist())]
        P = self.predict_proba(batch)  # scores: per class, in the order of the model's classes
        return [{"prediction": a, "score": float(r[i]), "scores": r}
                for a, i, r in zip(pred, index.tolist(), P.tolist())]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"weights": self.weights.copy(), "bias": self.bias.copy()}, dict(self.attrs)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "LinearModel":
        return cls(np.array(arrays["weights"]), np.array(arrays["bias"]), dict(attrs))


register(LinearLearner, LinearModel)
