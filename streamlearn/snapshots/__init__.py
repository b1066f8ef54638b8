"""Snapshots: a safe, versioned model format; the Redis model store/registry; the Kafka
publisher and the hot-swapping subscriber.

Public API::

    encode_snapshot(model, metadata) -> bytes         decode_snapshot(data, key=<env>) -> Snapshot
    load_model(snapshot) -> Model                     Snapshot(metadata, arrays), SnapshotError
    ModelStore(redis_client)                          publish_snapshot(producer_conf, redis_client, job, data, metadata)
    ModelSubscriber(job, bootstrap, kafka_conf=None, from_beginning=True)
"""
from streamlearn.snapshots.format import (
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    Snapshot,
    SnapshotError,
    decode_snapshot,
    encode,
    encode_snapshot,
    load_model,
    snapshot_of,
)
from streamlearn.snapshots.publisher import SNAPSHOT_TOPIC, SnapshotPublishError, produce_snapshot, publish_snapshot
from streamlearn.snapshots.store import ModelStore, SnapshotAbandoned, SnapshotConflict, SnapshotNotFound
from streamlearn.snapshots.subscriber import LoadedModel, ModelSubscriber

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "Snapshot",
    "SnapshotError",
    "snapshot_of",
    "encode",
    "encode_snapshot",
    "decode_snapshot",
    "load_model",
    "ModelStore",
    "SnapshotNotFound",
    "SnapshotAbandoned",
    "SnapshotConflict",
    "SNAPSHOT_TOPIC",
    "SnapshotPublishError",
    "publish_snapshot",
    "produce_snapshot",
    "ModelSubscriber",
    "LoadedModel",
]
