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
    if args.text_column:
        return _produce_text(s, args)
    n = produce_file(s.kafka_client_conf(), args.topic, args.from_file, label_column=args.label_column,
                     partitions=args.partitions, batch_size=args.batch_size or 1000, n_features=args.n_features)
    print(f"produced {n} records to {args.topic}")
    return 0


def _produce_text(s, args) -> int:
    from streamlearn.streams.text import produce_text

    report = produce_text(s.kafka_client_conf(), s.redis_client(), args.topic, args.from_file, args.text_column,
                          vocab_size=args.vocab_size, min_df=args.min_df, max_df=args.max_df, stop=args.stop_words,
                          vocab_file=args.vocab, partitions=args.partitions, batch_size=args.batch_size or 64)
    for line in report.lines():
        print(line, file=sys.stderr)
    print(f"produced {report.documents} documents to {args.topic}")
    return 0


def cmd_topics(args) -> int:
    from streamlearn.predict import load_job_model

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
                     params=_parse_params(args.param), text_column=args.text_column)
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
    pr.add_argument("--batch-size", type=int, help="records per message (1 = one record a message; "
                    "default 1000, text 64)")
    pr.add_argument("--n-features", type=int, help="width of sparse records (jsonl indices/values form)")
    tx = pr.add_argument_group("text (bag-of-words records; the vocabulary is stored with the topic in Redis)")
    tx.add_argument("--text-column", metavar="COL", help="produce the documents of this column as word counts")
    tx.add_argument("--vocab-size", type=int, default=20_000, help="keep the V most frequent words (by documents)")
    tx.add_argument("--min-df", type=int, default=2, help="keep words in at least N documents")
    tx.add_argument("--max-df", type=float, default=0.5, help="drop words in more than this fraction of documents")
    tx.add_argument("--stop-words", default="english", metavar="english|none|FILE")
    tx.add_argument("--vocab", type=Path, metavar="FILE", help="use this vocabulary (one word a line) instead")
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

    pd.add_argument("--text-column", metavar="COL", help="raw text: read with the model's vocabulary (ntm)")

    tp = sub.add_parser("topics", help="the top words of every topic of a topic model's newest snapshot")
    tp.add_argument("name")
    tp.add_argument("--top", type=int, default=10)
    tp.add_argument("--version", type=int)
    tp.add_argument("--json", action="store_true")
    tp.set_defaults(func=cmd_topics)

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
