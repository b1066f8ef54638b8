"""``streamlearn acl JOB``: the least privileges one job needs, as a Redis ``ACL SETUSER`` rule
and Kafka ACL bindings (``kafka-acls.sh`` commands), for a multi-tenant deployment.

Redis: the tenant's user reads and writes only its job's keys (``sl:{JOB}:*``: spec, status,
state, offsets, model store), reads the shared writer-schema registry, the jobs/models sets
and its topic's vocabulary, and may add to three shared keys, each with one command that
cannot change or remove what another tenant wrote: its job's name to ``sl:jobs`` (``SADD``,
the last step of ``job create``), to ``sl:models:jobs`` (``SADD``, the
registry's index of jobs with models, also at ``job create``) and a writer schema to ``sl:schemas`` (``HSETNX``, ``produce``). No
``@dangerous`` command, no ``SCAN``/``RANDOMKEY`` (no listing other tenants' keys), no
``FUNCTION``, no Pub/Sub. ``job delete`` (``SREM`` from ``sl:jobs``) stays an admin's.

Kafka: the job's workers read its training topic, commit in its consumer group, write its
dead-letter topic and the snapshot topic; subscribers and servers (another principal) read
the snapshot topic with group ids under ``$STREAMLEARN_GROUP_PREFIX``.
"""
from __future__ import annotations

import shlex

from streamlearn.runtime.jobs import JobSpec
from streamlearn.runtime.record import JOBS
from streamlearn.snapshots.publisher import snapshot_topic
from streamlearn.snapshots.store import JOBS_KEY as MODELS_KEY
from streamlearn.snapshots.subscriber import group_prefix
from streamlearn.statestore.keys import PREFIX
from streamlearn.streams.text import REDIS_KEY as VOCABULARY_KEY
from streamlearn.wire.schema_store import SCHEMAS_KEY

__all__ = ["redis_rule", "kafka_bindings", "acl_text"]

#: what the job's clients run: reads and writes of their own keys, MULTI/EXEC/WATCH, Lua
#: scripts (atomic commits), connection commands; then everything global taken away again
_REDIS_COMMANDS = ("+@read", "+@write", "+@transaction", "+@scripting", "+@connection", "+select",
                   "-@dangerous", "-@admin", "-@pubsub", "-scan", "-randomkey", "-function", "-script|flush",
                   "-script|kill")


def redis_rule(spec: JobSpec, user: str) -> list[str]:
    """The ``ACL SETUSER`` command (Redis >= 7: selectors) for ``user`` running ``spec``'s job;
    ``>PASSWORD`` is left for the operator to fill in."""
    return ["ACL", "SETUSER", user, "reset", "on", ">PASSWORD", "resetchannels", *_REDIS_COMMANDS,
            f"~{PREFIX}:{{{spec.name}}}:*",
            # on a Redis Cluster: the state's shards ({JOB:s0}…) and snapshot parts ({JOB/p0}…)
            f"~{PREFIX}:{{{spec.name}:*", f"~{PREFIX}:{{{spec.name}/*", f"%R~{JOBS}", f"%R~{MODELS_KEY}", f"%R~{SCHEMAS_KEY}",
            f"%R~{VOCABULARY_KEY.format(topic=spec.topic)}",
            f"(~{JOBS} +sadd)", f"(~{MODELS_KEY} +sadd)", f"(~{SCHEMAS_KEY} +hsetnx)"]


def kafka_bindings(spec: JobSpec, principal: str, reader: str | None = None,
                   bootstrap: str = "BOOTSTRAP") -> list[str]:
    """``kafka-acls.sh`` commands granting ``principal`` (``User:NAME``) what the job's
    workers and ``job create`` need, and ``reader`` what its subscribers/servers need."""
    snapshots = snapshot_topic(spec.snapshot_topic)
    base = ["kafka-acls.sh", "--bootstrap-server", bootstrap, "--add", "--allow-principal"]

    def grant(who: str, operations: tuple[str, ...], *resource: str) -> str:
        ops = [arg for op in operations for arg in ("--operation", op)]
        return shlex.join([*base, who, *ops, *resource])

    lines = [
        grant(principal, ("Read", "Describe"), "--topic", spec.topic),
        grant(principal, ("Write", "Describe", "Create"), "--topic", spec.dlq_topic),
        grant(principal, ("Read", "Describe"), "--group", spec.group_id),
        grant(principal, ("Write", "Describe"), "--topic", snapshots),
    ]
    if reader:
        lines += [grant(reader, ("Read", "Describe"), "--topic", snapshots),
                  grant(reader, ("Read",), "--group", f"{group_prefix()}-", "--resource-pattern-type", "prefixed")]
    return lines


def acl_text(spec: JobSpec, user: str, principal: str, reader: str | None, bootstrap: str) -> str:
    """What ``streamlearn acl JOB`` prints."""
    return "\n".join([
        f"# Redis (redis-cli as an admin; replace PASSWORD): user {user} runs job {spec.name} and nothing else",
        "redis-cli " + shlex.join(redis_rule(spec, user)),
        f"# Kafka: {principal} runs the job's workers and `job create`"
        + (f"; {reader} follows its snapshots (subscribers, serve)" if reader else ""),
        *kafka_bindings(spec, principal, reader, bootstrap),
        f"# the snapshot topic itself (compacted, 64 MiB messages) is an admin's: "
        f"streamlearn snapshot-topic setup --topic {snapshot_topic(spec.snapshot_topic)}",
    ])
