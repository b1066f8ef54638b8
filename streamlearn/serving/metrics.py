"""The server's Prometheus metrics, in a registry of its own (two servers in one process,
as in tests, do not share counters)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServeMetrics:
    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("streamlearn_serve_request_seconds", "prediction request latency (body read to reply)",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("streamlearn_serve_requests", "prediction requests by HTTP status", ["code"],
                                registry=r)
        self.rows = Counter("streamlearn_serve_rows", "examples predicted", registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch, 2 * max_batch})
        self.batch_rows = Histogram("streamlearn_serve_batch_rows", "examples per micro-batch", buckets=buckets,
                                    registry=r)
        self.batch_requests = Histogram("streamlearn_serve_batch_requests", "requests per micro-batch",
                                        buckets=buckets, registry=r)
        self.version = Gauge("streamlearn_serve_model_version", "snapshot version being served", registry=r)
        self.swaps = Counter("streamlearn_serve_swaps", "model swaps (a newer snapshot replaced the served one)",
                             registry=r)
        self.gate_rejections = Counter("streamlearn_serve_gate_rejections", "snapshots the gate refused", registry=r)
        self.candidate_rows = Counter("streamlearn_serve_candidate_rows",
                                      "examples predicted by both the model and the candidate", registry=r)
        self.candidate_agreed = Counter("streamlearn_serve_candidate_agreed_rows",
                                        "of those, examples where their predictions agree", registry=r)
        self.candidate_agreement = Gauge("streamlearn_serve_candidate_agreement",
                                         "share of compared examples where model and candidate agree", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
