"""Streaming k-means with an expressive state: solve for any k <= k_max at finalize.

The state is a bounded weighted summary of the stream: at most
``S = k_max * summary_factor`` weighted points ("slots", online facility location
[Meyerson; Liberty, Sriharsha, Sviridenko 2016] on top of mini-batch assignment):

- the first batch a worker sees with an empty summary seeds ``2 * k_max`` slots by
  k-means++ (D^2) sampling;
- afterwards every point goes to its nearest slot, except that a point at squared distance
  ``D`` opens a new slot with probability ``min(1, D / f)``, with the facility cost
  ``f = (total assignment cost so far) / k_max``. ``f`` grows with the stream, so about
  ``k_max * ln(N / n0)`` slots open over ``N`` points; when the summary is full, points are
  only assigned.

finalize runs weighted k-means++ + weighted Lloyd (``n_init`` restarts) on the summary,
for ``k``; :meth:`KMeansModel.with_k` re-solves the stored summary for any other
``k <= k_max`` without retraining (the snapshot carries the summary).

Concurrency (several workers, one summary). A slot holds *sums*, never a value:
``sum_x`` (S, d), ``weight`` (S,) and ``sumsq`` (S,) (sum of w*|x|^2, gives the
summary's own scatter) are ``sum``-aggregated, so assignments from any number of workers
add up exactly, and a slot's center is ``sum_x / weight``. The only non-additive step is
*opening* a slot: two workers may pick the same free slot in the same commit window.
Each opening therefore also pushes a random token into ``claim`` (S,) with the ``max``
aggregator, and the worker remembers its recent openings. On its next updates it
compares: if ``claim[slot]`` is not its own token, another worker won the slot, and the
loser moves exactly its own opening mass out of it (a negative ``sum`` delta) into
another free slot. The repaired summary equals the one without the collision (points
assigned to the merged slot in between stay where they were assigned). Slots are picked
at random among the free ones, so collisions are rare in the first place. A worker that
dies between the collision and its repair leaves one merged slot behind: still a valid,
mass-preserving weighted point, only a slightly coarser summary.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms import _metrics as metrics
from streamlearn.algorithms._common import BACKEND_PARAMS, backend_of, check_backend, feature_count, row_hash
from streamlearn.algorithms.base import Algorithm, Model, require
from streamlearn.algorithms.params import Interval, Options, Param
from streamlearn.backends import group_sum, nearest
from streamlearn.batch import Batch
from streamlearn.statestore.base import State

#: how many of its own recent openings a worker re-checks for collisions
CLAIM_MEMORY = 64
#: facility cost divisor: about OPEN_RATE * k_max * ln(N / n0) slots open over N points
OPEN_RATE = 3.0


class KMeans(Algorithm):
    name = "kmeans"
    accepts_sparse = False
    needs_label = False
    #: openings and assignments are decided per mini-batch; at 500 rows a step was mostly
    #: per-call overhead (update 0.61 s vs 0.29 s for 500k x 10 rows at 5,000)
    step_rows = 5_000
    param_spec = {
        "n_features": Param("features per record (the input width); auto = inferred from the topic at job create",
                            Interval(int, 1, None), Options("auto")),
        "k": Param("clusters of the model finalize solves", Interval(int, 1, None)),
        "k_max": Param("largest k the summary can be re-solved for without retraining (0 = k)",
                       Interval(int, 0, None)),
        "summary_factor": Param("summary slots per cluster (the summary holds k_max * summary_factor points)",
                                Interval(int, 1, None)),
        "n_init": Param("k-means++ restarts when solving the summary at finalize", Interval(int, 1, None)),
        "max_iter": Param("Lloyd iterations per restart at finalize", Interval(int, 1, None)),
        "seed": Param("seed of the slot openings and of finalize's restarts", Interval(int, 0, None)),
        **BACKEND_PARAMS,
    }

    def __init__(self, n_features: int | str = "auto", k: int = 10, k_max: int = 0, summary_factor: int = 10,
                 n_init: int = 50,
                 max_iter: int = 100, seed: int = 0, backend: str = "numpy", device: str = "cpu"):
        self.n_features = feature_count(n_features)
        self.k = k
        self.k_max = k_max
        self.summary_factor = summary_factor
        self.n_init = n_init
        self.max_iter = max_iter
        self.seed = seed
        self.backend = backend
        self.device = device

    def check_params(self) -> None:
        n = self.name
        super().check_params()
        require(self._k_max >= self.k, n, f"k ({self.k}) must be <= k_max ({self.k_max})")
        require(self._k_max * self.summary_factor <= 1_000_000, n, "k_max * summary_factor is too large")
        check_backend(self)

    @property
    def _k_max(self) -> int:
        return int(self.k_max) if self.k_max else int(self.k)

    @property
    def slots(self) -> int:
        return self._k_max * int(self.summary_factor)

    def initialize(self, state: State) -> None:
        S, d = self.slots, int(self.n_features)
        state.initialize("sum_x", np.zeros((S, d)))
        state.initialize("weight", np.zeros(S))
        state.initialize("sumsq", np.zeros(S))
        state.initialize("claim", np.zeros(S), aggregator="max")
        state.initialize("n", 0.0)
        state.initialize("cost", 0.0)

    def update(self, state: State, batch: Batch) -> None:
        X = np.asarray(batch.dense(), dtype=np.float64)
        if len(X) == 0:
            return
        w = batch.weights
        n_seen = float(state.pull("n"))
        h = row_hash(batch)
        rng = np.random.default_rng([int(self.seed), int(n_seen) & 0xFFFFFFFF, int(h[0] & np.uint64(0xFFFFFFFF))])
        sum_x, weight, claim = state.pull("sum_x"), state.pull("weight"), state.pull("claim")
        free = (weight <= 0) & (claim <= 0)
        mine = self.__dict__.setdefault("_claims", [])  # [(slot, token, x, w), ...] not persisted: see docstring
        reopen_x, reopen_w = [], []
        keep = []
        for slot, token, x, wt, age in mine:  # at most CLAIM_MEMORY entries: a bounded check, not per record
            if claim[slot] != token:
                state.push("sum_x", -wt * x[None, :], rows=[slot])
                state.push("weight", [-wt], rows=[slot])
                state.push("sumsq", [-wt * float(x @ x)], rows=[slot])
                reopen_x.append(x)
                reopen_w.append(wt)
            elif age < CLAIM_MEMORY // 4:
                keep.append((slot, token, x, wt, age + 1))
        mine[:] = keep

        used = ~free
        open_mask = np.zeros(len(X), dtype=bool)
        cost = 0.0
        if not used.any():
            m = min(2 * self._k_max, self.slots, len(X))
            open_mask[_kmeanspp(X, w, m, rng)] = True
            _, d2 = nearest(X, X[open_mask])
        else:
            slots_used = np.flatnonzero(used)
            centers = sum_x[slots_used] / np.maximum(weight[slots_used], 1e-300)[:, None]
            bk = backend_of(self)  # the (n x slots) distance computation runs on the backend
            idx, d2 = bk.nearest(bk.asarray(X), bk.asarray(centers))
            batch_cost = float(w @ d2)
            f = max(float(state.pull("cost")) + batch_cost, 1e-12) / (OPEN_RATE * self._k_max)
            p = np.minimum(1.0, w * d2 / f)
            open_mask = rng.random(len(X)) < p
        n_free = int(free.sum()) - len(reopen_x)
        if open_mask.sum() > max(n_free, 0):  # summary full: keep only the farthest openings
            cand = np.flatnonzero(open_mask)
            open_mask[:] = False
            if n_free > 0:
                open_mask[cand[np.argsort(-d2[cand], kind="stable")[:n_free]]] = True

        # openings: this batch's new points plus lost claims to re-place
        ox = np.concatenate([X[open_mask]] + [np.asarray(reopen_x).reshape(-1, X.shape[1])])
        ow = np.concatenate([w[open_mask], np.asarray(reopen_w, dtype=np.float64)])
        free_slots = np.flatnonzero(free)
        m_open = min(len(ox), len(free_slots))
        ox, ow = ox[:m_open], ow[:m_open]
        if m_open:
            slots = rng.choice(free_slots, size=m_open, replace=False)
            tokens = rng.uniform(1e-9, 1.0, m_open)
            state.push("sum_x", ow[:, None] * ox, rows=slots)
            state.push("weight", ow, rows=slots)
            state.push("sumsq", ow * (ox * ox).sum(1), rows=slots)
            state.push("claim", tokens, rows=slots)
            mine.extend((int(s), float(t), x.copy(), float(wt), 0) for s, t, x, wt in zip(slots, tokens, ox, ow))
            del mine[:-CLAIM_MEMORY]

        # assignments: everything not opened goes to its nearest used slot
        rest = ~open_mask
        if used.any() and rest.any():
            target = slots_used[idx[rest]]
            wr, Xr = w[rest], X[rest]
            uniq, inv = np.unique(target, return_inverse=True)
            _push_assigned(state, uniq, inv, wr, Xr)
            cost = float(wr @ d2[rest])
        elif rest.any():  # first batch: the seeds are the only slots (their mass is the opening)
            # assign the rest to the seeds just opened in this batch
            sl = slots[: int(open_mask.sum())]
            seeds = X[open_mask]
            idx2, d2r = nearest(X[rest], seeds)
            wr = w[rest]
            _push_assigned(state, sl, idx2, wr, X[rest])
            cost = float(wr @ d2r)
        state.push("cost", cost)
        state.push("n", float(w.sum()))

    def finalize(self, state: State) -> "KMeansModel":
        weight = state.pull("weight")
        live = weight > 1e-9
        w = weight[live]
        centers = state.pull("sum_x")[live] / w[:, None]
        scatter = float(np.sum(state.pull("sumsq")[live]) - np.sum(w * (centers * centers).sum(1)))
        attrs = {"k_max": self._k_max, "n_init": int(self.n_init), "max_iter": int(self.max_iter),
                 "seed": int(self.seed), "examples_seen": float(state.pull("n")),
                 "summary_scatter": max(scatter, 0.0), "n_features": int(self.n_features)}
        return KMeansModel.solve(centers, w, int(self.k), attrs)


def _kmeanspp(X: np.ndarray, w: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``m`` rows picked by weighted D^2 sampling (k-means++ seeding)."""
    n = len(X)
    m = min(m, n)
    chosen = np.empty(m, dtype=np.int64)
    chosen[0] = rng.choice(n, p=w / w.sum())
    d2 = ((X - X[chosen[0]]) ** 2).sum(1)
    for i in range(1, m):  # one vectorized pass over the batch per seed (m <= 2 * k_max)
        p = w * d2
        tot = p.sum()
        chosen[i] = rng.choice(n, p=p / tot) if tot > 0 else rng.integers(n)
        d2 = np.minimum(d2, ((X - X[chosen[i]]) ** 2).sum(1))
    return chosen


def _push_assigned(state: State, slots: np.ndarray, group: np.ndarray, w: np.ndarray, X: np.ndarray) -> None:
    """Add the points ``X`` (weights ``w``) to the summary, point i to slot ``slots[group[i]]``:
    their weighted sum, weight and weighted squared norm per slot."""
    n = len(slots)
    state.push("sum_x", group_sum(group, w[:, None] * X, n), rows=slots)
    state.push("weight", np.bincount(group, weights=w, minlength=n), rows=slots)
    state.push("sumsq", np.bincount(group, weights=w * (X * X).sum(1), minlength=n), rows=slots)


def _draw(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn with probability proportional to ``weights`` (> 0 in total):
    ``rng.choice(n, p=...)`` without its validation of ``p``, which was half the cost of
    solving a summary (50 restarts x k draws)."""
    c = np.cumsum(weights)
    return np.minimum(np.searchsorted(c, rng.random(size) * c[-1], side="right"), len(c) - 1)


def _greedy_kmeanspp(P: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy weighted k-means++ (as scikit-learn): each step draws ``2 + log k`` D^2
    candidates and keeps the one that lowers the weighted potential most."""
    n = len(P)
    trials = 2 + int(np.log(k))
    chosen = [int(_draw(rng, w, 1)[0])]
    d2 = ((P - P[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        p = w * d2
        if not p.sum() > 0:
            chosen.append(int(rng.integers(n)))
            continue
        cand = _draw(rng, p, trials)
        dc = np.minimum(d2[None, :], ((P[None, :, :] - P[cand][:, None, :]) ** 2).sum(2))
        best = int(np.argmin(dc @ w))
        chosen.append(int(cand[best]))
        d2 = dc[best]
    return np.asarray(chosen)


def weighted_kmeans(P: np.ndarray, w: np.ndarray, k: int, n_init: int, max_iter: int,
                    seed: int) -> tuple[np.ndarray, float]:
    """Weighted k-means++ + Lloyd on a small weighted point set; the best of ``n_init``."""
    k = min(k, len(P))
    rng = np.random.default_rng([seed, k])
    best, best_cost = None, np.inf
    for _ in range(n_init):
        C = P[_greedy_kmeanspp(P, w, k, rng)].copy()
        prev = np.inf
        for _ in range(max_iter):
            idx, d2 = nearest(P, C)
            cost = float(w @ d2)
            tot = np.bincount(idx, weights=w, minlength=k)
            sums = group_sum(idx, w[:, None] * P, k)
            nonempty = tot > 0
            C[nonempty] = sums[nonempty] / tot[nonempty, None]
            if prev - cost <= 1e-10 * max(cost, 1e-300):
                break
            prev = cost
        cost = float(w @ nearest(P, C)[1])
        if cost < best_cost:
            best, best_cost = C.copy(), cost
    return best, best_cost


class KMeansModel(Model):
    algorithm = "kmeans"

    def __init__(self, centers: np.ndarray, summary_centers: np.ndarray, summary_weights: np.ndarray,
                 attrs: dict[str, Any]):
        self.centers = np.asarray(centers, dtype=np.float64)
        self.summary_centers = np.asarray(summary_centers, dtype=np.float64)
        self.summary_weights = np.asarray(summary_weights, dtype=np.float64)
        self.attrs = attrs

    @classmethod
    def solve(cls, summary_centers: np.ndarray, summary_weights: np.ndarray, k: int,
              attrs: dict[str, Any]) -> "KMeansModel":
        if len(summary_centers) == 0:
            centers = np.zeros((0, int(attrs.get("n_features", 0))))
            cost = 0.0
        else:
            centers, cost = weighted_kmeans(summary_centers, summary_weights, k, int(attrs["n_init"]),
                                            int(attrs["max_iter"]), int(attrs["seed"]))
        return cls(centers, summary_centers, summary_weights, {**attrs, "k": int(k), "summary_cost": cost})

    @property
    def k(self) -> int:
        return int(self.attrs["k"])

    def with_k(self, k: int) -> "KMeansModel":
        """The model for another ``k <= k_max``, solved from the stored summary (no retraining)."""
        if not 1 <= int(k) <= int(self.attrs["k_max"]):
            raise ValueError(f"kmeans: k must be in [1, k_max={self.attrs['k_max']}], got {k}")
        return KMeansModel.solve(self.summary_centers, self.summary_weights, int(k), dict(self.attrs))

    def evaluate(self, batch: Batch) -> np.ndarray:
        """Index of the closest cluster for every example."""
        return nearest(np.asarray(batch.dense(), np.float64), self.centers)[0]

    def metric_names(self) -> tuple[str, ...]:
        return ("mean_sse", "sse")

    def score(self, batch: Batch, metric: str | None = None) -> float:
        """``mean_sse`` (default: mean squared distance to the closest center) or ``sse``."""
        metric = metrics.check_metric(self.algorithm, metric or "mean_sse", self.metric_names())
        total = metrics.sse(np.asarray(batch.dense(), np.float64), self.centers, batch.w)
        return total if metric == "sse" else total / max(float(batch.weights.sum()), 1e-300)

    def predict_records(self, batch: Batch) -> list[dict[str, Any]]:
        idx, d2 = nearest(np.asarray(batch.dense(), np.float64), self.centers)
        return [{"prediction": int(i), "distance": float(d)} for i, d in zip(idx.tolist(), np.sqrt(d2).tolist())]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"centers": self.centers.copy(), "summary_centers": self.summary_centers.copy(),
                 "summary_weights": self.summary_weights.copy()}, dict(self.attrs))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "KMeansModel":
        return cls(np.array(arrays["centers"]), np.array(arrays["summary_centers"]),
                   np.array(arrays["summary_weights"]), dict(attrs))


register(KMeans, KMeansModel)
