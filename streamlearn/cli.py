"""``streamlearn`` command line: stack, produce, job, worker, snapshot, predict, models.

Every command reads STREAMLEARN_KAFKA / STREAMLEARN_REDIS, else the running local stack.
Errors a user can fix (unknown job, bad parameter, missing topic, wrong password) print
one clear line and exit with status 2; they never print a traceback or a secret.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence


class UsageError(Exception):
    """A user error to print as one line (exit status 2)."""


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
    from streamlearn._internal import stack

    if args.action == "up":
        settings = stack.up()
        print("\n".join(settings.shell_lines(reveal=True)))  # meant for `eval $(streamlearn stack up)`
        if args.schema_registry:
            from streamlearn._internal import schema_registry_server
            from streamlearn.streams.confluent import ENV_URL

            print(f"{ENV_URL}={schema_registry_server.up(progress=lambda m: print(m, file=sys.stderr))}")
    elif args.action == "down":
        stack.down()
    else:
        _print(stack.status(), args.json)
    return 0


def cmd_produce(args) -> int:
    from streamlearn.streams.producer import produce_file
    from streamlearn.streams.schema_store import SharedSchemas

    s = _settings()
    SharedSchemas(s.redis_client()).register_project_schemas()  # workers of other releases can read us
    if args.format == "gluonts" or args.series_column:
        return _produce_series(s, args)
    n = produce_file(s.kafka_client_conf(), args.topic, args.from_file, label_column=args.label_column,
                     partitions=args.partitions, batch_size=args.batch_size, n_features=args.n_features)
    print(f"produced {n} records to {args.topic}")
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
    n = produce_series(s.kafka_client_conf(), args.topic, series, partitions=args.partitions)
    print(f"produced {n} points of {len(series)} series to {args.topic}")
    return 0


def _columns(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def cmd_forecast(args) -> int:
    from streamlearn.forecast import forecast_job

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
    from streamlearn import jobs

    s = _settings()
    client = s.redis_client()
    if args.action == "create":
        spec = jobs.create_job(client, s.kafka_client_conf(), args.name, args.algorithm, args.topic,
                               _parse_params(args.param), until=args.until, snapshot_every=args.snapshot_every,
                               from_snapshot=args.from_snapshot)
        print(f"created job {spec.name} ({spec.algorithm} on {spec.topic}, until {spec.until})")
    elif args.action == "list":
        _print(jobs.list_jobs(client), args.json)
    elif args.action == "status":
        _print(jobs.job_status(client, args.name), args.json)
    elif args.action in ("pause", "resume"):
        print(f"job {args.name}: {jobs.set_paused(client, args.name, args.action == 'pause')}")
    return 0


def cmd_worker(args) -> int:
    from streamlearn.consumers.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    status = run_worker(args.name, _settings())
    print(f"worker stopped; job {args.name} is {status}")
    return 0


def cmd_schema(args) -> int:
    from streamlearn.streams.schema_store import SharedSchemas
    from streamlearn.streams.serde import fingerprint_hex

    shared = SharedSchemas(_settings().redis_client())
    if args.action == "register":
        if args.file is None:
            raise UsageError("schema register needs FILE.avsc")
        print(fingerprint_hex(shared.register(args.file)))
    else:
        _print(shared.list(), args.json)
    return 0


def cmd_snapshot(args) -> int:
    from streamlearn import jobs
    from streamlearn.snapshots.finalize import publish

    s = _settings()
    client = s.redis_client()
    version = publish(s, client, jobs.load_spec(client, args.name), final=False)
    print(f"published snapshot version {version} of job {args.name}")
    return 0


def cmd_predict(args) -> int:
    from streamlearn.predict import predict_file

    s = _settings()
    n = predict_file(s.redis_client(), args.name, args.from_file, args.output, version=args.version,
                     params=_parse_params(args.param))
    if args.output:
        print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from streamlearn.snapshots.store import ModelStore

    rows = ModelStore(_settings().redis_client()).list_models(job=args.job, algorithm=args.algorithm)
    _print(rows, True)
    return 0


def cmd_demo(args) -> int:
    from streamlearn.demo import run_demo

    run_demo()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamlearn", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    st = sub.add_parser("stack", help="local Kafka (KRaft) + Redis on free ports")
    st.add_argument("action", choices=["up", "down", "status"])
    st.add_argument("--json", action="store_true")
    st.add_argument("--schema-registry", action="store_true",
                    help="up: also start a Confluent-compatible schema registry (Apicurio; needs Java 21+)")
    st.set_defaults(func=cmd_stack)

    pr = sub.add_parser("produce", help="produce a .csv/.jsonl/.parquet file as training records")
    pr.add_argument("topic")
    pr.add_argument("--from", dest="from_file", required=True, type=Path)
    pr.add_argument("--label-column")
    pr.add_argument("--partitions", type=int, help="create the topic with N partitions if missing")
    pr.add_argument("--batch-size", type=int, default=1000, help="records per message (1 = one record a message)")
    pr.add_argument("--n-features", type=int, help="width of sparse records (jsonl indices/values form)")
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
    c.add_argument("--from-snapshot", metavar="JOB[@VERSION]",
                   help="incremental training: start from that snapshot's model instead of initialize")
    ls = jsub.add_parser("list")
    ls.add_argument("--json", action="store_true")
    for action in ("status", "pause", "resume"):
        a = jsub.add_parser(action)
        a.add_argument("name")
        a.add_argument("--json", action="store_true")
    jb.set_defaults(func=cmd_job)

    wk = sub.add_parser("worker", help="join a job's consumer group and train until the job ends")
    wk.add_argument("name")
    wk.set_defaults(func=cmd_worker)

    sc = sub.add_parser("schema", help="the shared writer-schema registry (Avro schemas by fingerprint, in Redis)")
    sc.add_argument("action", choices=["register", "list"])
    sc.add_argument("file", nargs="?", type=Path, metavar="FILE.avsc")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_schema)

    sn = sub.add_parser("snapshot", help="finalize the current state and publish a snapshot now")
    sn.add_argument("name")
    sn.set_defaults(func=cmd_snapshot)

    pd = sub.add_parser("predict", help="predict a file with a job's newest snapshot (JSON lines)")
    pd.add_argument("name")
    pd.add_argument("--from", dest="from_file", required=True, type=Path)
    pd.add_argument("--output", type=Path)
    pd.add_argument("--version", type=int)
    pd.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="model options, e.g. k=5 for kmeans")
    pd.set_defaults(func=cmd_predict)

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

    md = sub.add_parser("models", help="query the model registry (metadata and lineage)")
    md.add_argument("--job")
    md.add_argument("--algorithm")
    md.set_defaults(func=cmd_models)

    sub.add_parser("ingest", add_help=False,
                   help="faust app: validate JSON events of a raw topic into Avro training records "
                        "(`streamlearn ingest RAW --to TOPIC --n-features D [--label-required] [--batch-size B]`)")

    dm = sub.add_parser("demo", help="produce, train with 3 elastic workers, snapshot, predict (local stack)")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ingest"]:  # the ingest app parses its own arguments (and --help)
        from streamlearn.streams.ingest import main as ingest_main

        return ingest_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing errors: one line, no traceback
        from streamlearn._internal.errors import USER_ERRORS, unreachable_service

        if isinstance(exc, (UsageError,) + USER_ERRORS):
            print(f"streamlearn: error: {exc}", file=sys.stderr)
            return 2
        message = unreachable_service(exc)
        if message:
            print(f"streamlearn: error: {message}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
