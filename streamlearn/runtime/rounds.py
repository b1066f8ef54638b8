"""Synchronous rounds: 1 or N workers learn the same model.

For an algorithm whose ``update`` only adds a round's gradient (``Algorithm.synchronous``,
e.g. factorization machines with ``aggregation=sync``), every worker goes through the same
rounds. Round r is the version r of the state's round counter (``round_keys[0]``, written
only by the round's close):

1. ``begin``: read the round counter, then (in the update) the parameters: theta_r. The
   worker's share of the round (at most mini_batch_size / live members rows, whole
   messages) is committed with its offsets under a check-and-set on the counter
   (``CommitInfo.expect``): if round r closed meanwhile (this member was dropped as dead,
   or read theta_{r+1} after reading r), nothing is applied and the records are consumed
   again from the stored offsets. A member with nothing to contribute still takes part.
2. ``end``: a barrier (every live member has committed its share; members whose heartbeat
   stops drop out after ``MEMBER_TIMEOUT_MS``, so a dead worker cannot hold a round), then
   the close: the holder of the round's lease runs ``close_round`` and commits it under a
   check-and-set on the round counter and on the key every contribution writes, so the
   step is applied exactly once and covers every contribution it saw (a late one makes the
   closer compute again). The other members wait for the counter to move; the lease lapses
   if its holder dies, and another member closes the round.

A round not closed when the job finalizes (the last, partial one) is applied by the
algorithm's ``finalize`` itself, so the model never misses committed records.

What moves per round is proportional to the rows the round touches when the algorithm's
large keys are row journals (:mod:`streamlearn.statestore.journal`; factorization machines'
are): a contribution commits its rows' gradient sums as one patch, the close one patch of
the stepped rows, and a member's ``refresh`` at ``begin`` only marks what it holds as behind,
so its next pull adds the patches of the rounds since instead of reading the key again.
"""
from __future__ import annotations

import time

from streamlearn.algorithms.base import Algorithm
from streamlearn.statestore.base import StaleCommit
from streamlearn.statestore.buffered import BufferedState, CommitInfo

#: how often a member waiting for another to close the round looks again
POLL_S = 0.005


class Rounds:
    """One member's part in the synchronous rounds of ``algorithm`` over ``state``."""

    def __init__(self, algorithm: Algorithm, state: BufferedState):
        self.algorithm = algorithm
        self.state = state
        self.counter, self.written = algorithm.round_keys
        self.round = -1  # the round this member began (and may close)
        self.closes = 0  # rounds this member closed (its commits went through)
        self._current = False  # what this member holds is current: it closed the last round itself

    def begin(self) -> dict[str, int]:
        """Start this member's share of the open round; returns the check-and-set its
        contribution's commit carries (``CommitInfo.expect``)."""
        if not self._current:
            self.state.refresh()  # another member's close moved the parameters
        self._current = False
        self.round = self.state.version(self.counter)
        return {self.counter: self.round}

    def end(self) -> None:
        """Wait for every live member, then see the round begun closed (once, by one member)."""
        self.state.barrier()
        lease = f"round:{self.round}"
        while True:
            held = self.state.held_version(self.written)
            self.state.refresh([self.counter, self.written])
            if self.state.version(self.counter) != self.round:
                return  # closed by another member
            if not self.state.backend.lease(lease):
                time.sleep(POLL_S)
                continue
            expect = {self.counter: self.round, self.written: self.state.version(self.written)}
            if expect[self.written] != held:  # others contributed since this member read: read what they wrote
                # (not the parameters: they move only at a close; not the keys just read at ``expect``)
                self.state.refresh(keep=(*self.algorithm.round_state, self.counter, self.written))
            self.algorithm.close_round(self.state)
            try:
                self.state.commit(CommitInfo(expect=expect))
            except StaleCommit:  # a late contribution (or a closer whose lease had lapsed): look again
                self.state.discard()
                continue
            self.closes += 1
            self._current = True
            return
