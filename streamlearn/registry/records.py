"""The registry's own Redis records, beside the model store's snapshot entries.

Everything of one job (or backtest) shares its hash tag ``{job}``, like its state and its
snapshots, so a job's lineage, its snapshots' entries and its evaluations are written
atomically where they must be and live in one Redis Cluster slot::

    sl:{job}:registry:job            JSON: the job's lineage at creation (spec, code, host, data)
    sl:{job}:registry:evaluations    hash  id -> JSON evaluation (model, data, scores, leakage)
    sl:{job}:registry:eval_seq       INCR counter handing out evaluation ids
    sl:{job}:registry:backtest       JSON: a backtest's windows and mean scores
    sl:models:jobs                   set of names with models or lineage (written by the
                                     control plane only: job create, backtest, publish_snapshot)

The keys outlive the job (``job delete`` keeps them, as it keeps the snapshots): lineage
is about models, which stay.
"""
from __future__ import annotations

import json
import re
from typing import Any

import redis

from streamlearn.errors import UserError
from streamlearn.registry.data import TrainingData
from streamlearn.snapshots.store import ModelStore, SnapshotNotFound
from streamlearn.statestore.keys import PREFIX

_REF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,99})(?:@([0-9]+))?$")


class ModelNotFound(UserError, KeyError):
    """No such model (job or version) in the registry, or a malformed ``JOB[@VERSION]``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def model_name(job: str, version: int) -> str:
    return f"{job}@{version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"JOB"`` -> (job, None: the newest), ``"JOB@VERSION"`` -> (job, version)."""
    m = _REF.fullmatch(ref or "")
    if not m:
        raise ModelNotFound(f"a model is JOB or JOB@VERSION, got {ref!r}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)


class Registry:
    """Lineage, evaluations and backtests in Redis, and the model store's entries."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self.store = ModelStore(client)

    @staticmethod
    def prefix(job: str) -> str:
        """What every registry key of ``job`` starts with (``job delete`` keeps them)."""
        return f"{PREFIX}:{{{job}}}:registry:"

    def _key(self, job: str, name: str) -> str:
        return self.prefix(job) + name

    # -- models ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> dict[str, Any]:
        """The registry entry (snapshot metadata) of ``JOB`` (newest) or ``JOB@VERSION``."""
        job, version = parse_ref(ref)
        if version is None and self.store.latest_version(job) is None:
            raise ModelNotFound(f"unknown model {ref!r}: job {job!r} has no snapshot")
        try:
            return self.store.metadata(job, version)
        except SnapshotNotFound:
            raise ModelNotFound(f"unknown model {ref!r}: job {job!r} has no snapshot version {version}") from None

    def names(self) -> list[str]:
        return self.store.jobs()

    def entries(self, job: str | None = None) -> list[dict[str, Any]]:
        return self.store.list_models(job=job)

    # -- jobs -----------------------------------------------------------------------------
    def record_job(self, job: str, entry: dict[str, Any]) -> None:
        """The job's lineage at creation (``job create`` names it in the models index, with
        :meth:`ModelStore.register_job`, once the job is completely created)."""
        self.redis.set(self._key(job, "job"), json.dumps(entry, sort_keys=True, default=str))

    def forget_job(self, job: str) -> None:
        """Remove the lineage :meth:`record_job` wrote, for a ``job create`` that failed."""
        self.redis.delete(self._key(job, "job"))

    def job_entry(self, job: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._key(job, "job"))
        return None if raw is None else json.loads(raw)

    # -- evaluations ----------------------------------------------------------------------
    def add_evaluation(self, job: str, entry: dict[str, Any]) -> str:
        """Store ``entry`` as a new evaluation of one of ``job``'s models; returns its id."""
        eid = f"E{int(self.redis.incr(self._key(job, 'eval_seq')))}"
        self.redis.hset(self._key(job, "evaluations"), eid, json.dumps({**entry, "id": eid}, sort_keys=True))
        return eid

    def queue_evaluations(self, pipe: Any, job: str, entries: list[dict[str, Any]]) -> list[str]:
        """Queue ``entries`` (evaluations of a fresh name: ids E1…En) on ``pipe``."""
        ids = [f"E{i}" for i in range(1, len(entries) + 1)]
        if entries:
            pipe.hset(self._key(job, "evaluations"), mapping={
                i: json.dumps({**e, "id": i}, sort_keys=True) for i, e in zip(ids, entries)})
            pipe.set(self._key(job, "eval_seq"), len(entries))
        return ids

    def evaluations(self, job: str, version: int | None = None) -> list[dict[str, Any]]:
        """Evaluations of ``job``'s models (of ``version`` only, when given), oldest first."""
        rows = [json.loads(v) for v in self.redis.hgetall(self._key(job, "evaluations")).values()]
        rows = [r for r in rows if version is None or r.get("version") == version]
        return sorted(rows, key=lambda r: int(str(r["id"])[1:]))

    # -- backtests ------------------------------------------------------------------------
    def queue_backtest(self, pipe: Any, name: str, entry: dict[str, Any]) -> None:
        pipe.set(self._key(name, "backtest"), json.dumps(entry, sort_keys=True))

    def backtest(self, name: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._key(name, "backtest"))
        return None if raw is None else json.loads(raw)

    def name_taken(self, name: str) -> bool:
        """Whether ``name`` already has models, lineage or a job record."""
        return (self.store.latest_version(name) is not None or self.redis.exists(self._key(name, "job")) > 0
                or self.redis.exists(f"{PREFIX}:{{{name}}}:spec") > 0)


def lineage_data(registry: Registry, job: str, version: int) -> list[TrainingData]:
    """The training data of the model and of each of its ancestors."""
    return [TrainingData.of(model_name(e["job"], e["version"]), e) for e in registry.store.lineage(job, version)]


__all__ = ["ModelNotFound", "Registry", "lineage_data", "model_name", "parse_ref"]
