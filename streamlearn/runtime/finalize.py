"""Finalize: turn the job's state into a model and publish it as a versioned snapshot.

Bounded jobs finalize exactly once, after every partition reached its end offset: the
elected worker (a Redis lock) reads one consistent cut of the state, runs ``finalize``,
and in one transaction stores the snapshot, counts the finalize and marks the job
finished — guarded by WATCH on the status, so a second finalizer can never publish a
second "final" model. Unbounded jobs publish periodically (``--snapshot-every``) or on
request (``streamlearn snapshot NAME``); finalize only reads the state, so it may run in
any process, concurrently with training.

No model is published from zero records: a bounded job that applied none (every record
dead-lettered, or an empty range) ends ``failed`` with the reason instead, and a periodic
or on-demand snapshot waits for the first applied record.

Every snapshot passes the job's validation gate (:mod:`streamlearn.monitoring.gate`) and
carries its decision and the job's merged data profile in its metadata. A rejected
snapshot is stored (status, reason) but never produced to the snapshot topic: the job's
``publishable_version`` only moves for the others, and ``ensure_published`` produces that.
``streamlearn snapshot NAME --force --reason R`` (:func:`force_publish`) publishes anyway,
as a new version whose gate status is ``forced``. ``streamlearn promote SOURCE --to JOB``
(:func:`promote`) stores another job's model as JOB's next version, through JOB's gate.
"""
from __future__ import annotations

import datetime as _dt
import logging

import numpy as np
import redis

from streamlearn.config import Settings
from streamlearn.errors import UserError
from streamlearn.monitoring import gate
from streamlearn.monitoring.profile import Profile
from streamlearn.monitoring.gate_data import judge_on_data, read_gate_data, unreadable
from streamlearn.registry.data import TrainingData, job_training_data, ranges_from_json
from streamlearn.registry.provenance import provenance
from streamlearn.registry.records import Registry, lineage_data, model_name
from streamlearn.runtime.jobs import JobError, JobSpec, fail_job, is_complete, load_spec
from streamlearn.runtime.record import ENDED, JobRecord
from streamlearn.snapshots.format import MAX_SNAPSHOT_BYTES, encode_detached, load_model, snapshot_of
from streamlearn.snapshots.publisher import produce_snapshot, warm_producer
from streamlearn.snapshots.store import ModelStore
from streamlearn.snapshots.verified import stored_snapshot
from streamlearn.statestore.redis_state import RedisState

log = logging.getLogger("streamlearn.finalize")
#: room left in a snapshot for its metadata (packed models' scores, params)
METADATA_ROOM_BYTES = 4 << 20

class NothingToSnapshot(JobError):
    """The job has applied no record yet: its state is no model."""


def maybe_finalize(settings: Settings, client: redis.Redis, spec: JobSpec, member: str) -> int | None:
    """Finalize a bounded job if all of its data is applied and nobody else is doing it."""
    record = JobRecord(client, spec.name)
    if record.status() in ENDED:
        return None
    if not is_complete(spec, record.offsets()):
        return None
    if not record.take_finalize_lock(member):
        return None
    try:
        return publish(settings, client, spec, final=True)
    finally:
        record.release_finalize_lock(member)


def periodic_snapshot(settings: Settings, client: redis.Redis, spec: JobSpec, member: str) -> int | None:
    """Publish if ``snapshot_every`` seconds passed since the last periodic snapshot (one
    worker wins the interval's lock; the lock's expiry is the period)."""
    record = JobRecord(client, spec.name)
    if not record.take_snapshot_turn(member, spec.snapshot_every):
        return None
    with record.one_snapshot_at_a_time(wait_s=0) as held:
        if not held:
            return None  # a snapshot is being taken (on demand, final): this period has it
        try:
            return _publish(settings, client, spec, final=False)
        except NothingToSnapshot:
            return None


def publish(settings: Settings, client: redis.Redis, spec: JobSpec, final: bool,
            force_reason: str | None = None) -> int | None:
    """Finalize the current state into a new snapshot version, store it, publish it unless
    the gate rejects it (``force_reason``: publish it anyway, recorded as ``forced``).

    Returns the version, or None when ``final`` and another finalizer already finished the
    job, or the job applied no record (then it is marked failed). Raises
    :class:`NothingToSnapshot` for a non-final snapshot of a state that applied no record.
    """
    with JobRecord(client, spec.name).one_snapshot_at_a_time():
        return _publish(settings, client, spec, final, force_reason)


def _publish(settings: Settings, client: redis.Redis, spec: JobSpec, final: bool,
             force_reason: str | None = None) -> int | None:
    record = JobRecord(client, spec.name)
    warm_producer(settings.kafka_client_conf(), spec.snapshot_topic)  # connected while the state is read
    state = record.state()
    offsets, counters = state.load_consistent()
    if final and not is_complete(spec, offsets):
        raise JobError(f"job {spec.name!r}: finalize called before all data was applied")
    if not counters.get("records_applied", 0):
        if not final:
            raise NothingToSnapshot(f"job {spec.name!r} has applied no record yet: there is no model to snapshot")
        fail_job(client, spec.name, _no_records_reason(client, spec, counters.get("records_dead_lettered", 0)))
        return None
    model = spec.algorithm_instance().finalize(state)
    store = ModelStore(client)
    version = store.next_version(spec.name)
    metadata = {
        "job": spec.name,
        "algorithm": spec.algorithm,
        "params": spec.params,
        "topic": spec.topic,
        "version": version,
        "final": final,
        "offsets": {str(p): o for p, o in sorted(offsets.items())},
        "records_applied": counters.get("records_applied", 0),
        "records_dead_lettered": counters.get("records_dead_lettered", 0),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        # lineage: the job's previous snapshot, else the snapshot it was trained from
        "parent": ({"job": spec.name, "version": counters["snapshot_version"]} if "snapshot_version" in counters
                   else spec.parent),
        "trained_from": spec.parent,  # the model this job continued (job create --from-snapshot), or None
        "data": _training_data(client, spec, offsets, counters),
        "provenance": provenance(),
    }
    profile = Profile.merged(state.backend.profiles)  # read in the same cut as the counters
    if profile is not None:
        metadata["profile"] = profile.to_metadata()
    published_attrs, published_name = _published_attrs(client, spec)
    lineage = ([TrainingData.of(model_name(spec.name, version), metadata),
                *(lineage_data(Registry(client), **metadata["parent"]) if metadata["parent"] else [])]
               if spec.gate_topic else [])
    metadata["gate"] = gate.decide(model, metadata["records_applied"], spec.gate, spec.gate_min_records,
                                   published_attrs, published_name, force_reason,
                                   _judge_on_data(settings, client, spec, model, lineage))
    kept = _kept_state(spec, state, model)
    metadata["training_state"] = kept is not None
    return _store(settings, client, spec, snapshot_of(model, metadata, kept), final)


def _store(settings: Settings, client: redis.Redis, spec: JobSpec, snapshot, final: bool) -> int | None:
    """Store ``snapshot`` (its metadata exactly as a loader will see it) in the finalize
    transaction and produce it unless its gate rejected it. The topic gets the model alone;
    its training state (a factorization machine's is twice its model) is stored beside it,
    for ``--from-snapshot`` only."""
    encoded = encode_detached(snapshot)
    data = encoded.model
    warm_producer(settings.kafka_client_conf(), spec.snapshot_topic, data)  # its codec's, while it is stored
    metadata = snapshot.metadata
    version = metadata["version"]
    status = gate.status_of(metadata)
    entry = {**_registry_entry(metadata), "snapshot_sha256": encoded.sha256}
    store = ModelStore(client)
    put = store.prepare(spec.name, data, entry, state=encoded.state)
    if not JobRecord(client, spec.name).record_snapshot(version, final, put, publishable=status != gate.REJECTED):
        store.discard(spec.name, version)  # the parts this finalizer wrote, if any
        return None  # another finalizer finished the job
    log.info("job %s: stored snapshot version %d%s (gate: %s)", spec.name, version, " (final)" if final else "", status)
    if status == gate.REJECTED:
        log.warning("job %s: snapshot version %d rejected by the gate, not published: %s", spec.name, version,
                    metadata["gate"]["reason"])
    ensure_published(settings, client, spec.name, just_stored=(version, data, entry))
    store.collect_orphans(spec.name)  # parts of earlier versions never committed (crashed writers)
    return version


def _registry_entry(metadata: dict) -> dict:
    """The registry's copy of the metadata: the profile's summary without its serialized
    sketches (hundreds of kB that only a monitor reads, from the snapshot itself)."""
    if "profile" not in metadata:
        return metadata
    return {**metadata, "profile": {"summary": metadata["profile"]["summary"]}}


def _compared_with(client: redis.Redis, spec: JobSpec) -> tuple[str, int] | None:
    """(job, version) a relative gate compares with: the job's published version, else the
    snapshot it was continued from, else None."""
    _, published = JobRecord(client, spec.name).snapshot_versions()
    if published is not None:
        return spec.name, published
    if spec.parent is not None:
        return spec.parent["job"], spec.parent["version"]
    return None


def _published_attrs(client: redis.Redis, spec: JobSpec) -> tuple[dict | None, str]:
    """(model attributes of the version a relative gate compares with, its name), or (None, "")."""
    ref = _compared_with(client, spec)
    if ref is None:
        return None, ""
    return ModelStore(client).metadata(*ref).get("model_attrs"), model_name(*ref)


def _judge_on_data(settings: Settings, client: redis.Redis, spec: JobSpec, model,
                   lineage: list[TrainingData]) -> gate.OnData | None:
    """The gate's metrics on the job's gate topic (None: it has none) for ``model`` and the
    version it is compared with; ``lineage``: the training data of ``model`` and its ancestors.
    Gate data that can no longer be read (deleted topic, expired retention) rejects."""
    if spec.gate_topic is None:
        return None
    try:
        data = read_gate_data(client, settings.kafka_client_conf(), spec.algorithm_instance(), spec.gate_topic,
                              ranges_from_json(spec.gate_offsets))
    except UserError as exc:
        return unreadable(spec.gate_topic, exc)
    ref = _compared_with(client, spec)
    compared = None if ref is None else load_model(stored_snapshot(ModelStore(client), *ref))
    return judge_on_data(data, spec.gate, model, compared, model_name(*ref) if ref else "", lineage)


def force_publish(settings: Settings, client: redis.Redis, spec: JobSpec, reason: str) -> int:
    """``snapshot NAME --force --reason R``: publish the job's newest snapshot if the gate
    rejected it (and nothing newer is published), else a new snapshot of the current
    state, either way as a new version whose gate status is ``forced`` with ``reason``.
    Snapshots are immutable: the rejected version stays rejected; the forced copy names it."""
    if not (reason or "").strip():
        raise UserError("--force needs --reason \"why this snapshot goes live despite its gate\"")
    with JobRecord(client, spec.name).one_snapshot_at_a_time():
        return _force_publish(settings, client, spec, reason)


def _force_publish(settings: Settings, client: redis.Redis, spec: JobSpec, reason: str) -> int:
    record = JobRecord(client, spec.name)
    newest, published = record.snapshot_versions(stored=True)
    store = ModelStore(client)
    if newest is not None and (published is None or published < newest) and \
            gate.status_of(store.metadata(spec.name, newest)) == gate.REJECTED:
        source = stored_snapshot(store, spec.name, newest, with_state=True)
        version = store.next_version(spec.name)
        decision = {**source.metadata["gate"], "status": gate.FORCED, "reason": reason}
        metadata = {**source.metadata, "version": version, "gate": decision, "forced_from": newest,
                    "parent": {"job": spec.name, "version": newest}}
        stored = _store(settings, client, spec, snapshot_of(load_model(source), metadata, dict(source.state) or None),
                        final=False)
        assert stored is not None  # a non-final snapshot is always stored
        return stored
    version = _publish(settings, client, spec, final=False, force_reason=reason)
    assert version is not None
    return version


#: what a promoted snapshot keeps of its source's metadata: the model's training, not its identity
PROMOTED_FIELDS = ("algorithm", "params", "topic", "offsets", "records_applied", "records_dead_lettered",
                   "trained_from", "data", "profile", "library_versions", "training_state")


class PromoteError(UserError, ValueError):
    """A model that cannot be promoted to that job (its own, or another algorithm's)."""


def promote(settings: Settings, client: redis.Redis, source: str, job: str) -> int:
    """``streamlearn promote SOURCE[@V] --to JOB``: store model ``source`` (its newest
    snapshot, or version V) as ``job``'s next version, re-encoded as ``job``'s own (metadata
    ``job`` = JOB, ``parent`` and ``promoted_from`` = the source, ``replaces`` = JOB's
    published version; the source's training data, profile and training state kept), and
    publish it if it passes ``job``'s gate — the same checks a snapshot of ``job`` passes,
    compared with ``job``'s published version. Returns the new version (rejected: stored,
    not published)."""
    spec = load_spec(client, job)
    registry = Registry(client)
    entry = registry.resolve(source)
    src = {"job": entry["job"], "version": entry["version"]}
    if src["job"] == job:
        raise PromoteError(f"{model_name(**src)} is {job}'s own snapshot already")
    if entry.get("algorithm") != spec.algorithm:
        raise PromoteError(f"{model_name(**src)} is a {entry.get('algorithm')} model; {job} publishes {spec.algorithm}")
    snapshot = stored_snapshot(registry.store, src["job"], src["version"], with_state=True)  # as the source's own
    model = load_model(snapshot)
    _, published = JobRecord(client, job).snapshot_versions()
    version = ModelStore(client).next_version(job)
    metadata = {**{k: snapshot.metadata[k] for k in PROMOTED_FIELDS if k in snapshot.metadata},
                "job": job, "version": version, "final": False, "parent": src, "promoted_from": src,
                "replaces": None if published is None else {"job": job, "version": published},
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), "provenance": provenance()}
    published_attrs, published_name = _published_attrs(client, spec)
    metadata["gate"] = gate.decide(model, int(metadata.get("records_applied") or 0), spec.gate,
                                   spec.gate_min_records, published_attrs, published_name, None,
                                   _judge_on_data(settings, client, spec, model, lineage_data(registry, **src)))
    stored = _store(settings, client, spec, snapshot_of(model, metadata, dict(snapshot.state) or None), final=False)
    assert stored is not None  # a non-final snapshot is always stored
    log.info("job %s: version %d is %s promoted (gate: %s)", job, version, model_name(**src),
             metadata["gate"]["status"])
    return stored


def _training_data(client: redis.Redis, spec: JobSpec, offsets: dict[int, int], counters: dict[str, int]) -> dict:
    """The data lineage of the state cut (``offsets``, ``counters``): offset ranges, record
    counts, event-time range, and the writer schemas the job's creation sampled."""
    record = JobRecord(client, spec.name)
    data_epochs = record.read_status().data_epochs if spec.epochs > 1 else {}
    schemas = (Registry(client).job_entry(spec.name) or {}).get("schemas")
    return job_training_data(spec.topic, spec.start_offsets, spec.end_offsets, offsets, data_epochs, counters,
                             spec.epochs, schemas)


def _kept_state(spec: JobSpec, state: RedisState, model) -> dict | None:
    """The state the snapshot carries so that a job can continue from it (stored beside the
    model, not published: a 2**20-feature factorization machine's 38 MB of accumulators beside
    its 38 MB model; ``Algorithm.kept_state``); None when model and state together would exceed a
    snapshot's 1 GiB, so the model is still published."""
    kept = spec.algorithm_instance().kept_state(state, model)
    size = sum(np.asarray(a).nbytes for a in kept.values())
    model_size = sum(np.asarray(a).nbytes for a in model.to_arrays()[0].values())
    if model_size + size > MAX_SNAPSHOT_BYTES - METADATA_ROOM_BYTES:
        log.warning("job %s: the training state (%d bytes) does not fit the snapshot beside the model (%d bytes); "
                    "this snapshot cannot be continued with --from-snapshot", spec.name, size, model_size)
        return None
    return kept


def _no_records_reason(client: redis.Redis, spec: JobSpec, dead: int) -> str:
    if not dead:
        return "no records: the topic range was empty"
    first = JobRecord(client, spec.name).first_dead_letter()
    return f"all {dead} records dead-lettered: {first or 'see ' + spec.dlq_topic}"


def ensure_published(settings: Settings, client: redis.Redis, job: str,
                     just_stored: tuple[int, bytes, dict] | None = None) -> None:
    """Produce the job's newest stored snapshot to the topic unless that already happened.

    Storing (in the finalize transaction) and producing are two systems; if the producer
    failed or the process died in between, the next worker or CLI call to see the job
    publishes it. Subscribers only move to higher versions, so a repeat is harmless.
    A version the gate rejected is never produced. ``just_stored``: (version, bytes,
    metadata) the caller has just stored; sent as they are when that version is still the
    newest publishable one (reading a 38 MB FM snapshot back cost
    ~70 ms).
    """
    record = JobRecord(client, job)
    version, published = record.snapshot_versions()  # the newest version the gate let through
    if version is None or (published is not None and published >= version):
        return
    store = ModelStore(client)
    if just_stored is not None and just_stored[0] == version:
        _, data, metadata = just_stored
    else:
        data, metadata = store.get(job, version), store.metadata(job, version)
    spec_json = record.spec_json()  # the job's own snapshot topic, if it has one
    topic = JobSpec.from_json(spec_json).snapshot_topic if spec_json is not None else None
    produce_snapshot(settings.kafka_client_conf(), job, data, metadata, topic=topic, in_parts=store.spreads(len(data)))
    record.mark_published(version)
    log.info("job %s: published snapshot version %d", job, version)
