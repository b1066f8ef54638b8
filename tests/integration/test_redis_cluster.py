"""Jobs on a real Redis Cluster (3 masters, started on free ports): sharded state end to end,
exactly-once through SIGKILLed workers (issue 17). Cluster faults (failover, reshard) are in
the chaos suite (``tests/chaos``, profile ``cluster``)."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from streamlearn.algorithms.factorization_machines import ACCUMULATORS
from streamlearn.batch import Batch
from streamlearn.config import Settings, mask_url
from streamlearn.runtime.jobs import JobError, create_job
from streamlearn.runtime.predict import load_job_model
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.chaos.harness import Profile, run_chaos
from tests.integration.procs import start_worker, stop_all, train_to_end, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory):
    """A private stack whose Redis is a Redis Cluster of 3 masters; env vars point at it."""
    from tests.conftest import _start, _stop

    home = tmp_path_factory.mktemp("cluster-stack")
    settings, dog = _start(home, timeout=180, redis_cluster=3)
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("STREAMLEARN_KAFKA", settings.kafka)
        mp.setenv("STREAMLEARN_REDIS", settings.redis)
        yield home, settings
    finally:
        mp.undo()
        _stop(home, dog, purge=True)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_cluster_url_names_every_node_and_builds_a_cluster_client(cluster_stack):
    _, settings = cluster_stack
    assert settings.redis.startswith("redis+cluster://127.0.0.1:") and settings.redis.count(",") == 2
    client = settings.redis_client()
    assert isinstance(client, redis.RedisCluster) and len(client.get_primaries()) == 3
    one_seed = Settings(kafka=settings.kafka, redis=settings.redis.split(",")[0] + "/").redis_client()
    assert len(one_seed.get_primaries()) == 3  # the other nodes are found from one seed
    assert mask_url("redis+cluster://u:secret@h1:1,h2:2/") == "redis+cluster://u:***@h1:1,h2:2/"


def _classification(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=d) > 0).astype(np.float32)
    return X, y


@pytest.mark.parametrize("algorithm", ["linear_learner", "factorization_machines"])
def test_job_on_three_masters_counts_every_record_once(cluster_stack, tmp_path, algorithm):
    _, settings = cluster_stack
    X, y = _classification(6000, 20, seed=3)
    topic = _name("cl-data")
    ensure_topic(settings.kafka_client_conf(), topic, partitions=4)
    with Producer(settings.kafka, settings.kafka_conf) as producer:
        producer.send_batch(topic, X[:5000], y[:5000], batch_size=50)
    client = settings.redis_client()
    job = _name(algorithm.split("_")[0])
    create_job(client, settings.kafka_client_conf(), job, algorithm, topic,
               {"predictor_type": "binary_classifier"}, epochs=1)
    status = train_to_end(settings, job, tmp_path)
    assert status["records_applied"] == 5000 and status["records_dead_lettered"] == 0
    assert status["finalize_calls"] == 1 and status["partitions"] == status["end_offsets"]
    backend = RedisState(client, job).backend
    holding = {client.nodes_manager.get_node_from_slot(shard.client.slot).name
               for shard in backend.shards() if client.exists(*[shard.state(k) for k in backend.specs()])}
    assert len(holding) >= 2, "the job's state sits on one node"
    model = load_job_model(client, job)
    assert float(np.mean(model.evaluate(Batch(X[5000:])) == y[5000:])) > 0.8


def test_synchronous_rounds_are_refused_on_a_cluster_before_anything_is_written(cluster_stack):
    _, settings = cluster_stack
    topic = _name("cl-sync")
    ensure_topic(settings.kafka_client_conf(), topic, partitions=2)
    client = settings.redis_client()
    job = _name("fm-sync")
    with pytest.raises(JobError, match="single-node Redis"):
        create_job(client, settings.kafka_client_conf(), job, "factorization_machines", topic,
                   {"predictor_type": "binary_classifier", "aggregation": "sync", "n_features": 20}, epochs=1)
    assert not client.keys(f"*{job}*")


def test_sigkilled_workers_lose_and_duplicate_nothing(cluster_stack, tmp_path):
    """The chaos harness's exact counter job (per-record hit counts) with workers SIGKILLed
    and SIGSTOPped mid-job on the sharded state: 0 lost, 0 duplicated, finalized once."""
    home, settings = cluster_stack
    profile = Profile("cluster-kill", records=30_000, seed=5, msg_rows=5, max_messages=2, fault_gap_s=(1.5, 3.0),
                      faults=("kill", "stop"), min_workers=1, max_workers=3, timeout_s=600.0)
    result = run_chaos(settings, home, profile, tmp_path)
    print(result.summary())
    assert result.faults["kill"] >= 1, result.summary()
    assert result.lost == 0 and result.duplicated == 0, result.summary()
    assert result.ok, result.summary()


def test_state_larger_than_any_node_trains_finalizes_and_serves_end_to_end(tmp_path_factory, tmp_path, monkeypatch):
    """Factorization machines over 2^20 hashed features x 8 factors (Adagrad): a 72 MiB state
    on 4 masters whose maxmemory is 64 MiB each (no eviction: a node over it refuses writes).
    The state cannot fit on one node, fits the cluster, and every record is trained into it.

    The final snapshot (a 36 MiB model and the 72 MiB training state kept beside it, both
    Ed25519-signed) would not fit on any node: both are stored in parts spread over the
    masters, the model is published to the topic in parts; a loader and a subscriber assemble
    it, verify the whole and predict, and the state is read back for ``--from-snapshot``. A
    missing part is refused."""
    from tests.conftest import _start, _stop

    from streamlearn.batch import SparseRows
    from streamlearn.snapshots.parts import Manifest, PartialSnapshot
    from streamlearn.snapshots.signing import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, generate_keys
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.snapshots.subscriber import ModelSubscriber
    from streamlearn.snapshots.verified import stored_snapshot

    home = tmp_path_factory.mktemp("cluster-maxmemory")
    settings, dog = _start(home, timeout=180, redis_cluster=4, redis_maxmemory="64mb")
    try:
        rng = np.random.default_rng(11)
        n, nnz, d = 3000, 10, 1 << 20
        indices = rng.integers(0, d, size=(n, nnz)).astype(np.int64)
        indices.sort(axis=1)
        X = SparseRows(np.arange(0, n * nnz + 1, nnz, dtype=np.int64), indices.ravel(),
                       np.ones(n * nnz, dtype=np.float32), d)
        y = (indices[:, 0] < d // 2).astype(np.float32)  # learnable from which features occur
        topic = _name("cl-big")
        ensure_topic(settings.kafka_client_conf(), topic, partitions=2)
        with Producer(settings.kafka, settings.kafka_conf) as producer:
            producer.send_batch(topic, X, y, batch_size=100)
        client = settings.redis_client()
        job = _name("fm-big")
        private, public = generate_keys(tmp_path / "keys", "signer")
        env = {"STREAMLEARN_KAFKA": settings.kafka, "STREAMLEARN_REDIS": settings.redis, SIGNING_KEY_ENV: str(private)}
        create_job(client, settings.kafka_client_conf(), job, "factorization_machines", topic,
                   {"predictor_type": "binary_classifier", "num_factors": 8}, epochs=1)
        spec = RedisState(client, job).keys()["wv"]
        state_bytes = int(np.prod(spec.shape)) * 4
        limit = 64 * 1024 * 1024
        assert state_bytes > limit, "the state would fit on one node"
        procs = [start_worker(job, tmp_path, env)]
        try:
            status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "job to finish")
        finally:
            assert stop_all(procs) == [0]
        assert status["records_applied"] == n and status["records_dead_lettered"] == 0
        assert status["finalize_calls"] == 1
        used = [client.get_redis_connection(node).info("memory")["used_memory"] for node in client.get_primaries()]
        assert all(u < limit for u in used) and sum(used) > state_bytes, used

        store = ModelStore(client)
        version = store.latest_version(job)
        assert store.redis.get(store.key(job, version)) is None  # not one value on the home node
        manifest = Manifest.from_bytes(store.redis.get(f"{store.key(job, version)}:parts"))
        entry = store.metadata(job, version)
        assert entry["training_state"] is True  # continuable with --from-snapshot
        assert manifest.size == entry["snapshot_bytes"] > (32 << 20) and len(manifest.parts) > 3
        kept = Manifest.from_bytes(store.redis.get(f"{store.key(job, version)}:state:parts"))
        assert kept.size == entry["state_bytes"] > state_bytes // 2  # wv's accumulators beside the model
        for parts in (manifest.parts, kept.parts):
            nodes = {client.nodes_manager.get_node_from_slot(client.keyslot(key)).name for key, _, _ in parts}
            assert len(nodes) == 4, nodes

        monkeypatch.setenv(TRUSTED_KEYS_ENV, f"{job}={public}")
        model = load_job_model(client, job)  # assembled, checksum and Ed25519 signature verified
        predicted = model.evaluate(Batch(X))
        assert float(np.mean(predicted == y)) > 0.9  # the training rows: every one was learned
        with ModelSubscriber(job, settings.kafka, store=store) as subscriber:  # from the topic, in parts
            streamed = subscriber.wait_for(version, timeout=120)
            assert subscriber.rejected == 0
        np.testing.assert_array_equal(streamed.evaluate(Batch(X)), predicted)
        assert stored_snapshot(store, job, version, with_state=True).state[ACCUMULATORS].nbytes == state_bytes // 2

        client.delete(manifest.parts[1][0])
        with pytest.raises(PartialSnapshot, match=rf"part 2 of {len(manifest.parts)} .* is missing"):
            load_job_model(client, job)
    finally:
        _stop(home, dog, purge=True)
