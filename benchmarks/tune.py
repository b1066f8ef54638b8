"""Issue 15's multi-fidelity target: a study of >= 16 linear-learner trials over learning
rate, l1, l2 and mini-batch size (ASHA, η = 3, scored on a validation topic) against
training every one of those trials to completion.

The study runs as a user would run it: ``tune create`` then a pool of ``worker --study``
processes. The baseline then *resumes every pruned trial* (``tune resume``: each continues
from its paused offsets) and serves them to completion, so both figures come from the same
configurations, and full training costs ``trials x records per trial`` records. Held-out
accuracy is measured on test rows that neither the trials nor their validation ever saw."""
from __future__ import annotations

import subprocess
import sys
import time

from benchmarks._core import Context, Row, fmt_s

SPACE = ["learning_rate=0.001:1:log", "l1=0.0000001:0.01:log", "l2=0.0000001:0.01:log", "mini_batch_size=32:1024:int:log"]


def _pool(ctx: Context, study: str, n: int) -> None:
    logs = ctx.tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", "--study", study], env=ctx.worker_env(),
                              stdout=open(logs / f"{study}-{i}-{time.time_ns()}.log", "w"), stderr=subprocess.STDOUT)
             for i in range(n)]
    try:
        for p in procs:
            if p.wait(timeout=ctx.p["case_timeout_s"]) != 0:
                raise RuntimeError(f"study worker exited with {p.returncode}; see {logs}/{study}-*.log")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def case_multi_fidelity(ctx: Context) -> list[Row]:
    from streamlearn import datasets
    from streamlearn.snapshots.format import decode_snapshot, load_model
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic
    from streamlearn.tuning import study as studies
    from streamlearn.tuning.space import build_space

    from benchmarks import _streams as st

    trials, d = ctx.p["tune_trials"], ctx.p["dense_d"]
    Xtr, ytr, Xte, yte = st.dense(ctx)  # the benchmark's dense set (1,000,000 x 100 in the full profile)
    half = len(yte) // 2  # validation (rung scores) | test (held-out accuracy of the result)
    s = ctx.settings
    topics = {"train": st.produce(ctx, "dense", Xtr, ytr).topic, "valid": ctx.name("tune-valid")}
    ensure_topic(s.kafka_client_conf(), topics["valid"], partitions=ctx.p["partitions"])
    with Producer(s.kafka, s.kafka_conf) as p:
        p.send_batch(topics["valid"], Xte[:half], yte[:half], batch_size=ctx.p["message_rows"])
    client = s.redis_client()
    name = ctx.name("study")
    spec = studies.create_study(client, s.redis, s.kafka_client_conf(), name, "linear_learner", topics["train"],
                                "log_loss", build_space(None, SPACE, []), {"num_models": 1, "epochs": 1}, trials,
                                direction="min",
                                parallel=2, scheduler="asha", reduction_factor=3,
                                min_records=-(-len(ytr) // ctx.p["tune_first_rung_divisor"]),
                                validation_topic=topics["valid"])
    ctx.log(f"study {name}: {trials} trials, rungs {spec.rungs} of {spec.max_records} records")
    t0 = time.perf_counter()
    _pool(ctx, name, 2)
    study_s = time.perf_counter() - t0
    status = studies.study_status(client, name)
    applied, full = status["records_applied"], status["records_full_training"]
    found = studies.best(client, name)["job"]
    pruned = [t["job"] for t in status["trials"] if t["state"] == "pruned"]
    ctx.log(f"study done in {fmt_s(study_s)}: {applied} of {full} records, {len(pruned)} pruned; resuming them")
    for job in pruned:
        studies.resume_trial(client, name, job)
    t0 = time.perf_counter()
    _pool(ctx, name, 2)
    rest_s = time.perf_counter() - t0
    store = ModelStore(client)
    test = datasets.to_batch(Xte[half:], yte[half:])
    final = studies.study_status(client, name)["trials"]
    acc = {t["job"]: load_model(decode_snapshot(store.get(t["job"]))).score(test, "accuracy") for t in final}
    # what full training finds: the trial it would pick by the same validation score
    full_pick = min((t for t in final if t["metric"] is not None), key=lambda t: t["metric"])["job"]
    gap, share = acc[full_pick] - acc[found], applied / full
    ok = gap <= 0.002 and share <= 0.35
    return [Row("tune.multi_fidelity", f"acc {acc[found]:.4f}, {applied:,} records",
                f"full training: acc {acc[full_pick]:.4f}, {full:,} records", share,
                "acc >= full-0.002, records <= 0.35x", "pass" if ok else "FAIL",
                f"{trials} trials x {spec.max_records:,} records (d={d}), ASHA eta=3 rungs {spec.rungs} on validation "
                f"log-loss ({half:,} rows), {len(pruned)} paused; gap {gap:+.4f} (best test acc of any trial "
                f"{max(acc.values()):.4f}); study {fmt_s(study_s)}, resuming the paused ones to completion "
                f"{fmt_s(rest_s)}; ratio = records applied / full training")]


CASES = {"tune.multi_fidelity": case_multi_fidelity}
