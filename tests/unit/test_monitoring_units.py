"""Gate expressions, profiles and drift statistics without a stack."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn.batch import Batch
from streamlearn.monitoring.drift import DriftPolicy, compare, ks_distance
from streamlearn.monitoring.gate_expr import GateError, parse_gate, parse_gates
from streamlearn.monitoring.profile import MemberProfile, Profile


@pytest.mark.parametrize("text, expected", [
    ("rmse<=3.2", "rmse<=3.2"), (" auc >= published - 0.005 ", "auc>=published-0.005"),
    ("accuracy>published", "accuracy>published"), ("log_loss<1e-3", "log_loss<0.001")])
def test_gate_expressions_parse_and_normalize(text, expected):
    assert str(parse_gate(text)) == expected


@pytest.mark.parametrize("text", ["rmse", "rmse==3", "rmse<=abc", "os.system('x')<1", "rmse<=published*2", ""])
def test_malformed_gate_expressions_raise(text):
    with pytest.raises(GateError):
        parse_gate(text)


def test_a_gate_on_an_unmeasured_metric_raises():
    with pytest.raises(GateError, match="not measured"):
        parse_gates(["auc>=0.8"], ("accuracy", "records_applied"))


def test_profiles_merge_to_the_profile_of_all_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3)).astype(np.float32)
    whole = Profile("dense", 3)
    whole.observe([Batch(X)])
    parts = [Profile("dense", 3) for _ in range(3)]
    for p, rows in zip(parts, np.array_split(np.arange(3000), 3)):
        p.observe([Batch(X[rows])])
    merged = Profile.merged(p.to_bytes() for p in parts)
    assert merged.rows == whole.rows == 3000
    np.testing.assert_allclose(merged.features.sum, whole.features.sum, atol=1e-3)  # float32 partial sums per batch
    np.testing.assert_array_equal(merged.features.min, whole.features.min)
    assert abs(merged.sketches[0].get_quantile(0.5) - whole.sketches[0].get_quantile(0.5)) < 0.05


def test_a_member_profile_skips_dead_lettered_rows_and_keeps_failed_commits_out():
    X = np.arange(10, dtype=np.float32).reshape(-1, 1)
    member = MemberProfile("w", 1.0, flush_s=0.0)  # every commit writes
    member.stage([Batch(X[:5]), Batch(X[5:])], failed_rows=[1, 7])
    member.accept()
    assert member.committed.rows == 8 and member.committed.features.sum[0] == 45 - 1 - 7
    member.stage([Batch(X[:2])])  # this commit fails: not accepted
    field, blob = member.stage([Batch(X[:1])])
    member.accept()
    assert field == "w" and Profile.from_bytes(blob).rows == 9


def test_a_member_profile_is_written_when_due_or_forced_and_always_a_prefix_of_its_commits():
    X = np.arange(10, dtype=np.float32).reshape(-1, 1)
    member = MemberProfile("w", 1.0, flush_s=3600.0)
    field, blob = member.stage([Batch(X[:2])])  # nothing written yet: due
    member.accept()
    assert Profile.from_bytes(blob).rows == 2 and not member.unwritten
    assert member.stage([Batch(X[2:5])]) is None  # written just now: not due, nothing serialized
    member.accept()
    assert member.committed.rows == 5 and member.unwritten
    _, failed = member.stage([Batch(X[5:6])], force=True)  # a forced write whose commit fails
    assert Profile.from_bytes(failed).rows == 6
    stored: dict[str, bytes] = {}
    assert member.write(stored.__setitem__) is False  # not due
    assert member.write(stored.__setitem__, force=True) and Profile.from_bytes(stored["w"]).rows == 5
    assert member.write(stored.__setitem__, force=True) is False  # nothing new to write
    _, blob = member.stage([Batch(X[6:])], force=True)  # a partition's end: written with its commit
    member.accept()
    assert Profile.from_bytes(blob).rows == 9 and not member.unwritten


def test_ks_distance_matches_the_exact_two_sample_statistic():
    rng = np.random.default_rng(1)
    train, live = rng.normal(size=150).astype(np.float32), rng.normal(0.4, 1, 80).astype(np.float32)
    p = Profile("dense", 1)
    p.observe([Batch(train[:, None])])  # under 200 values the sketch holds them all: exact
    grid = np.sort(np.concatenate([train, live]))
    exact = np.abs(np.searchsorted(np.sort(train), grid, "right") / 150
                   - np.searchsorted(np.sort(live), grid, "right") / 80).max()
    assert ks_distance(p.sketches[0], live) == pytest.approx(exact, abs=1e-9)


def test_thresholds_do_not_fire_on_sample_size_alone():
    rng = np.random.default_rng(2)
    p = Profile("dense", 1)
    p.observe([Batch(rng.normal(size=(200_000, 1)).astype(np.float32))])
    tiny_shift = rng.normal(0.05, 1, 200_000).astype(np.float32)  # measurable, too small to matter
    out = compare({"x0": tiny_shift}, {"x0": p.sketches[0]}, p.sketched_rows, DriftPolicy())["x0"]
    assert out["ks"] > 0.015 and out["drift"] is False
