"""Neural topic model (the SageMaker paper's NTM): a variational autoencoder over bags of words.

Encoder: ``log(1 + counts)`` -> MLP (``encoder_layers``, ``activation``) -> mean and log
variance of a Gaussian latent ``z`` of ``num_topics`` dimensions, both batch-normalized,
sampled with the reparameterization trick; the topic mixture is ``softmax(z)`` (a
logistic-normal posterior), with ``dropout`` in training. Prior: the logistic-normal
(Laplace) approximation of a symmetric Dirichlet(``prior_alpha``) in the softmax basis.
Decoder (ProdLDA, Srivastava & Sutton 2017): ``softmax(BN(theta @ beta) + bg + log unigram)``
over the vocabulary: the batch-normalized product of experts of the topics, plus the log
frequencies of the training words counted so far (:func:`log_unigram`) and a learned
correction ``bg``. Without the normalization the frequent words' logits dominated every
topic and the topics collapsed into one; without the counted background the network spent
its first thousands of steps learning word frequencies. Loss: the negative ELBO =
reconstruction (multinomial log-likelihood of the counts) + ``kl_weight`` x KL(q(z|x) ||
prior), averaged over a mini-batch; ``kl_weight`` ramps from 0 to 1 over the first
``kl_warmup_docs`` documents. Adam runs with ProdLDA's momentum (beta1 = 0.99).

**State.** The network's parameters are one flat key ``theta`` (float32, sum aggregated);
the optimizer's accumulators are keys of the same shape (Adam: ``m``, ``v``; Adagrad /
RMSprop: ``v``) plus the step count ``t``; ``bn`` holds the normalization's running means
and variances (moved 10 % of the way to each training batch's; ``step`` aggregated, so
workers' moves merge), ``words`` the training word counts. ``finalize`` folds the running
statistics into the encoder's output layers and the decoder (normalization by fixed
statistics is affine, :func:`fold_batch_norm`), so models, snapshots and ONNX export see a
plain network.

**Concurrent workers.** An update pulls the keys, runs its mini-batches as local steps
(torch autograd on CPU or CUDA) and pushes the differences, committed with the window's
offsets; several workers' deltas add up: asynchronous data-parallel training whose
staleness is bounded by the window, which this algorithm keeps small (``window_messages``;
``produce --text-column`` writes 64 documents a message). N workers starting from one
state take N aligned steps, in effect an N-fold step; the normalization and the counted
background keep that stable: on the Lee corpus, at the default learning rate, 1, 2 and 4
workers land within 2 % of each other (benchmarks/README.md, ``scaling.ntm``), where
scaling each worker's deltas by 1 / N (estimated from the step counter) or 1 / sqrt(N)
measured no better. The
accumulators stay sound when summed: Adagrad's sum of squares is exactly additive, Adam's
and RMSprop's exponential averages pushed as ``(1 - beta)(g - m)`` increments shrink by
``1 - N (1 - beta)`` when N workers push at once (bounded for the windows above), and
``words`` is an exact count.

Held-out documents (a content hash picks ``holdout_fraction`` of them, the same on every
worker and run) are never trained on; their ELBO and word count accumulate in the state
and finalize reports held-out perplexity ``exp(-ELBO / words)``.

The model computes in numpy (no torch needed to load or use it): ``evaluate`` gives topic
mixtures, ``topics(top)`` the top words of every topic (by p(word | topic), each word's topic
weight scaled by its evidence gain, :func:`word_gain`), ``score`` the ELBO perplexity or the
document-completion perplexity; with the vocabulary (stored in the snapshot) it reads raw text.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
from typing import Any

import numpy as np

from streamlearn import backends
from streamlearn.algorithms import _metrics as metrics
from streamlearn.algorithms import register
from streamlearn.algorithms._common import holdout_mask, softmax
from streamlearn.algorithms.base import Algorithm, Model, ParamError, require
from streamlearn.algorithms.params import Interval, ListOf, Options, Param
from streamlearn.batch import Batch, SparseRows
from streamlearn.statestore.base import State
from streamlearn.streams.text import Vocabulary, bow_problem

OPTIMIZERS = ("adam", "adagrad", "rmsprop", "sgd")
ACTIVATIONS = ("softplus", "relu", "tanh", "sigmoid")
SCORE_METRICS = ("perplexity", "completion_perplexity")
_HOLDOUT_SALT = 0x7E57_D0C5
#: ``s`` of the top words' evidence gain (:func:`word_gain`)
TOP_WORD_SHRINKAGE = 0.2
#: batch normalization's epsilon (the update step's and the folding's at finalize)
BN_EPS = 1e-5


def layout(vocab_size: int, layers: list[int], num_topics: int) -> list[tuple[str, tuple[int, ...]]]:
    """The network's arrays in the order they sit in the flat parameter vector."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    width = vocab_size
    for i, h in enumerate(layers):
        shapes += [(f"enc_W{i}", (width, h)), (f"enc_b{i}", (h,))]
        width = h
    shapes += [("mu_W", (width, num_topics)), ("mu_b", (num_topics,)), ("lv_W", (width, num_topics)),
               ("lv_b", (num_topics,)), ("beta", (num_topics, vocab_size)), ("bg", (vocab_size,))]
    return shapes


def bn_size(num_topics: int, vocab_size: int) -> int:
    """Length of the state key ``bn``: running means of the encoder's 2K outputs (mean and
    log variance) and of the decoder's V logits, then their variances in the same order."""
    return 2 * (2 * num_topics + vocab_size)


def bn_split(bn, num_topics: int):
    """(encoder means, encoder variances, decoder means, decoder variances) of ``bn``
    (numpy or torch)."""
    e = 2 * num_topics
    v = (bn.shape[0] - 2 * e) // 2
    return bn[:e], bn[e + v:2 * e + v], bn[e:e + v], bn[2 * e + v:]


def word_frequencies(words: np.ndarray) -> np.ndarray:
    """The training words' frequencies, add-1/2 smoothed (the counts of the state key ``words``)."""
    w = np.asarray(words, dtype=np.float64) + 0.5
    return w / w.sum()


def log_unigram(words: np.ndarray) -> np.ndarray:
    """The decoder's background: log frequencies of the training words counted so far (the
    state key ``words``, exactly additive over workers), add-1/2 smoothed. The decoder learns
    only a correction ``bg`` to it: learned from zero, the frequencies took thousands of
    steps while the topics soaked up the frequent words."""
    return np.log(word_frequencies(words))


def word_gain(frequencies: np.ndarray, shrinkage: float) -> np.ndarray:
    """Each word's evidence gain ``f / (f + shrinkage / V)`` for frequency ``f`` in a
    ``V``-word vocabulary: 1/2 for a word of frequency ``shrinkage / V``, near 1 for much more
    frequent words, near 0 for much rarer ones. The decoder's normalization gives
    every word's topic logit unit variance over documents, a word of two documents as much
    as a frequent one, so a topic's weights rank rare words as high as the words the topic
    is about; scaled by the gain, a word's topic weight counts in proportion to the
    evidence for it, as LDA's smoothed topic-word counts do."""
    f = np.asarray(frequencies, dtype=np.float64)
    return f / (f + float(shrinkage) / len(f))


def fold_batch_norm(arrays: dict[str, np.ndarray], bn: np.ndarray, num_topics: int) -> dict[str, np.ndarray]:
    """The network with its running normalization statistics folded into the encoder's
    output layers and the decoder (normalization by fixed statistics is affine), and the
    topic-word matrix centred over topics (the decoder's mixtures sum to 1, so the common
    part moves into the background): what inference, ``topics`` and ONNX export use."""
    out = dict(arrays)
    k = num_topics
    enc_mean, enc_var, dec_mean, dec_var = bn_split(np.asarray(bn, dtype=np.float64), k)
    s = np.sqrt(enc_var + BN_EPS)
    for i, name in enumerate(("mu", "lv")):
        part = slice(i * k, (i + 1) * k)
        out[f"{name}_W"] = arrays[f"{name}_W"] / s[part]
        out[f"{name}_b"] = (arrays[f"{name}_b"] - enc_mean[part]) / s[part]
    s = np.sqrt(dec_var + BN_EPS)
    beta = arrays["beta"] / s
    common = beta.mean(0)
    out["beta"] = beta - common
    out["bg"] = arrays["bg"] - dec_mean / s + common
    return {name: a.astype(np.float32) for name, a in out.items()}


def unflatten(flat, shapes) -> dict[str, Any]:
    """Views of ``flat`` (numpy or torch) as the named arrays of ``shapes``."""
    out, pos = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        out[name] = flat[pos:pos + size].reshape(shape)
        pos += size
    return out


def prior(num_topics: int, alpha: float) -> tuple[float, float]:
    """Mean and variance (the same for every topic) of the Laplace approximation of a
    symmetric Dirichlet(alpha) in the softmax basis (MacKay 1998; ProdLDA)."""
    k = float(num_topics)
    return 0.0, (1.0 / alpha) * (1.0 - 2.0 / k) + 1.0 / (k * alpha)


def as_counts(X) -> SparseRows:
    if isinstance(X, SparseRows):
        return X
    X = np.asarray(X, dtype=np.float32)
    nz = X != 0
    return SparseRows(np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64), np.nonzero(nz)[1].astype(np.int64),
                      X[nz], X.shape[1])


def split_halves(X: SparseRows, seed: int = 0) -> tuple[SparseRows, SparseRows]:
    """Each document's tokens split at random into two halves (a binomial(count, 1/2) draw
    per word, seeded): the observed half and the half to predict in document completion."""
    rng = np.random.default_rng(seed)
    a = rng.binomial(X.values.astype(np.int64), 0.5).astype(np.float32)
    b = X.values - a
    return (_drop_zeros(SparseRows(X.indptr, X.indices, a, X.n_features)),
            _drop_zeros(SparseRows(X.indptr, X.indices, b, X.n_features)))


def _drop_zeros(X: SparseRows) -> SparseRows:
    keep = X.values != 0
    rows = X.row_ids()[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(X)))]).astype(np.int64)
    return SparseRows(indptr, X.indices[keep], X.values[keep], X.n_features)


class NTM(Algorithm):
    name = "ntm"
    accepts_sparse = True
    step_rows = 256
    window_messages = 4  # the steps a worker takes between commits stay few (module doc)
    param_spec = {
        "vocab_size": Param("words in the vocabulary (0: the length of vocabulary)", Interval(int, 0, None)),
        "vocabulary": Param("the words, in word-id order (filled from the topic's stored vocabulary at job create)",
                            ListOf(str), Options(), tuple, list),
        "num_topics": Param("topics (the latent dimension)", Interval(int, 2, 10_000)),
        "encoder_layers": Param("widths of the encoder MLP's hidden layers, e.g. [100,100]",
                                ListOf(int, distinct=False)),
        "activation": Param("the encoder's activation", Options(*ACTIVATIONS)),
        "optimizer": Param("update rule of the network's parameters", Options(*OPTIMIZERS)),
        "learning_rate": Param("step size", Interval(float, 0, None, closed="right")),
        "mini_batch_size": Param("documents per update step", Interval(int, 1, None)),
        "sub_sample": Param("share of each step's documents used (1 = all)", Interval(float, 0, 1, closed="right")),
        "clip_gradient": Param("largest gradient norm (0 = no clipping)", Interval(float, 0, None)),
        "weight_decay": Param("L2 decay of the network's weights (0 = off)", Interval(float, 0, None)),
        "dropout": Param("share of topic-mixture entries dropped in training (ProdLDA)", Interval(float, 0, 1)),
        "kl_warmup_docs": Param("documents over which the KL term's weight rises from 0 to 1 (0 = off)",
                                Interval(int, 0, None)),
        "prior_alpha": Param("Dirichlet concentration the logistic-normal prior approximates",
                             Interval(float, 0, None, closed="right")),
        "holdout_fraction": Param("share of documents (by content hash) held out for perplexity",
                                  Interval(float, 0, 1, closed="left")),
        "seed": Param("seed of the initial weights and the reparameterization noise", Interval(int, 0, None)),
        "device": Param("where torch computes: 'cpu', 'cuda' or 'cuda:N'", str),
        "precision": Param("float type of the update step", Options("float32", "float64")),
    }

    def __init__(self, vocab_size: int = 0, vocabulary: list[str] | tuple = (), num_topics: int = 20,
                 encoder_layers: list[int] | tuple = (100, 100), activation: str = "softplus", optimizer: str = "adam",
                 learning_rate: float = 0.002, mini_batch_size: int = 64, sub_sample: float = 1.0,
                 clip_gradient: float = 0.0, weight_decay: float = 0.0, dropout: float = 0.0, kl_warmup_docs: int = 0,
                 prior_alpha: float = 1.0, holdout_fraction: float = 0.05, seed: int = 0, device: str = "cpu",
                 precision: str = "float32"):
        self.vocab_size = vocab_size
        self.vocabulary = vocabulary
        self.num_topics = num_topics
        self.encoder_layers = encoder_layers
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.mini_batch_size = mini_batch_size
        self.sub_sample = sub_sample
        self.clip_gradient = clip_gradient
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.kl_warmup_docs = kl_warmup_docs
        self.prior_alpha = prior_alpha
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.device = device
        self.precision = precision
        self._torch = None  # the engine of update steps, set up on first use (not a parameter)

    # -- parameters -------------------------------------------------------------------------
    def check_params(self) -> None:
        n = self.name
        super().check_params()
        require(all(isinstance(w, str) for w in self.vocabulary), n, "vocabulary must be a list of words")
        require(self.n_features() > 0, n, "vocab_size (or a vocabulary) is required: produce the topic with "
                "--text-column so that job create finds its vocabulary, or give vocab_size")
        require(not self.vocabulary or not self.vocab_size or self.vocab_size == len(self.vocabulary), n,
                f"vocab_size {self.vocab_size} != the vocabulary's {len(self.vocabulary)} words")
        require(all(h >= 1 for h in self.encoder_layers), n, "encoder_layers must be layer widths >= 1, e.g. [100,100]")
        require(self.dropout < 1, n, "dropout must be below 1")
        _check_engine(self.device)

    def n_features(self) -> int:
        return len(self.vocabulary) or int(self.vocab_size)

    def row_rule(self):
        return bow_problem

    def _shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return layout(self.n_features(), [int(h) for h in self.encoder_layers], int(self.num_topics))

    def _accumulators(self) -> tuple[str, ...]:
        return {"adam": ("m", "v"), "adagrad": ("v",), "rmsprop": ("v",), "sgd": ()}[self.optimizer]

    def _trained(self) -> tuple[str, ...]:
        """The keys an update step moves: parameters, accumulators, normalization statistics."""
        return ("theta",) + self._accumulators() + ("bn",)

    # -- the three functions ----------------------------------------------------------------
    def initialize(self, state: State) -> None:
        shapes = self._shapes()
        rng = np.random.default_rng([int(self.seed), 0x17])
        parts = []
        for name, shape in shapes:
            if name.endswith("W") or "_W" in name:  # Glorot-scaled normals
                parts.append(rng.standard_normal(shape) * np.sqrt(2.0 / (shape[0] + shape[1])))
            elif name == "beta":
                parts.append(rng.standard_normal(shape) * 0.02)
            else:
                parts.append(np.zeros(shape))
        theta = np.concatenate([p.ravel() for p in parts]).astype(np.float32)
        # Adagrad: "step" keys (concurrent workers' steps and accumulators merge, not add up: summed,
        # 2 workers diverged); Adam / RMSprop: "sum" (their normalized steps averaged over workers
        # gave a worse held-out perplexity with 2 and 4 workers than summed)
        agg = "step" if self.optimizer == "adagrad" else "sum"
        state.initialize("theta", theta, aggregator=agg, dtype="float32")
        for key in self._accumulators():
            state.initialize(key, np.zeros_like(theta), aggregator=agg, dtype="float32")
        k, v = int(self.num_topics), self.n_features()
        # running statistics are a model, not a sum: workers' concurrent moves are merged
        # ("step"); summed, two workers that each moved a variance from 1 to near 0 made it negative
        state.initialize("bn", np.concatenate([np.zeros(2 * k + v), np.ones(2 * k + v)]), aggregator="step",
                         dtype="float32")
        state.initialize("words", np.zeros(v))
        for key in ("t", "n", "ho_nll", "ho_words", "ho_docs"):
            state.initialize(key, 0.0)

    def update(self, state: State, batch: Batch) -> None:
        X = as_counts(batch.X)
        if len(X) == 0:
            return
        held = holdout_mask(Batch(X), float(self.holdout_fraction), _HOLDOUT_SALT)
        engine = self._engine()
        flat = {key: state.pull(key) for key in self._trained()}
        t0, n0 = float(state.pull("t")), float(state.pull("n"))
        if held.any():
            nll, words = engine.heldout(flat["theta"], flat["bn"], log_unigram(state.pull("words")),
                                        X.take(np.flatnonzero(held)), self._noise_seed(t0, 1))
            state.push("ho_nll", nll)
            state.push("ho_words", words)
            state.push("ho_docs", float(held.sum()))
        train = X.take(np.flatnonzero(~held))
        if self.sub_sample < 1.0 and len(train):
            keep = np.random.default_rng(self._noise_seed(t0, 2)).random(len(train)) < self.sub_sample
            train = train.take(np.flatnonzero(keep))
        if len(train) == 0:
            return
        counts = np.bincount(train.indices, weights=train.values, minlength=train.n_features)
        state.push("words", counts)
        background = log_unigram(state.pull("words"))
        new, steps = engine.train(flat, background, train, t0, n0, self)
        for key, value in new.items():
            state.push(key, value - flat[key])
        state.push("t", float(steps))
        state.push("n", float(len(train)))

    def finalize(self, state: State) -> "NTMModel":
        arrays = unflatten(np.asarray(state.pull("theta"), dtype=np.float64), self._shapes())
        arrays["bg"] = arrays["bg"] + log_unigram(state.pull("words"))
        arrays = fold_batch_norm(arrays, state.pull("bn"), int(self.num_topics))
        arrays["word_frequency"] = word_frequencies(state.pull("words")).astype(np.float32)
        words = float(state.pull("ho_words"))
        attrs = {"num_topics": int(self.num_topics), "encoder_layers": [int(h) for h in self.encoder_layers],
                 "activation": self.activation, "prior": list(prior(int(self.num_topics), float(self.prior_alpha))),
                 "vocabulary": list(self.vocabulary), "documents_trained": float(state.pull("n")),
                 "steps": float(state.pull("t")), "heldout_documents": float(state.pull("ho_docs")),
                 "heldout_words": words,
                 "heldout_perplexity": float(np.exp(float(state.pull("ho_nll")) / words)) if words else None}
        return NTMModel(arrays, attrs)

    # -- helpers ----------------------------------------------------------------------------
    def _noise_seed(self, t: float, stream: int, X: SparseRows | None = None) -> int:
        """A seed for the step's random draws: the job's seed, the global step count, a
        stream id and the step's documents ``X``, so that a resumed or re-run job draws the
        same noise, and concurrent workers, which start from the same step count, draw
        different noise (with the same, their summed steps added its error up coherently)."""
        h = hashlib.blake2b(f"{self.seed}:{int(t)}:{stream}".encode(), digest_size=8)
        if X is not None:
            h.update(np.ascontiguousarray(X.indices).tobytes())
            h.update(np.ascontiguousarray(X.values).tobytes())
        return int.from_bytes(h.digest(), "little") >> 1

    def kl_weight(self, docs_seen: float) -> float:
        return 1.0 if not self.kl_warmup_docs else min(1.0, docs_seen / float(self.kl_warmup_docs))

    def _engine(self):
        if self._torch is None:
            # by name, when first needed: importing torch takes seconds a CPU-only caller
            # (job create, predict with numpy) should not pay
            TorchNTM = importlib.import_module("streamlearn.algorithms._ntm_torch").TorchNTM
            self._torch = TorchNTM(self._shapes(), self.activation, prior(int(self.num_topics),
                                                                          float(self.prior_alpha)),
                                   self.device, self.precision)
        return self._torch


def _check_engine(device) -> None:
    """torch must be installed, and for CUDA see a device; a CPU job is not made to import
    torch (seconds) just to be created or validated."""
    try:
        if device == "cpu":
            if importlib.util.find_spec("torch") is None:
                raise backends.BackendError("backend 'torch' is not installed; pip install 'streamlearn[ntm]'")
        else:
            backends.validate("torch", device)
    except backends.BackendError as exc:
        raise ParamError(f"ntm: {exc}") from None


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


_ACT = {"softplus": lambda x: np.logaddexp(0.0, x), "relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh,
        "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x))}


class NTMModel(Model):
    algorithm = "ntm"

    def __init__(self, arrays: dict[str, np.ndarray], attrs: dict[str, Any]):
        self.arrays = arrays
        self.attrs = attrs
        self.vocabulary = list(attrs.get("vocabulary") or [])
        self._vocab = None

    @property
    def num_topics(self) -> int:
        return int(self.attrs["num_topics"])

    @property
    def vocab_size(self) -> int:
        return int(self.arrays["bg"].shape[0])

    def _X(self, batch) -> SparseRows:
        X = batch.X if isinstance(batch, Batch) else batch
        if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
            X, _ = self.text_vocabulary().vectorize(X)
        X = as_counts(X)
        if X.n_features != self.vocab_size:
            raise ParamError(f"ntm: documents have {X.n_features} word ids, the model's vocabulary {self.vocab_size}")
        return X

    def text_vocabulary(self):
        """The :class:`~streamlearn.streams.text.Vocabulary` of the training topic (raw text in)."""
        if not self.vocabulary:
            raise ParamError("ntm: this model was trained without a vocabulary; it reads word ids, not text")
        if self._vocab is None:
            self._vocab = Vocabulary(self.vocabulary)
        return self._vocab

    def posterior(self, X: SparseRows) -> tuple[np.ndarray, np.ndarray]:
        """Mean and log variance of q(z | x) per document."""
        a = self.arrays
        h = _spmm(X, np.log1p, a["enc_W0"])
        act = _ACT[self.attrs["activation"]]
        h = act(h + a["enc_b0"])
        for i in range(1, len(self.attrs["encoder_layers"])):
            h = act(h @ a[f"enc_W{i}"] + a[f"enc_b{i}"])
        return h @ a["mu_W"] + a["mu_b"], h @ a["lv_W"] + a["lv_b"]

    def evaluate(self, batch) -> np.ndarray:
        """Each document's topic mixture (n, num_topics): softmax of the posterior mean."""
        mu, _ = self.posterior(self._X(batch))
        return softmax(mu, axis=1)

    def word_log_probs(self, mixtures: np.ndarray) -> np.ndarray:
        """log p(word | topic mixture) (n, vocab) of the decoder."""
        logits = mixtures @ self.arrays["beta"] + self.arrays["bg"]
        return logits - _logsumexp(logits)

    def topics(self, top: int = 10) -> list[list[str]]:
        """The ``top`` words of every topic (:meth:`top_word_ids`); word ids as ``#id``
        strings when the model has no vocabulary."""
        ids = self.top_word_ids(top)
        name = (lambda i: self.vocabulary[i]) if self.vocabulary else (lambda i: f"#{i}")
        return [[name(int(i)) for i in row] for row in ids]

    def top_word_ids(self, top: int = 10, shrinkage: float = TOP_WORD_SHRINKAGE) -> np.ndarray:
        """Each topic's ``top`` word ids by the decoder's logits of a mixture all on the topic
        (p(word | topic), as LDA's top words are ranked), each word's topic weight scaled by
        its evidence gain (:func:`word_gain`; ``shrinkage`` = 0, or a model saved without
        word frequencies: unscaled)."""
        if not isinstance(top, (int, np.integer)) or top < 1:
            raise ParamError(f"ntm: top must be a positive integer, got {top!r}")
        # the topic's weights alone (the lift over the background) rank words of two or three
        # documents first, and a relevance blend of the two (Sievert & Shirley's lambda = 0.6)
        # measured a lower NPMI at 10, 20 and 50 topics; unscaled, at 50 topics many topics'
        # top words were rare words of unrelated stories (benchmarks/README.md, quality.ntm)
        freq = self.arrays.get("word_frequency")
        gain = 1.0 if freq is None or not shrinkage else word_gain(freq, shrinkage)
        logits = self.arrays["beta"] * gain + self.arrays["bg"]
        top = min(int(top), logits.shape[1])
        part = np.argpartition(-logits, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)

    def metric_names(self) -> tuple[str, ...]:
        return SCORE_METRICS

    def score(self, batch, metric: str | None = None) -> float:
        """``perplexity`` (default): exp(-ELBO / words) with the posterior mean as the latent
        sample; ``completion_perplexity``: infer each document's mixture from a random half of
        its words and score the other half (lower is better for both)."""
        metric = metrics.check_metric(self.algorithm, metric or "perplexity", SCORE_METRICS)
        X = self._X(batch)
        if metric == "completion_perplexity":
            return completion_perplexity(self, X)
        mu, lv = self.posterior(X)
        rec = -_row_dot(X, self.word_log_probs(softmax(mu, axis=1)))
        m0, v0 = self.attrs["prior"]
        kl = 0.5 * (np.exp(lv) / v0 + (mu - m0) ** 2 / v0 - 1.0 + np.log(v0) - lv).sum(1)
        return float(np.exp((rec + kl).sum() / max(float(X.values.sum()), 1.0)))

    def predict_records(self, batch) -> list[dict[str, Any]]:
        mix = self.evaluate(batch)
        return [{"prediction": int(np.argmax(m)), "topic_mixture": [round(float(v), 6) for v in m]} for m in mix]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {k: v.copy() for k, v in self.arrays.items()}, dict(self.attrs)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "NTMModel":
        return cls({k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}, dict(attrs))


def completion_perplexity(model, X: SparseRows, seed: int = 0) -> float:
    """Document-completion perplexity of any model with ``evaluate`` (mixtures from word
    counts) and ``word_log_probs`` (mixtures -> log p(word)): exp(-log-likelihood of the
    held-back halves / their word count)."""
    seen, unseen = split_halves(X, seed)
    keep = (np.diff(seen.indptr) > 0) & (np.diff(unseen.indptr) > 0)
    rows = np.flatnonzero(keep)
    seen, unseen = seen.take(rows), unseen.take(rows)
    ll = _row_dot(unseen, model.word_log_probs(model.evaluate(Batch(seen)))).sum()
    return float(np.exp(-ll / max(float(unseen.values.sum()), 1.0)))


def _spmm(X: SparseRows, f, W: np.ndarray) -> np.ndarray:
    """``f(X) @ W`` for sparse X (f applied to the stored values)."""
    out = np.zeros((len(X), W.shape[1]), dtype=np.float64)
    np.add.at(out, X.row_ids(), f(X.values.astype(np.float64))[:, None] * W[X.indices])
    return out


def _row_dot(X: SparseRows, L: np.ndarray) -> np.ndarray:
    """Per document: sum over its words of count x L[doc, word]."""
    return np.bincount(X.row_ids(), weights=X.values * L[X.row_ids(), X.indices], minlength=len(X))


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def npmi_coherence(top_ids: np.ndarray, X: SparseRows) -> float:
    """Mean NPMI of the word pairs of each topic's top words, from document co-occurrence in
    ``X`` (Bouma 2009; a pair never seen together scores -1)."""
    n_docs = len(X)
    words = np.unique(top_ids)
    col = {int(w): j for j, w in enumerate(words)}
    present = np.zeros((n_docs, len(words)), dtype=np.float64)
    sel = np.isin(X.indices, words)
    present[X.row_ids()[sel], [col[int(w)] for w in X.indices[sel]]] = 1.0
    p1 = present.mean(0)
    p12 = (present.T @ present) / n_docs
    scores = []
    for row in top_ids:
        j = [col[int(w)] for w in row]
        for a in range(len(j)):
            for b in range(a + 1, len(j)):
                pab = p12[j[a], j[b]]
                if pab == 0:
                    scores.append(-1.0)
                elif pab == 1:
                    scores.append(1.0)
                else:
                    scores.append(np.log(pab / (p1[j[a]] * p1[j[b]])) / -np.log(pab))
    return float(np.mean(scores))


def topic_uniqueness(top_ids: np.ndarray) -> float:
    """TU (Nan et al. 2019): mean over topics and their top words of 1 / (the number of
    topics whose top words contain that word); 1 = no word shared."""
    counts = np.bincount(np.asarray(top_ids).ravel())
    return float(np.mean(1.0 / counts[np.asarray(top_ids)]))


register(NTM, NTMModel)
