"""``sl.Client(url)``: a small client of the prediction server's HTTP API (stdlib only).

Dense numpy rows go as an ``np.save`` body (``application/x-numpy``: no float printing and
parsing), scipy sparse matrices and :class:`~streamlearn.batch.SparseRows` as JSON sparse
instances, anything else as JSON dense instances.
"""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamlearn.batch import SparseRows, as_features
from streamlearn.errors import ServiceUnavailable, UserError

__all__ = ["Client", "Predictions", "ServingError"]


class ServingError(UserError):
    """The server refused the request (bad input, unknown job): ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Predictions:
    """One record per example (``{"prediction": …, "score": …}`` as ``Model.predict_records``)
    and the model version that answered."""

    records: list[dict[str, Any]]
    version: int

    @property
    def values(self) -> np.ndarray:
        """The ``prediction`` of every example, as ``Model.predict`` returns them."""
        return np.asarray([r["prediction"] for r in self.records])


class Client:
    """``Client("http://127.0.0.1:8080")``; ``job`` is asked from the server when not given."""

    def __init__(self, url: str, job: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._job = job

    @property
    def job(self) -> str:
        if self._job is None:
            self._job = self._call("GET", "/v1/models")["models"][0]
        return self._job

    def predict(self, X) -> np.ndarray:
        """The model's predictions for the rows of ``X`` (numpy, pandas, scipy sparse)."""
        return self.predict_records(X).values

    def predict_records(self, X) -> Predictions:
        """Every example's record and the version that served them."""
        features = as_features(X)
        if isinstance(features, SparseRows):
            instances = [{"indices": features.indices[a:b].tolist(), "values": features.values[a:b].tolist()}
                         for a, b in zip(features.indptr[:-1], features.indptr[1:])]
            body, kind = json.dumps({"instances": instances}).encode(), "application/json"
        else:
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(features), allow_pickle=False)
            body, kind = buf.getvalue(), "application/x-numpy"
        reply = self._call("POST", f"/v1/models/{self.job}:predict", body, kind)
        return Predictions(reply["predictions"], int(reply["model_version"]))

    def info(self) -> dict[str, Any]:
        """Version, algorithm, params, lineage and gate status of the served model."""
        return self._call("GET", f"/v1/models/{self.job}")

    def ready(self) -> bool:
        try:
            self._call("GET", "/readyz")
            return True
        except (ServiceUnavailable, ServingError):
            return False

    def _call(self, method: str, path: str, body: bytes | None = None, kind: str | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"content-type": kind} if kind else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                reason = exc.reason
            if exc.code == 503:
                raise ServiceUnavailable(f"{self.url}: {reason}") from None
            raise ServingError(f"{self.url}: {reason}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceUnavailable(f"cannot reach the prediction server at {self.url}: "
                                     f"{getattr(exc, 'reason', exc)}") from None
