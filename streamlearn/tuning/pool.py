"""``streamlearn worker --study STUDY``: one process of the pool that serves a study.

It takes a trial that needs a worker (a running trial nobody serves, or a resumed one),
else asks Optuna for a new trial while fewer than ``parallel`` are running and fewer than
``trials`` were started, creates its job (an ordinary job over the study's topic, its own
consumer group) and serves it: an ordinary :class:`~streamlearn.runtime.worker.Worker`
trains in a thread while this loop watches ``records_applied``. At each rung it scores the
job's current state, reports it to Optuna and asks the pruner: a loser is *paused* (its job
keeps its offsets; ``tune resume`` continues it) and the process moves on to another trial;
a winner goes on. A finished job's score completes the trial. Several processes serve
several trials at once; a trial is served by one process at a time (a Redis lease), so a
process that dies leaves its trial to the next one, which continues at the next rung.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from typing import Callable

import optuna
from optuna.trial import TrialState

from streamlearn.algorithms import make_algorithm
from streamlearn.algorithms.base import Algorithm
from streamlearn.config import Settings
from streamlearn.runtime.worker import Worker, WorkerConfig
from streamlearn.runtime.jobs import with_data_contract, create_job, job_status, set_paused
from streamlearn.streams.topics import watermarks
from streamlearn.tuning import scoring
from streamlearn.tuning.space import space_from_json
from streamlearn.tuning.study import (COMPLETED, FAILED, PRUNED, RESUMED, RUNNING, StudyKeys, StudySpec,
                                      load_study_spec, optuna_study, outcomes, record_outcome, trials)

log = logging.getLogger("streamlearn.tuning")

LEASE_MS = 20_000
POLL_S = 0.2


class StudyWorker:
    def __init__(self, study: str, settings: Settings):
        self.settings = settings
        self.client = settings.redis_client()
        self.spec: StudySpec = load_study_spec(self.client, study)
        self.keys = StudyKeys(study)
        self.study = optuna_study(settings.redis, self.spec)
        self.member = f"pool-{id(self):x}-{time.time_ns() % 10**9}"
        self._stop = threading.Event()
        self._worker: Worker | None = None
        self._validation = None

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.stop()

    def run(self) -> str:
        """Serve trials until the study has started all of them and none is left to serve."""
        if self.spec.validation_topic:
            self._validation = scoring.read_topic(self.settings.kafka_client_conf(), self.spec.validation_topic,
                                                  trial_algorithm(self.settings, self.spec))
        while not self._stop.is_set():
            job = self._claim_existing() or self._start_new()
            if job is None:
                if self._nothing_left():
                    return "finished"
                time.sleep(0.5)
                continue
            try:
                self._serve(job)
            finally:
                self.client.delete(self.keys.owner(job))
        return "stopped"

    # -- which trial --------------------------------------------------------------------
    def _lease(self, job: str) -> bool:
        return bool(self.client.set(self.keys.owner(job), self.member, nx=True, px=LEASE_MS))

    def _claim_existing(self) -> str | None:
        done = outcomes(self.client, self.spec.name)
        for job in trials(self.client, self.spec.name):
            record = done.get(job, {})
            if record.get("outcome", RUNNING) not in (RUNNING, RESUMED):
                continue
            state = job_status(self.client, job)["state"]
            # a job paused at a rung whose score was never reported (its process died) is taken too
            if not (state == "running" or (state == "paused" and record.get("rung_pending") is not None)):
                continue
            if self._lease(job):
                return job
        return None

    def _start_new(self) -> str | None:
        if not self.client.set(self.keys.ask_lock, self.member, nx=True, px=60_000):
            return None
        try:
            started = trials(self.client, self.spec.name)
            done = outcomes(self.client, self.spec.name)
            active = sum(done.get(j, {}).get("outcome", RUNNING) in (RUNNING, RESUMED) for j in started)
            if len(started) >= self.spec.trials or active >= self.spec.parallel:
                return None
            trial = self.study.ask(fixed_distributions=space_from_json(self.spec.space))
            job = self.spec.trial_job(len(started))
            trial.set_user_attr("job", job)
            try:
                create_job(self.client, self.settings.kafka_client_conf(), job, self.spec.algorithm,
                           self.spec.topic, {**self.spec.fixed, **trial.params}, epochs=self.spec.epochs,
                           origin={"study": self.spec.name, "trial": len(started)})
            except Exception:
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            self.client.hset(self.keys.trials, job, json.dumps({"number": len(started), "trial_id": trial._trial_id,
                                                                "params": trial.params}))
            record_outcome(self.client, self.spec.name, job, outcome=RUNNING)
            self._lease(job)
            log.info("%s: started trial %s %s", self.spec.name, job, trial.params)
            return job
        finally:
            self.client.delete(self.keys.ask_lock)

    def _nothing_left(self) -> bool:
        started = trials(self.client, self.spec.name)
        done = outcomes(self.client, self.spec.name)
        open_ = [j for j in started if done.get(j, {}).get("outcome", RUNNING) in (RUNNING, RESUMED)]
        return len(started) >= self.spec.trials and not open_

    # -- serving one trial --------------------------------------------------------------
    def _serve(self, job: str) -> None:
        info = trials(self.client, self.spec.name)[job]
        trial = optuna.trial.Trial(self.study, info["trial_id"])  # Optuna's handle of a trial asked elsewhere
        record = outcomes(self.client, self.spec.name).get(job, {})
        resumed = record.get("outcome") == RESUMED
        pending = record.get("rung_pending")
        if pending is not None and not resumed:  # paused at this rung by a process that died before scoring it
            if self._report(job, trial, int(pending)):
                return
            self._continue(job)
        applied = job_status(self.client, job)["records_applied"]
        todo = [] if resumed else [r for r in self.spec.rungs if str(r) not in record.get("rungs", {}) and r > applied]
        self._worker = RungWorker(job, self.settings, todo,
                                  on_rung=lambda rung: record_outcome(self.client, self.spec.name, job,
                                                                      rung_pending=rung))
        thread = threading.Thread(target=self._worker.run, name=f"trial-{job}", daemon=True)
        thread.start()
        try:
            while not self._stop.is_set():
                self.client.pexpire(self.keys.owner(job), LEASE_MS)
                if self._worker.at_rung.wait(POLL_S):
                    rung = self._worker.rungs.pop(0)
                    if self._report(job, trial, rung):
                        return
                    self._worker.at_rung.clear()
                    self._continue(job)
                    continue
                state = job_status(self.client, job)["state"]
                if state == "finished":
                    self._complete(job, trial, resumed)
                    return
                if state in ("failed", "deleting"):
                    if not resumed:
                        self.study.tell(trial, state=TrialState.FAIL)
                    record_outcome(self.client, self.spec.name, job, outcome=FAILED)
                    return
                # the rung worker pauses the job just before it signals at_rung: give it that moment
                if (state == "paused" and not self._worker.at_rung.wait(2.0)) or not thread.is_alive():
                    return  # paused by hand: leave it; a study worker takes it again once it is resumed
        finally:
            self._worker.stop()
            thread.join(timeout=60)
            self._worker = None

    def _continue(self, job: str) -> None:
        record_outcome(self.client, self.spec.name, job, rung_pending=None)
        set_paused(self.client, job, False)

    def _report(self, job: str, trial: optuna.Trial, rung: int) -> bool:
        """Score the trial at ``rung``; True when the pruner stopped (paused) it."""
        model, applied = scoring.current_model(self.client, job)
        value = self._finite(scoring.score(model, self.spec.metric, self._validation))
        log.debug("%s: %s scored at %d records for rung %d", self.spec.name, job, applied, rung)
        rungs = {**outcomes(self.client, self.spec.name).get(job, {}).get("rungs", {}), str(rung): value}
        record_outcome(self.client, self.spec.name, job, rungs=rungs)
        trial.report(value, rung)
        if not trial.should_prune():
            log.info("%s: %s at rung %d (%d applied): %s = %.5f, continues", self.spec.name, job, rung, applied,
                     self.spec.metric, value)
            return False
        set_paused(self.client, job, True)
        self.study.tell(trial, state=TrialState.PRUNED)
        record_outcome(self.client, self.spec.name, job, outcome=PRUNED, paused_at=applied, rung_pending=None)
        log.info("%s: %s pruned at rung %d (%s = %.5f): paused", self.spec.name, job, rung, self.spec.metric, value)
        return True

    def _complete(self, job: str, trial: optuna.Trial, resumed: bool) -> None:
        model, _ = scoring.current_model(self.client, job)
        value = self._finite(scoring.score(model, self.spec.metric, self._validation))
        if not resumed:  # a resumed trial was pruned in Optuna's record: its metric is ours only
            self.study.tell(trial, value)
        record_outcome(self.client, self.spec.name, job, outcome=COMPLETED, metric=value)
        log.info("%s: %s completed: %s = %.5f", self.spec.name, job, self.spec.metric, value)

    def _finite(self, value: float) -> float:
        """A metric that could not be measured (an empty holdout) ranks last."""
        if math.isfinite(value):
            return value
        return -1e300 if self.spec.direction == "maximize" else 1e300


class RungWorker(Worker):
    """A trial's worker that stops at each rung: right after the commit that brings the job's
    ``records_applied`` to the next rung it pauses the job (a commit barrier: nothing more is
    applied) and signals ``at_rung``, so every trial is scored after the same number of
    records, give or take the one message its last window held (windows are one message)."""

    def __init__(self, job: str, settings: Settings, rungs: list[int], on_rung: Callable[[int], object]):
        super().__init__(job, settings, WorkerConfig(max_messages=1))
        self.rungs = list(rungs)
        self.on_rung = on_rung  # records the pending rung first: whoever serves the trial next scores it
        self.at_rung = threading.Event()

    def _process(self, msgs) -> None:
        super()._process(msgs)
        if self.rungs and not self.at_rung.is_set():
            applied = self.record.records_applied()
            if applied >= self.rungs[0]:
                self.on_rung(self.rungs[0])
                set_paused(self.client, self.spec.name, True)
                self._next_control = 0.0  # the next step sees the pause before consuming more
                self.at_rung.set()


def trial_algorithm(settings: Settings, spec: StudySpec) -> Algorithm:
    """The algorithm of the study's trials with its data-inferred parameters (to decode the
    validation topic as the trials' jobs decode theirs)."""
    conf = settings.kafka_client_conf()
    algo = make_algorithm(spec.algorithm, spec.fixed)
    return with_data_contract(conf, spec.topic, watermarks(conf, spec.topic), algo, bounded=True)[0]


def run_study_worker(study: str, settings: Settings | None = None) -> str:
    """Entry point of ``streamlearn worker --study STUDY``."""
    worker = StudyWorker(study, settings or Settings.resolve())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    return worker.run()
