"""The shared writer-schema registry: every writer schema by fingerprint, in one Redis hash.

A worker knows the project's own schemas from its ``.avsc`` files; a writer with an evolved
schema (a field added with a default, an older version without ``key``) registers it here
(``streamlearn schema register FILE.avsc``), and any worker that meets the unknown
fingerprint fetches it once (one ``HMGET`` for all unknown fingerprints of a window), keeps
it in its process registry and decodes with Avro schema resolution into the project's
reader schema.

Why a Redis hash and not a compacted Kafka topic: every worker already holds a Redis
connection, and a registration is visible to the very next ``HGET`` of any process. A
writer that registers and then produces can therefore never be read by a worker that does
not find its schema; with a topic, a worker would have to consume the topic to its end on
every miss (a consumer, end offsets, a fetch) to tell "unknown" from "not read yet".

Layout: hash ``sl:schemas``, field = fingerprint as ``0x`` + 16 hex digits (the number the
CRC-64-AVRO is, as in dead-letter reasons), value = the schema's JSON with sorted keys. The
full JSON and not the Parsing Canonical Form is kept: the canonical form drops the field
defaults that resolution needs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import fastavro

from streamlearn.errors import UserError
from streamlearn.statestore.keys import PREFIX
from streamlearn.wire.schema_compat import full_name, incompatibilities
from streamlearn.wire.serde import (
    REGISTRY, SCHEMA_DIR, SchemaRegistry, SerdeError, fingerprint, fingerprint_hex,
)

log = logging.getLogger("streamlearn.schemas")

SCHEMAS_KEY = f"{PREFIX}:schemas"


class SchemaRegistrationError(UserError, SerdeError):
    """A schema that cannot be registered (not a project record type, incompatible, a clash)."""


def _schema_json(schema: Any) -> dict:
    if isinstance(schema, Path):
        text = schema.read_text()
    elif isinstance(schema, str):
        text = schema
    else:
        return schema
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaRegistrationError(f"not a JSON schema: {exc}") from None


def check_compatible(schema: Any, registry: SchemaRegistry = REGISTRY) -> str:
    """The short name of the project schema that reads ``schema``; raises
    :class:`SchemaRegistrationError` (one line) if there is none or resolution would fail."""
    try:
        parsed = fastavro.parse_schema(_schema_json(schema))
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad schemas
        raise SchemaRegistrationError(f"not a valid Avro schema: {exc}") from None
    full = parsed.get("name", "") if isinstance(parsed, dict) else ""
    name = registry.resolve_name(full)
    if not full or name not in registry.current:
        known = sorted(e.full_name for e in registry.current.values())
        raise SchemaRegistrationError(f"schema {full or type(parsed).__name__!r} is not one of the project's "
                                      f"record types {known}")
    reader = registry.current[name]
    problems = incompatibilities(parsed, reader.parsed)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SchemaRegistrationError(f"schema {full} is incompatible with the reader schema "
                                      f"{reader.full_name}: {problems[0]}{more}")
    return name


class SharedSchemas:
    """Writer schemas by fingerprint in Redis, shared by every producer and worker."""

    def __init__(self, client, key: str = SCHEMAS_KEY):
        self.client = client
        self.key = key

    def register(self, schema: Any, registry: SchemaRegistry = REGISTRY) -> bytes:
        """Check ``schema`` against the project's reader schema of its name and store it;
        returns its fingerprint (wire bytes). Registering the same schema again is a no-op."""
        doc = _schema_json(schema)
        check_compatible(doc, registry)
        fp = fingerprint(doc)
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        field = fingerprint_hex(fp)
        if not self.client.hsetnx(self.key, field, text):
            stored = self.client.hget(self.key, field)
            if stored is not None and json.loads(stored) != json.loads(text):
                # Two schemas with one canonical form differ only in what the form drops
                # (defaults, docs): a message cannot say which of them wrote it.
                raise SchemaRegistrationError(f"fingerprint {field} is already registered with a schema that "
                                              "differs in defaults or docs; change the schema's name or fields")
        return fp

    def register_project_schemas(self) -> None:
        """Store the project's own schemas (a worker of an older release learns them here)."""
        docs = [json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.avsc"))]
        pipe = self.client.pipeline(transaction=False)
        for doc in docs:
            pipe.hsetnx(self.key, fingerprint_hex(fingerprint(doc)), json.dumps(doc, sort_keys=True,
                                                                                 separators=(",", ":")))
        pipe.execute()

    def list(self) -> list[dict]:
        """Every registered schema: fingerprint, full name and field names, by name."""
        rows = []
        for field, text in self.client.hgetall(self.key).items():
            doc = json.loads(text)
            rows.append({"fingerprint": field.decode() if isinstance(field, bytes) else field,
                         "name": full_name(doc), "fields": [f["name"] for f in doc.get("fields", [])]})
        return sorted(rows, key=lambda r: (r["name"], r["fingerprint"]))

    def learn(self, registry: SchemaRegistry, fingerprints: Iterable[bytes]) -> int:
        """Fetch the schemas of ``fingerprints`` unknown to ``registry`` and register them
        there (as writer schemas; the reader stays the project's). Returns how many were found."""
        wanted = [fp for fp in dict.fromkeys(fingerprints) if fp not in registry.by_fingerprint]
        if not wanted:
            return 0
        found = 0
        for fp, text in zip(wanted, self.client.hmget(self.key, [fingerprint_hex(fp) for fp in wanted])):
            if text is None:
                continue
            try:
                doc = json.loads(text)
                if fingerprint(doc) != fp:
                    raise SerdeError(f"its fingerprint is {fingerprint_hex(fingerprint(doc))}")
                registry.register(doc)
            except Exception as exc:  # noqa: BLE001 - a bad entry is an unknown schema, not a crash
                log.warning("schema %s in %s is unusable (%s); its messages stay unknown",
                            fingerprint_hex(fp), self.key, exc)
                continue
            found += 1
        return found


__all__ = ["SCHEMAS_KEY", "SchemaRegistrationError", "SharedSchemas", "check_compatible"]
