"""``streamlearn job watch NAME``: the job in the terminal, redrawn in place until it ends.

One frame: state, members, records applied and per second, dead letters (and the first
reason), the holdout metric so far (from the job's history), each partition's stored offset,
end and lag, and for a bounded job how far it is and an ETA. Everything comes from the
job's Redis record (status and the newest history sample); watching costs the job nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamlearn.runtime.history import partition_lag, progress, read_history
from streamlearn.runtime.jobs import JobSpec, job_status, load_spec
from streamlearn.runtime.record import ENDED, JobRecord

__all__ = ["JobView", "frame", "watch"]


@dataclass(frozen=True)
class JobView:
    """One instant of a job, as the watch and the worker's progress line show it."""

    spec: JobSpec
    status: dict[str, Any]
    last: dict[str, Any] | None  # the newest history sample
    first_dead_letter: str | None

    @classmethod
    def read(cls, client: redis.Redis, name: str) -> "JobView":
        spec = load_spec(client, name)
        newest = read_history(client, name, newest=1)
        return cls(spec, job_status(client, name), newest[-1] if newest else None,
                   JobRecord(client, name).first_dead_letter())

    @property
    def fraction(self) -> float | None:
        """Share of a bounded job's messages consumed (every pass counted); None if unbounded."""
        done = progress(self.spec, self.status)
        return None if done is None or done[1] <= 0 else done[0] / done[1]

    def expected_records(self) -> float | None:
        """Records the whole job will have applied, extrapolated from the share consumed."""
        f = self.fraction
        applied = self.status["records_applied"]
        return applied / f if f and applied else None

    def eta_s(self) -> float | None:
        expected, rate = self.expected_records(), self.status["records_per_second"]
        if expected is None or not rate:
            return None
        return max(0.0, expected - self.status["records_applied"]) / rate

    def holdout(self) -> tuple[str, float] | None:
        """(metric, value of the model it picks) so far, when the algorithm keeps a holdout."""
        h = (self.last or {}).get("holdout")
        if not h or h["values"][h["selected"]] is None:
            return None
        return h["metric"], h["values"][h["selected"]]

    def lag(self) -> dict[int, int]:
        """Bounded: to the end (every pass left); unbounded: the newest sample's (the workers read
        the high watermarks)."""
        if self.spec.until == "end":
            return partition_lag(self.spec, self.status)
        return {int(p): n for p, n in ((self.last or {}).get("lag") or {}).items()}


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_STATE_STYLE = {"running": "green", "paused": "yellow", "finished": "cyan", "failed": "bold red", "deleting": "red"}


def frame(view: JobView) -> Group:
    """The job as one rich renderable."""
    st, spec = view.status, view.spec
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    state = Text(st["state"], style=_STATE_STYLE.get(st["state"], ""))
    if st.get("reason"):
        state.append(f" ({st['reason']})")
    head.add_row("job", f"{spec.name}  ({spec.algorithm} on {spec.topic}, until {spec.until})")
    head.add_row("state", state)
    head.add_row("members", f"{len(st['members'])}  {' '.join(st['members'])}".rstrip())
    head.add_row("records", f"{st['records_applied']:,} applied, {st['records_per_second']:,.0f}/s")
    dead = f"{st['records_dead_lettered']:,}"
    if view.first_dead_letter:
        dead += f"  (first: {view.first_dead_letter})"
    head.add_row("dead letters", dead)
    holdout = view.holdout()
    head.add_row("holdout", f"{holdout[0]} {holdout[1]:.4g}" if holdout else "-")
    if spec.epochs > 1:
        head.add_row("epoch", f"{st['epoch'] + 1} of {spec.epochs}")
    if st["snapshot_version"] is not None:
        head.add_row("snapshot", f"version {st['snapshot_version']}")
    if view.fraction is not None:
        eta = view.eta_s()
        done = f"{100 * view.fraction:.1f} %"
        head.add_row("progress", done + (f", ETA {_duration(eta)}" if eta is not None and st["state"] == "running" else ""))

    parts = Table(title="partitions", title_justify="left", box=None, padding=(0, 2))
    for col in ("partition", "offset", "end", "lag"):
        parts.add_column(col, justify="right")
    lag = view.lag()
    ends = spec.end_offsets
    for p in sorted({int(p) for p in st["partitions"]} | set(ends)):
        offset = st["partitions"].get(str(p))
        parts.add_row(str(p), "-" if offset is None else f"{offset:,}",
                      f"{ends[p]:,}" if p in ends else "-", f"{lag[p]:,}" if p in lag else "-")
    return Group(head, Text(""), parts)


def watch(client: redis.Redis, name: str, *, once: bool = False, every_s: float = 1.0,
          console: Console | None = None) -> str:
    """Show the job until it ends (or one frame, ``once``); returns its last state."""
    console = console or Console()
    view = JobView.read(client, name)
    if once or view.status["state"] in ENDED:
        console.print(frame(view))
        return view.status["state"]
    with Live(frame(view), console=console, refresh_per_second=4, transient=False) as live:
        while view.status["state"] not in ENDED:
            time.sleep(every_s)
            view = JobView.read(client, name)
            live.update(frame(view))
    return view.status["state"]
