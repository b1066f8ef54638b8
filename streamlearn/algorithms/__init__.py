"""Algorithm and model registry: ``--algorithm NAME`` and snapshot loading look names up here."""
from __future__ import annotations

from streamlearn.algorithms.base import Algorithm, Model, ParamError

_ALGORITHMS: dict[str, type[Algorithm]] = {}
_MODELS: dict[str, type[Model]] = {}


def register(algorithm: type[Algorithm], model: type[Model]) -> None:
    _ALGORITHMS[algorithm.name] = algorithm
    _MODELS[model.algorithm] = model


#: the algorithms that ship with streamlearn (each module registers itself on import)
BUILTIN: tuple[str, ...] = ("median", "linear_learner", "factorization_machines", "kmeans", "pca", "counter", "ntm",
                            "deepar")


def _load_builtins() -> None:
    for name in BUILTIN:
        __import__(f"streamlearn.algorithms.{name}")


def algorithm_class(name: str) -> type[Algorithm]:
    _load_builtins()
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise ParamError(f"unknown algorithm {name!r}; available: {sorted(_ALGORITHMS)}") from None


def model_class(name: str) -> type[Model]:
    _load_builtins()
    try:
        return _MODELS[name]
    except KeyError:
        raise ParamError(f"no model type for algorithm {name!r}; available: {sorted(_MODELS)}") from None


def make_algorithm(name: str, params: dict) -> Algorithm:
    """The configured, validated algorithm ``name`` (params may be strings from the CLI)."""
    return algorithm_class(name).from_params(params)


def available() -> list[str]:
    _load_builtins()
    return sorted(_ALGORITHMS)


__all__ = ["BUILTIN", "Algorithm", "Model", "ParamError", "register", "algorithm_class", "model_class", "make_algorithm", "available"]
