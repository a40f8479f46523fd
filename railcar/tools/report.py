"""``railcar report``: the security fileset as one self-contained HTML page.

Input: the fileset ``nemo-agent-security/`` (``railcar.streams.fileset``; layout in ``.notes/detection-api.md``):
``security_snapshot.json`` (counts, coverage with the agents' model paths, findings with masked previews) and
``security_suggestions.jsonl`` (suggestion types ``data_safety``, ``guardrails``, ``deep_scan`` as in the NeMo
Platform "Secure Agents" workflow, ``../shared/seeds/000_*.txt``).

Output: one HTML5 document with inline CSS and inline SVG charts: no script, no external stylesheet, font, image
or link, so it opens offline and can be mailed or attached to a ticket. Sections: headline figures, findings by
type and by agent (bar charts), a timeline of findings per agent, the findings table with masked previews and
follow-up actions, the suggestions (identical titles grouped) with their actions, and guardrail coverage (each
agent's model paths and whether a content-safety / topic-control / safety-guard rail guards them).

Every value from the fileset is HTML-escaped (``html.escape(..., quote=True)``) before it reaches the page, in
text and in attributes alike; only masked previews are shown (the fileset never holds raw values).
"""

from __future__ import annotations

import argparse
import html
import sys
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from railcar.streams.fileset import FILESET, FilesetError
from railcar.streams.pipeline import configured_fileset
from railcar.streams.settings import StreamsSettings

__all__ = ["render_report", "main"]

SEVERITIES = ("critical", "high", "medium", "low")
SEV_COLOR = {"critical": "#c0262d", "high": "#e0672b", "medium": "#d9a514", "low": "#5b8def"}
KIND_COLOR = {"secret": "#c0262d", "pii": "#7b4fd6"}
TYPE_LABEL = {"leaked_secret": "Leaked secret", "pii": "Personal data"}
SUGGESTION_LABEL = {"data_safety": "Data safety", "guardrails": "Guardrails", "deep_scan": "Deep scan"}
SUGGESTION_ORDER = ("data_safety", "guardrails", "deep_scan")
PRIORITY_RANK = {p: i for i, p in enumerate(SEVERITIES)}


def _e(value: Any) -> str:
    """HTML-escape any value (``None`` -> empty), quotes included, for text and attribute positions alike."""
    return "" if value is None else html.escape(str(value), quote=True)


def _parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _agent_of(f: Mapping[str, Any]) -> str:
    loc = f.get("location") or {}
    return str(loc.get("agent") or loc.get("file") or "unknown")


def _where(loc: Mapping[str, Any]) -> str:
    """One location as text: ``file:line  json_path``, or ``trace <id>… span <id>  json_path``."""
    if loc.get("file"):
        return f"{loc['file']}:{loc.get('line', '?')}  {loc.get('json_path', '')}".strip()
    bits = []
    if loc.get("trace_id"):
        bits.append(f"trace {str(loc['trace_id'])[:12]}…")
    if loc.get("span_id"):
        bits.append(f"span {loc['span_id']}")
    if loc.get("json_path"):
        bits.append(str(loc["json_path"]))
    return "  ".join(bits)


# ---------------------------------------------------------------------------------------------------- charts


def _bar_chart(rows: list[tuple[str, list[tuple[int, str, str]]]], title: str, width: int = 520) -> str:
    """A horizontal (stacked) bar chart as inline SVG. ``rows``: ``(label, [(value, color, legend), ...])``."""
    if not rows:
        return f'<svg role="img" aria-label="{_e(title)}: none" width="{width}" height="40"><text x="0" y="24" ' \
               f'class="muted">Nothing to chart</text></svg>'
    label_w, bar_h, gap = 170, 22, 10
    total_max = max(sum(v for v, _, _ in segs) for _, segs in rows) or 1
    span = width - label_w - 50
    height = len(rows) * (bar_h + gap) + 6
    out = [f'<svg role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" width="100%" '
           f'preserveAspectRatio="xMinYMin meet" class="chart">']
    for i, (label, segs) in enumerate(rows):
        y = i * (bar_h + gap) + 3
        out.append(f'<text x="{label_w - 10}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" class="axis">{_e(_short(label))}</text>')
        x = float(label_w)
        for value, color, legend in segs:
            if value <= 0:
                continue
            w = max(value / total_max * span, 3)
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="4" fill="{_e(color)}">'
                       f'<title>{_e(label)} · {_e(legend)}: {value}</title></rect>')
            x += w
        total = sum(v for v, _, _ in segs)
        out.append(f'<text x="{x + 6:.1f}" y="{y + bar_h * 0.7:.1f}" class="value">{total}</text>')
    out.append("</svg>")
    return "".join(out)


def _timeline(findings: list[Mapping[str, Any]], width: int = 1040) -> str:
    """Findings over time as inline SVG: one lane per agent, a dot per finding at its first sighting (radius by
    occurrence count, colour by severity), time axis in UTC."""
    pts = [(t, _agent_of(f), f) for f in findings if (t := _parse_ts(f.get("first_seen"))) is not None]
    if not pts:
        return '<p class="muted">No timestamps to place on a timeline.</p>'
    agents = sorted({a for _, a, _ in pts})
    lo, hi = min(t for t, _, _ in pts).timestamp(), max(t for t, _, _ in pts).timestamp()
    pad = max((hi - lo) * 0.05, 0.5)  # a lone burst sits mid-axis rather than on its edge
    t0 = datetime.fromtimestamp(lo - pad, tz=UTC)
    secs = hi - lo + 2 * pad
    left, right, lane_h, top = 170, 30, 44, 16
    span = width - left - right
    height = top + lane_h * len(agents) + 40
    fmt = "%H:%M:%S.%f" if secs < 10 else "%H:%M:%S" if secs < 2 * 86400 else "%Y-%m-%d %H:%M"
    out = [f'<svg role="img" aria-label="Timeline of findings" viewBox="0 0 {width} {height}" width="100%" class="chart">']
    for i, agent in enumerate(agents):
        y = top + i * lane_h + lane_h / 2
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="lane"/>')
        out.append(f'<text x="{left - 10}" y="{y + 4:.1f}" text-anchor="end" class="axis">{_e(_short(agent))}<title>{_e(agent)}</title></text>')
    axis_y = top + lane_h * len(agents) + 6
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" class="axisline"/>')
    for k in range(5):
        x = left + span * k / 4
        t = datetime.fromtimestamp(t0.timestamp() + secs * k / 4, tz=UTC)
        out.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" class="axisline"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 20}" text-anchor="middle" class="axis">{_e(t.strftime(fmt)[:12] if secs < 10 else t.strftime(fmt))}</text>')
    for t, agent, f in sorted(pts, key=lambda p: p[0]):
        x = left + span * (t - t0).total_seconds() / secs
        y = top + agents.index(agent) * lane_h + lane_h / 2
        count = int(f.get("count") or 1)
        r = min(6 + 2 * (count - 1), 14)
        color = SEV_COLOR.get(str(f.get("severity")), "#888")
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{_e(color)}" fill-opacity="0.85" stroke="#fff" '
                   f'stroke-width="1.5"><title>{_e(f.get("detector"))} · {_e(f.get("masked_preview"))} · '
                   f'{_e(f.get("first_seen"))} · ×{count}</title></circle>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------------- sections


def _short(label: str, n: int = 24) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


def _badge(text: str, color: str) -> str:
    return f'<span class="badge" style="background:{_e(color)}">{_e(text)}</span>'


def _cards(snapshot: Mapping[str, Any], findings: list[Mapping[str, Any]], suggestions: list[Mapping[str, Any]]) -> str:
    kinds = Counter(str(f.get("kind")) for f in findings)
    cov = snapshot.get("coverage") or {}
    occ = sum(int(f.get("count") or 1) for f in findings)
    agents = {str(p.get("agent")) for p in cov.get("model_paths") or () if isinstance(p, Mapping)}
    guarded = {str(p.get("agent")) for p in cov.get("model_paths") or ()
               if isinstance(p, Mapping) and p.get("guarded")}
    crit = sum(1 for f in findings if f.get("severity") == "critical")
    cards = [("Findings", len(findings), f"{occ} occurrences", "#1f2937"),
             ("Leaked secrets", kinds.get("secret", 0), f"{crit} critical", KIND_COLOR["secret"]),
             ("Personal data", kinds.get("pii", 0), "PII in traces", KIND_COLOR["pii"]),
             ("Suggestions", len(suggestions), "follow-up actions below", "#0f766e"),
             ("Guarded agents", f"{len(guarded)}/{len(agents)}", "content-safety / topic-control",
              "#15803d" if agents and guarded == agents else "#b45309")]
    return '<div class="cards">' + "".join(
        f'<div class="card" style="border-top-color:{_e(c)}"><div class="card-label">{_e(label)}</div>'
        f'<div class="card-value">{_e(v)}</div><div class="card-sub">{_e(sub)}</div></div>'
        for label, v, sub, c in cards) + "</div>"


def _charts(findings: list[Mapping[str, Any]]) -> str:
    by_det: Counter[tuple[str, str]] = Counter()
    for f in findings:
        by_det[(str(f.get("detector")), str(f.get("kind")))] += 1
    det_rows = [(det, [(n, KIND_COLOR.get(kind, "#888"), TYPE_LABEL.get("leaked_secret" if kind == "secret" else kind,
                                                                       kind))])
                for (det, kind), n in sorted(by_det.items(), key=lambda kv: (-kv[1], kv[0]))]
    by_agent: dict[str, Counter[str]] = defaultdict(Counter)
    for f in findings:
        by_agent[_agent_of(f)][str(f.get("kind"))] += 1
    agent_rows = [(a, [(c.get("secret", 0), KIND_COLOR["secret"], "leaked secrets"),
                       (c.get("pii", 0), KIND_COLOR["pii"], "personal data")])
                  for a, c in sorted(by_agent.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))]
    legend = ('<div class="legend"><span><i style="background:#c0262d"></i>leaked secret</span>'
              '<span><i style="background:#7b4fd6"></i>personal data</span></div>')
    return ('<div class="grid2">'
            f'<section class="panel"><h2>Findings by type</h2>{legend}{_bar_chart(det_rows, "Findings by detector")}</section>'
            f'<section class="panel"><h2>Findings by agent</h2>{legend}{_bar_chart(agent_rows, "Findings by agent")}</section>'
            '</div>')


def _locations_cell(f: Mapping[str, Any]) -> str:
    """The first location, then every kept one in a ``<details>`` list (with the total when over the cap) and
    the outcome, so the affected lines or traces can be purged."""
    first = f.get("location") or {}
    locs = [x for x in f.get("locations") or [first] if isinstance(x, Mapping)]
    total = int(f.get("location_count") or len(locs))
    out = f"<div class='muted small mono'>{_e(_where(first))}</div>"
    if total > 1:
        items = "".join(f"<li>{_e(_where(x))}</li>" for x in locs)
        more = f"<li>… and {total - len(locs)} more</li>" if total > len(locs) else ""
        out += (f"<details class='small'><summary>{total} locations</summary>"
                f"<ol class='mono locations'>{items}{more}</ol></details>")
    if f.get("outcome"):
        out += f"<div class='muted small'>outcome: {_e(f['outcome'])}</div>"
    return out


def _findings_table(findings: list[Mapping[str, Any]]) -> str:
    if not findings:
        return '<p class="ok">No secrets or personal data were found in the scanned telemetry.</p>'
    rows = []
    ordered = sorted(findings, key=lambda f: (PRIORITY_RANK.get(str(f.get("severity")), 9), str(f.get("type")),
                                              str(f.get("detector")), _agent_of(f)))
    for f in ordered:
        sev = str(f.get("severity", ""))
        actions = "".join(f"<li>{_e(a)}</li>" for a in f.get("follow_up_actions") or ())
        rows.append(
            "<tr>"
            f"<td>{_badge(sev, SEV_COLOR.get(sev, '#888'))}</td>"
            f"<td>{_e(TYPE_LABEL.get(str(f.get('type')), f.get('type')))}<div class='muted small'>{_e(f.get('detector'))}</div></td>"
            f"<td class='pv'><code class='preview'>{_e(f.get('masked_preview'))}</code></td>"
            f"<td>{_e(_agent_of(f))}{_locations_cell(f)}</td>"
            f"<td class='num'>{_e(f.get('count', 1))}</td>"
            f"<td class='small'>{_e(f.get('first_seen'))}</td>"
            f"<td><ol class='actions'>{actions}</ol></td>"
            "</tr>")
    return ('<table class="findings"><thead><tr><th>Severity</th><th>Type</th><th>Masked preview</th>'
            '<th>Agent / location</th><th>Count</th><th>First seen (UTC)</th><th>Follow-up actions</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _suggestions(suggestions: list[Mapping[str, Any]]) -> str:
    if not suggestions:
        return '<p class="muted">No suggestions.</p>'
    groups: OrderedDict[tuple[str, str], list[Mapping[str, Any]]] = OrderedDict()
    for s in sorted(suggestions, key=lambda s: (
            SUGGESTION_ORDER.index(s["type"]) if s.get("type") in SUGGESTION_ORDER else 9,
            PRIORITY_RANK.get(str(s.get("priority")), 9), str(s.get("title")))):
        groups.setdefault((str(s.get("type")), str(s.get("title"))), []).append(s)
    out = []
    current = None
    for (stype, title), items in groups.items():
        if stype != current:
            if current is not None:
                out.append("</div>")
            out.append(f'<h3>{_e(SUGGESTION_LABEL.get(stype, stype))}</h3><div class="suggestions">')
            current = stype
        first = items[0]
        prio = str(first.get("priority", ""))
        details = "".join(f"<li>{_e(s.get('detail'))}</li>" for s in items)
        actions = "".join(f"<li>{_e(a)}</li>" for a in first.get("actions") or ())
        more = f'<span class="muted small">{len(items)} scopes</span>' if len(items) > 1 else ""
        out.append(f'<article class="sugg prio-{_e(prio)}"><header>{_badge(prio, SEV_COLOR.get(prio, "#888"))} '
                   f'<strong>{_e(title)}</strong> {more}</header>'
                   f'<ul class="detail">{details}</ul>'
                   f'<div class="small muted">Follow-up actions</div><ol class="actions">{actions}</ol></article>')
    out.append("</div>")
    return "".join(out)


def _coverage_state(guarded: int, paths: int) -> str:
    """The badge of one agent with ``guarded`` of its ``paths`` model paths guarded: guarded (every one),
    unguarded (none) or partly guarded."""
    if guarded == paths:
        return _badge("guarded", "#15803d")
    if guarded == 0:
        return _badge("unguarded", "#b45309")
    return _badge("partly guarded", "#d9a514")


def _coverage_row(agent: str, paths: list[Mapping[str, Any]]) -> str:
    """One table row: the agent, its coverage badge, the models it called (guarded ones marked), its rails."""
    ps = sorted(paths, key=lambda p: str(p.get("model")))
    guarded = sum(1 for p in ps if p.get("guarded"))
    rails = sorted({str(r) for p in ps for r in p.get("rails") or ()})
    models = ", ".join(f'<span class="chip{" chip-ok" if p.get("guarded") else ""}">{_e(p.get("model"))}</span>'
                       for p in ps)
    return (f"<tr><td><strong>{_e(agent)}</strong></td><td>{_coverage_state(guarded, len(ps))}"
            f"<div class='small muted'>{guarded} of {len(ps)} model paths</div></td><td>{models}</td><td class='small'>"
            f"{_e(', '.join(rails) or 'none')}</td></tr>")


def _coverage(snapshot: Mapping[str, Any]) -> str:
    cov = snapshot.get("coverage") or {}
    paths = [p for p in cov.get("model_paths") or () if isinstance(p, Mapping)]
    by_agent: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in paths:
        by_agent[str(p.get("agent"))].append(p)
    rows = [_coverage_row(agent, by_agent[agent]) for agent in sorted(by_agent)]
    table = ('<table><thead><tr><th>Agent</th><th>Coverage</th><th>Models called</th><th>Rails active</th></tr>'
             f'</thead><tbody>{"".join(rows)}</tbody></table>') if rows else \
        '<p class="muted">No model paths were observed (coverage is recorded by the consumer from trace events).</p>'
    dets = cov.get("detectors") or []
    kinds = ", ".join(str(k) for k in cov.get("kinds") or ())
    return (f'{table}<p class="small muted">A model path counts as guarded when a content-safety, topic-control or '
            f'safety-guard rail runs on it. Telemetry scanned with {len(dets)} detectors ({_e(kinds)}): '
            f'{_e(", ".join(str(d) for d in dets))}.</p>')


_CSS = """
:root{--ink:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--panel:#fff}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:var(--bg)}
header.top{background:linear-gradient(120deg,#0f172a,#1e3a5f);color:#fff;padding:28px 40px}
header.top h1{margin:0 0 4px;font-size:26px;letter-spacing:.2px}header.top .sub{opacity:.8;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:24px 40px 48px}
h2{font-size:17px;margin:0 0 12px}h3{font-size:15px;margin:18px 0 8px;color:#374151}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:14px;margin:-44px 0 22px}
.card{background:var(--panel);border-radius:10px;padding:14px 16px;border-top:4px solid #111;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card-label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.6px}.card-value{font-size:28px;font-weight:700}
.card-sub{font-size:12px;color:var(--muted)}
.panel{background:var(--panel);border-radius:10px;padding:18px 20px;margin:0 0 20px;box-shadow:0 1px 3px rgba(0,0,0,.06)}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.chart text.axis{font-size:12px;fill:#374151}.chart text.value{font-size:12px;fill:#111;font-weight:600}.chart text.muted{fill:#9ca3af}
.chart .lane{stroke:#eef0f3;stroke-width:10;stroke-linecap:round}.chart .axisline{stroke:#9ca3af}
.legend{display:flex;gap:16px;font-size:12px;color:var(--muted);margin:-6px 0 8px}.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
table{width:100%;border-collapse:collapse}th{font-size:12px;text-align:left;color:var(--muted);font-weight:600;border-bottom:2px solid var(--line);padding:8px 8px}
td{border-bottom:1px solid var(--line);padding:9px 8px;vertical-align:top}.num{text-align:right}
.badge{display:inline-block;color:#fff;border-radius:999px;padding:1px 9px;font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.4px}
code.preview{background:#f3f4f6;border:1px solid var(--line);border-radius:6px;padding:2px 6px;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
td.pv{min-width:150px}.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}.small{font-size:12px}.muted{color:var(--muted)}
ol.actions{margin:0;padding-left:18px}ol.actions li{margin:0 0 2px}
.suggestions{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.sugg{border:1px solid var(--line);border-left:4px solid #9ca3af;border-radius:8px;padding:12px 14px;background:#fff}
.sugg.prio-critical{border-left-color:#c0262d}.sugg.prio-high{border-left-color:#e0672b}.sugg.prio-medium{border-left-color:#d9a514}.sugg.prio-low{border-left-color:#5b8def}
.sugg header{margin-bottom:6px}.sugg ul.detail{margin:4px 0 8px;padding-left:18px;color:#374151;max-height:9.5em;overflow:auto}
.chip{display:inline-block;background:#fef3c7;border:1px solid #fde68a;border-radius:6px;padding:0 6px;margin:1px 2px;font-size:12px}
.chip-ok{background:#dcfce7;border-color:#bbf7d0}.ok{color:#15803d;font-weight:600}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:18px}
@media print{body{background:#fff}.panel,.card{box-shadow:none;border:1px solid var(--line)}}
"""


def render_report(snapshot: Mapping[str, Any], suggestions: Iterable[Mapping[str, Any]]) -> str:
    """The report page for one fileset, as an HTML string (UTF-8 text, one document, no external references).

    ``snapshot``: the parsed ``security_snapshot.json`` (keys used: ``generated_at``, ``fileset``, ``last_scan``,
    ``coverage``, ``findings``, ``findings_truncated``; missing keys render as empty sections); ``suggestions``: the
    parsed lines of ``security_suggestions.jsonl``. Pure: no I/O, no clock. Raises ``TypeError`` when ``snapshot``
    is not a mapping.
    """
    if not isinstance(snapshot, Mapping):
        raise TypeError(f"snapshot: expected a mapping (parsed security_snapshot.json), got {type(snapshot).__name__}")
    findings = [f for f in snapshot.get("findings") or () if isinstance(f, Mapping)]
    sugg = [s for s in suggestions if isinstance(s, Mapping)]
    scan = snapshot.get("last_scan") or {}
    sub = [f"fileset {_e(snapshot.get('fileset', 'nemo-agent-security'))}",
           f"generated {_e(snapshot.get('generated_at', '?'))}"]
    if scan:
        sub.append(f"last scan: {_e(scan.get('records_scanned', 0))} records, "
                   f"{_e(scan.get('bytes_scanned', 0))} bytes ({_e(scan.get('source', ''))})")
    trunc = ('<p class="small muted">The snapshot lists only the first findings (findings_truncated); counts '
             'above are complete.</p>') if snapshot.get("findings_truncated") else ""
    body = f"""<header class="top"><h1>Railcar security report</h1><div class="sub">{" · ".join(sub)}</div></header>
<main>
{_cards(snapshot, findings, sugg)}
{_charts(findings)}
<section class="panel"><h2>Timeline</h2>{_timeline(findings)}</section>
<section class="panel"><h2>Findings ({len(findings)})</h2>{trunc}{_findings_table(findings)}</section>
<section class="panel"><h2>Suggestions ({len(sugg)})</h2>{_suggestions(sugg)}</section>
<section class="panel"><h2>Guardrail coverage</h2>{_coverage(snapshot)}</section>
<footer>Masked previews only: the fileset never stores secret or personal values. Rendered by Railcar from
security_snapshot.json and security_suggestions.jsonl.</footer>
</main>"""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f'<title>Railcar security report</title><style>{_CSS}</style></head><body>{body}</body></html>\n')


def main(args: argparse.Namespace, config: StreamsSettings) -> int:
    """``railcar report --fileset-root DIR --out FILE.html``: exit 0 after writing the page, 2 when the fileset
    has no snapshot or cannot be read (the message names ``--fileset-root``) or the output cannot be written
    (names ``--out``). Reading never creates anything under ``--fileset-root``; ``config.fileset`` gives the S3
    endpoint of an ``s3://`` root."""
    root = args.fileset_root
    snapshot = None
    # A local fileset is opened only when it exists: opening one creates its directories, a reader must not.
    if root.startswith("s3://") or (Path(root) / FILESET).is_dir():
        try:
            fs = configured_fileset(config, root)
            snapshot = fs.read_snapshot()
        except (FilesetError, OSError, ValueError) as exc:  # ValueError: a snapshot that is not JSON
            print(f"railcar report: --fileset-root: cannot read the fileset under {root!r}: {exc}",
                  file=sys.stderr)
            return 2
    if snapshot is None:
        print(f"railcar report: --fileset-root: no nemo-agent-security/security_snapshot.json under "
              f"{args.fileset_root!r}", file=sys.stderr)
        return 2
    page = render_report(snapshot, fs.read_suggestions())
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"railcar report: --out: cannot write {args.out!r}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(page.encode()):,} bytes; {len(snapshot.get('findings') or [])} findings)")
    return 0
