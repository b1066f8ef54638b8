"""Redis key layout of one job. Every key carries the hash tag ``{job}`` so that all of a
job's keys live in one Redis Cluster slot, which MULTI/EXEC and WATCH require."""
from __future__ import annotations

PREFIX = "sl"
JOBS = f"{PREFIX}:jobs"  # set of job names


class JobKeys:
    def __init__(self, job: str):
        self.job = job
        base = f"{PREFIX}:{{{job}}}"
        self.base = base
        self.spec = f"{base}:spec"  # JSON job spec
        self.status = f"{base}:status"  # running | paused | finished | failed | deleting
        self.keyspecs = f"{base}:keys"  # hash: state key -> KeySpec JSON
        self.versions = f"{base}:versions"  # hash: state key -> commits that wrote it
        self.offsets = f"{base}:offsets"  # hash: partition -> next offset (authoritative)
        self.epochs = f"{base}:epochs"  # hash: partition -> owner epoch (fencing)
        # hash: partition -> the data pass (``--epochs``) its stored offset belongs to; absent = 0
        self.data_epochs = f"{base}:data_epochs"
        self.info = f"{base}:info"  # hash of texts: reason (why the job failed), first_dead_letter
        self.counters = f"{base}:counters"  # hash: records_applied, records_dead_lettered, ...
        self.rate = f"{base}:rate"  # list of "ms:applied" samples, newest first
        self.members = f"{base}:members"  # zset: member -> last heartbeat (ms)
        self.barrier_gen = f"{base}:barrier:gen"
        self.barrier_arrived = f"{base}:barrier:arrived:"  # + generation
        self.finalize_lock = f"{base}:finalize:lock"
        self.snapshot_lock = f"{base}:snapshot:lock"
        # the model store's keys (snapshots/store.py): published models outlive a deleted job
        self.snapshots = f"{base}:snapshot:"

    def state(self, key: str) -> str:
        return f"{self.base}:k:{key}"  # hash: chunk id -> little-endian bytes

    def all_keys(self, state_keys: list[str]) -> list[str]:
        fixed = [self.spec, self.status, self.keyspecs, self.versions, self.offsets, self.epochs, self.data_epochs,
                 self.info, self.counters, self.rate, self.members, self.barrier_gen, self.finalize_lock,
                 self.snapshot_lock]
        return fixed + [self.state(k) for k in state_keys]
