"""Replay reports: JSON (the machine-readable truth; TrafficReplay status is drawn from it) and a
self-contained HTML page with plots (inline SVG, made with matplotlib).

Reports live in ``$REPLAYOPS_HOME/reports/<id>/`` as ``report.json`` and ``report.html``.
"""

from __future__ import annotations

import fnmatch
import html
import io
import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller import paths
from controller.replay.generator import Stats

DEFAULT_GOALS = {"minSuccessRate": 1.0}  # with no goals given, every response must match


def percentile(hist: Counter[float], q: float) -> float:
    total = sum(hist.values())
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def _lat(hist: Counter[float]) -> dict[str, float]:
    return {"p50Ms": percentile(hist, 0.5), "p95Ms": percentile(hist, 0.95), "p99Ms": percentile(hist, 0.99)}


def evaluate(goals: Mapping[str, Any], summary: Mapping[str, Any],
             endpoints: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its limit, the actual value and whether it was met."""
    out = []

    def check(goal: str, limit: float, actual: float, higher_is_better: bool) -> None:
        met = actual >= limit if higher_is_better else actual <= limit
        out.append({"goal": goal, "limit": limit, "actual": round(actual, 4), "met": met})

    if "minSuccessRate" in goals:
        check("minSuccessRate", goals["minSuccessRate"], summary["successRate"], True)
    if "minRPS" in goals:
        check("minRPS", goals["minRPS"], summary["rps"], True)
    for q, limit in (goals.get("maxLatencyMs") or {}).items():
        check(f"max {q}", limit, summary[f"{q}Ms"], False)
    for rule in goals.get("endpoints") or []:
        for name, ep in endpoints.items():
            method, _, path = name.partition(" ")
            if rule.get("method") not in (None, method) or not fnmatch.fnmatchcase(path, rule["path"]):
                continue
            for q, limit in (rule.get("maxLatencyMs") or {}).items():
                check(f"{name} max {q}", limit, ep[f"{q}Ms"], False)
    return out


def build(stats: Stats, *, report_id: str, snapshot: str, target: str, started: float, finished: float,
          goals: Mapping[str, Any], noise: Mapping[str, set[str]], errors: list[str], logs: str = "",
          read_problems: list[str] | None = None, mock_match_rate: float | None = None,
          events: list[dict[str, str]] | None = None) -> dict[str, Any]:
    elapsed = max(finished - started, 1e-9)
    ok = stats.requests - stats.failures - stats.mismatches
    summary = {"requests": stats.requests, "successRate": round(ok / stats.requests, 4) if stats.requests else 0.0,
               "mismatches": stats.mismatches, "errors": stats.failures, "rps": round(stats.requests / elapsed, 2),
               **_lat(stats.latency)}
    if mock_match_rate is not None:
        summary["mockMatchRate"] = round(mock_match_rate, 4)
    endpoints = {name: {"requests": ep["requests"], "mismatches": ep["mismatches"], "errors": ep["errors"],
                        **_lat(ep["latency"]), "examples": ep["examples"]}
                 for name, ep in sorted(stats.endpoints.items())}
    evaluated = evaluate(goals or DEFAULT_GOALS, summary, endpoints)
    timeline = [{"t": sec, "requests": n, "failures": bad, **_lat(lat)}
                for sec, (n, bad, lat) in sorted(stats.timeline.items())]
    return {
        "id": report_id, "snapshot": snapshot, "target": target, "started": started, "finished": finished,
        "summary": summary, "goals": evaluated, "goalsMet": all(g["met"] for g in evaluated) and not errors
        and stats.requests > 0,
        "endpoints": endpoints, "noise": {k: sorted(v) for k, v in sorted(noise.items()) if v},
        "timeline": timeline, "statuses": dict(sorted(stats.statuses.items())),
        "errors": dict(stats.errors.most_common(20)),
        "runErrors": errors, "readProblems": read_problems or [], "logs": logs[-20000:], "events": events or [],
        "partial": bool(errors or read_problems),
    }


def _svg(draw: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6))
    draw(ax)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def render_html(report: Mapping[str, Any]) -> str:
    t = [p["t"] for p in report["timeline"]]
    plots = {
        "Latency percentiles over time (ms)": _svg(lambda ax: (
            [ax.plot(t, [p[k] for p in report["timeline"]], label=k[:3]) for k in ("p50Ms", "p95Ms", "p99Ms")],
            ax.set_xlabel("seconds"), ax.legend())),
        "Throughput (requests per second)": _svg(lambda ax: (
            ax.bar(t, [p["requests"] for p in report["timeline"]], label="requests"),
            ax.bar(t, [p["failures"] for p in report["timeline"]], color="tab:red", label="failed or mismatched"),
            ax.set_xlabel("seconds"), ax.legend())),
        "Status codes": _svg(lambda ax: ax.bar(list(report["statuses"]), list(report["statuses"].values()))),
        "Mismatches by endpoint": _svg(lambda ax: ax.barh(
            list(report["endpoints"]) or ["-"], [e["mismatches"] for e in report["endpoints"].values()] or [0])),
    }
    if "mockMatchRate" in report["summary"]:
        rate = report["summary"]["mockMatchRate"]
        plots["Mock match rate"] = _svg(lambda ax: ax.bar(["matched", "missed"], [rate, 1 - rate]))
    s = report["summary"]
    goal_rows = "".join(f"<tr><td>{html.escape(g['goal'])}</td><td>{g['limit']}</td><td>{g['actual']}</td>"
                        f"<td class={'ok' if g['met'] else 'bad'}>{'met' if g['met'] else 'NOT met'}</td></tr>"
                        for g in report["goals"])
    ep_rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{e['requests']}</td><td>{e['mismatches']}</td><td>{e['errors']}</td>"
        f"<td>{e['p99Ms']}</td><td><pre>{html.escape(chr(10).join(sum(e['examples'], [])[:10]))}</pre></td></tr>"
        for n, e in report["endpoints"].items())
    figures = "".join(f"<h3>{html.escape(k)}</h3>{v}" for k, v in plots.items())
    event_rows = "".join("<tr>" + "".join(f"<td>{html.escape(e[k])}</td>" for k in
                                          ("time", "type", "reason", "object", "message")) + "</tr>"
                         for e in report.get("events", []))
    verdict = "goals met" if report["goalsMet"] else "goals NOT met"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>replay {html.escape(report['id'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:4px}}
table{{border-collapse:collapse}}
.ok{{color:green}} .bad{{color:#b00;font-weight:bold}} pre{{margin:0;font-size:11px}}</style></head><body>
<h1>Replay {html.escape(report['id'])}: <span class="{'ok' if report['goalsMet'] else 'bad'}">{verdict}</span></h1>
<p>snapshot <b>{html.escape(report['snapshot'])}</b> → {html.escape(report['target'])};
{s['requests']} requests, success rate {s['successRate']:.2%}, p50 {s['p50Ms']} ms, p95 {s['p95Ms']} ms,
p99 {s['p99Ms']} ms, {s['rps']} req/s{' (partial)' if report['partial'] else ''}</p>
<h2>Goals</h2><table><tr><th>goal</th><th>limit</th><th>actual</th><th></th></tr>{goal_rows}</table>
<h2>Endpoints</h2><table><tr><th>endpoint</th><th>requests</th><th>mismatches</th><th>errors</th><th>p99 ms</th>
<th>example diffs</th></tr>{ep_rows}</table>
<h2>Noise ignored</h2><pre>{html.escape(json.dumps(report['noise'], indent=1))}</pre>
<h2>Errors</h2><pre>{html.escape(json.dumps({**report['errors'], 'run': report['runErrors']}, indent=1))}</pre>
{figures}<h2>Target logs</h2><pre>{html.escape(report['logs'][-5000:])}</pre>
<h2>Cluster events</h2><table><tr><th>time</th><th>type</th><th>reason</th><th>object</th><th>message</th></tr>
{event_rows}</table></body></html>"""


def reports_dir() -> Path:
    return paths.home() / "reports"


def save(report: Mapping[str, Any], root: Path | None = None) -> Path:
    """Write report.json and report.html under ``root/<id>``; return the directory."""
    target = (root or reports_dir()) / report["id"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (target / "report.html").write_text(render_html(report))
    return target


def load(report_id: str, root: Path | None = None) -> dict[str, Any]:
    path = (root or reports_dir()) / report_id / "report.json"
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no report {report_id!r} in {path.parent.parent}") from exc


def terminal_summary(report: Mapping[str, Any]) -> str:
    s = report["summary"]
    lines = [f"replay {report['id']}: {report['snapshot']} -> {report['target']}"
             f"{'  (partial)' if report['partial'] else ''}",
             f"  {s['requests']} requests, success {s['successRate']:.2%}, {s['mismatches']} mismatches, "
             f"{s['errors']} errors, p50 {s['p50Ms']} ms, p95 {s['p95Ms']} ms, p99 {s['p99Ms']} ms, {s['rps']} req/s"]
    for g in report["goals"]:
        verdict = "met" if g["met"] else "NOT met"
        lines.append(f"  goal {g['goal']}: limit {g['limit']}, actual {g['actual']} -> {verdict}")
    for name, ep in report["endpoints"].items():
        if ep["mismatches"] or ep["errors"]:
            lines.append(f"  {name}: {ep['mismatches']} mismatches, {ep['errors']} errors")
            for example in ep["examples"][:1]:
                lines.extend(f"      {line}" for line in example[:5])
    for endpoint, fields in report["noise"].items():
        lines.append(f"  noise ignored on {endpoint}: {', '.join(fields)}")
    for error, n in report["errors"].items():
        lines.append(f"  error x{n}: {error}")
    lines.append(f"  result: {'goals met' if report['goalsMet'] else 'goals NOT met'}")
    return "\n".join(lines)


def new_id(snapshot: str) -> str:
    return f"{snapshot}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"
