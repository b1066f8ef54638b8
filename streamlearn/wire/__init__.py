"""What travels on Kafka and how it is read (internal: the public surface is :mod:`streamlearn`).

- ``serde``: Avro single-object framing (magic, CRC-64-AVRO fingerprint, varint), the process's
  schema registry and the training-message encoders;
- ``rules``: what a valid training example is (the reasons a record is dead-lettered), shared by
  the fast readers and the ingest app;
- ``decode``: Kafka message values -> validated numpy batches (the worker's hot path);
- ``schema_store`` / ``schema_compat``: evolved writer schemas shared through Redis, and whether
  the project's reader schemas can read them;
- ``confluent``: the Confluent wire format (schema ids of a Confluent-compatible registry).
"""
