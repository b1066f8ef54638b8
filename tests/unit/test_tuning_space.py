"""The search space of a study (no services): parsing, validation against the algorithm's
declared parameters, and the rungs a study scores trials at."""
from __future__ import annotations

import json

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from streamlearn.algorithms import ParamError
from streamlearn.tuning.space import SpaceError, build_space, check_space, space_from_json, space_to_json
from streamlearn.tuning.study import StudySpec


def test_ranges_and_choices_parse_to_optuna_distributions(tmp_path):
    space = build_space(None, ["learning_rate=0.001:1:log", "mini_batch_size=32:1024:int:log", "l2=0:0.1"],
                        ["optimizer=adagrad,sgd"])
    assert space["learning_rate"] == FloatDistribution(0.001, 1.0, log=True)
    assert space["mini_batch_size"] == IntDistribution(32, 1024, log=True)
    assert space["l2"] == FloatDistribution(0.0, 0.1)
    assert space["optimizer"] == CategoricalDistribution(["adagrad", "sgd"])
    assert space_from_json(json.loads(json.dumps(space_to_json(space)))) == space
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"learning_rate": {"low": 0.001, "high": 1, "log": True}, "optimizer": ["adagrad", "sgd"]}))
    from_file = build_space(f, [], [])
    assert from_file == {"learning_rate": space["learning_rate"], "optimizer": space["optimizer"]}


@pytest.mark.parametrize("ranges, choices, message", [
    (["learning_rate=1:1"], [], "is empty"),
    (["learning_rate=2:1"], [], "is empty"),
    (["learning_rate=0:1:log"], [], "needs LOW > 0"),
    (["learning_rate=a:b"], [], "must be numbers"),
    (["learning_rate=0.1"], [], "NAME=LOW:HIGH"),
    (["learning_rate=0.1:1:cubic"], [], "NAME=LOW:HIGH"),
    ([], ["optimizer="], "NAME=A,B"),
    (["l2=0:1"], ["l2=0,1"], "given twice"),
    ([], [], "needs a search space"),
])
def test_bad_space_syntax_is_a_space_error(ranges, choices, message):
    with pytest.raises(SpaceError, match=message):
        build_space(None, ranges, choices)


def test_space_is_checked_against_the_algorithms_parameters():
    check_space("linear_learner", build_space(None, ["learning_rate=0.01:1:log"], []), {"num_models": 1})
    with pytest.raises(SpaceError, match=r"unknown parameter\(s\) \['learnin_rate'\]"):
        check_space("linear_learner", build_space(None, ["learnin_rate=0.01:1"], []), {})
    with pytest.raises(SpaceError, match="both searched and fixed"):
        check_space("linear_learner", build_space(None, ["l2=0:1"], []), {"l2": 0.1})
    with pytest.raises(ParamError, match="optimizer"):
        check_space("linear_learner", build_space(None, [], ["optimizer=adagrad,adam"]), {})


def _spec(**kw) -> StudySpec:
    base = dict(name="s", algorithm="linear_learner", topic="t", metric="accuracy", direction="maximize", space={},
                fixed={}, trials=4, parallel=1, scheduler="asha", min_records=100, reduction_factor=3, epochs=2,
                n_records=1000)
    return StudySpec(**{**base, **kw})


def test_rungs_grow_by_the_reduction_factor_below_a_full_trial():
    assert _spec().rungs == [100, 300, 900]  # a full trial applies 2 epochs x 1000 records
    assert _spec(min_records=1000, reduction_factor=2).rungs == [1000]
    assert _spec().trial_job(7) == "s.007"
