"""Kafka refusing a client — rejected credentials, a missing ACL, a failed TLS handshake —
recognised by librdkafka's error codes, so that every command (the worker included) ends
with one line naming what was refused (exit 2) instead of retrying what cannot succeed."""
from __future__ import annotations

from confluent_kafka import KafkaError

from streamlearn.config import ConfigError

__all__ = ["KafkaAccessRefused", "refusal", "RefusalWatch"]

_WHAT = {
    KafkaError._AUTHENTICATION: "rejected the credentials (check STREAMLEARN_KAFKA_SASL_*)",
    KafkaError.SASL_AUTHENTICATION_FAILED: "rejected the credentials (check STREAMLEARN_KAFKA_SASL_*)",
    KafkaError._SSL: "failed the TLS handshake (check STREAMLEARN_KAFKA_SSL_*)",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "denied this principal a topic (a missing ACL)",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "denied this principal the consumer group (a missing ACL)",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "denied this principal a cluster operation (a missing ACL)",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "denied this principal the transactional id (a missing ACL)",
}


class KafkaAccessRefused(ConfigError):
    """Kafka refused the client: credentials, TLS or authorization (CLI: one line, exit 2)."""


def refusal(err: KafkaError | None, servers: str, where: str = "") -> KafkaAccessRefused | None:
    """The error to end with when ``err`` is a refusal (``where``: e.g. "topic t"), else None."""
    if not isinstance(err, KafkaError) or err.code() not in _WHAT:
        return None
    at = f" ({where})" if where else ""
    return KafkaAccessRefused(f"Kafka at {servers} {_WHAT[err.code()]}{at}: {err.str()}")


class RefusalWatch:
    """An ``error_cb`` that keeps librdkafka's first refusal; :meth:`check` raises it."""

    def __init__(self, servers: str):
        self.servers = servers
        self.refused: KafkaAccessRefused | None = None

    def __call__(self, err: KafkaError | None) -> None:
        found = refusal(err, self.servers)
        if found is not None and self.refused is None:
            self.refused = found

    def check(self) -> None:
        if self.refused is not None:
            raise self.refused
