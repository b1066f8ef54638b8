"""Side-by-side benchmarks: our figures against limits and peers measured in the same run.

``python -m benchmarks [--profile smoke|full] [CASE...]`` — see benchmarks/README.md.
Not tests: nothing here runs in CI except the smoke profile's harness check.
"""
from __future__ import annotations

from benchmarks._core import PROFILES, Context, Row, format_table


def all_cases() -> dict:
    """Every case, in the order a full run takes them (limits first: the others reuse them)."""
    from benchmarks import cluster, deepar, e2e, limits, ntm, peers, quality, scaling, serve, state, tune

    out: dict = {}
    for mod in (limits, e2e, state, cluster, scaling, peers, quality, ntm, deepar, serve, tune):
        out.update(mod.CASES)
    return out


def select(names: list[str]) -> list[str]:
    """Case names from arguments: a full name (``e2e.median``) or a group (``peers``)."""
    cases = all_cases()
    if not names:
        return list(cases)
    chosen: list[str] = []
    for n in names:
        hits = [c for c in cases if c == n or c.startswith(n.rstrip(".") + ".")]
        if not hits:
            raise SystemExit(f"unknown case {n!r}; cases: {', '.join(cases)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def run(names: list[str], profile: str = "smoke", verbose: bool = True) -> tuple[list[Row], Context]:
    """Run the chosen cases on a fresh context (private stack started on demand, stopped at the end)."""
    import time
    import traceback

    cases = all_cases()
    ctx = Context(profile, verbose=verbose)
    rows: list[Row] = []
    try:
        for name in select(names):
            ctx.log(f"case {name}")
            t0 = time.perf_counter()
            try:
                rows += cases[name](ctx)
            except Exception as exc:  # one broken case must not lose the others' figures
                traceback.print_exc()
                rows.append(Row(name, status="error", note=f"{type(exc).__name__}: {str(exc)[:160]}"))
            ctx.log(f"case {name} done in {time.perf_counter() - t0:.1f} s")
    finally:
        ctx.close()
    return rows, ctx


__all__ = ["PROFILES", "Context", "Row", "all_cases", "format_table", "run", "select"]
