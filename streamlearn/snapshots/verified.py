"""Which snapshot versions a loader believes: the model store's, in order.

A signature says *who* made a snapshot; it does not stop a publisher with a valid key (or
the shared HMAC secret) from replaying an old snapshot or claiming version 10^12, after
which a subscriber would ignore the job's genuine later versions. So:

* a snapshot loaded from the model store must carry the version it is stored under;
* a snapshot read from the topic is accepted only when the model store holds the same bytes
  under its version (when the loader has the store), else only when its version is at most
  :data:`MAX_VERSION_STEP` above the one it replaces.
"""
from __future__ import annotations

import hashlib

from streamlearn.snapshots.format import Snapshot, SnapshotError, attach_state, decode_snapshot
from streamlearn.snapshots.store import ModelStore, SnapshotNotFound

__all__ = ["MAX_VERSION_STEP", "stored_snapshot", "check_streamed_version"]

#: versions a job hands out between two snapshots a subscriber sees (periodic snapshots of a
#: job running for years stay far below it); a larger jump is a forgery unless the store confirms
MAX_VERSION_STEP = 10_000


def stored_snapshot(store: ModelStore, job: str, version: int | None = None, *, with_state: bool = False) -> Snapshot:
    """The snapshot ``version`` (the newest when None) of ``job`` from the model store,
    verified: authentic, of this job, and carrying the version it is stored under.
    ``with_state``: with the training state stored apart from the model (verified, and bound
    to the model's bytes), for continuing the job; without it, a snapshot written since the
    state is kept apart holds none."""
    if version is None:
        version = store.latest_version(job)
        if version is None:
            raise SnapshotNotFound(f"job {job!r} has no snapshots")
    data = store.get(job, version)
    snapshot = decode_snapshot(data, job=job)
    if snapshot.version != version:
        raise SnapshotError(f"snapshot stored as version {version} of job {job!r} says version "
                            f"{str(snapshot.version)[:40]} (replayed or forged)")
    state = store.get_state(job, version) if with_state else None
    if state is not None:
        snapshot = attach_state(snapshot, hashlib.sha256(data).hexdigest(), decode_snapshot(state, job=job))
    return snapshot


def check_streamed_version(snapshot: Snapshot, data: bytes, current: int | None, store: ModelStore | None) -> int:
    """The version of a snapshot read from the topic, or :class:`SnapshotError` when the store
    does not hold these bytes under it (with ``store``) or it jumps too far (without)."""
    version = snapshot.version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SnapshotError(f"snapshot has no positive int version ({str(version)[:40]!r})")
    if store is not None:
        if store.sha256(snapshot.job, version) != hashlib.sha256(data).hexdigest():
            raise SnapshotError(f"version {version} is not the model store's snapshot of job {snapshot.job!r}")
    elif current is not None and version - current > MAX_VERSION_STEP:
        raise SnapshotError(f"version {version} jumps more than {MAX_VERSION_STEP} past {current}; "
                            "give the subscriber the model store to confirm it")
    return version
