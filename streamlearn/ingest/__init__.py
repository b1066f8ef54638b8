"""The ingest app (internal; run as ``streamlearn ingest``): JSON events on a raw topic ->
validated Avro training messages, bad ones to ``<raw topic>.dlq``. ``app``: the faust app."""
