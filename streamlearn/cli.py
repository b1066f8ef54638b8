"""``streamlearn`` command line: stack, produce, ingest, job, worker, schema, snapshot, predict, evaluate, models,
lineage, compare, backtest, algorithms, topics, serve, export, keys, snapshot-topic, acl.

One parser for every command. Each command imports what it needs inside its function, so that
``streamlearn --help`` or ``job status`` does not load faust, pyarrow or the algorithms (start-up
cost, not cycles: nothing in the package imports this module). Every command reads STREAMLEARN_KAFKA / STREAMLEARN_REDIS, else the running local stack.
Errors a user can fix (unknown job, bad parameter, missing topic, wrong password) print
one clear line and exit with status 2; they never print a traceback or a secret. Kafka or
Redis unreachable: one line, exit status 3. Output to a pipe closed early (``| head``):
nothing more is written and the exit status is 141 (128 + SIGPIPE, as ``cat`` gives).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from streamlearn.errors import ServiceUnavailable, UserError


class UsageError(UserError):
    """A user error to print as one line (exit status 2)."""


#: what the CLI prints as one line with exit status 2 (a missing input file is the user's too)
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def unreachable_service(exc: BaseException) -> str | None:
    """One line for "Redis or Kafka cannot be reached" (no traceback, no credentials), else None."""
    import redis  # start-up cost: only an exception that is no streamlearn error gets here
    from confluent_kafka import KafkaException

    from streamlearn.config import KafkaUnreachable, mask_url

    if isinstance(exc, KafkaUnreachable):
        return str(exc)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        where = mask_url(os.environ.get("STREAMLEARN_REDIS", "")) or "the local stack's Redis"
        return f"cannot reach Redis at {where}: {exc}"
    if isinstance(exc, KafkaException):
        return f"Kafka error: {exc}"
    return None


def refused_access(exc: BaseException) -> str | None:
    """One line for "Redis or Kafka refused this user" (an ACL, a client setting), else None."""
    import redis
    from confluent_kafka import KafkaError, KafkaException

    from streamlearn.streams.access import refusal

    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (f"Redis refused this user (NOPERM): {exc} — check its ACL (`streamlearn acl JOB` prints the "
                "rule a job needs)")
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if isinstance(err, KafkaError) and err.code() == KafkaError._INVALID_ARG:  # e.g. ssl.ca.location unreadable
        return f"Kafka client settings rejected (STREAMLEARN_KAFKA_*): {err.str()}"
    refused = refusal(err, os.environ.get("STREAMLEARN_KAFKA", "the local stack's Kafka"))
    return None if refused is None else str(refused)


def _settings():
    from streamlearn.config import Settings

    return Settings.resolve()


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--param takes NAME=VALUE, got {pair!r}")
        params[name] = value.strip()
    return params


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))
    elif isinstance(obj, list):
        for row in obj:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
    else:
        for k, v in obj.items():
            print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


# -- commands ---------------------------------------------------------------------------------
def cmd_stack(args) -> int:
    from streamlearn.devstack import schema_registry, stack
    from streamlearn.wire.confluent import ENV_URL

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    if args.action == "up":
        password = os.environ.get(args.redis_password_env) if args.redis_password_env else None
        settings = stack.up(args.home, redis_aof=args.aof, redis_password=password, redis_cluster=args.redis_cluster,
                            redis_replicas=args.replicas, redis_maxmemory=args.redis_maxmemory, progress=say)
        print("\n".join(settings.shell_lines(reveal=True, export=True)))  # for `eval "$(streamlearn stack up)"`
        if args.schema_registry:
            print(f"export {ENV_URL}={schema_registry.up(args.home, progress=say)}")
    elif args.action == "down":
        stack.down(args.home, purge=args.purge)
    elif args.action == "fetch":
        print(stack.ensure_kafka(say))
    elif args.action in ("restart-kafka", "restart-redis"):
        (stack.restart_kafka if args.action == "restart-kafka" else stack.restart_redis)(args.home, kill=args.kill)
    else:
        _print(stack.status(args.home), args.json)
    return 0


def cmd_ingest(args) -> int:
    from streamlearn.ingest.app import run
    from streamlearn.ingest.events import IngestConfig

    if args.n_features < 1 or args.batch_size < 1:
        raise UsageError("ingest: --n-features and --batch-size must be >= 1")
    if args.raw_topic == args.topic:
        raise UsageError("ingest: RAW_TOPIC and --to TOPIC must differ")
    config = IngestConfig(args.n_features, label_required=args.label_required, batch_size=args.batch_size,
                          allow_extra_fields=args.allow_extra_fields)
    return run(args.raw_topic, args.topic, config, _settings(), exactly_once=args.exactly_once, app_id=args.app_id,
               metrics_port=args.metrics_port)


def cmd_produce(args) -> int:
    from streamlearn.streams.producer import produce_file
    from streamlearn.streams.topics import dlq_topic
    from streamlearn.wire.schema_store import SharedSchemas

    s = _settings()
    SharedSchemas(s.redis_client()).register_project_schemas()  # workers of other releases can read us
    if args.text_column:
        return _produce_text(s, args)
    if args.format == "gluonts" or args.series_column:
        return _produce_series(s, args)
    from streamlearn.reporting.progress import TerminalProgress

    with TerminalProgress(f"producing {args.from_file.name}", enabled=None if _verbosity(args) >= 0 else False) as bar:
        done = produce_file(s.kafka_client_conf(), args.topic, args.from_file, label_column=args.label_column,
                            partitions=args.partitions, batch_size=args.batch_size, n_features=args.n_features,
                            header=args.header, progress=bar.update, retention=args.retention)
    if done.dead_lettered:
        print(f"{done.dead_lettered} rows of {args.from_file} are not examples: sent to {dlq_topic(args.topic)} with the "
              f"reason (first: {done.first_bad})", file=sys.stderr)
    print(f"produced {done.records} records to {args.topic}")
    return 0


def _produce_text(s, args) -> int:
    from streamlearn.streams.text import produce_text

    report = produce_text(s.kafka_client_conf(), s.redis_client(), args.topic, args.from_file, args.text_column,
                          vocab_size=args.vocab_size, min_df=args.min_df, max_df=args.max_df, stop=args.stop_words,
                          vocab_file=args.vocab, partitions=args.partitions, batch_size=args.batch_size or 64,
                          retention=args.retention)
    for line in report.lines():
        print(line, file=sys.stderr)
    print(f"produced {report.documents} documents to {args.topic}")
    return 0


def cmd_topics(args) -> int:
    from streamlearn.runtime.predict import load_job_model

    model = load_job_model(_settings().redis_client(), args.name, args.version)
    topics = getattr(model, "topics", None)
    if topics is None:
        raise UsageError(f"job {args.name!r} trains {model.algorithm}, which has no topics")
    words = topics(args.top)
    if args.json:
        print(json.dumps([{"topic": k, "words": w} for k, w in enumerate(words)], indent=2))
    else:
        for k, w in enumerate(words):
            print(f"{k:3d}  {' '.join(w)}")
    return 0


def _produce_series(s, args) -> int:
    from streamlearn.streams.timeseries import produce_series, read_gluonts, read_long

    if args.format == "gluonts":
        if not args.freq:
            raise UsageError("--format gluonts needs --freq (e.g. D, h, 15min, W, M, Q)")
        try:
            series = read_gluonts(args.from_file, args.freq)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        if not (args.time_column and args.target_column):
            raise UsageError("--series-column needs --time-column and --target-column")
        series = read_long(args.from_file, args.series_column, args.time_column, args.target_column,
                           _columns(args.feature_columns), _columns(args.static_columns))
    n = produce_series(s.kafka_client_conf(), args.topic, series, partitions=args.partitions, retention=args.retention)
    print(f"produced {n} points of {len(series)} series to {args.topic}")
    return 0


def _columns(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def cmd_forecast(args) -> int:
    from streamlearn.runtime.forecast import forecast_job

    try:
        quantiles = [float(q) for q in args.quantiles.split(",") if q.strip()]
    except ValueError:
        raise UsageError(f"--quantiles takes numbers in (0, 1) separated by commas, got {args.quantiles!r}") from None
    if args.series and args.all:
        raise UsageError("give --series ID... or --all, not both")
    n = forecast_job(_settings().redis_client(), args.name, None if args.all else args.series, horizon=args.horizon,
                     quantiles=quantiles, samples=args.samples, output=args.output, version=args.version)
    if args.output:
        print(f"wrote {n} forecasts to {args.output}", file=sys.stderr)
    return 0


def cmd_job(args) -> int:
    from streamlearn.runtime import jobs

    s = _settings()
    client = s.redis_client()
    if args.action == "create":
        spec = jobs.create_job(client, s.kafka_client_conf(), args.name, args.algorithm, args.topic,
                               _parse_params(args.param), until=args.until, snapshot_every=args.snapshot_every,
                               from_snapshot=args.from_snapshot, epochs=args.epochs, gate=args.gate,
                               gate_min_records=args.gate_min_records, gate_topic=args.gate_topic,
                               gate_offsets=args.gate_offsets, snapshot_topic=args.snapshot_topic)
        epochs = f", {spec.epochs} epochs" if spec.epochs > 1 else ""
        print(f"created job {spec.name} ({spec.algorithm} on {spec.topic}, until {spec.until}{epochs})")
    elif args.action == "list":
        _print(jobs.list_jobs(client), args.json)
    elif args.action == "status":
        _print(jobs.job_status(client, args.name), args.json)
    elif args.action in ("pause", "resume"):
        print(f"job {args.name}: {jobs.set_paused(client, args.name, args.action == 'pause')}")
    elif args.action == "watch":
        from streamlearn.reporting.watch import watch

        return 1 if watch(client, args.name, once=args.once, every_s=args.every) == "failed" else 0
    elif args.action == "delete":
        jobs.delete_job(client, s.kafka_client_conf(), args.name, force=args.force)
        print(f"deleted job {args.name} (its snapshots stay in the model store)")
    return 0


def cmd_worker(args) -> int:
    from streamlearn.runtime.worker import run_worker

    from streamlearn.runtime.jobs import job_status

    if (args.name is None) == (args.study is None):
        raise UsageError("worker takes a job NAME or --study STUDY (one of them)")
    s = _settings()
    if args.study is not None:
        from streamlearn.tuning.pool import run_study_worker

        print(f"study worker stopped; study {args.study} is {run_study_worker(args.study, s)}")
        return 0
    with _job_progress(s.redis_client(), args.name, _verbosity(args) >= 0):
        status = run_worker(args.name, s, metrics_port=args.metrics_port)
    if status == "failed":  # one line, non-zero: the job will not go on by itself
        print(f"streamlearn: error: job {args.name} failed: {job_status(s.redis_client(), args.name)['reason']}",
              file=sys.stderr)
        return 1
    print(f"worker stopped; job {args.name} is {status}")
    return 0


def _job_progress(client, name: str, wanted: bool):
    """The job's progress line on a terminal while this worker runs (records, rate, ETA)."""
    from streamlearn.reporting.progress import follow
    from streamlearn.reporting.watch import JobView

    def read() -> tuple[float, float | None]:
        view = JobView.read(client, name)
        return view.status["records_applied"], view.expected_records()

    return follow(read, f"job {name}", enabled=None if wanted else False)


def cmd_tune(args) -> int:
    from streamlearn.tuning import study

    s = _settings()
    client = s.redis_client()
    if args.action == "create":
        from streamlearn.tuning.space import build_space

        space = build_space(args.space, args.param_range, args.param_choice)
        spec = study.create_study(client, s.redis, s.kafka_client_conf(), args.name, args.algorithm, args.topic,
                                  args.metric, space, _parse_params(args.param), args.trials,
                                  direction=args.direction, parallel=args.parallel, scheduler=args.scheduler,
                                  min_records=args.min_records, reduction_factor=args.reduction_factor,
                                  validation_topic=args.validation_topic, warm_start=args.warm_start)
        warm = f", warm-started with {spec.warm_started} trials of {spec.warm_start}" if spec.warm_start else ""
        print(f"created study {spec.name} ({spec.trials} trials of {spec.algorithm} on {spec.topic}, "
              f"{spec.direction} {spec.metric}, {spec.scheduler} rungs {spec.rungs} of {spec.max_records} records"
              f"{warm}); run `streamlearn worker --study {spec.name}`")
    elif args.action == "status":
        status = study.study_status(client, args.name)
        if args.json:
            _print(status, True)
        else:
            rows = status.pop("trials")
            _print(status, False)
            for r in rows:
                print(f"  {r['job']}  {r['state']:<9}  applied={r['records_applied']}  metric={r['metric']}  "
                      f"rungs={json.dumps(r['rungs'])}  params={json.dumps(r['params'])}")
    elif args.action == "best":
        _print(study.best(client, args.name), args.json)
    elif args.action == "resume":
        if not args.trial:
            raise UsageError("tune resume needs the TRIAL job to resume")
        study.resume_trial(client, args.name, args.trial)
        print(f"trial {args.trial} of study {args.name} resumed; `streamlearn worker --study {args.name}` serves it")
    return 0


def cmd_schema(args) -> int:
    from streamlearn.wire.schema_store import SharedSchemas
    from streamlearn.wire.serde import fingerprint_hex

    shared = SharedSchemas(_settings().redis_client())
    if args.action == "register":
        if args.file is None:
            raise UsageError("schema register needs FILE.avsc")
        print(fingerprint_hex(shared.register(args.file)))
    else:
        _print(shared.list(), args.json)
    return 0


def cmd_snapshot(args) -> int:
    from streamlearn.monitoring.gate import REJECTED, status_of
    from streamlearn.runtime import jobs
    from streamlearn.runtime.finalize import force_publish, publish
    from streamlearn.snapshots.publisher import ensure_snapshot_topic
    from streamlearn.snapshots.signing import require_signer
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.streams.topics import require_kafka

    if args.reason is not None and not args.force:
        raise UsageError("--reason goes with --force")
    s = _settings()
    client = s.redis_client()
    spec = jobs.load_spec(client, args.name)
    require_signer()
    require_kafka(s.kafka_client_conf())  # fail in seconds, before finalizing a version nobody receives
    ensure_snapshot_topic(s.kafka_client_conf(), spec.snapshot_topic)  # a missing ACL, too
    if args.force:
        version = force_publish(s, client, spec, args.reason or "")
    else:
        version = publish(s, client, spec, final=False)
    decision = ModelStore(client).metadata(args.name, version).get("gate") or {}
    if status_of({"gate": decision}) == REJECTED:
        print(f"snapshot version {version} of job {args.name} rejected by the gate (stored, not published): "
              f"{decision.get('reason')}; `streamlearn snapshot {args.name} --force --reason ...` publishes it")
        return 1
    print(f"published snapshot version {version} of job {args.name} (gate: {decision.get('status', 'none')})")
    return 0


def cmd_promote(args) -> int:
    from streamlearn.monitoring.gate import REJECTED, status_of
    from streamlearn.runtime.finalize import promote
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.streams.topics import require_kafka

    s = _settings()
    client = s.redis_client()
    require_kafka(s.kafka_client_conf())
    version = promote(s, client, args.source, args.to)
    metadata = ModelStore(client).metadata(args.to, version)
    if args.json:
        print(json.dumps({"model": f"{args.to}@{version}", "promoted_from": metadata["promoted_from"],
                          "gate": metadata["gate"]}, indent=2, sort_keys=True))
    source = "{job}@{version}".format(**metadata["promoted_from"])
    if status_of(metadata) == REJECTED:
        if not args.json:
            print(f"{source} stored as version {version} of job {args.to}, rejected by its gate (not published): "
                  f"{metadata['gate']['reason']}")
        return 1
    if not args.json:
        print(f"promoted {source} to job {args.to}: published snapshot version {version} "
              f"(gate: {metadata['gate']['status']})")
    return 0


def cmd_predict(args) -> int:
    from streamlearn.runtime.predict import predict_file

    s = _settings()
    n = predict_file(s.redis_client(), args.name, args.from_file, args.output, version=args.version,
                     params=_parse_params(args.param), label_column=args.label_column, header=args.header,
                     text_column=args.text_column)
    if args.output:
        print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    if (args.from_file is None) == (args.topic is None):
        raise UsageError("evaluate takes --from FILE or --topic TOPIC (one of them)")
    s = _settings()
    if args.topic is not None:
        return _evaluate_topic(s, args)
    if args.offsets or args.since or args.until:
        raise UsageError("--offsets, --since and --until select records of a --topic")
    from streamlearn.runtime.predict import evaluate_file

    scores = evaluate_file(s.redis_client(), args.name, args.from_file, args.label_column, version=args.version,
                           metrics=args.metric or None, params=_parse_params(args.param), header=args.header)
    _print(scores, args.json)
    return 0


def _evaluate_topic(s, args) -> int:
    from streamlearn.registry.evaluation import evaluate_on_topic
    from streamlearn.registry.report import evaluation_lines

    if args.label_column or args.param or args.version is not None:
        raise UsageError("with --topic, name the version as MODEL@VERSION; --label-column and --param are for --from")
    evaluation = evaluate_on_topic(s.redis_client(), s.kafka_client_conf(), args.name, args.topic,
                                   offsets=args.offsets, since=args.since, until=args.until,
                                   metrics=args.metric or None)
    if args.json:
        _print(evaluation, True)
    else:
        print("\n".join(evaluation_lines(evaluation)))
    return 0


def cmd_models(args) -> int:
    from streamlearn.registry.queries import list_models
    from streamlearn.registry.records import Registry
    from streamlearn.registry.report import model_lines

    rows = list_models(Registry(_settings().redis_client()), job=args.job, algorithm=args.algorithm,
                       where=args.where, since=args.since, status=args.status)
    if args.json:
        _print(rows, True)
    else:
        for line in model_lines(rows):
            print(line)
    return 0


def cmd_lineage(args) -> int:
    from streamlearn.registry.queries import lineage
    from streamlearn.registry.records import Registry
    from streamlearn.registry.report import lineage_lines

    info = lineage(Registry(_settings().redis_client()), args.model)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else "\n".join(lineage_lines(info)))
    return 0


def cmd_compare(args) -> int:
    from streamlearn.registry.queries import compare
    from streamlearn.registry.records import Registry
    from streamlearn.registry.report import compare_lines

    result = compare(Registry(_settings().redis_client()), args.model_a, args.model_b)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else "\n".join(compare_lines(result)))
    return 0


def cmd_backtest(args) -> int:
    from streamlearn.registry.backtest import run_backtest
    from streamlearn.registry.report import backtest_lines

    s = _settings()
    summary = run_backtest(s.redis_client(), s.kafka_client_conf(), args.name, args.algorithm, args.topic,
                           args.windows, args.horizon, _parse_params(args.param))
    print(json.dumps(summary, indent=2, sort_keys=True) if args.json else "\n".join(backtest_lines(summary)))
    return 0


def cmd_monitor(args) -> int:
    from streamlearn.monitoring.drift import DriftPolicy
    from streamlearn.monitoring.monitor import MonitorOptions, describe, monitor, monitor_status

    s = _settings()
    client = s.redis_client()
    if args.target == "status":
        if not args.job:
            raise UsageError("monitor status needs the JOB")
        report = monitor_status(client, args.job)
        print(json.dumps(report, indent=2, sort_keys=True) if args.json else describe(report))
        return 0
    if args.job or not args.topic:
        raise UsageError("monitor takes JOB --topic LIVE (or `monitor status JOB`)")
    options = MonitorOptions(topic=args.topic, labels_topic=args.labels_topic, window=args.window,
                             on_drift=args.on_drift, once=args.once, retrain_timeout_s=args.retrain_timeout,
                             policy=DriftPolicy(alpha=args.alpha, min_ks=args.min_ks, min_psi=args.min_psi))
    reports = monitor(s, client, args.target, options,
                      emit=(lambda r: None) if args.json else (lambda r: print(describe(r), flush=True)))
    if args.json:
        latest = reports[-1] if reports else {"drift": False, "features": {}}
        print(json.dumps({**latest, "windows": [{"window": r["window"], "rows": r["rows"], "drift": r["drift"],
                                                 "drifted_features": r["drifted_features"], "score": r["score"],
                                                 "retrain": r["retrain"], "promotion": r["promotion"]}
                                                for r in reports]},
                         indent=2, sort_keys=True))
    return 0


def cmd_algorithms(args) -> int:
    from streamlearn.algorithms import algorithm_class, available
    from streamlearn.algorithms.params import params_table

    if args.action == "list":
        if args.name:
            raise UsageError("`streamlearn algorithms` takes no name; use `streamlearn algorithms describe NAME`")
        rows = [{"algorithm": n, "summary": _summary(algorithm_class(n))} for n in available() if not n.startswith("_")]
        if args.json:
            _print(rows, True)
        else:
            width = max(len(r["algorithm"]) for r in rows)
            for r in rows:
                print(f"{r['algorithm'].ljust(width)}  {r['summary']}")
        return 0
    if not args.name:
        raise UsageError("`streamlearn algorithms describe` needs an algorithm NAME")
    cls = algorithm_class(args.name)
    infos = cls.describe_params()
    if args.json:
        _print({"algorithm": cls.name, "summary": _summary(cls), "parameters": [i.as_dict() for i in infos]}, True)
    else:
        print(f"{cls.name}: {_summary(cls)}\n")
        print(params_table(infos))
    return 0


def _summary(cls) -> str:
    """The first line of the algorithm module's docstring."""
    doc = sys.modules[cls.__module__].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def cmd_serve(args) -> int:
    from streamlearn.serving.app import BatchPolicy
    from streamlearn.serving.server import ServeOptions, serve

    if args.candidate is None and (args.canary is not None or args.shadow):
        raise UsageError("--canary and --shadow need --candidate VERSION")
    try:
        policy = BatchPolicy(args.max_batch, args.max_wait_ms, args.max_body_bytes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    serve(_settings(), args.name, ServeOptions(args.host, args.port, args.version, policy, args.candidate,
                                               _share(args.canary or "10%"), args.shadow))
    return 0


def _share(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"--canary takes a share such as 10% or 0.1, got {text!r}") from None
    if not 0 < value <= 1:
        raise UsageError(f"--canary must be above 0% and at most 100%, got {text!r}")
    return value


def cmd_report(args) -> int:
    from streamlearn.reporting.report import write_report

    path = write_report(_settings().redis_client(), args.job, args.output or Path(f"{args.job}-report.html"))
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from streamlearn.export.onnx import export_job

    path = export_job(_settings().redis_client(), args.name, args.output, version=args.version,
                      sparse=args.sparse_input)
    print(f"wrote {path}")
    return 0


def cmd_keys(args) -> int:
    from streamlearn.snapshots.signing import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, Signer, generate_keys

    private, public = generate_keys(args.dir, args.name)
    print(f"key id {Signer.from_file(private).key_id}\nprivate key (publishers, mode 0600): {private}\n"
          f"public key (verifiers): {public}\n"
          f"publishers: {SIGNING_KEY_ENV}={private}\nverifiers: {TRUSTED_KEYS_ENV}=JOB_PATTERN={public}")
    return 0


def cmd_snapshot_topic(args) -> int:
    from streamlearn.snapshots.publisher import TOPIC_CONFIG, setup_snapshot_topic

    topic = setup_snapshot_topic(_settings().kafka_client_conf(), args.topic, args.partitions)
    print(f"snapshot topic {topic}: " + ", ".join(f"{k}={v}" for k, v in TOPIC_CONFIG.items()))
    return 0


def cmd_acl(args) -> int:
    from streamlearn.runtime.acl import acl_text
    from streamlearn.runtime.jobs import JobSpec, check_name, load_spec

    s = _settings()
    if args.topic:  # a job still to be created (its user needs the rule to create it)
        check_name(args.name)
        spec = JobSpec(args.name, "", args.topic, snapshot_topic=args.snapshot_topic)
    else:
        spec = load_spec(s.redis_client(), args.name)
    print(acl_text(spec, args.user or args.name, args.principal or f"User:{args.user or args.name}", args.reader,
                   s.kafka))
    return 0


def cmd_demo(args) -> int:
    from streamlearn.demo import run_demo

    run_demo()
    return 0


def _add_header_options(parser: argparse.ArgumentParser) -> None:
    h = parser.add_mutually_exclusive_group()
    h.add_argument("--header", dest="header", action="store_true", default=None,
                   help="CSV: the first row names the columns (default: detected)")
    h.add_argument("--no-header", dest="header", action="store_false",
                   help="CSV: the first row is data; columns are named c0..cN")


def _add_model_input(parser: argparse.ArgumentParser, from_required: bool = True) -> None:
    """The options predict and evaluate share: which model, which file."""
    parser.add_argument("name")
    parser.add_argument("--from", dest="from_file", required=from_required, type=Path)
    parser.add_argument("--label-column", help="the file's label column (dropped before the model sees the rows)")
    parser.add_argument("--version", type=int)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="model options, e.g. k=5 for kmeans")
    _add_header_options(parser)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamlearn", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    st = sub.add_parser("stack", help="local Kafka (KRaft) + Redis on free ports")
    st.add_argument("action", choices=["up", "down", "status", "fetch", "restart-kafka", "restart-redis"],
                    help="fetch: Kafka's jars into the cache, once (what scripts/install runs)")
    st.add_argument("--home", type=Path, help="the stack's home (default $STREAMLEARN_HOME or ~/.local/state/streamlearn/stack)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--schema-registry", action="store_true",
                    help="up: also start a Confluent-compatible schema registry (Apicurio; needs Java 21+)")
    st.add_argument("--aof", action="store_true", default=None, help="up: Redis with an append-only file")
    st.add_argument("--redis-password-env", metavar="VAR", help="up: protect Redis with the password in $VAR")
    st.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                    help="up: a Redis Cluster of N masters instead of one Redis (URL redis+cluster://host:port,…/)")
    st.add_argument("--replicas", type=int, default=0, help="up --redis-cluster: replicas per master")
    st.add_argument("--redis-maxmemory", metavar="SIZE", help="up --redis-cluster: maxmemory of each node (e.g. 64mb)")
    st.add_argument("--purge", action="store_true", help="down: also delete the stack's data and logs")
    st.add_argument("--kill", action="store_true", help="restart-*: SIGKILL (a crash) instead of SIGTERM")
    st.set_defaults(func=cmd_stack)

    pr = sub.add_parser("produce", help="produce a .csv/.jsonl/.parquet file as training records")
    pr.add_argument("topic")
    pr.add_argument("--from", dest="from_file", required=True, type=Path)
    pr.add_argument("--label-column")
    pr.add_argument("--partitions", type=int, help="create the topic with N partitions if missing")
    pr.add_argument("--retention", default="7d", metavar="DURATION",
                    help="how long a topic this creates keeps its records (Kafka retention.ms): 7d (default), 12h, "
                         "30m, 2w, or never; an existing topic keeps its own")
    pr.add_argument("--batch-size", type=int, help="records per message (1 = one record a message; default 1,000, "
                                                   "fewer for a small file so every partition gets several messages; "
                                                   "text 64)")
    pr.add_argument("--n-features", type=int, help="width of sparse records (jsonl indices/values form)")
    _add_header_options(pr)
    tx = pr.add_argument_group("text (bag-of-words records; the vocabulary is stored with the topic in Redis)")
    tx.add_argument("--text-column", metavar="COL", help="produce the documents of this column as word counts")
    tx.add_argument("--vocab-size", type=int, default=20_000, help="keep the V most frequent words (by documents)")
    tx.add_argument("--min-df", type=int, default=2, help="keep words in at least N documents")
    tx.add_argument("--max-df", type=float, default=0.5, help="drop words in more than this fraction of documents")
    tx.add_argument("--stop-words", default="english", metavar="english|none|FILE")
    tx.add_argument("--vocab", type=Path, metavar="FILE", help="use this vocabulary (one word a line) instead")
    pr.add_argument("--format", choices=["auto", "gluonts"], default="auto",
                    help="gluonts: JSON lines with start, target, cat, dynamic_feat (one series a line)")
    pr.add_argument("--freq", help="--format gluonts: the series' frequency (D, h, 15min, W, M, Q, Y)")
    pr.add_argument("--series-column", help="long-format time series: the series id column (one point a message)")
    pr.add_argument("--time-column")
    pr.add_argument("--target-column")
    pr.add_argument("--feature-columns", metavar="C1,C2", help="dynamic real features of each point")
    pr.add_argument("--static-columns", metavar="C1,C2", help="static integer categories of each series")
    pr.set_defaults(func=cmd_produce)

    jb = sub.add_parser("job", help="create, inspect and control training jobs")
    jsub = jb.add_subparsers(dest="action", required=True)
    c = jsub.add_parser("create")
    c.add_argument("name")
    c.add_argument("--algorithm", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("--until", choices=["end", "never"], default="end")
    c.add_argument("--snapshot-every", type=float, metavar="SECONDS")
    c.add_argument("--epochs", type=int, metavar="E", help="bounded jobs: read the topic range E times (default 1)")
    c.add_argument("--snapshot-topic", metavar="TOPIC",
                   help="publish this job's snapshots to TOPIC (e.g. one per tenant); default "
                        "$STREAMLEARN_SNAPSHOT_TOPIC or streamlearn.snapshots")
    c.add_argument("--from-snapshot", metavar="JOB[@VERSION]",
                   help="incremental training: continue from that snapshot's training state (its params unless given)")
    c.add_argument("--gate", action="append", default=[], metavar="EXPR",
                   help="publish a snapshot only if its holdout metric passes, e.g. 'rmse<=3.2' or "
                        "'accuracy>=published-0.005' (repeatable; finite arrays and --gate-min-records always hold)")
    c.add_argument("--gate-min-records", type=int, default=1, metavar="N",
                   help="the default gate: at least N records applied (default 1)")
    c.add_argument("--gate-topic", metavar="T", help="score the --gate metrics (any the model reports, e.g. auc) "
                                                     "on this topic's records, for the snapshot and the published model")
    c.add_argument("--gate-offsets", metavar="P:A-B,...", help="--gate-topic: only offsets A to B (B excluded) of "
                                                               "partition P (default: all it holds at creation)")
    ls = jsub.add_parser("list")
    ls.add_argument("--json", action="store_true")
    for action in ("status", "pause", "resume"):
        a = jsub.add_parser(action)
        a.add_argument("name")
        a.add_argument("--json", action="store_true")
    wt = jsub.add_parser("watch", help="the job in the terminal, redrawn until it ends")
    wt.add_argument("name")
    wt.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    wt.add_argument("--every", type=float, default=1.0, metavar="SECONDS", help="redraw interval (default 1)")
    dl = jsub.add_parser("delete", help="remove a job's keys, offsets and consumer group (snapshots stay)")
    dl.add_argument("name")
    dl.add_argument("--force", action="store_true", help="stop the job's running workers first")
    jb.set_defaults(func=cmd_job)

    wk = sub.add_parser("worker", help="join a job's consumer group and train until the job ends")
    wk.add_argument("name", nargs="?")
    wk.add_argument("--study", help="serve a study's trials instead of one job (a pool: start as many as you like)")
    wk.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics at :P/metrics (0: any free port)")
    wk.set_defaults(func=cmd_worker)

    tn = sub.add_parser("tune", help="multi-fidelity hyperparameter studies: trials are jobs, losers are paused")
    tsub = tn.add_subparsers(dest="action", required=True)
    tc = tsub.add_parser("create")
    tc.add_argument("name")
    tc.add_argument("--algorithm", required=True)
    tc.add_argument("--topic", required=True)
    tc.add_argument("--metric", required=True)
    tc.add_argument("--direction", choices=["max", "min"], default="max")
    tc.add_argument("--space", type=Path, metavar="FILE.json")
    tc.add_argument("--param-range", action="append", default=[], metavar="NAME=LOW:HIGH[:log][:int]")
    tc.add_argument("--param-choice", action="append", default=[], metavar="NAME=A,B,...")
    tc.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="fixed for every trial (also epochs=E)")
    tc.add_argument("--trials", type=int, required=True)
    tc.add_argument("--parallel", type=int, default=1, help="trials running at once (default 1)")
    tc.add_argument("--scheduler", choices=["asha", "hyperband", "median"], default="asha")
    tc.add_argument("--min-records", type=int, metavar="R", help="first rung, in records applied "
                                                                 "(default: a full trial's / 27)")
    tc.add_argument("--reduction-factor", type=int, default=3, metavar="ETA")
    tc.add_argument("--validation-topic", metavar="V", help="score trials on this topic (read once into memory); "
                                                            "default: the linear learner's holdout")
    tc.add_argument("--warm-start", metavar="STUDY", help="seed with a finished study's trials (same space)")
    for action in ("status", "best", "resume"):
        ta = tsub.add_parser(action)
        ta.add_argument("name")
        if action == "resume":
            ta.add_argument("trial", nargs="?", help="the paused trial's job")
        else:
            ta.add_argument("--json", action="store_true")
    tn.set_defaults(func=cmd_tune)

    sc = sub.add_parser("schema", help="the shared writer-schema registry (Avro schemas by fingerprint, in Redis)")
    sc.add_argument("action", choices=["register", "list"])
    sc.add_argument("file", nargs="?", type=Path, metavar="FILE.avsc")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_schema)

    sn = sub.add_parser("snapshot", help="finalize the current state and publish a snapshot now (if the gate passes)")
    sn.add_argument("name")
    sn.add_argument("--force", action="store_true",
                    help="publish despite the gate: the newest rejected snapshot, else a new one (status forced)")
    sn.add_argument("--reason", help="with --force: why (recorded in the snapshot's gate entry)")
    sn.set_defaults(func=cmd_snapshot)

    pm = sub.add_parser("promote", help="publish another job's model as JOB's next version, if JOB's gate passes")
    pm.add_argument("source", metavar="SOURCE", help="the model: JOB (its newest snapshot) or JOB@VERSION")
    pm.add_argument("--to", required=True, metavar="JOB", help="the job whose subscribers receive it")
    pm.add_argument("--json", action="store_true")
    pm.set_defaults(func=cmd_promote)

    pd = sub.add_parser("predict", help="predict a file with a job's newest snapshot (JSON lines)")
    _add_model_input(pd)
    pd.add_argument("--output", type=Path)
    pd.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="the metrics of a model on a labelled file, or on a topic's records "
                                         "(recorded in the registry with a leakage check)")
    _add_model_input(ev, from_required=False)
    ev.add_argument("--topic", help="score on this topic's records (MODEL: JOB or JOB@VERSION); recorded")
    ev.add_argument("--offsets", metavar="P:A-B,...", help="--topic: only offsets A to B (B excluded) of partition P")
    ev.add_argument("--since", metavar="TIME", help="--topic: only records with event time >= TIME (ISO, or 2h ago)")
    ev.add_argument("--until", metavar="TIME", help="--topic: only records with event time < TIME")
    ev.add_argument("--metric", action="append", default=[], metavar="M",
                    help="report only this metric (repeatable); default: every metric the model reports")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    pd.add_argument("--text-column", metavar="COL", help="raw text: read with the model's vocabulary (ntm)")

    tp = sub.add_parser("topics", help="the top words of every topic of a topic model's newest snapshot")
    tp.add_argument("name")
    tp.add_argument("--top", type=int, default=10)
    tp.add_argument("--version", type=int)
    tp.add_argument("--json", action="store_true")
    tp.set_defaults(func=cmd_topics)

    fc = sub.add_parser("forecast", help="quantile forecasts of a time-series job's series (JSON lines)")
    fc.add_argument("name")
    fc.add_argument("--series", nargs="+", metavar="ID")
    fc.add_argument("--all", action="store_true", help="every series in the model's context (the default)")
    fc.add_argument("--horizon", type=int, help="periods to forecast (default: the job's prediction_length)")
    fc.add_argument("--quantiles", default="0.1,0.5,0.9")
    fc.add_argument("--samples", type=int, default=200, help="sample paths per series")
    fc.add_argument("--output", type=Path)
    fc.add_argument("--version", type=int, help="snapshot version (default: the newest)")
    fc.set_defaults(func=cmd_forecast)

    md = sub.add_parser("models", help="query the model registry (metadata, scores, gate status)")
    md.add_argument("--job")
    md.add_argument("--algorithm")
    md.add_argument("--where", metavar="EXPR", help="e.g. 'auc>0.8 and records_applied>=1000' (a metric: its newest "
                                                    "evaluation score, else its holdout score)")
    md.add_argument("--since", metavar="TIME", help="created at or after TIME (ISO date/time, or 2h, 1d ago)")
    md.add_argument("--status", choices=["blessed", "rejected", "forced"], help="the gate's decision")
    md.add_argument("--json", action="store_true")
    md.set_defaults(func=cmd_models)

    mo = sub.add_parser("monitor", help="compare live data with a job's training profile (drift); "
                                         "`monitor status JOB`: the latest report")
    mo.add_argument("target", metavar="JOB", help="the job (or `status`, followed by the job)")
    mo.add_argument("job", nargs="?", help=argparse.SUPPRESS)
    mo.add_argument("--topic", metavar="LIVE", help="the live topic (training-format records)")
    mo.add_argument("--labels-topic", metavar="L", help="labelled records: score the published model on them")
    mo.add_argument("--window", type=int, default=1000, metavar="N", help="records per window (default 1000)")
    mo.add_argument("--on-drift", choices=["retrain"],
                    help="retrain: an incremental job from the published snapshot on the recent data (gated)")
    mo.add_argument("--retrain-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="wait at most this long for a retrain to finish and be promoted to JOB (default 600; "
                         "past it the retrain keeps running, unpromoted)")
    mo.add_argument("--once", action="store_true", help="read what the topic holds now, report, exit")
    mo.add_argument("--alpha", type=float, default=0.01, help="false-alarm probability per window (default 0.01)")
    mo.add_argument("--min-ks", type=float, default=0.1, help="smallest KS distance that counts (default 0.1)")
    mo.add_argument("--min-psi", type=float, default=0.1, help="smallest PSI that counts (default 0.1)")
    mo.add_argument("--json", action="store_true")
    mo.set_defaults(func=cmd_monitor)

    ln = sub.add_parser("lineage", help="a model's parents, training data, evaluations and children")
    ln.add_argument("model", metavar="MODEL", help="JOB (its newest snapshot) or JOB@VERSION")
    ln.add_argument("--json", action="store_true")
    ln.set_defaults(func=cmd_lineage)

    cp = sub.add_parser("compare", help="two models' parameter differences and scores on the same evaluation data")
    cp.add_argument("model_a", metavar="MODEL_A")
    cp.add_argument("model_b", metavar="MODEL_B")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)

    bt = sub.add_parser("backtest", help="rolling-origin backtest: train before each origin, score the horizon after")
    bt.add_argument("name", help="names the backtest and its models NAME@1..K")
    bt.add_argument("--algorithm", required=True)
    bt.add_argument("--topic", required=True)
    bt.add_argument("--windows", type=int, required=True, metavar="K")
    bt.add_argument("--horizon", required=True, metavar="H", help="records per test window, or event time (6h, 1d)")
    bt.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(func=cmd_backtest)

    al = sub.add_parser("algorithms", help="list the algorithms; `algorithms describe NAME`: its parameters")
    al.add_argument("action", nargs="?", choices=["list", "describe"], default="list")
    al.add_argument("name", nargs="?")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_algorithms)

    ig = sub.add_parser("ingest", help="faust app: validate JSON events of RAW_TOPIC into Avro training messages "
                                       "of TOPIC; invalid ones go to RAW_TOPIC.dlq")
    ig.add_argument("raw_topic", metavar="RAW_TOPIC")
    ig.add_argument("--to", dest="topic", required=True, metavar="TOPIC")
    ig.add_argument("--n-features", type=int, required=True, metavar="D")
    ig.add_argument("--label-required", action="store_true")
    ig.add_argument("--batch-size", type=int, default=1, metavar="B",
                    help="events per training_batch message (1 = one training_record per event)")
    ig.add_argument("--allow-extra-fields", action="store_true")
    ig.add_argument("--exactly-once", action="store_true",
                    help="Kafka transactions (processing_guarantee=exactly_once) instead of at-least-once")
    ig.add_argument("--app-id", default=None, help="faust app id = consumer group (default: derived from the topics)")
    ig.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics at :P/metrics (0: any free port)")
    ig.set_defaults(func=cmd_ingest)

    sv = sub.add_parser("serve", help="serve a job's model over HTTP (hot-swaps to each new snapshot)")
    sv.add_argument("name")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080, help="0: any free port (printed on the first line)")
    which = sv.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="serve this version only")
    which.add_argument("--follow", action="store_true", help="follow the snapshot topic (the default)")
    sv.add_argument("--max-batch", type=int, default=64, metavar="N", help="examples per model call (default 64)")
    sv.add_argument("--max-wait-ms", type=float, default=2.0, metavar="T",
                    help="how long a batch waits for requests on their way (default 2)")
    sv.add_argument("--max-body-bytes", type=int, default=16 << 20, metavar="B", help="larger bodies get 413")
    sv.add_argument("--candidate", type=int, metavar="VERSION", help="also run this version on a share of requests")
    sv.add_argument("--canary", metavar="SHARE", help="the candidate's share of requests, e.g. 10%% (default)")
    sv.add_argument("--shadow", action="store_true",
                    help="the candidate predicts its share on the side; the served model answers every request")
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("report", help="one self-contained HTML page about a job: learning curve, throughput, lag, "
                                       "members, the model's pictures, parameters, lineage, gate decisions")
    rp.add_argument("job")
    rp.add_argument("--output", type=Path, metavar="FILE.html", help="default: JOB-report.html")
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("export", help="write a job's model in a portable format (ONNX)")
    ex.add_argument("name")
    ex.add_argument("--version", type=int)
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--output", required=True, type=Path)
    ex.add_argument("--sparse-input", action="store_true",
                    help="factorization machines / linear learner / ntm: inputs indices + values (N, K), "
                         "0-padded, instead of a dense (N, d) matrix")
    ex.set_defaults(func=cmd_export)

    ky = sub.add_parser("keys", help="Ed25519 key pairs that sign snapshots (publishers) and verify them")
    ky.add_argument("action", choices=["generate"])
    ky.add_argument("--dir", type=Path, default=Path("."), help="where to write NAME.key and NAME.pub")
    ky.add_argument("--name", default="snapshot-signing")
    ky.set_defaults(func=cmd_keys)

    stp = sub.add_parser("snapshot-topic", help="admin: create the snapshot topic or set its configuration "
                                                "(compacted by job, 64 MiB messages, compressed by the producer)")
    stp.add_argument("action", choices=["setup"])
    stp.add_argument("--topic", help="default $STREAMLEARN_SNAPSHOT_TOPIC or streamlearn.snapshots")
    stp.add_argument("--partitions", type=int, default=1)
    stp.set_defaults(func=cmd_snapshot_topic)

    acl = sub.add_parser("acl", help="the Redis ACL rule and Kafka ACL bindings one job needs (least privilege)")
    acl.add_argument("name")
    acl.add_argument("--user", help="the Redis user (default: the job's name)")
    acl.add_argument("--topic", help="a job not created yet: its training topic")
    acl.add_argument("--snapshot-topic", help="a job not created yet: its snapshot topic")
    acl.add_argument("--principal", help="the workers' Kafka principal (default User:<user>)")
    acl.add_argument("--reader", metavar="PRINCIPAL", help="also grant PRINCIPAL what subscribers and servers need")
    acl.set_defaults(func=cmd_acl)

    dm = sub.add_parser("demo", help="produce, train with 3 elastic workers, snapshot, predict (local stack)")
    dm.set_defaults(func=cmd_demo)
    _add_verbosity_options(p, top=True)
    return p


#: libraries whose INFO lines are their own bookkeeping (faust's and mode's "Starting..." for every
#: service, aiokafka's subscription tables): shown with ``-v`` only
CHATTY_LIBRARIES = ("faust", "mode", "aiokafka", "kafka")


def _configure_logging(verbosity: int, command: str) -> None:
    """Logging for the whole process, set up here once (faust does not set up its own).

    The long-running commands (worker, serve, ingest) log their own messages at INFO with
    timestamps; other commands print their warnings (e.g. what a file's layout was taken to
    be) as ``streamlearn: …`` lines. ``-q`` (verbosity -1): warnings and errors only; ``-v``
    (1): info messages everywhere, the libraries' own included, and librdkafka's lines
    (connection failures by the hundred while a broker is down, otherwise never shown)."""
    from streamlearn.config import LIBRDKAFKA_LOGGER

    if command in ("worker", "serve", "ingest") and verbosity >= 0:  # what they do, with timestamps
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    elif verbosity > 0:
        logging.basicConfig(level=logging.INFO, format="streamlearn: %(name)s %(levelname)s %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format="streamlearn: %(message)s")
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity > 0 else logging.WARNING)
    logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(logging.DEBUG if verbosity > 0 else logging.CRITICAL + 1)


def _verbosity(args: argparse.Namespace) -> int:
    return 1 if getattr(args, "verbose", False) else -1 if getattr(args, "quiet", False) else 0


def _add_verbosity_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v`` / ``-q`` before the command or after it (on a subcommand they default to
    "not given", so that they do not overwrite what was given before the command)."""
    default = False if top else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also info messages, the libraries' own (faust, aiokafka) and librdkafka's log lines")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only warnings and errors: no info lines, no progress display")
    for action in parser._actions:  # the subcommands, and theirs (job create, tune status…)
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_verbosity_options(child, top=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    _configure_logging(_verbosity(args), args.command)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here for output still buffered
        return status
    except BrokenPipeError:
        # the reader went away (`| head`): write nothing more, not even at exit's flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing errors: one line, no traceback
        refused = None if isinstance(exc, USER_ERRORS) else refused_access(exc)
        if isinstance(exc, USER_ERRORS) or refused:
            print(f"streamlearn: error: {refused or exc}", file=sys.stderr)
            return 2
        message = str(exc) if isinstance(exc, ServiceUnavailable) else unreachable_service(exc)
        if message:
            print(f"streamlearn: error: {message}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
