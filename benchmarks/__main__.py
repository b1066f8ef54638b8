"""``python -m benchmarks [--profile smoke|full] [--json FILE] [CASE...]``"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

from benchmarks import PROFILES, all_cases, format_table, run
from benchmarks._core import as_dict, library_versions, machine_info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    ap.add_argument("--json", metavar="FILE", help="also write rows, machine and versions as JSON")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress log on stderr")
    ap.add_argument("cases", nargs="*", metavar="CASE", help="case or group (limits, e2e, state, scaling, peers)")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(all_cases()))
        return 0
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    rows, _ = run(args.cases, args.profile, verbose=not args.quiet)
    machine, versions = machine_info(), library_versions()
    cmd = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"streamlearn benchmarks — profile {args.profile} — {started:%Y-%m-%d %H:%M %Z} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"command: {cmd.strip()}")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram']} RAM; {machine['os']}; "
          f"Python {machine['python']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print()
    print(format_table(rows))
    print()
    print(f"{sum(r.status == 'pass' for r in rows)} passed, {sum(r.status == 'FAIL' for r in rows)} failed, "
          f"{sum(r.status == 'error' for r in rows)} errors, {sum(r.status == 'skip' for r in rows)} skipped "
          f"(targets: {sum(bool(r.target) for r in rows)})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"profile": args.profile, "started": started.isoformat(), "command": cmd, "machine": machine,
                       "versions": versions, "rows": [as_dict(r) for r in rows]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
