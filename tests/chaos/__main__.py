"""``python -m tests.chaos [--profile short|long|cluster] [--seed N] [--records N]``: chaos runs
on a private local stack of the profile's kind (its own home; Redis AOF with appendfsync always,
or a Redis Cluster with replicas), one summary line each."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import PROFILES, run_chaos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="long")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--records", type=int)
    ap.add_argument("--runs", type=int, default=1, help="runs (seeds seed, seed+1, ...)")
    ap.add_argument("--keep", action="store_true", help="keep the stack home and worker logs")
    a = ap.parse_args(argv)
    from streamlearn.devstack import stack

    profile = PROFILES[a.profile]
    if a.records:
        profile = dataclasses.replace(profile, records=a.records)
    base = Path(tempfile.mkdtemp(prefix="streamlearn-chaos-"))
    home = base / "stack"
    t0 = time.monotonic()
    settings = stack.up(home, timeout=180, **dict(profile.stack))
    print(f"private stack up in {time.monotonic() - t0:.0f}s (home {home})", file=sys.stderr)
    ok = True
    try:
        for i in range(a.runs):
            seed = (a.seed if a.seed is not None else profile.seed) + i
            res = run_chaos(settings, home, dataclasses.replace(profile, seed=seed), base / "logs",
                            say=lambda m: print(m, file=sys.stderr, flush=True))
            print(res.summary(), flush=True)
            ok &= res.ok
    finally:
        stack.down(home, purge=not a.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
