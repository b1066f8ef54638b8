"""The short chaos profile (CI): one bounded job through every fault kind, exact invariants."""
from __future__ import annotations

import pytest

from tests.chaos.harness import FAULTS, PROFILES, run_chaos

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory):
    """A private stack (own home, Redis AOF appendfsync always) that the faults may restart."""
    from tests.conftest import _start, _stop

    home = tmp_path_factory.mktemp("chaos-stack")
    settings, dog = _start(home, timeout=180, redis_aof=True, redis_appendfsync="always")
    try:
        yield home, settings
    finally:
        _stop(home, dog, purge=False)


def test_short_profile_loses_and_duplicates_nothing(chaos_stack, tmp_path):
    home, settings = chaos_stack
    result = run_chaos(settings, home, PROFILES["short"], tmp_path)
    print(result.summary())
    assert set(result.faults) == set(FAULTS), f"not every fault kind ran before the job ended: {result.summary()}"
    assert result.lost == 0 and result.duplicated == 0, result.summary()
    assert result.ok, result.summary()
