"""The local stack for development and tests (internal; run as ``streamlearn stack …``):
one Apache Kafka broker (KRaft) from Maven Central's jars and one redis-server, on free ports.

``stack``: up / down / status / restarts (what the CLI and the test fixtures call);
``schema_registry``: the opt-in Confluent-compatible registry (Apicurio).
"""
