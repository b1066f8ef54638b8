"""Declared algorithm parameters: constraints as data, conversion by the annotated type,
validation messages, and the table `streamlearn algorithms describe` prints from them."""
from __future__ import annotations

import json

import pytest

from streamlearn import cli
from streamlearn.algorithms import BUILTIN, ParamError, algorithm_class
from streamlearn.algorithms.base import Algorithm
from streamlearn.algorithms.params import Interval, ListOf, Options, Param, Span, param_infos


class _Toy(Algorithm):
    """Declares the shapes other algorithms need: "int >= 1 or 'auto'", "labels or None"."""

    name = "_toy_params"
    param_spec = {
        "n_features": Param("record width", Interval(int, 1, None), Options("auto")),
        "classes": Param("label of each class", ListOf(str, int), None),
        "rate": Param("step", Span(Interval(float, 0, None, closed="neither"))),
        "share": Param("a fraction", Interval(float, 0, 1, closed="left")),
        "flag": Param("a switch", bool),
    }

    def __init__(self, n_features: int | str = "auto", classes: list[str | int] | None = None,
                 rate: float | tuple[float, float] = 0.1, share: float = 0.5, flag: bool = False):
        self.n_features = n_features
        self.classes = classes
        self.rate = rate
        self.share = share
        self.flag = flag


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("7", 7)])
def test_int_or_auto(text, value):
    assert _Toy.from_params({"n_features": text}).n_features == value


@pytest.mark.parametrize("text", ["0", "-3", "2.5", "automatic"])
def test_int_or_auto_rejects(text):
    with pytest.raises(ParamError, match=r"_toy_params: n_features must be an integer >= 1 or one of 'auto'"):
        _Toy.from_params({"n_features": text})


@pytest.mark.parametrize("text, value", [("cat,dog", ["cat", "dog"]), ('["cat", "dog"]', ["cat", "dog"]),
                                         ("0,1,2", [0, 1, 2]), ("[3, 5]", [3, 5]), ("none", None), ("null", None)])
def test_list_of_labels_or_none(text, value):
    assert _Toy.from_params({"classes": text}).classes == value


@pytest.mark.parametrize("text", ["a,a", "[]", "[1.5]"])
def test_list_of_labels_rejects(text):
    with pytest.raises(ParamError, match="classes"):
        _Toy.from_params({"classes": text})


@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("0.1,2", (0.1, 2.0)), ("[0.1, 2]", (0.1, 2.0))])
def test_number_or_range(text, value):
    assert _Toy.from_params({"rate": text}).rate == value


@pytest.mark.parametrize("text, word", [("0", "a number > 0"), ("[2, 1]", "range"), ("[0.1, 2, 3]", "rate"),
                                        ("nan", "rate"), ("fast", "rate")])
def test_number_or_range_rejects(text, word):
    with pytest.raises(ParamError, match=word):
        _Toy.from_params({"rate": text})


def test_bools_are_words_not_guesses():
    assert _Toy.from_params({"flag": "yes"}).flag is True
    assert _Toy.from_params({"flag": "off"}).flag is False
    with pytest.raises(ParamError, match="flag"):
        _Toy.from_params({"flag": "2"})


def test_half_open_interval():
    assert _Toy.from_params({"share": "0"}).share == 0.0
    with pytest.raises(ParamError, match=r"share must be a number in \[0, 1\)"):
        _Toy.from_params({"share": "1"})


def test_python_values_are_validated_too():
    with pytest.raises(ParamError, match="flag must be true or false, got 1"):
        _Toy.from_params({"flag": 1})
    with pytest.raises(ParamError, match="n_features must be"):
        _Toy.from_params({"n_features": True})  # a bool is not an integer


def test_text_that_looks_like_json_is_not_guessed_for_a_string_parameter():
    # the old converter parsed "[1]" as JSON by its first character, whatever the parameter
    with pytest.raises(ParamError, match="device must be"):
        algorithm_class("linear_learner").from_params({"n_features": "3", "device": "[1]"})
    with pytest.raises(ParamError, match=r"n_features must be an integer >= 1 or one of 'auto', got '\[1\]'"):
        _Toy.from_params({"n_features": "[1]"})


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_declares_every_parameter(name):
    cls = algorithm_class(name)
    infos = param_infos(cls)
    assert [i.name for i in infos] == cls.param_names()
    for info in infos:
        assert info.spec is not None and info.spec.meaning, info.name
        assert info.type is not None, info.name
        assert info.required or info.spec.accepts(info.default), (info.name, info.default)


def test_describe_prints_every_parameter_with_type_default_range_and_meaning(capsys):
    assert cli.main(["algorithms", "describe", "kmeans"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("kmeans: Streaming k-means")
    header = out[2].split()
    assert header[:3] == ["parameter", "type", "default"]
    rows = {line.split()[0]: line for line in out[3:]}
    assert set(rows) == set(algorithm_class("kmeans").param_names())
    assert "\"auto\"" in rows["n_features"] and "an integer >= 1 or one of 'auto'" in rows["n_features"]
    k_max = rows["k_max"]
    assert " 0 " in k_max and "an integer >= 0" in k_max and "without retraining" in k_max


def test_describe_json_and_list(capsys):
    assert cli.main(["algorithms", "describe", "linear_learner", "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    lr = next(p for p in desc["parameters"] if p["name"] == "learning_rate")
    assert lr == {"name": "learning_rate", "type": "float | tuple[float, float]", "required": False,
                  "default": [0.02, 2.0], "valid": "a number > 0, or a [low, high] range of such numbers",
                  "meaning": lr["meaning"]} and lr["meaning"]
    assert cli.main(["algorithms"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    # every built-in, sorted (test modules may have registered algorithms of their own)
    assert set(BUILTIN) <= set(listed) and listed == sorted(listed)


def test_describe_unknown_algorithm_is_a_user_error(capsys):
    assert cli.main(["algorithms", "describe", "no_such"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown algorithm 'no_such'" in err
    assert cli.main(["algorithms", "describe"]) == 2


def test_a_param_needs_a_constraint():
    with pytest.raises(TypeError):
        Param("meaning only")
