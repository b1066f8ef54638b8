"""The snapshot producer's codec: lz4 for snapshots that compress, none for float parameters;
one cached producer per codec, for the last configuration only."""
from __future__ import annotations

import numpy as np

from streamlearn.algorithms.factorization_machines import FMModel
from streamlearn.snapshots import publisher
from streamlearn.snapshots.format import encode_snapshot


def _fm_bytes(w: np.ndarray, v: np.ndarray) -> bytes:
    model = FMModel(0.0, w, v, {"predictor_type": "binary_classifier", "n_features": len(w), "num_factors": v.shape[1]})
    return encode_snapshot(model, {"job": "j", "version": 1}, key=None, signer=None)


def test_float_parameters_go_uncompressed_and_a_sparse_model_goes_lz4():
    rng = np.random.default_rng(0)
    n, k = 1 << 16, 8
    dense = _fm_bytes(rng.normal(size=n).astype(np.float32), rng.normal(0, 0.05, size=(n, k)).astype(np.float32))
    assert publisher.snapshot_codec(dense) == "none"
    w = np.zeros(n, np.float32)
    w[rng.choice(n, n // 50, replace=False)] = rng.normal(size=n // 50)
    sparse = _fm_bytes(w, np.zeros((n, k), np.float32))
    assert publisher.snapshot_codec(sparse) == "lz4"
    assert publisher.snapshot_codec(b"") == "none" and publisher.snapshot_codec(b"\0" * 100) == "lz4"


def test_a_codec_set_in_the_settings_wins():
    assert publisher._producer_conf({"bootstrap.servers": "b"}, "none")["compression.type"] == "none"
    assert publisher._producer_conf({"bootstrap.servers": "b", "compression.type": "zstd"}, "none")["compression.type"] == "zstd"


def test_one_producer_per_codec_for_the_last_configuration_only(monkeypatch):
    made: list[dict] = []

    class Recorded:
        def __init__(self, conf):
            made.append(conf)

    monkeypatch.setattr(publisher, "Producer", Recorded)
    monkeypatch.setattr(publisher, "_PRODUCERS", None)
    a_none, a_lz4 = (publisher._producer_conf({"bootstrap.servers": "a"}, codec) for codec in ("none", "lz4"))
    first = publisher._producer(a_none)
    assert publisher._producer(a_lz4) is not first and publisher._producer(a_none) is first and len(made) == 2
    publisher._producer(publisher._producer_conf({"bootstrap.servers": "b"}, "none"))  # another cluster
    assert publisher._PRODUCERS is not None and list(publisher._PRODUCERS[1]) == ["none"]
    assert publisher._producer(a_none) is not first and len(made) == 4  # cluster a's producers were dropped
    publisher._forget_producer(a_none)
    assert publisher._PRODUCERS[1] == {}
