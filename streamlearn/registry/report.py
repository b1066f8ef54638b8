"""The registry's answers as text lines (what the command line prints without ``--json``)."""
from __future__ import annotations

from typing import Any

from streamlearn.registry.data import leakage_line
from streamlearn.registry.times import iso


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def _scores(scores: dict[str, Any]) -> str:
    return " ".join(f"{k}={_num(v)}" for k, v in sorted(scores.items())) or "-"


def _ranges(partitions: dict[str, list] | None) -> str:
    return " ".join(f"{p}:{a}-{b}" for p, rs in (partitions or {}).items() for a, b in rs) or "-"


def _event_time(et: dict | None) -> str:
    return "-" if not et else f"{iso(et['min'])} .. {iso(et['max'])}"


def model_lines(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['model']}  {r['algorithm']}  {r['status']}  created={r['created_at']}  "
            f"records={_num(r['records_applied'])}  holdout: {_scores(r['holdout'])}  "
            f"evaluated: {_scores(r['evaluated'])}" for r in rows]


def evaluation_lines(e: dict[str, Any]) -> list[str]:
    d = e["data"]
    window = "" if not (d.get("since") or d.get("until")) else f" [{d.get('since') or '…'}, {d.get('until') or '…'})"
    return [f"evaluation {e['id']} of {e['model']} on {d['topic']} {_ranges(d['partitions'])}{window}: "
            f"{d['records']} records" + (f" ({d['rejected']} unreadable)" if d.get("rejected") else ""),
            f"  {_scores(e['scores'])}", f"  {leakage_line(e['leakage'])}"]


def lineage_lines(info: dict[str, Any]) -> list[str]:
    p = info.get("provenance") or {}
    code = p.get("code") or {}
    out = [f"model {info['model']}  {info['algorithm']}  {info['status']}  created {info['created_at']}",
           f"  params: {_scores(info['params'])}",
           f"  holdout: {_scores(info['holdout'])}"]
    if code:
        out.append(f"  code: streamlearn {code.get('streamlearn')} git {code.get('git_commit') or '-'}  "
                   f"host {p.get('host')}  user {p.get('user')}")
    job = info.get("job") or {}
    if job.get("origin"):
        out.append(f"  started by: {_scores(job['origin'])}")
    if info.get("gate"):
        out.append(f"  gate: {info['gate'].get('status')} {info['gate'].get('reason') or ''}".rstrip())
    out.append("parents:" if info["parents"] else "parents: none")
    out += [f"  {q['model']}  ({q['link']}, {q['algorithm']}, {q['status']}, created {q['created_at']})"
            for q in info["parents"]]
    out.append("training data:")
    for d in info["training_data"]:
        out.append(f"  {d['model']}: {d.get('topic')} {_ranges(d.get('partitions')) if 'partitions' in d else d.get('offsets')}"
                   f"  records={_num(d.get('records_applied'))}  event time {_event_time(d.get('event_time'))}"
                   + (f"  schemas {' '.join(d['schemas'])}" if d.get("schemas") else ""))
    out.append("evaluations:" if info["evaluations"] else "evaluations: none")
    for e in info["evaluations"]:
        out += ["  " + line for line in evaluation_lines(e)]
    out.append("children: " + (" ".join(info["children"]) or "none"))
    return out


def compare_lines(c: dict[str, Any]) -> list[str]:
    out = [f"{c['a']} vs {c['b']}", "params:" if c["params"] else "params: the same"]
    out += [f"  {k}: {_num(v['a'])} -> {_num(v['b'])}" for k, v in c["params"].items()]
    out.append("holdout:" if c["holdout"] else "holdout: no common score")
    out += [f"  {k}: {_num(v['a'])} -> {_num(v['b'])} ({_num(v['diff'])})" for k, v in c["holdout"].items()]
    if not c["same_data"]:
        out.append("evaluations on the same data: none (evaluate both on the same --topic/--offsets)")
    for s in c["same_data"]:
        d = s["data"]
        out.append(f"on {d['topic']} {_ranges(d['partitions'])} ({d['records']} records; {s['a']} / {s['b']}):")
        out += [f"  {k}: {_num(v['a'])} -> {_num(v['b'])} ({_num(v['diff'])})" for k, v in s["scores"].items()]
    return out


def backtest_lines(b: dict[str, Any]) -> list[str]:
    out = [f"backtest {b['name']}: {b['algorithm']} on {b['topic']}, {len(b['windows'])} windows of {b['horizon']}"]
    for w in b["windows"]:
        out.append(f"  window {w['window']} ({w['model']}): trained on {w['train_records']} records "
                   f"(to {_event_time(w['train_event_time'])}), tested on {w['test_records']} "
                   f"({_event_time(w['test_event_time'])}): {_scores(w['scores'])}; {leakage_line(w['leakage'])}")
    out.append(f"  mean: {_scores(b['mean'])}")
    return out


__all__ = ["backtest_lines", "compare_lines", "evaluation_lines", "lineage_lines", "model_lines"]
