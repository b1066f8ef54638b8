"""The public conformance suite for algorithms (as River's ``check_estimator``).

``check_algorithm(MyAlgorithm, n_features=3)`` runs every check in :data:`CHECKS` against
one configuration of an algorithm class and raises :class:`AssertionError` naming the
first check that fails. What an algorithm must do to run as a streamlearn job:

- ``declarations``: every ``__init__`` parameter is declared in ``param_spec`` with a
  meaning and constraints, the defaults satisfy them, and every value survives the trip
  through ``--param NAME=TEXT`` (the CLI's conversion);
- ``contract``: ``initialize`` declares the state, ``update`` only pushes (declares
  nothing), ``finalize`` returns the registered model type, whose ``evaluate``, ``score``
  and ``predict_records`` answer one value per example (JSON-able records, an unknown
  metric is a ``ValueError``);
- ``snapshot_round_trip``: ``to_arrays`` gives plain numeric arrays and JSON attributes
  (no pickle) from which ``from_arrays`` rebuilds a model that answers the same;
- ``pause_resume``: fitting half the batches, dropping the instance and continuing with a
  new one on the committed state (no ``initialize``) gives the model of one run;
- ``initialize_from``: fitting half the batches, publishing the model with the training
  state it keeps (``kept_state``) as a snapshot (encoded and decoded), and continuing a new
  job from it on the other half (``initialize_from``, what ``job create --from-snapshot``
  runs) gives the model of one run over all of them;
- ``deterministic``: two runs with the same parameters give the same model, bit for bit.

Batches default to seeded synthetic data of the algorithm's width (labels 0/1 when it
``needs_label``); pass ``batches=`` (and ``test=``) for data the algorithm needs to learn
something meaningful from. Runs in-process on :class:`~streamlearn.statestore.local.LocalState`
(no Kafka, no Redis).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from streamlearn.algorithms import model_class
from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.algorithms.params import param_infos
from streamlearn.batch import Batch
from streamlearn.snapshots.format import decode_snapshot, encode_snapshot, load_model
from streamlearn.statestore.local import LocalState, MemoryBackend

__all__ = ["check_algorithm", "CHECKS", "Case"]


@dataclass
class Case:
    """One configuration of an algorithm class and the data the checks feed it."""

    cls: type[Algorithm]
    params: dict[str, Any]
    train: list[Batch]
    test: Batch

    def make(self) -> Algorithm:
        return self.cls.from_params(dict(self.params))


def _expect(condition: Any, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def fit(algo: Algorithm, batches: list[Batch], state: LocalState | None = None) -> tuple[Model, LocalState]:
    """Initialize (unless resuming on ``state``), update and commit every batch, finalize."""
    if state is None:
        state = LocalState()
        algo.initialize(state)
        state.commit()
    for batch in batches:
        algo.update(state, batch)
        state.commit()
    return algo.finalize(state), state


def assert_same_model(m1: Model, m2: Model, exact: bool = True, what: str = "") -> None:
    a1, _ = m1.to_arrays()
    a2, _ = m2.to_arrays()
    _expect(sorted(a1) == sorted(a2), f"{what}: the models hold different arrays ({sorted(a1)} vs {sorted(a2)})")
    for key in a1:
        if exact:
            np.testing.assert_array_equal(a1[key], a2[key], err_msg=f"{what}: array {key!r}")
        else:
            np.testing.assert_allclose(a1[key], a2[key], rtol=1e-9, atol=1e-12, err_msg=f"{what}: array {key!r}")


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


# -- the checks -------------------------------------------------------------------------
def check_declarations(case: Case) -> None:
    cls, name = case.cls, case.cls.name
    _expect(name, f"{cls.__name__} has no name")
    infos = param_infos(cls)
    declared = set(getattr(cls, "param_spec", {}))
    names = [i.name for i in infos]
    _expect(declared == set(names), f"{name}: param_spec must declare exactly the __init__ parameters: "
                                    f"undeclared {sorted(set(names) - declared)}, unknown {sorted(declared - set(names))}")
    for info in infos:
        _expect(info.spec.meaning.strip(), f"{name}: parameter {info.name} has no meaning")
        _expect(info.type is not None, f"{name}: parameter {info.name} has no type annotation")
        _expect(info.required or info.spec.accepts(info.default),
                f"{name}: the default {info.name}={info.default!r} violates {info.spec.describe()}")
    algo = case.make()
    params = algo.get_params()
    _expect(list(params) == names, f"{name}: get_params() must list the __init__ parameters in order")
    again = cls.from_params({k: _as_text(v) for k, v in params.items()}).get_params()
    for key, value in params.items():
        norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
        _expect(norm(again[key]) == norm(value), f"{name}: --param {key}={_as_text(value)} converts to "
                                                 f"{again[key]!r}, not {value!r}")
    json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()})  # a job spec holds them


def check_contract(case: Case) -> None:
    name = case.cls.name
    algo = case.make()
    state = LocalState()
    algo.initialize(state)
    state.commit()
    declared = set(state.keys())
    _expect(declared, f"{name}: initialize must declare the state")
    for batch in case.train[:3]:
        algo.update(state, batch)
        state.commit()
    _expect(set(state.keys()) == declared, f"{name}: update must not declare state keys")
    model = algo.finalize(state)
    _expect(isinstance(model, Model) and model.algorithm == name,
            f"{name}: finalize must return a Model whose algorithm is {name!r}, got {model!r}")
    _expect(algo.n_features() >= 1, f"{name}: n_features() must be >= 1")
    out = model.evaluate(case.test)
    _expect(len(out) == len(case.test), f"{name}: evaluate must answer once per example")
    _expect(np.isfinite(model.score(case.test)), f"{name}: score must be a finite number")
    records = model.predict_records(case.test.take(np.arange(min(5, len(case.test)))))
    _expect(len(records) == min(5, len(case.test)) and all(isinstance(r, dict) and "prediction" in r for r in records),
            f"{name}: predict_records must give one dict with a 'prediction' per example")
    json.dumps(records)
    try:
        model.score(case.test, metric="no-such-metric")
    except ValueError:
        pass
    else:
        raise AssertionError(f"{name}: score with an unknown metric must raise ValueError")


def check_snapshot_round_trip(case: Case) -> None:
    name = case.cls.name
    model, _ = fit(case.make(), case.train[:4])
    arrays, attrs = model.to_arrays()
    _expect(all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values()),
            f"{name}: to_arrays must give numeric numpy arrays")
    copied = {k: np.array(v, copy=True) for k, v in arrays.items()}
    loaded = model_class(name).from_arrays(copied, json.loads(json.dumps(attrs)))
    np.testing.assert_array_equal(np.asarray(model.evaluate(case.test)), np.asarray(loaded.evaluate(case.test)),
                                  err_msg=f"{name}: a reloaded model evaluates differently")
    _expect(model.predict_records(case.test) == loaded.predict_records(case.test),
            f"{name}: a reloaded model predicts differently")
    _expect(model.score(case.test) == loaded.score(case.test), f"{name}: a reloaded model scores differently")


def check_pause_resume(case: Case) -> None:
    half = len(case.train) // 2
    straight, _ = fit(case.make(), case.train)
    backend = MemoryBackend()
    first = LocalState(backend)
    algo = case.make()
    algo.initialize(first)
    first.commit()
    for batch in case.train[:half]:
        algo.update(first, batch)
        first.commit()
    resumed, _ = fit(case.make(), case.train[half:], state=LocalState(backend))
    assert_same_model(straight, resumed, exact=False, what=f"{case.cls.name}: paused and resumed vs one run")


def check_initialize_from(case: Case) -> None:

    half = len(case.train) // 2
    straight, _ = fit(case.make(), case.train)
    parent, parent_state = fit(case.make(), case.train[:half])
    kept = case.make().kept_state(parent_state, parent)
    snapshot = decode_snapshot(encode_snapshot(parent, {"job": "parent"}, state=kept, key=None))
    algo, state = case.make(), LocalState()
    algo.initialize_from(state, load_model(snapshot), snapshot.state)
    state.commit()
    continued, _ = fit(algo, case.train[half:], state=state)
    assert_same_model(straight, continued, exact=False,
                      what=f"{case.cls.name}: continued from a snapshot vs one run")


def check_deterministic(case: Case) -> None:
    m1, _ = fit(case.make(), case.train)
    m2, _ = fit(case.make(), case.train)
    assert_same_model(m1, m2, what=f"{case.cls.name}: two runs with the same seed")


#: every check, in the order ``check_algorithm`` runs them
CHECKS: tuple[Callable[[Case], None], ...] = (check_declarations, check_contract, check_snapshot_round_trip,
                                              check_pause_resume, check_initialize_from, check_deterministic)


def synthetic_batches(algo: Algorithm, n_batches: int = 8, rows: int = 200, seed: int = 0) -> tuple[list[Batch], Batch]:
    """Seeded standard-normal features of the algorithm's width (labels 0/1 when it needs
    them): ``n_batches`` training batches and a test batch."""
    rng = np.random.default_rng(seed)
    d = int(algo.n_features())

    def batch() -> Batch:
        X = rng.standard_normal((rows, d)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.float64) if algo.needs_label else None
        return Batch(X, y)

    train = [batch() for _ in range(n_batches)]
    return train, batch()


def check_algorithm(cls: type[Algorithm], *, batches: list[Batch] | None = None, test: Batch | None = None,
                    **params: Any) -> None:
    """Run every check of :data:`CHECKS` on ``cls`` configured with ``params``; raise
    :class:`AssertionError` (naming the check) at the first failure."""
    if batches is None:
        batches, generated_test = synthetic_batches(cls.from_params(dict(params)))
        test = generated_test if test is None else test
    _expect(len(batches) >= 2, "check_algorithm needs at least two training batches (pause/resume splits them)")
    case = Case(cls, dict(params), list(batches), test if test is not None else batches[-1])
    for check in CHECKS:
        try:
            check(case)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}({cls.__name__}): {exc}") from exc
