"""Snapshots on the real stack: the Redis model store/registry, the Kafka publisher and the
hot-swapping subscriber (newest version wins; bad snapshots never swapped in)."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import redis
from confluent_kafka import Producer

from streamlearn.algorithms import register
from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.algorithms.median import MedianModel
from streamlearn.batch import Batch
from streamlearn.snapshots import (
    ModelStore,
    ModelSubscriber,
    SnapshotConflict,
    SnapshotNotFound,
    decode_snapshot,
    encode_snapshot,
    load_model,
    produce_snapshot,
    publish_snapshot,
)
from streamlearn.snapshots.format import KEY_ENV, SnapshotError, encode_detached, snapshot_of
from streamlearn.snapshots.parts import WHOLE_BYTES_ENV, Manifest, split
from streamlearn.snapshots.publisher import ensure_snapshot_topic, part_key, snapshot_topic, warm_producer
from streamlearn.runtime.record import JobRecord
import streamlearn.snapshots.store as store_module
from streamlearn.snapshots.store import SnapshotAbandoned
from streamlearn.snapshots.verified import stored_snapshot

pytestmark = pytest.mark.integration


class _WideAlgorithm(Algorithm):
    name = "_test_wide"


class WideModel(Model):
    """A linear model with a big 2-D weight matrix (tens of MB)."""

    algorithm = "_test_wide"

    def __init__(self, W: np.ndarray, b: np.ndarray):
        self.W, self.b = W, b

    def evaluate(self, batch: Batch) -> np.ndarray:
        return batch.dense() @ self.W + self.b

    def to_arrays(self):
        return {"W": self.W, "b": self.b}, {"n_features": int(self.W.shape[0])}

    @classmethod
    def from_arrays(cls, arrays, attrs):
        return cls(arrays["W"], arrays["b"])


register(_WideAlgorithm, WideModel)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def _job() -> str:
    return f"snap-{uuid.uuid4().hex[:10]}"


def _publish(stack, client, job, model, version, **extra) -> bytes:
    metadata = {"job": job, "version": version, "params": {"learning_rate": 1.0},
                "offsets": {"0": 100 * version}, "records_applied": 100 * version, **extra}
    data = encode_snapshot(model, metadata)
    publish_snapshot(stack.kafka_client_conf(), client, job, data, metadata)
    return data


def _eventually(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_subscriber_ends_on_newest_and_predicts_like_the_original(stack):
    client = stack.redis_client()
    job, other = _job(), _job()
    v1, v2 = MedianModel(1.5, 10), MedianModel(2.75, 20)
    _publish(stack, client, job, v1, 1)
    d2 = _publish(stack, client, job, v2, 2, parent={"job": job, "version": 1}, metrics={"mae": 0.25})
    _publish(stack, client, other, MedianModel(99.0, 1), 7)  # another job's, newer version: ignored

    batch = Batch(np.linspace(-3, 3, 17, dtype=np.float32).reshape(-1, 1))
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf) as sub:
        model = sub.wait_for(2, timeout=60)
        assert sub.version == 2 and sub.metadata["job"] == job
        np.testing.assert_array_equal(model.evaluate(batch), v2.evaluate(batch))
        assert model.predict_records(batch) == v2.predict_records(batch)

        # Out of order / duplicated: v1 again, then v2 again. Never goes back.
        produce_snapshot(stack.kafka_client_conf(), job, ModelStore(client).get(job, 1), {"version": 1})
        produce_snapshot(stack.kafka_client_conf(), job, d2, {"version": 2})
        # Tampered (one data byte flipped, headers say v3): rejected, not swapped in.
        bad = bytearray(encode_snapshot(MedianModel(-5.0, 30), {"job": job, "version": 3}))
        at = bytes(bad).find(np.array([-5.0]).tobytes())
        bad[at] ^= 0xFF
        produce_snapshot(stack.kafka_client_conf(), job, bytes(bad), {"version": 3})
        _eventually(lambda: sub.rejected == 1, 30, "the tampered snapshot to be rejected")
        assert sub.version == 2 and sub.model.median == 2.75

        # Still alive: a good v4 is picked up live.
        _publish(stack, client, job, MedianModel(4.0, 40), 4, parent={"job": job, "version": 2})
        assert sub.wait_for(4, timeout=30).median == 4.0
        assert sub.version == 4
    client.close()


def test_subscriber_only_new_snapshots_and_timeout(stack):
    client = stack.redis_client()
    job = _job()
    _publish(stack, client, job, MedianModel(1.0, 1), 1)
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf, from_beginning=False) as sub:
        with pytest.raises(TimeoutError):
            sub.wait_for(timeout=3)
        assert sub.model is None and sub.version is None
        _publish(stack, client, job, MedianModel(2.0, 2), 2)
        assert sub.wait_for(timeout=30).median == 2.0
    client.close()


def test_a_stored_snapshot_is_published_from_the_store_or_as_just_stored(stack):
    """A finalizer that died between storing a snapshot and producing it: the next
    ``ensure_published`` (a worker's control loop, the CLI) sends the stored bytes, not what
    a caller offers for another version; a caller that has just stored the newest version
    has its own bytes sent; a published version is not sent again."""
    from streamlearn.runtime.finalize import ensure_published
    from streamlearn.statestore.keys import StoreKeys

    from streamlearn.snapshots.publisher import SNAPSHOT_TOPIC
    from streamlearn.streams.topics import end_offsets

    client = stack.redis_client()
    job, store = _job(), ModelStore(client)
    counters = StoreKeys(job).counters

    def stored(version: int, median: float) -> tuple[bytes, dict]:
        metadata = {"job": job, "version": version, "algorithm": "median"}
        data = encode_snapshot(MedianModel(median, version), metadata)
        store.put(job, data, metadata)
        client.hset(counters, "snapshot_version", version)  # as the finalize transaction does
        return data, metadata

    with ModelSubscriber(job, stack.kafka, stack.kafka_conf) as sub:
        stored(1, 3.0)
        other = encode_snapshot(MedianModel(9.0, 5), {"job": job, "version": 5, "algorithm": "median"})
        ensure_published(stack, client, job, just_stored=(5, other, {"version": 5}))
        assert sub.wait_for(timeout=30).median == 3.0 and sub.version == 1
        assert int(client.hget(counters, "published_version")) == 1
        data, metadata = stored(2, 4.0)
        ensure_published(stack, client, job, just_stored=(2, data, metadata))
        assert sub.wait_for(version=2, timeout=30).median == 4.0
        before = sum(end_offsets(stack.kafka_client_conf(), SNAPSHOT_TOPIC).values())
        ensure_published(stack, client, job)  # nothing new: nothing sent
        assert sum(end_offsets(stack.kafka_client_conf(), SNAPSHOT_TOPIC).values()) == before
    client.close()


def test_store_versions_registry_and_lineage(stack):
    client = stack.redis_client()
    store = ModelStore(client)
    job = _job()
    assert store.versions(job) == [] and store.latest_version(job) is None
    with pytest.raises(SnapshotNotFound):
        store.get(job)
    n1, n2 = store.next_version(job), store.next_version(job)
    assert (n1, n2) == (1, 2)
    d1 = _publish(stack, client, job, MedianModel(1.0, 5), n1)
    d2 = _publish(stack, client, job, MedianModel(2.0, 9), n2, parent={"job": job, "version": n1},
                  metrics={"mae": 0.125})

    assert store.versions(job) == [1, 2] and store.latest_version(job) == 2
    assert store.get(job) == d2 and store.get(job, 1) == d1
    assert load_model(decode_snapshot(store.get(job))).median == 2.0
    assert job in store.jobs()

    md = store.metadata(job, 2)
    assert md["version"] == 2 and md["algorithm"] == "median" and md["metrics"] == {"mae": 0.125}
    assert md["params"] == {"learning_rate": 1.0} and md["offsets"] == {"0": 200}
    assert md["model_attrs"] == {"n": 9} and md["snapshot_bytes"] == len(d2)
    assert set(md["library_versions"]) == {"streamlearn", "numpy", "python"}
    assert [e["version"] for e in store.lineage(job)] == [2, 1]

    rows = store.list_models(job=job)
    assert [(r["job"], r["version"]) for r in rows] == [(job, 1), (job, 2)]
    assert all("arrays" not in r for r in rows)
    assert (job, 2) in [(r["job"], r["version"]) for r in store.list_models(algorithm="median")]
    assert store.list_models(job=job, algorithm="kmeans") == []

    # Versions are immutable; an identical re-put is a no-op; the counter never hands out a used one.
    store.put(job, d2, decode_snapshot(d2).metadata)
    with pytest.raises(SnapshotConflict):
        store.put(job, d1, {"job": job, "version": 2})
    store.put(job, encode_snapshot(MedianModel(3.0, 1), {"job": job, "version": 10}), {"job": job, "version": 10})
    assert store.next_version(job) == 11
    client.close()


def test_tens_of_megabytes_through_kafka_and_consistent_reads(stack):
    client = stack.redis_client()
    job = _job()
    rng = np.random.default_rng(0)
    big = WideModel(rng.standard_normal((2048, 2560)), rng.standard_normal(2560))  # 40 MiB of float64
    t0 = time.perf_counter()
    data = encode_snapshot(big, {"job": job, "version": 1})
    t1 = time.perf_counter()
    publish_snapshot(stack.kafka_client_conf(), client, job, data, {"version": 1})
    t2 = time.perf_counter()
    print(f"\n40 MiB snapshot: {len(data) / 2**20:.1f} MiB, encode {t1 - t0:.3f}s, store+publish {t2 - t1:.3f}s")

    X = rng.standard_normal((6, 2048)).astype(np.float32)
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf) as sub:
        model = sub.wait_for(1, timeout=120)
        print(f"received and loaded after {time.perf_counter() - t2:.3f}s")
        np.testing.assert_array_equal(model.evaluate(Batch(X)), big.evaluate(Batch(X)))
        assert not model.W.flags.writeable

        # Readers during swaps always see a (model, version, metadata) that belong together.
        seen, stop = [], threading.Event()

        def reader():
            while not stop.is_set():
                cur = sub.current
                if cur is not None:
                    same = cur.version == cur.metadata["version"]
                    seen.append((cur.version, same and (cur.version == 1 or float(cur.model.b[0]) == float(cur.version))))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for v in (2, 3, 4):
                small = WideModel(np.zeros((4, 3)), np.full(3, float(v)))
                _publish(stack, client, job, small, v)
            sub.wait_for(4, timeout=60)
        finally:
            stop.set()
            thread.join()
        assert seen and all(ok for _, ok in seen)
        versions = [v for v, _ in seen]
        assert versions == sorted(versions)  # never backwards
    client.close()


def _parts_of(client, job: str, version: int) -> list[bytes]:
    """The part keys a plain Redis holds for ``job``'s ``version``."""
    return sorted(client.scan_iter(match=f"sl:{{{job}}}:snapshot:{version}:[0-9]*", count=1000))


def _wide(job: str, version: int, rows: int = 300) -> tuple[WideModel, bytes]:
    """A ~300 KB snapshot: several parts of the 64 KiB the tests below set as one message."""
    rng = np.random.default_rng(version)
    model = WideModel(rng.standard_normal((rows, 128)), np.full(128, float(version)))
    return model, encode_snapshot(model, {"job": job, "version": version})


def test_a_snapshot_over_one_message_on_one_redis_is_stored_and_published_in_parts(stack, monkeypatch):
    """One plain Redis: a snapshot over one message (64 MiB; 64 KiB here through the setting)
    is stored as parts under the job's tag with the manifest in the commit (no command carries
    it whole), published in parts, and assembled and verified by a loader and a subscriber."""
    monkeypatch.setenv(WHOLE_BYTES_ENV, str(64 << 10))
    client = stack.redis_client()
    job = _job()
    model, data = _wide(job, 1)
    publish_snapshot(stack.kafka_client_conf(), client, job, data, {"version": 1})
    store = ModelStore(client)
    assert store.redis.get(store.key(job, 1)) is None  # not one value
    manifest = Manifest.from_bytes(store.redis.get(f"{store.key(job, 1)}:parts"))
    assert manifest.size == len(data) and len(manifest.parts) == -(-len(data) // (64 << 10)) >= 4
    assert [k.decode() for k in _parts_of(store.redis, job, 1)] == sorted(k for k, _, _ in manifest.parts)
    assert store.get(job, 1) == data and store.sha256(job, 1) == manifest.sha256

    X = Batch(np.random.default_rng(5).standard_normal((4, 300)).astype(np.float32))
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf, store=store) as sub:  # from the topic, in parts
        np.testing.assert_array_equal(sub.wait_for(1, timeout=60).evaluate(X), model.evaluate(X))
        assert sub.rejected == 0
    client.close()


def test_a_training_state_kept_apart_is_stored_with_its_model_and_bound_to_it(stack, monkeypatch):
    """The store keeps a snapshot's training state beside its model, in the same put and in
    parts like it (one message and the state's parts lowered to 64 KiB); it is read with
    the model only when asked for, and only as the state encoded with those model bytes:
    another version's state in its place is refused. The parts of a put whose commit never
    came, the state's too, are collected. By default a state over one message is one value,
    staged ahead of the put (as a model over STAGED_BYTES is) and renamed into place."""
    client = stack.redis_client()
    store, job = ModelStore(client), _job()
    monkeypatch.setattr(store_module, "STAGED_BYTES", 32 << 10)
    whole = encode_detached(snapshot_of(_wide(job, 9)[0], {"job": job, "version": 9}, {"acc": np.ones((300, 128))}))
    assert min(len(whole.model), len(whole.state)) > 32 << 10
    put = store.prepare(job, whole.model, {"version": 9}, state=whole.state)
    assert put.written_ahead and put.args[1] == put.args[5] == b""  # neither passes through the script
    store.put(job, whole.model, {"version": 9}, state=whole.state)
    with client.pipeline(transaction=True) as pipe:  # the prepared put comes second: a no-op that drops its staging
        pipe.multi()
        put.queue(pipe)
        pipe.execute()
    assert store.redis.get(f"{store.key(job, 9)}:state") == whole.state == store.get_state(job, 9)
    assert store.get(job, 9) == whole.model
    assert list(client.scan_iter(match=f"sl:{{{job}}}:snapshot:staged:*", count=1000)) == []
    monkeypatch.setenv(WHOLE_BYTES_ENV, str(64 << 10))
    monkeypatch.setattr(store_module, "STATE_WHOLE_BYTES", 64 << 10)
    acc = {v: np.random.default_rng(10 + v).standard_normal((300, 128)) for v in (1, 2, 3)}
    encoded = {v: encode_detached(snapshot_of(_wide(job, v)[0], {"job": job, "version": v}, {"acc": acc[v]}))
               for v in (1, 2, 3)}
    for v in (1, 2):
        store.put(job, encoded[v].model, {"version": v}, state=encoded[v].state)
    assert store.get(job, 1) == encoded[1].model and store.get_state(job, 1) == encoded[1].state
    assert store.redis.get(f"{store.key(job, 1)}:state") is None  # in parts, not one value
    assert store.metadata(job, 1)["state_bytes"] == len(encoded[1].state) > 4 * (64 << 10)
    np.testing.assert_array_equal(stored_snapshot(store, job, 1, with_state=True).state["acc"], acc[1])
    assert stored_snapshot(store, job, 1).state == {}  # a server loads the model alone

    store.redis.delete(f"{store.key(job, 2)}:state:parts")
    store.redis.set(f"{store.key(job, 2)}:state", encoded[1].state)  # version 1's state, validly signed
    with pytest.raises(SnapshotError, match="belongs to another snapshot"):
        stored_snapshot(store, job, 2, with_state=True)

    with client.pipeline(transaction=True) as pipe:  # crash: parts written, the commit never sent
        pipe.multi()
        store.put(job, encoded[3].model, {"version": 3}, pipe=pipe, state=encoded[3].state)
        pipe.reset()
    written = list(client.scan_iter(match=f"sl:{{{job}}}:snapshot:3:*", count=1000))
    assert any(b":state:" in key for key in written) and any(b":state:" not in key for key in written)
    assert store.collect_orphans(job, older_than_s=0) == len(written)
    assert list(client.scan_iter(match=f"sl:{{{job}}}:snapshot:3:*", count=1000)) == []
    client.close()


def test_orphaned_parts_are_collected_and_a_collected_version_is_never_committed(stack, monkeypatch):
    """Parts written for a version whose commit never came (a crash between the parts and the
    commit; a lost finalize race) are deleted: the loser's at once (``discard``), a crashed
    writer's by the next put once they are old enough; a commit after its parts were collected
    is refused, so no stored manifest names a collected part."""
    monkeypatch.setenv(WHOLE_BYTES_ENV, str(64 << 10))
    client = stack.redis_client()
    store = ModelStore(client)
    job = _job()
    data = {v: _wide(job, v)[1] for v in (1, 2, 3, 4)}

    with client.pipeline(transaction=True) as pipe:  # crash: parts written, the commit never sent
        pipe.multi()
        store.put(job, data[1], {"version": 1}, pipe=pipe)
        pipe.reset()
    crashed = _parts_of(client, job, 1)
    assert len(crashed) >= 4

    status = f"sl:{{{job}}}:test-status"
    with client.pipeline(transaction=True) as pipe:  # a lost race: the status changed under the WATCH
        pipe.watch(status)
        pipe.multi()
        store.put(job, data[2], {"version": 2}, pipe=pipe)
        client.set(status, "finished")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert store.discard(job, 2) == len(crashed) and _parts_of(client, job, 2) == []

    store.put(job, data[3], {"version": 3})  # collects only orphans an hour old: the crash is seconds old
    assert _parts_of(client, job, 1) == crashed
    assert store.collect_orphans(job, older_than_s=0) == len(crashed)
    assert _parts_of(client, job, 1) == [] and store.versions(job) == [3] and store.get(job, 3) == data[3]
    assert store.discard(job, 3) == 0 and store.get(job, 3) == data[3]  # a committed version is kept

    with client.pipeline(transaction=True) as pipe:  # a writer slower than the collection
        pipe.multi()
        store.put(job, data[4], {"version": 4}, pipe=pipe)
        assert store.collect_orphans(job, older_than_s=0) > 0
        with pytest.raises(redis.ResponseError, match="ABANDONED"):
            pipe.execute()
    assert store.versions(job) == [3] and _parts_of(client, job, 4) == []
    client.close()


def test_a_finalize_whose_parts_were_collected_writes_nothing_of_the_job(stack, monkeypatch):
    """A finalizer slower than the orphan collection: its snapshot is refused before the
    transaction, so the job is neither marked finished nor pointed at a version never stored
    (an error reply inside MULTI would not have undone those writes); a fresh put then goes
    through."""
    monkeypatch.setenv(WHOLE_BYTES_ENV, str(64 << 10))
    client = stack.redis_client()
    store = ModelStore(client)
    job = _job()
    record = JobRecord(client, job)
    put = store.prepare(job, _wide(job, 1)[1], {"version": 1})
    assert put.written_ahead and store.collect_orphans(job, older_than_s=0) > 0
    with pytest.raises(SnapshotAbandoned):
        record.record_snapshot(1, True, put)
    assert client.hget(record.store.counters, "snapshot_version") is None
    assert client.hget(record.store.counters, "finalize_calls") is None
    assert record.status() is None and store.versions(job) == []

    assert record.record_snapshot(2, True, store.prepare(job, _wide(job, 2)[1], {"version": 2}))
    assert record.snapshot_versions(stored=True)[0] == 2 and store.versions(job) == [2]
    assert record.status() == "finished"
    client.close()


def test_a_subscriber_that_missed_parts_reads_that_version_from_the_store(stack, monkeypatch):
    """A subscriber that started mid-publish sees a manifest whose first part it never read:
    with the model store it takes that version from there; without, it rejects it."""
    monkeypatch.setenv(WHOLE_BYTES_ENV, str(64 << 10))
    client = stack.redis_client()
    job = _job()
    model, data = _wide(job, 1)
    store = ModelStore(client)
    store.put(job, data, {"version": 1})
    pieces = split(data)
    keys = [part_key(job, i) for i in range(len(pieces))]
    manifest = Manifest.of(job, 1, data, pieces, [k.decode() for k in keys])
    ensure_snapshot_topic(stack.kafka_client_conf())
    producer, topic, headers = Producer(stack.kafka_client_conf()), snapshot_topic(), [("version", b"1")]
    for key, piece in list(zip(keys, pieces))[1:]:  # part 0 went out before the subscriber started
        producer.produce(topic, key=key, value=bytes(piece), headers=headers, partition=0)
    producer.produce(topic, key=job.encode(), value=manifest.to_bytes(), headers=headers, partition=0)
    assert producer.flush(30) == 0

    X = Batch(np.random.default_rng(5).standard_normal((4, 300)).astype(np.float32))
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf, store=store) as sub:
        np.testing.assert_array_equal(sub.wait_for(1, timeout=60).evaluate(X), model.evaluate(X))
        assert sub.rejected == 0
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf) as sub:
        _eventually(lambda: sub.rejected == 1, 60, "the partial snapshot to be rejected")
        assert sub.version is None
    client.close()


def test_warming_the_producer_makes_a_missing_snapshot_topic_with_its_configuration(stack):
    """A finalize warms the snapshot producer (connection, the topic's metadata) while it reads
    the state; for a topic that does not exist yet that makes it compacted with 64 MiB
    messages first: the stack's broker auto-creates topics, and a producer's bare metadata
    request for a missing one would have created it with the broker's defaults."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    topic = f"warm.snapshots.{uuid.uuid4().hex[:6]}"
    warm_producer(stack.kafka_client_conf(), topic)
    admin = AdminClient({"bootstrap.servers": stack.kafka})
    _eventually(lambda: topic in admin.list_topics(timeout=10).topics, 30, f"topic {topic}")
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(30)
    assert config["cleanup.policy"].value == "compact" and int(config["max.message.bytes"].value) == 64 << 20
