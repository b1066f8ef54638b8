"""Synchronous rounds (factorization machines, ``aggregation=sync``) on a real Redis and
Kafka: a round's step is applied once whoever closes it, a dead member or a dead closer
cannot hold a round, and a 2-worker job counts every record once and learns what one
worker learns."""
from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

from streamlearn import datasets
from streamlearn.algorithms import make_algorithm
from streamlearn.batch import Batch
from streamlearn.runtime.jobs import create_job, job_status, set_paused
from streamlearn.runtime.rounds import Rounds
from streamlearn.snapshots.format import decode_snapshot, load_model
from streamlearn.snapshots.store import ModelStore
from streamlearn.statestore.base import StaleCommit
from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore.keys import StoreKeys
from streamlearn.statestore.redis_state import RedisState
from tests.integration.procs import labelled_topic, start_worker, stop_all, train_job, wait_for, wait_status

pytestmark = pytest.mark.integration

D = 2 ** 14
TRAIN, TEST, MESSAGE_ROWS, ROUND = 12_000, 6_000, 250, 1_000


@pytest.fixture(scope="module")
def data():
    X, y = datasets.sparse_classification(TRAIN + TEST, D, nnz=20, vocabulary=6_000, seed=5)
    return X, y


def _fm(**extra):
    return make_algorithm("factorization_machines", {"n_features": D, "num_factors": 4, "mini_batch_size": ROUND,
                                                     "aggregation": "sync", **extra})


def _job_state(client, algo) -> str:
    job = f"sync-{uuid.uuid4().hex[:8]}"
    init = RedisState(client, job)
    algo.initialize(init)
    init.commit()
    return job


def _contribute(client, job, algo, member: str, batch: Batch) -> RedisState:
    state = RedisState(client, job, member)
    state.backend.heartbeat()
    expect = Rounds(algo, state).begin()
    algo.update(state, batch)
    state.commit(CommitInfo(expect=expect, records_applied=len(batch)))
    return state


def test_two_closers_of_one_round_apply_it_once(stack, data):
    client = stack.redis_client()
    algo = _fm()
    job = _job_state(client, algo)
    X, y = data
    _contribute(client, job, algo, "a", Batch(datasets._rows(X, 0, 500), y[:500]))
    _contribute(client, job, algo, "b", Batch(datasets._rows(X, 500, 1000), y[500:1000]))
    closers = [RedisState(client, job, m) for m in ("a", "b")]
    expects = [{"round": s.version("round"), "g_b": s.version("g_b")} for s in closers]
    for s in closers:  # both compute the step from the same read
        assert algo.close_round(s)
    closers[0].commit(CommitInfo(expect=expects[0]))
    once = algo.finalize(RedisState(client, job))
    with pytest.raises(StaleCommit):
        closers[1].commit(CommitInfo(expect=expects[1]))
    after = RedisState(client, job)
    twice = algo.finalize(after)
    np.testing.assert_array_equal(twice.v, once.v)
    np.testing.assert_array_equal(twice.w, once.w)
    assert float(after.pull("round")) == 1.0 and not after.pull("g_wv").any() and not after.pull("g_b").any()
    # the same step as one worker's round on the same 1,000 rows
    local = RedisState(client, _job_state(client, algo))
    algo.update(local, Batch(datasets._rows(X, 0, 1000), y[:1000]))
    local.commit()
    algo.close_round(local)
    local.commit()
    np.testing.assert_allclose(algo.finalize(local).v, once.v, atol=1e-12, rtol=0)


def test_a_closer_that_dies_holding_the_lease_hands_the_round_on(stack, data):
    """The round's lease lapses (``MEMBER_TIMEOUT_MS``): another member closes the round."""
    client = stack.redis_client()
    algo = _fm()
    job = _job_state(client, algo)
    X, y = data
    state = _contribute(client, job, algo, "alive", Batch(datasets._rows(X, 0, 500), y[:500]))
    client.set(StoreKeys(job).lease + "round:0", "dead", px=3_000)  # taken by a member that then died
    member = Rounds(algo, state)
    member.round = 0
    member.end()
    assert member.closes == 1 and float(RedisState(client, job).pull("round")) == 1.0


def test_a_member_that_stops_heartbeating_does_not_hold_the_round(stack, data):
    client = stack.redis_client()
    algo = _fm()
    job = _job_state(client, algo)
    X, y = data
    _contribute(client, job, algo, "dead", Batch(datasets._rows(X, 0, 10), y[:10]))  # a member, then silence
    state = _contribute(client, job, algo, "alive", Batch(datasets._rows(X, 0, 500), y[:500]))
    member = Rounds(algo, state)
    member.round = 0
    done = threading.Event()
    closer = threading.Thread(target=lambda: (member.end(), done.set()), daemon=True)
    closer.start()
    assert done.wait(60), "the round never closed"  # the barrier drops "dead" after its heartbeat timeout
    assert member.closes == 1 and float(RedisState(client, job).pull("round")) == 1.0


def _start(stack, topic: str, workers: int, tmp_path, step: int = ROUND) -> tuple[str, list]:
    """A bounded sync job whose ``workers`` all joined before its first record (created
    paused, resumed once they are members): they share every round."""
    client = stack.redis_client()
    job = f"fm-sync-w{workers}-{uuid.uuid4().hex[:6]}"
    create_job(client, stack.kafka_client_conf(), job, "factorization_machines", topic,
               {"n_features": D, "num_factors": 4, "mini_batch_size": step, "aggregation": "sync"}, until="end",
               epochs=1)
    set_paused(client, job, True)
    procs = [start_worker(job, tmp_path / job) for _ in range(workers)]
    wait_status(client, job, lambda s: len(s["members"]) == workers, 120, f"{workers} members")
    wait_for(lambda: all(p.poll() is None for p in procs), 5, "workers running")
    set_paused(client, job, False)
    return job, procs


def _train(stack, topic: str, workers: int, tmp_path) -> tuple[dict, object, float]:
    client = stack.redis_client()
    job, procs = _start(stack, topic, workers, tmp_path)
    try:
        status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "job to finish", procs)
    finally:
        codes = stop_all(procs, timeout=60)
    assert codes == [0] * workers
    model = load_model(decode_snapshot(ModelStore(client).get(job)))
    return status, model, float(RedisState(client, job).pull("round"))


def test_two_workers_count_every_record_once_and_learn_the_one_worker_model(stack, data, tmp_path):
    X, y = data
    topic = labelled_topic(stack, datasets._rows(X, 0, TRAIN), y[:TRAIN], "fm-sync", partitions=4,
                           batch_size=MESSAGE_ROWS)
    test = Batch(datasets._rows(X, TRAIN, TRAIN + TEST), y[TRAIN:])
    aucs = {}
    for workers in (1, 2):
        status, model, rounds = _train(stack, topic, workers, tmp_path)
        assert status["records_applied"] == TRAIN and status["records_dead_lettered"] == 0
        assert model.attrs["examples_seen"] == TRAIN  # every record's gradient counted once
        assert status["partitions"] == status["end_offsets"]
        assert status["finalize_calls"] == 1
        assert rounds >= TRAIN // ROUND - 1  # rounds of at most ROUND rows (the last may be open)
        aucs[workers] = float(model.score(test, "auc"))
    assert aucs[1] > 0.6
    assert abs(aucs[2] - aucs[1]) <= 0.01, aucs


def test_a_worker_killed_mid_round_loses_and_duplicates_nothing(stack, data, tmp_path):
    """SIGKILL one of two workers mid-job: the rounds go on without it (the barrier drops it
    after its heartbeat timeout), its partitions' uncommitted records are read again by the
    survivor, and every record is counted once."""
    X, y = data
    n = TRAIN
    topic = labelled_topic(stack, datasets._rows(X, 0, n), y[:n], "fm-sync-kill", partitions=4, batch_size=50)
    client = stack.redis_client()
    job, procs = _start(stack, topic, 2, tmp_path, step=100)  # 240 rounds of 2 x 50 rows: long enough to kill
    try:
        wait_status(client, job, lambda s: s["records_applied"] > 2_000, 120, "records before the kill")
        procs[1].kill()
        procs[1].wait()
        killed_at = job_status(client, job)["records_applied"]
        status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "job to finish")
    finally:
        stop_all(procs, timeout=60)
    assert killed_at < n, "the job ended before the kill"
    assert status["records_applied"] == n and status["records_dead_lettered"] == 0
    assert status["partitions"] == status["end_offsets"] and status["finalize_calls"] == 1
    model = load_model(decode_snapshot(ModelStore(client).get(job)))
    assert model.attrs["examples_seen"] == n  # every record's gradient in exactly one round
    assert float(model.score(Batch(datasets._rows(X, TRAIN, TRAIN + TEST), y[TRAIN:]), "auc")) > 0.6


def test_a_bounded_job_of_two_epochs_counts_every_pass_once(stack, data, tmp_path):
    """``--epochs 2``: the rounds read the range twice (each pass's records counted once)."""
    X, y = data
    n = TRAIN // 2
    topic = labelled_topic(stack, datasets._rows(X, 0, n), y[:n], "fm-sync-epochs", partitions=4,
                           batch_size=MESSAGE_ROWS)
    client = stack.redis_client()
    job = f"fm-sync-e2-{uuid.uuid4().hex[:6]}"
    create_job(client, stack.kafka_client_conf(), job, "factorization_machines", topic,
               {"n_features": D, "num_factors": 4, "mini_batch_size": ROUND, "aggregation": "sync"}, until="end",
               epochs=2)
    procs = [start_worker(job, tmp_path / job) for _ in range(2)]
    try:
        status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "job to finish", procs)
    finally:
        codes = stop_all(procs, timeout=60)
    assert codes == [0, 0]
    assert status["records_applied"] == 2 * n and status["records_dead_lettered"] == 0
    assert status["partitions"] == status["end_offsets"] and status["finalize_calls"] == 1
    assert status["epoch"] == 1
    model = load_model(decode_snapshot(ModelStore(client).get(job)))
    assert model.attrs["examples_seen"] == 2 * n
    assert float(RedisState(client, job).pull("round")) >= 2 * n // ROUND - 1
    assert float(model.score(Batch(datasets._rows(X, TRAIN, TRAIN + TEST), y[TRAIN:]), "auc")) > 0.6


def test_a_worker_joining_mid_job_takes_part_in_the_rounds(stack, data, tmp_path):
    """A second worker joins a sync job that has trained part of its topic: it reads the
    parameters the rounds reached, takes its share of the next rounds, and every record still
    counts once. (The job is paused while the joiner starts and the group rebalances, so that
    the join lands mid-job however fast the first worker is.)"""
    X, y = data
    n = TRAIN
    topic = labelled_topic(stack, datasets._rows(X, 0, n), y[:n], "fm-sync-join", partitions=4, batch_size=50)
    client = stack.redis_client()
    job, procs = _start(stack, topic, 1, tmp_path, step=100)
    try:
        wait_status(client, job, lambda s: s["records_applied"] > 2_000, 120, "records before the join")
        set_paused(client, job, True)
        procs.append(start_worker(job, tmp_path / job))
        joined = wait_status(client, job, lambda s: len(s["members"]) == 2, 120, "the second member")
        epochs = StoreKeys(job).epochs  # every partition claimed again: the group has rebalanced
        wait_for(lambda: len(client.hvals(epochs)) == 4 and all(int(e) >= 2 for e in client.hvals(epochs)), 120,
                 "the rebalance that hands the joiner its partitions")
        set_paused(client, job, False)
        status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "job to finish", procs)
    finally:
        codes = stop_all(procs, timeout=60)
    assert joined["records_applied"] < n, "the job ended before the join"
    assert codes == [0, 0]
    assert status["records_applied"] == n and status["records_dead_lettered"] == 0
    assert status["partitions"] == status["end_offsets"] and status["finalize_calls"] == 1
    profiles = client.hgetall(StoreKeys(job).profile)
    assert len(profiles) == 2, "the joiner committed no share"
    model = load_model(decode_snapshot(ModelStore(client).get(job)))
    assert model.attrs["examples_seen"] == n
    assert float(model.score(Batch(datasets._rows(X, TRAIN, TRAIN + TEST), y[TRAIN:]), "auc")) > 0.6


def test_a_sync_job_continued_from_a_snapshot_goes_on_from_its_rounds(stack, data, tmp_path):
    """``--from-snapshot``: the continued job starts from the parent's parameters, Adagrad
    accumulators and round counter, and ends near one job over both topics."""
    X, y = data
    half = TRAIN // 2
    parts = {"a": (0, half), "b": (half, TRAIN), "ab": (0, TRAIN)}
    topics = {k: labelled_topic(stack, datasets._rows(X, a, b), y[a:b], f"fm-sync-{k}", partitions=2,
                                batch_size=MESSAGE_ROWS) for k, (a, b) in parts.items()}
    tag = uuid.uuid4().hex[:6]
    params = ["--param", f"n_features={D}", "--param", "num_factors=4", "--param", f"mini_batch_size={ROUND}",
              "--param", "aggregation=sync"]
    train_job(f"fms-a-{tag}", tmp_path, "factorization_machines", "--topic", topics["a"], *params)
    train_job(f"fms-b-{tag}", tmp_path, "factorization_machines", "--topic", topics["b"],
              "--from-snapshot", f"fms-a-{tag}")
    train_job(f"fms-ab-{tag}", tmp_path, "factorization_machines", "--topic", topics["ab"], *params)
    client = stack.redis_client()
    store = ModelStore(client)
    models = {k: load_model(decode_snapshot(store.get(f"fms-{k}-{tag}"))) for k in parts}
    assert models["b"].attrs["examples_seen"] == TRAIN  # the parent's examples and its own
    rounds = {k: float(RedisState(client, f"fms-{k}-{tag}").pull("round")) for k in parts}
    assert rounds["b"] >= rounds["a"] + half // ROUND - 1
    assert store.metadata(f"fms-b-{tag}")["params"]["aggregation"] == "sync"  # the parent's parameters
    test = Batch(datasets._rows(X, TRAIN, TRAIN + TEST), y[TRAIN:])
    auc = {k: float(m.score(test, "auc")) for k, m in models.items()}
    assert auc["b"] > auc["a"], auc
    assert abs(auc["b"] - auc["ab"]) <= 0.01, auc


def test_row_journals_on_redis_patch_catch_up_fold_and_cut(stack):
    """A journaled key on a real Redis: a commit adds a patch and leaves the chunks alone, a
    holder catches up from the patches, a fold rewrites the chunks and drops the patches the
    fold before had folded, and the consistent cut a finalize reads includes the patches."""
    client = stack.redis_client()
    job = f"journal-{uuid.uuid4().hex[:8]}"
    keys = StoreKeys(job)
    rows_n = 2_000
    start = np.random.default_rng(7).standard_normal((rows_n, 5)).astype(np.float32)
    init = RedisState(client, job)
    init.initialize("w", start, dtype="float32", journal=True)
    init.commit()
    chunks = client.hgetall(keys.state("w"))
    writer, reader, plain = RedisState(client, job, "a"), RedisState(client, job, "b"), start.astype(np.float64)
    reader.pull("w")
    rng = np.random.default_rng(8)
    for i in range(60):  # ~60 x 95 rows: two folds of a 2,000-row key
        rows = np.unique(rng.integers(0, rows_n, 100))
        delta = rng.standard_normal((len(rows), 5)) * 1e-2
        writer.pull("w", rows=rows)
        writer.push("w", delta, rows=rows)
        writer.commit()
        plain[rows] = (plain[rows].astype(np.float32) + delta.astype(np.float32).astype(np.float64)).astype(np.float32)
        if i == 0:
            assert client.hgetall(keys.state("w")) == chunks  # a patch, not the chunks
            assert client.hexists(keys.journal("w"), "1")
        if i == 5:  # a holder a few commits behind reads only the patches since
            reader.refresh()
            np.testing.assert_array_equal(reader.pull("w"), plain.astype(np.float32))
    journal = {k.decode(): v for k, v in client.hgetall(keys.journal("w")).items()}
    base, previous = int(journal["base"]), int(journal["previous"])
    assert base > previous > 0  # folded twice at least
    assert min(int(f) for f in journal if f.isdigit()) > previous  # what the fold before had folded is gone
    assert client.hgetall(keys.state("w")) != chunks
    cut = RedisState(client, job)
    cut.load_consistent()
    np.testing.assert_array_equal(cut.pull("w"), plain.astype(np.float32))
    reader.refresh()  # behind the dropped patches: read again whole
    np.testing.assert_array_equal(reader.pull("w"), plain.astype(np.float32))
