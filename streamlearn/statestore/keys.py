"""Redis key layout of one job's state store: every key its commit transaction reads or writes.

Every key carries the hash tag ``{job}`` so that all of a job's keys live in one Redis
Cluster slot, which MULTI/EXEC and WATCH require. A commit writes, in one transaction, the
pushed chunks and their versions, each partition's next offset (fenced by its owner epoch,
with its data epoch) and the commit's accounting; offsets and epochs belong to the store's
contract because they are only true together with the state they produced. The rest of the
job's keys (spec, status, locks) are the job record's: :mod:`streamlearn.runtime.record`.
"""
from __future__ import annotations

PREFIX = "sl"


class StoreKeys:
    def __init__(self, job: str):
        self.job = job
        base = f"{PREFIX}:{{{job}}}"
        self.base = base
        self.keyspecs = f"{base}:keys"  # hash: state key -> KeySpec JSON
        self.versions = f"{base}:versions"  # hash: state key -> commits that wrote it
        self.offsets = f"{base}:offsets"  # hash: partition -> next offset (authoritative)
        self.epochs = f"{base}:epochs"  # hash: partition -> owner epoch (fencing)
        # hash: partition -> the data pass (``--epochs``) its stored offset belongs to; absent = 0
        self.data_epochs = f"{base}:data_epochs"
        # the commit's accounting: records_applied, records_dead_lettered, commits (the job
        # record counts its own events here too); "ms:records" rate samples, newest first;
        # texts: first_dead_letter (and the job record's failure reason)
        self.counters = f"{base}:counters"
        self.rate = f"{base}:rate"
        self.info = f"{base}:info"
        # hash: member -> that worker's data profile, rewritten with each of its commits
        # (streamlearn.monitoring.profile)
        self.profile = f"{base}:profile"
        self.members = f"{base}:members"  # zset: member -> last heartbeat (ms), for barriers
        self.barrier_gen = f"{base}:barrier:gen"
        self.barrier_arrived = f"{base}:barrier:arrived:"  # + generation
        self.lease = f"{base}:lease:"  # + name: which member does a job-wide task (expires by itself)

    def state(self, key: str) -> str:
        return f"{self.base}:k:{key}"  # hash: chunk id -> little-endian bytes

    def journal(self, key: str) -> str:
        """A journaled key's patches (hash: version -> patch; ``base``: the version its chunks hold)."""
        return f"{self.base}:j:{key}"

    def all_keys(self, state_keys: list[str] = ()) -> list[str]:
        fixed = [self.keyspecs, self.versions, self.offsets, self.epochs, self.data_epochs, self.counters,
                 self.rate, self.info, self.members, self.barrier_gen, self.profile]
        return fixed + [self.state(k) for k in state_keys] + [self.journal(k) for k in state_keys]
