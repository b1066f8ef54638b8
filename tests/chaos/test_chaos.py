"""The short chaos profile (CI): one bounded job through every fault kind, exact invariants."""
from __future__ import annotations

import pytest

from tests.chaos.harness import CLUSTER_FAULTS, FAULTS, PROFILES, run_chaos

pytestmark = pytest.mark.chaos


def _private_stack(tmp_path_factory, name: str, purge: bool, **up):
    from tests.conftest import _start, _stop

    home = tmp_path_factory.mktemp(name)
    settings, dog = _start(home, timeout=180, **up)
    try:
        yield home, settings
    finally:
        _stop(home, dog, purge=purge)


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory):
    """A private stack (own home, Redis AOF appendfsync always) that the faults may restart."""
    yield from _private_stack(tmp_path_factory, "chaos-stack", False, **dict(PROFILES["short"].stack))


def test_short_profile_loses_and_duplicates_nothing(chaos_stack, tmp_path):
    home, settings = chaos_stack
    _assert_clean(run_chaos(settings, home, PROFILES["short"], tmp_path), FAULTS)


def _assert_clean(result, kinds) -> None:
    print(result.summary())
    assert set(result.faults) == set(kinds), f"not every fault kind ran before the job ended: {result.summary()}"
    assert result.lost == 0 and result.duplicated == 0, result.summary()
    assert result.ok, result.summary()


@pytest.fixture(scope="module")
def cluster_chaos_stack(tmp_path_factory):
    """A private stack whose Redis is a Redis Cluster of 3 masters with a replica each."""
    yield from _private_stack(tmp_path_factory, "cluster-chaos-stack", True, **dict(PROFILES["cluster"].stack))


def test_cluster_profile_failover_and_reshard_lose_and_duplicate_nothing(cluster_chaos_stack, tmp_path):
    """Sharded state on a Redis Cluster: a master of one of the job's slots SIGKILLed (replica
    promoted), one of its slots migrated (``redis-cli --cluster reshard``), workers killed and
    stopped, all mid-job: 0 lost, 0 duplicated, finalized once."""
    home, settings = cluster_chaos_stack
    _assert_clean(run_chaos(settings, home, PROFILES["cluster"], tmp_path), CLUSTER_FAULTS)
