"""The algorithm contract (the paper's initialize / update / finalize) and the Model base.

Parameters are the ``__init__`` signature (River / scikit-learn style): ``__init__`` only
stores them; each class declares their constraints and meaning once in ``param_spec``
(:mod:`streamlearn.algorithms.params`), from which :meth:`Algorithm.from_params` converts
``--param`` strings and :meth:`Algorithm.check_params` validates, so a bad ``--param`` gets a
clear error at ``job create`` rather than a traceback inside a worker.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar

import numpy as np

from streamlearn.algorithms.params import Param, ParamInfo, convert, param_infos, violations
from streamlearn.batch import Batch
from streamlearn.errors import UserError
from streamlearn.series_batch import SeriesBatch
from streamlearn.statestore.base import State


class ParamError(UserError, ValueError):
    """A bad algorithm parameter: unknown name, wrong type or out-of-range value."""


#: the value of a parameter inferred from the topic's records at ``job create``
#: (:mod:`streamlearn.runtime.contract`): ``n_features``, ``classes``, ``num_classes``...
AUTO = "auto"


class Algorithm:
    """Base class: subclasses set ``name`` and implement the three functions.

    ``update`` runs concurrently on many workers over disjoint parts of the stream, so
    it must only change the state through ``state.push`` (aggregated, never overwritten).
    """

    name: ClassVar[str] = ""
    #: True when the algorithm accepts :class:`~streamlearn.batch.SparseRows` input.
    accepts_sparse: ClassVar[bool] = False
    #: True when every training record must carry a label.
    needs_label: ClassVar[bool] = False
    #: The most examples a worker hands to one ``update`` (it splits what it consumed into
    #: steps of this size). SGD-style learners need many small steps; an algorithm whose
    #: result does not depend on the step size (sums) or that decides per mini-batch
    #: (k-means) sets more, because small steps are dominated by per-call overhead.
    #: ``STREAMLEARN_WORKER_UPDATE_ROWS`` overrides it for every algorithm.
    step_rows: ClassVar[int] = 500
    #: every ``__init__`` parameter's meaning and constraints (see :mod:`~streamlearn.algorithms.params`)
    param_spec: ClassVar[dict[str, Param]] = {}
    #: True when more passes over a small bounded data set make a better model (SGD
    #: learners): a bounded job without ``epochs`` then takes ``contract.default_epochs``
    #: of its records. Exact summaries (sums, sketches) must see each record once.
    multi_pass: ClassVar[bool] = False
    #: True when a job may read its records only once (``epochs`` > 1 is refused at job
    #: create): the algorithm keeps per-key context that a second pass would contradict.
    single_pass: ClassVar[bool] = False
    #: At most this many messages per window (one commit each); 0 = the worker's setting.
    #: An algorithm whose concurrent updates must not drift apart between commits (the
    #: topic model's summed optimizer steps) keeps its windows small.
    window_messages: ClassVar[int] = 0
    #: True when ``update`` only adds to a synchronous round that :meth:`close_round` steps:
    #: the runtime then trains in rounds (:mod:`streamlearn.runtime.rounds`)
    synchronous: bool = False
    #: a synchronous algorithm's state keys that identify the open round: the round counter
    #: (a scalar that only :meth:`close_round` writes, + 1), then a key every update writes
    round_keys: ClassVar[tuple[str, ...]] = ()
    #: the keys only :meth:`close_round` writes (the parameters a round steps from): a member
    #: keeps what it read of them through the round instead of reading them again
    round_state: ClassVar[tuple[str, ...]] = ()

    def initialize(self, state: State) -> None:
        raise NotImplementedError

    def close_round(self, state: State) -> bool:
        """A synchronous algorithm: push the step of the round its updates added to, clear
        the round and count it (``round_keys[0]`` + 1, also when it was empty); False when
        there was nothing to step."""
        raise NotImplementedError

    def update(self, state: State, batch: Batch) -> None:
        raise NotImplementedError

    def finalize(self, state: State) -> "Model":
        raise NotImplementedError

    def holdout_scores(self, state: State) -> dict[str, Any] | None:
        """The holdout metric so far, for a job's history and report: ``{"metric": name,
        "values": [one per packed model, None where nothing was held out yet], "selected":
        index}``; None for an algorithm that keeps no holdout in its state (the default)."""
        return None

    def kept_state(self, state: State, model: "Model") -> dict[str, np.ndarray]:
        """What a snapshot of ``model`` keeps of the job's ``state`` (read in one consistent
        cut) so that :meth:`initialize_from` can continue it: every key
        (:func:`training_state`), unless an algorithm rebuilds a part from the model."""
        return training_state(state)

    def initialize_from(self, state: State, model: "Model",
                        training_state: dict[str, np.ndarray] | None = None) -> None:
        """Incremental training (``job create --from-snapshot``): declare the state as
        ``initialize`` does, with the values of the parent job's ``training_state`` (what its
        snapshot carries: every state key at the snapshot's offsets), so training goes on
        exactly where the parent stopped — packed models, optimizer accumulators,
        normalization statistics, summaries."""
        self.check_continuable(model, training_state)
        for key, (_, kwargs) in _declarations(self).items():
            state.initialize(key, np.asarray(training_state[key]), **kwargs)

    def check_continuable(self, model: "Model", training_state: dict[str, np.ndarray] | None) -> None:
        """Raise :class:`ParamError` unless :meth:`initialize_from` can continue from this
        model and state with these parameters (checked at ``job create`` before anything is
        written). An algorithm whose model alone is its state overrides both to continue
        from snapshots written without the state."""
        if not training_state:
            raise ParamError(f"{self.name}: the snapshot carries no training state (written by format 1, or its "
                             f"state was too large to keep): it cannot be continued")
        declared = _declarations(self)
        missing = sorted(set(declared) - set(training_state))
        if missing:
            raise ParamError(f"{self.name}: the snapshot's training state lacks {missing}: it was trained with "
                             f"other parameters")
        for key, (value, _) in declared.items():
            parent = np.shape(training_state[key])
            if parent != value.shape:
                raise ParamError(f"{self.name}: state {key!r} has shape {parent} in the snapshot but "
                                 f"{value.shape} with these parameters: keep the parameters that size the state")

    # -- parameters -------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        return [info.name for info in param_infos(cls)]

    @classmethod
    def describe_params(cls) -> list[ParamInfo]:
        """Every parameter with its type, default, constraints and meaning."""
        return param_infos(cls)

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.param_names()}

    def check_params(self) -> None:
        """Raise :class:`ParamError` for an invalid parameter: the declared constraints
        first; subclasses extend this with checks that relate several parameters."""
        problems = violations(self)
        if problems:
            raise ParamError(f"{self.name}: " + "; ".join(problems))

    def unresolved(self) -> list[str]:
        """Parameters still ``"auto"`` that only data can settle (``job create`` infers them
        from the topic; in-process they must be given)."""
        return ["n_features"] if getattr(self, "n_features", None) == AUTO else []

    def label_coding(self):
        """The labels a record may carry (:class:`~streamlearn.labels.LabelCoding`), checked
        at decode time; None: any label (or none)."""
        return None

    def row_rule(self):
        """The algorithm's own rule for input rows, checked at decode time like the data
        contract: a callable (CSR indptr, stored values) -> reason or None, or None for no
        rule. A message breaking it is dead-lettered with the reason (the topic model: each
        row must be a non-empty bag of whole, positive word counts)."""
        return None

    def n_features(self) -> int:
        """The input width every record must have (checked at decode time)."""
        return int(getattr(self, "n_features_", getattr(self, "dim", 1)))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Algorithm":
        """Build from user parameters, converting strings (``--param k=v``) by each
        parameter's declared type, and validate."""
        infos = {info.name: info for info in param_infos(cls)}
        unknown = sorted(set(params) - set(infos))
        if unknown:
            raise ParamError(f"{cls.name}: unknown parameter(s) {unknown}; known: {sorted(infos)}")
        kwargs = {k: _from_text(cls.name, infos[k], v) if isinstance(v, str) else v for k, v in params.items()}
        try:
            algo = cls(**kwargs)
        except TypeError as exc:  # a required parameter is missing
            raise ParamError(f"{cls.name}: {exc}") from None
        algo.check_params()
        return algo

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class _Declarations:
    """Records what ``initialize`` declares (key -> initial value, declaration options)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}

    def initialize(self, key: str, value: "np.ndarray | float", aggregator: str = "sum", dtype: str = "float64",
                   chunk_rows: int = 0, journal: bool = False) -> None:
        self.keys[key] = (np.asarray(value), {"aggregator": aggregator, "dtype": dtype, "chunk_rows": chunk_rows,
                                              **({"journal": True} if journal else {})})


def _declarations(algo: Algorithm) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    recorder = _Declarations()
    algo.initialize(recorder)  # type: ignore[arg-type]  (initialize only declares)
    return recorder.keys


def training_state(state: State) -> dict[str, np.ndarray]:
    """Every key of ``state`` as an array (a snapshot's resumable state; for a job's state,
    read it from one consistent cut first: ``RedisState.load_consistent``). No copies: a
    whole-key pull is a read-only array that later pulls and commits never write into."""
    return {key: np.asarray(state.pull(key)) for key in sorted(state.keys())}


def _from_text(algo: str, info: ParamInfo, text: str) -> Any:
    try:
        return convert(text, info)
    except (ValueError, TypeError, RecursionError):  # RecursionError: absurdly nested JSON
        kind = info.type_text or type(info.default).__name__
        raise ParamError(f"{algo}: parameter {info.name}={text[:80]!r} is not a valid {kind}") from None


def require(condition: bool, algo: str, message: str) -> None:
    """Raise a :class:`ParamError` naming the algorithm unless ``condition`` holds."""
    if not condition:
        raise ParamError(f"{algo}: {message}")


class Model:
    """An immutable trained model, rebuilt from a snapshot's arrays and attributes.

    ``to_arrays``/``from_arrays`` are the only serialization: numeric arrays plus a
    JSON-able dict, which is what makes snapshots safe to load (no pickle, no code).
    """

    algorithm: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """``evaluate``, ``score`` and ``predict_records`` take a :class:`Batch` (what the
        runtime passes) or user data ``(X, y=None, …)`` (numpy, pandas, scipy sparse: see
        :meth:`Batch.of`); subclasses implement them for a Batch only."""
        super().__init_subclass__(**kwargs)
        for name in ("evaluate", "score", "predict_records"):
            if name in cls.__dict__:
                setattr(cls, name, _taking_user_data(cls.__dict__[name]))

    def predict(self, X) -> np.ndarray:
        """The model's output for the rows of ``X`` (numpy, pandas DataFrame, scipy sparse):
        ``evaluate`` of a batch of them."""
        return self.evaluate(Batch.of(X))

    def evaluate(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError

    def score(self, batch: Batch, metric: str | None = None) -> float:
        raise NotImplementedError

    def metric_names(self) -> tuple[str, ...]:
        """Every metric ``score`` computes for this model (``streamlearn evaluate`` reports
        them all); empty: only the default one."""
        return ()

    def predict_records(self, batch: Batch) -> list[dict[str, Any]]:
        """One JSON-able dict per example, e.g. ``{"prediction": 1, "score": 0.93}``."""
        return [{"prediction": _jsonable(v)} for v in self.evaluate(batch)]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "Model":
        raise NotImplementedError


def _taking_user_data(method: Callable) -> Callable:
    """``method(batch, *args)`` also callable as ``method(X, y, *args)`` (``y=`` by keyword).
    A :class:`Batch` or :class:`SeriesBatch` (a time-series model's points), or anything else
    with an ``X`` attribute other than a DataFrame, passes as a batch; so does a list of
    strings (raw documents, which a model with a vocabulary reads itself)."""
    @functools.wraps(method)
    def taking(self, data, *args: Any, **kwargs: Any):
        if _is_text(data) or isinstance(data, SeriesBatch):
            return method(self, data, *args, **kwargs)
        if not isinstance(data, Batch) and (not hasattr(data, "X") or hasattr(data, "columns")):
            y = args[0] if args else kwargs.pop("y", None)
            data, args = Batch.of(data, y), args[1:]
        return method(self, data, *args, **kwargs)
    return taking


def _is_text(data: Any) -> bool:
    return isinstance(data, (list, tuple)) and bool(data) and isinstance(data[0], str)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
