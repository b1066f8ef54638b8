"""Studies: create, status, best, resume a paused trial. The study's spec and its trials'
outcomes live in Redis next to the jobs (``sl:study:{NAME}…``); Optuna's own record (trials,
params, intermediate values, states) is an Optuna *journal storage* on the same Redis.

Why the journal on Redis, not RDB on SQLite or a journal file: a study is served by a pool
of ``worker --study`` processes on any number of machines, which already share exactly one
thing, the Redis that holds the jobs' state. A SQLite file or a journal file would be one
more shared path to provision (and SQLite's locking over network file systems is unsafe);
the journal is an append-only log with atomic appends (Redis' own ordering), which is what
many concurrent ask/report/tell calls need, and it goes where the jobs go.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import redis
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend
from optuna.trial import TrialState

from streamlearn.algorithms import make_algorithm
from streamlearn.errors import UserError
from streamlearn.runtime.contract import default_epochs
from streamlearn.runtime.jobs import JobError, with_data_contract, check_name, job_status, load_spec, set_paused
from streamlearn.snapshots.store import ModelStore
from streamlearn.streams.topics import watermarks
from streamlearn.tuning import scoring
from streamlearn.tuning.space import SpaceError, check_space, space_to_json

optuna.logging.set_verbosity(optuna.logging.WARNING)
# the Redis journal backend is marked experimental; its interface is what this module uses
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDIES = "sl:studies"
SCHEDULERS = ("asha", "hyperband", "median")
#: trial outcomes (ours; Optuna's own states cannot express "pruned, then resumed")
RUNNING, PRUNED, COMPLETED, FAILED, RESUMED = "running", "pruned", "completed", "failed", "resumed"


class StudyError(UserError, ValueError):
    """A study command that cannot be done: unknown study, name taken, bad settings."""


@dataclass
class StudySpec:
    name: str
    algorithm: str
    topic: str
    metric: str
    direction: str  # "maximize" | "minimize"
    space: dict[str, str]  # parameter -> Optuna distribution JSON
    fixed: dict[str, Any]
    trials: int
    parallel: int
    scheduler: str
    min_records: int
    reduction_factor: int
    epochs: int
    n_records: int  # records in the topic range (sampled at create)
    validation_topic: str | None = None
    warm_start: str | None = None
    created_at: float = 0.0
    num_models: int = 1  # configurations one trial explores (the linear learner packs num_models)
    warm_started: int = 0

    @property
    def max_records(self) -> int:
        """Records a trial applies when trained to completion (every epoch)."""
        return self.n_records * self.epochs

    @property
    def rungs(self) -> list[int]:
        """records_applied at which a trial is scored: R, R·η, R·η², … below a full run."""
        out, r = [], int(self.min_records)
        while r < self.max_records:
            out.append(r)
            r *= int(self.reduction_factor)
        return out

    def trial_job(self, number: int) -> str:
        return f"{self.name}.{number:03d}"


class StudyKeys:
    def __init__(self, study: str):
        base = f"sl:study:{{{study}}}"
        self.spec = f"{base}:spec"
        self.trials = f"{base}:trials"  # hash: job -> JSON {number, trial_id, params}
        self.outcomes = f"{base}:outcomes"  # hash: job -> JSON {outcome, rungs: {rung: score}, metric}
        self.ask_lock = f"{base}:ask"
        self.journal_prefix = f"sl:optuna:{{{study}}}:"

    def owner(self, job: str) -> str:
        return f"sl:study:owner:{{{job}}}"


def load_study_spec(client: redis.Redis, name: str) -> StudySpec:
    check_name(name)
    raw = client.get(StudyKeys(name).spec)
    if raw is None:
        raise StudyError(f"unknown study {name!r}")
    return StudySpec(**json.loads(raw))


def optuna_study(redis_url: str, spec: StudySpec) -> optuna.Study:
    storage = JournalStorage(JournalRedisBackend(redis_url, prefix=StudyKeys(spec.name).journal_prefix))
    return optuna.load_study(study_name=spec.name, storage=storage, pruner=pruner(spec))


def pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.scheduler == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_records,
                                                      reduction_factor=spec.reduction_factor)
    if spec.scheduler == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_records, max_resource=spec.max_records,
                                              reduction_factor=spec.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def create_study(client: redis.Redis, redis_url: str, kafka_conf: dict, name: str, algorithm: str, topic: str,
                 metric: str, space: dict, fixed: dict[str, Any], trials: int, direction: str = "max",
                 parallel: int = 1, scheduler: str = "asha", min_records: int | None = None,
                 reduction_factor: int = 3, validation_topic: str | None = None,
                 warm_start: str | None = None) -> StudySpec:
    """Check everything (space, metric, topics, warm-start study), then record the study
    and its Optuna study. No trial starts here: ``worker --study`` asks for them."""

    check_name(name)
    if trials < 1 or parallel < 1 or reduction_factor < 2:
        raise StudyError("--trials and --parallel must be at least 1, --reduction-factor at least 2")
    if scheduler not in SCHEDULERS:
        raise StudyError(f"--scheduler must be one of {list(SCHEDULERS)}, not {scheduler!r}")
    if direction not in ("max", "min", "maximize", "minimize"):
        raise StudyError(f"--direction must be max or min, not {direction!r}")
    fixed = dict(fixed)
    epochs_given = fixed.pop("epochs", None)

    check_space(algorithm, space, fixed)
    marks = watermarks(kafka_conf, topic)  # a missing topic: JobError, exit 2
    algo, sample = with_data_contract(kafka_conf, topic, marks, make_algorithm(algorithm, fixed), bounded=True)
    n_records = sample.n_records
    if n_records <= 0:
        raise StudyError(f"topic {topic} has no records to tune on")
    if validation_topic is not None:
        watermarks(kafka_conf, validation_topic)
    elif "validation_metric" in algo.param_names() and "validation_metric" not in fixed and \
            metric in scoring.holdout_metrics(algo):
        fixed["validation_metric"] = metric  # the holdout picks the packed model by the study's metric
    scoring.check_metric(algo, metric, validation_topic is not None)
    epochs = int(epochs_given) if epochs_given is not None else (default_epochs(n_records) if algo.multi_pass else 1)
    spec = StudySpec(name=name, algorithm=algorithm, topic=topic, metric=metric,
                     direction="maximize" if direction.startswith("max") else "minimize",
                     space=space_to_json(space), fixed=fixed, trials=int(trials), parallel=int(parallel),
                     scheduler=scheduler, reduction_factor=int(reduction_factor), epochs=epochs, n_records=n_records,
                     min_records=int(min_records) if min_records else _default_min_records(n_records * epochs,
                                                                                           reduction_factor),
                     validation_topic=validation_topic, warm_start=warm_start, created_at=time.time(),
                     num_models=int(algo.get_params().get("num_models", 1)))
    if spec.min_records >= spec.max_records:
        raise StudyError(f"--min-records {spec.min_records} must be below a full trial's {spec.max_records} records")
    old = _warm_start_trials(client, redis_url, spec) if warm_start else []
    spec.warm_started = len(old)
    keys = StudyKeys(name)
    if not client.set(keys.spec, json.dumps(asdict(spec), sort_keys=True), nx=True):
        raise StudyError(f"study {name!r} already exists")
    client.sadd(STUDIES, name)
    storage = JournalStorage(JournalRedisBackend(redis_url, prefix=keys.journal_prefix))
    study = optuna.create_study(study_name=name, storage=storage, direction=spec.direction)
    for frozen in old:
        study.add_trial(frozen)
    return spec


def _default_min_records(max_records: int, reduction_factor: int) -> int:
    """The first rung when none is given: three rungs below a full trial (R·η³ >= its records)."""
    return max(1, -(-max_records // reduction_factor ** 3))


def _warm_start_trials(client: redis.Redis, redis_url: str, spec: StudySpec) -> list:
    """The finished trials of study ``spec.warm_start`` (same algorithm, metric and space) as
    trials to add to the new study: the sampler starts from what they learned."""
    old_spec = load_study_spec(client, spec.warm_start)
    if (old_spec.algorithm, old_spec.metric, old_spec.direction) != (spec.algorithm, spec.metric, spec.direction):
        raise StudyError(f"--warm-start {spec.warm_start}: that study tunes {old_spec.algorithm} for "
                         f"{old_spec.direction} {old_spec.metric}, not {spec.algorithm} for {spec.direction} {spec.metric}")
    if old_spec.space != spec.space:
        raise SpaceError(f"--warm-start {spec.warm_start}: its search space differs from this one")
    out = []
    for t in optuna_study(redis_url, old_spec).get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        out.append(optuna.trial.create_trial(state=t.state, value=t.value, params=t.params,
                                             distributions=t.distributions, intermediate_values=t.intermediate_values,
                                             user_attrs={**t.user_attrs, "warm_start_from": spec.warm_start}))
    if not out:
        raise StudyError(f"--warm-start {spec.warm_start}: that study has no finished trial")
    return out


# -- trials' records ----------------------------------------------------------------------
def trials(client: redis.Redis, name: str) -> dict[str, dict]:
    """job -> {number, trial_id, params}, in trial order."""
    raw = client.hgetall(StudyKeys(name).trials)
    rows = {k.decode(): json.loads(v) for k, v in raw.items()}
    return dict(sorted(rows.items(), key=lambda kv: kv[1]["number"]))


def outcomes(client: redis.Redis, name: str) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in client.hgetall(StudyKeys(name).outcomes).items()}


def record_outcome(client: redis.Redis, name: str, job: str, **changes: Any) -> dict:
    """Update the trial's record (only its current owner writes it)."""
    keys = StudyKeys(name)
    current = json.loads(client.hget(keys.outcomes, job) or b'{"outcome": "running", "rungs": {}, "metric": null}')
    current.update(changes)
    client.hset(keys.outcomes, job, json.dumps(current, sort_keys=True))
    return current


def _trial_state(outcome: dict, job: dict | None) -> str:
    kind = outcome.get("outcome", RUNNING)
    if kind in (PRUNED, COMPLETED, FAILED):
        return kind
    return (job or {}).get("state", "running")  # running, or paused by hand


def study_status(client: redis.Redis, name: str) -> dict[str, Any]:
    spec = load_study_spec(client, name)
    done = outcomes(client, name)
    rows = []
    for job, info in trials(client, name).items():
        status = _job_status_or_none(client, job)
        outcome = done.get(job, {})
        rows.append({"job": job, "number": info["number"], "params": info["params"],
                     "state": _trial_state(outcome, status),
                     "records_applied": status["records_applied"] if status else None,
                     "rungs": outcome.get("rungs", {}), "metric": outcome.get("metric"),
                     "resumed": outcome.get("outcome") == RESUMED or bool(outcome.get("resumed"))})
    ended = sum(r["state"] in (PRUNED, COMPLETED, FAILED) for r in rows)
    applied = sum(r["records_applied"] or 0 for r in rows)
    return {
        "study": name, "algorithm": spec.algorithm, "topic": spec.topic, "metric": spec.metric,
        "direction": spec.direction, "scheduler": spec.scheduler, "rungs": spec.rungs,
        "state": "finished" if len(rows) >= spec.trials and ended == len(rows) else "running",
        "trials_planned": spec.trials, "trials_started": len(rows), "warm_started": spec.warm_started,
        "configurations_explored": len(rows) * spec.num_models,
        "records_applied": applied, "records_full_training": spec.trials * spec.max_records,
        "best": _best_row(rows, spec),
        "trials": rows,
    }


def _job_status_or_none(client: redis.Redis, job: str) -> dict | None:
    try:
        return job_status(client, job)
    except JobError:  # deleted
        return None


def _best_row(rows: list[dict], spec: StudySpec) -> str | None:
    done = [r for r in rows if r["state"] == COMPLETED and r["metric"] is not None]
    if not done:
        return None
    pick = max if spec.direction == "maximize" else min
    return pick(done, key=lambda r: r["metric"])["job"]


def best(client: redis.Redis, name: str) -> dict[str, Any]:
    """The completed trial with the best metric: its job, searched params (``job_params``:
    every parameter of its job), metric and final snapshot version."""

    status = study_status(client, name)
    job = status["best"]
    if job is None:
        raise StudyError(f"study {name!r} has no completed trial yet")
    row = next(r for r in status["trials"] if r["job"] == job)
    spec = load_study_spec(client, name)
    return {"study": name, "job": job, "params": row["params"], "job_params": load_spec(client, job).params,
            "metric": row["metric"], "metric_name": spec.metric,
            "snapshot_version": ModelStore(client).latest_version(job)}


def resume_trial(client: redis.Redis, name: str, job: str) -> None:
    """Resume a pruned (paused) trial: its job continues from its stored offsets, served by
    the study's workers, to completion (no more pruning); its final metric then counts."""
    spec = load_study_spec(client, name)
    if job not in trials(client, name):
        raise StudyError(f"study {name!r} has no trial {job!r}")
    if outcomes(client, name).get(job, {}).get("outcome") != PRUNED:
        raise StudyError(f"trial {job!r} of study {spec.name!r} is not pruned: only a paused loser can be resumed")
    record_outcome(client, name, job, outcome=RESUMED, resumed=True)
    set_paused(client, job, False)
