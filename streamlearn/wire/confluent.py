"""Confluent wire format: magic byte 0, a 4-byte big-endian schema id, the Avro binary body.

The id names a writer schema in a Confluent-compatible schema registry (Confluent's own,
Apicurio's ``/apis/ccompat/v7``, Karapace), set by ``STREAMLEARN_SCHEMA_REGISTRY_URL``. A
worker asks ``GET /schemas/ids/{id}`` once per id and keeps the answer for its lifetime
(an id names one schema forever); the schema is checked against the project's reader
schema as a registration in :mod:`~streamlearn.wire.schema_store` is, and a message is
then reframed as single-object encoding so that it is decoded like any other.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from streamlearn.wire.schema_store import SchemaRegistrationError, check_compatible
from streamlearn.wire.serde import MAGIC, REGISTRY, SchemaRegistry, SerdeError, fingerprint

ENV_URL = "STREAMLEARN_SCHEMA_REGISTRY_URL"
CONFLUENT_HEADER_LEN = 5  # magic 0 + 4-byte id
R_UNKNOWN_ID = "unknown Confluent schema id"


class SchemaRegistryUnavailable(ConnectionError):
    """The Confluent-compatible registry did not answer (an outage: the window is retried)."""


def is_confluent_framed(value: bytes) -> bool:
    return len(value) >= CONFLUENT_HEADER_LEN and value[0] == 0


class ConfluentSchemas:
    """Writer schemas by Confluent schema id, fetched from a registry and cached per process."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._by_id: dict[int, bytes | str] = {}  # id -> fingerprint, or why it cannot be read

    @classmethod
    def from_env(cls, env=None) -> "ConfluentSchemas | None":
        url = (os.environ if env is None else env).get(ENV_URL, "").strip()
        return cls(url) if url else None

    def _fetch(self, schema_id: int) -> dict | None:
        """The registry's answer for ``schema_id`` (``{"schema": text, ...}``), None if it does not know it."""
        try:
            with urllib.request.urlopen(f"{self.url}/schemas/ids/{schema_id}", timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SchemaRegistryUnavailable(f"schema registry {self.url}: HTTP {exc.code} for id {schema_id}") from None
        except (OSError, ValueError) as exc:
            raise SchemaRegistryUnavailable(f"schema registry {self.url} unreachable: {exc}") from None
        return body

    def reframe(self, value: bytes, registry: SchemaRegistry = REGISTRY) -> bytes | str:
        """``value`` as a single-object encoded message of the same body, or the reason it
        cannot be read (unknown id, not Avro, incompatible with the reader schema)."""
        schema_id = int.from_bytes(value[1:CONFLUENT_HEADER_LEN], "big")
        known = self._by_id.get(schema_id)
        if known is None:
            body = self._fetch(schema_id)
            if body is None:  # not cached: an id unknown now may be registered later
                return f"{R_UNKNOWN_ID} {schema_id}"
            kind = body.get("schemaType", "AVRO")
            try:
                if kind != "AVRO":
                    raise SerdeError(f"a {kind} schema, not Avro")
                check_compatible(body["schema"], registry)
                known = fingerprint(body["schema"])
                if known not in registry.by_fingerprint:  # the project's own schema keeps its fast reader
                    registry.register(body["schema"])
            except (SchemaRegistrationError, SerdeError) as exc:
                known = f"Confluent schema id {schema_id}: {exc}"
            self._by_id[schema_id] = known
        if isinstance(known, str):
            return known
        return MAGIC + known + value[CONFLUENT_HEADER_LEN:]


__all__ = ["ENV_URL", "ConfluentSchemas", "SchemaRegistryUnavailable", "is_confluent_framed"]
