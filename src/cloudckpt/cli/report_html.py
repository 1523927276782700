"""The page of ``cloudckpt report``: one self-contained HTML file (inline CSS and SVG, no
script, no font or image to fetch) with a Content-Security-Policy that forbids every network
load, plus the same numbers as JSON in ``<script type="application/json" id="cloudckpt-data">``
for tools (a data block: never executed, and the policy allows no script anyway).

All text from the run (metric names, URIs, tiers, problems) is escaped; the JSON block has
``<``, ``>`` and ``&`` escaped so that no value can close it. Pure functions; any caller.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any

from cloudckpt._version import __version__
from cloudckpt.cli.output import human
from cloudckpt.cli.report_svg import PALETTE, Cell, Lane, Series, esc, lanes_chart, line_chart
from cloudckpt.manager.report import ReportRow, RunReport

__all__ = ["DATA_ID", "render_html", "report_data"]

DATA_ID = "cloudckpt-data"
#: at most this many metric charts (a hostile run may report thousands of names)
MAX_METRIC_CHARTS = 40
_MiB = 1024.0 * 1024.0

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1d1d1f;background:#fff;margin:24px auto;max-width:960px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
 #ddd;padding-bottom:4px}code{font:12px ui-monospace,Menlo,Consolas,monospace;
 overflow-wrap:anywhere}
.summary{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:12px 0}
.summary dt{color:#555}.summary dd{margin:0}
.grid2{display:block}figure.chart{margin:10px 0 18px}figcaption{font-weight:600;margin:0 0 2px}
svg .bg{fill:#fafafa;stroke:#ccc}svg .grid{stroke:#e6e6e6}svg .tick{font-size:11px;fill:#555}
svg .axis{font-size:12px;fill:#333}svg .legend{font-size:12px;fill:#333}
svg .line{fill:none;stroke-width:2}svg .mark{stroke:#d00;stroke-width:1.5;stroke-dasharray:3 3}
svg .cell{stroke:#fff;stroke-width:.5}
.note{color:#555;font-size:12px;margin:2px 0}.empty{color:#777;font-style:italic}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{border-bottom:1px solid #eee;
 padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td small{color:#777;display:block}td.time{white-space:nowrap}
.scroll{overflow-x:auto}
tr.bad td{background:#fff0f0}.status-bad{color:#b00;font-weight:600}
ul.problems{color:#b00}
"""

_STATUS_COLORS = {"hot": "#E69F00", "archived": "#0072B2", "damaged": "#D00000",
                  "keep": "#009E73", "remove": "#CC79A7", "n/a": "#BBBBBB",
                  "live lineage": "#56B4E9", "other branch": "#999999",
                  "released": "#DDDDDD"}
_TIER_COLORS = ("#332288", "#882255", "#117733", "#F0E442", "#666666")


def _clean(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


def report_data(report: RunReport) -> dict[str, Any]:
    """The numbers of the page as plain JSON-able data (finite floats only)."""
    rows = []
    for r in report.rows:
        rows.append({
            "step": r.step, "status": r.status, "uri": r.uri, "location": r.location,
            "tier": r.tier, "time": r.time, "epoch": r.epoch, "generation": r.generation,
            "live": r.live, "raw_bytes": r.raw_bytes, "stored_bytes": r.stored_bytes,
            "added_bytes": r.added_bytes, "shared_bytes": r.shared_bytes,
            "ratio": _clean(r.ratio), "save_seconds": r.save_seconds,
            "throughput_bytes_per_s": _clean(r.throughput),
            "upload_bytes_per_s": _clean(r.upload_rate), "metrics": dict(r.metrics),
            "pinned": r.pinned, "signature": r.signature, "retention": r.retention,
            "reasons": list(r.reasons), "problems": list(r.problems)})
    return {"format": "cloudckpt.report/1", "library_version": __version__,
            "uri": report.uri, "created": report.created, "retention_policy": report.policy,
            "metric": report.metric, "mode": report.mode,
            "live_generation": report.live_generation,
            "generations": [{"number": g.number, "parent_step": g.parent_step,
                             "parent_generation": g.parent_generation,
                             "created": _clean(g.created)} for g in report.generations],
            "rows": rows}


def _json_block(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return ""


def _bytes_cell(n: int | None) -> str:
    if n is None:
        return '<td class="num">-</td>'
    return f'<td class="num">{esc(human(n))}<small>{n:,}</small></td>'


def _num_cell(v: float | None, fmt: str) -> str:
    return f'<td class="num">{"-" if v is None else esc(format(v, fmt))}</td>'


def _points(rows: list[ReportRow], get: Any) -> tuple[tuple[float, float], ...]:
    out = []
    for r in rows:
        v = get(r)
        if v is not None:
            out.append((float(r.step), float(v)))
    return tuple(out)


def _charts(report: RunReport) -> str:
    ok = [r for r in report.rows if r.status == "committed"]
    marks = [(float(r.step), r.status) for r in report.rows if r.damaged]
    parts = ["<h2>Storage</h2>", line_chart(
        "Bytes per checkpoint", "bytes", [
            Series("raw", _points(ok, lambda r: r.raw_bytes), PALETTE[8], dashed=True),
            Series("stored", _points(ok, lambda r: r.stored_bytes), PALETTE[0]),
            Series("added (own)", _points(ok, lambda r: r.added_bytes), PALETTE[2]),
            Series("shared", _points(ok, lambda r: r.shared_bytes), PALETTE[1])],
        y_label="bytes", y_fmt=human, marks=marks,
        note="stored: every chunk the checkpoint references; added: stored in its own data "
             "(uploaded by this save); shared: referenced in other checkpoints' data. "
             "Red dashed lines: damaged checkpoints.")]
    parts.append(line_chart("Compression ratio (stored / raw)", "ratio", [
        Series("stored / raw", _points(ok, lambda r: r.ratio), PALETTE[0])],
        y_label="ratio", y_fmt=lambda v: f"{v:.3g}", marks=marks))
    parts.append("<h2>Save time</h2>")
    parts.append(line_chart("Save duration", "duration", [
        Series("seconds", _points(ok, lambda r: r.save_seconds), PALETTE[5])],
        y_label="seconds", y_fmt=lambda v: f"{v:.3g} s", marks=marks,
        note="From the start of the data upload to the manifest (the manager records it at "
             "save time; checkpoints written by other tools or older versions have none).",
        empty="no save durations recorded in these checkpoints"))
    parts.append(line_chart("Save throughput", "throughput", [
        Series("state (raw) MiB/s", _points(ok, lambda r: r.throughput and r.throughput / _MiB),
               PALETTE[0]),
        Series("uploaded MiB/s", _points(ok, lambda r: r.upload_rate and r.upload_rate / _MiB),
               PALETTE[2])],
        y_label="MiB/s", y_fmt=lambda v: f"{v:.3g}", marks=marks,
        empty="no save durations recorded in these checkpoints"))
    names = report.metric_names
    parts.append(f"<h2>Metrics ({len(names)})</h2>")
    if not names:
        parts.append('<p class="empty">no metrics recorded in these checkpoints</p>')
    for i, name in enumerate(names[:MAX_METRIC_CHARTS]):
        best = " (retention's metric)" if name == report.metric else ""
        parts.append(line_chart(f"{name}{best}", "metric", [
            Series(name, _points(ok, lambda r, n=name: r.metrics.get(n)),
                   PALETTE[i % 8])], y_label=name[:24], y_fmt=lambda v: f"{v:.4g}",
            zero=False, marks=marks))
    if len(names) > MAX_METRIC_CHARTS:
        parts.append(f'<p class="note">{len(names) - MAX_METRIC_CHARTS} more metrics are in '
                     "the table and the JSON data only.</p>")
    parts.append("<h2>Tiers, retention and lineage</h2>")
    parts.append(_lanes(report))
    parts.append(_lineage(report, ok))
    return "".join(parts)


def _lanes(report: RunReport) -> str:
    rows = list(report.rows)
    tiers = sorted({r.tier for r in rows if r.tier})
    colors = dict(_STATUS_COLORS)
    colors.update({f"class {t}": _TIER_COLORS[i % len(_TIER_COLORS)] for i, t in
                   enumerate(tiers)})

    def tier(r: ReportRow) -> Cell:
        cat = "damaged" if r.damaged else "released" if r.status == "released" else \
            "archived" if r.location == "archived" else f"class {r.tier}" if r.tier else "hot"
        return Cell(cat, f"step {r.step:,}: {r.status}, {cat}")

    def keep(r: ReportRow) -> Cell:
        return Cell(r.retention, f"step {r.step:,}: {r.retention}: "
                                 f"{'; '.join(r.reasons) or 'no policy keeps it'}")

    def line(r: ReportRow) -> Cell:
        cat = "damaged" if r.damaged else "released" if r.status == "released" else \
            "live lineage" if r.live else "other branch"
        return Cell(cat, f"step {r.step:,}: generation {r.generation}, {cat}")

    return lanes_chart("Tier, retention and lineage per checkpoint", "lanes",
                       [r.step for r in rows],
                       [Lane("tier", tuple(map(tier, rows))),
                        Lane("retention", tuple(map(keep, rows))),
                        Lane("lineage", tuple(map(line, rows)))], colors,
                       note=f"Retention policy explained: {report.policy} (plus the latest, the "
                            "best and pinned checkpoints, always kept). The policy is not "
                            "stored in the run: pass the one your training uses (see "
                            "cloudckpt report --help).")


def _lineage(report: RunReport, ok: list[ReportRow]) -> str:
    gens = sorted({r.generation for r in ok if r.generation is not None})[:30]
    series = [Series(f"generation {g}" + (" (live)" if g == report.live_generation else ""),
                     _points([r for r in ok if r.generation == g], lambda r: r.generation),
                     PALETTE[i % 8]) for i, g in enumerate(gens)]
    firsts = {g: min(r.step for r in ok if r.generation == g) for g in gens}
    forked = [g for g in report.generations if g.parent_step is not None
              and g.parent_generation is not None and g.number in firsts]
    # a dashed link from the checkpoint each generation resumed, drawn under the points
    series[:0] = [Series(f"fork {g.parent_generation}\u2192{g.number}",
                         ((float(g.parent_step or 0), float(g.parent_generation or 0)),
                          (float(firsts[g.number]), float(g.number))), PALETTE[9], dashed=True)
                  for g in forked]
    forks = [f"generation {g.number} resumed from step {g.parent_step:,} of generation "
             f"{g.parent_generation}" for g in report.generations if g.parent_step is not None]
    more = f"; and {len(forks) - 10} more" if len(forks) > 10 else ""
    return line_chart("Lineage: generation that wrote each checkpoint", "lineage", series,
                      y_label="generation", y_fmt=lambda v: f"{v:.0f}", y_integer=True,
                      note="; ".join(forks[:10]) + more or "no forks: one generation")


def _table(report: RunReport) -> str:
    head = ("<tr><th>Step</th><th>Status</th><th>Time (UTC)</th><th>Epoch</th><th>Gen</th>"
            "<th>Raw</th><th>Stored</th><th>Added</th><th>Shared</th><th>Ratio</th>"
            "<th>Save s</th><th>MiB/s</th><th>Tier</th><th>Retention</th></tr>")
    body = []
    for r in report.rows:
        bad = r.damaged
        where = "-" if r.status != "committed" else (r.tier or "hot") \
            if r.location != "archived" else f"archived ({r.tier})" if r.tier else "archived"
        keep = f"{r.retention}: {'; '.join(r.reasons)}" if r.reasons else r.retention
        body.append(
            f'<tr id="step-{r.step}" data-step="{r.step}"{" class=bad" if bad else ""}>'
            f'<td class="num">{r.step:,}</td>'
            f'<td{" class=status-bad" if bad else ""}>{esc(r.status)}'
            f'{" (pinned)" if r.pinned else ""}</td><td class="time">{esc(_iso(r.time))}</td>'
            f'<td class="num">{"" if r.epoch is None else r.epoch}</td>'
            f'<td class="num">{"" if r.generation is None else r.generation}</td>'
            + _bytes_cell(r.raw_bytes) + _bytes_cell(r.stored_bytes)
            + _bytes_cell(r.added_bytes) + _bytes_cell(r.shared_bytes)
            + _num_cell(r.ratio, ".3f") + _num_cell(r.save_seconds, ".3f")
            + _num_cell(r.throughput and r.throughput / _MiB, ".3g")
            + f"<td>{esc(where)}</td><td>{esc(keep, 300)}</td></tr>")
    problems = [f"<li>step {r.step:,} ({esc(r.status)}): {esc(p, 500)}</li>"
                for r in report.rows for p in r.problems]
    out = f'<div class="scroll"><table id="checkpoints">{head}{"".join(body)}</table></div>'
    if problems:
        out += '<h2>Damaged checkpoints</h2><ul class="problems">' + "".join(problems) + "</ul>"
    return out + _metrics_table(report)


def _metrics_table(report: RunReport) -> str:
    names = report.metric_names[:MAX_METRIC_CHARTS]
    if not names:
        return ""
    head = "<tr><th>Step</th>" + "".join(f"<th>{esc(n, 40)}</th>" for n in names) + "</tr>"
    body = [f'<tr data-step="{r.step}"><td class="num">{r.step:,}</td>'
            + "".join(_num_cell(r.metrics.get(n), ".6g") for n in names) + "</tr>"
            for r in report.rows if r.status == "committed"]
    return (f'<h2>Metrics per checkpoint</h2><div class="scroll"><table id="metrics">{head}'
            f'{"".join(body)}</table></div>')


def render_html(report: RunReport) -> str:
    """The whole page for ``report``."""
    ok = sum(r.status == "committed" for r in report.rows)
    bad = sum(r.damaged for r in report.rows)
    gone = sum(r.status == "released" for r in report.rows)
    style_hash = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
    csp = (f"default-src 'none'; style-src 'sha256-{style_hash}'; img-src 'none'; "
           "script-src 'none'; connect-src 'none'; font-src 'none'; base-uri 'none'; "
           "form-action 'none'")
    stored = sum(r.stored_bytes for r in report.rows if r.status == "committed")
    added = sum(r.added_bytes or 0 for r in report.rows if r.status == "committed")
    summary = (
        f"<dt>run</dt><dd><code>{esc(report.uri, 400)}</code></dd>"
        f"<dt>checkpoints</dt><dd>{ok} committed, {bad} damaged"
        f"{f', {gone} deleted (data awaiting gc)' if gone else ''}</dd>"
        f"<dt>stored</dt><dd>{esc(human(stored))} referenced in all, {esc(human(added))} "
        f"in the checkpoints' own data</dd>"
        f"<dt>live generation</dt><dd>{report.live_generation}</dd>"
        f"<dt>retention</dt><dd>{esc(report.policy, 300)}"
        f"{'' if report.metric is None else f'; best by {esc(report.metric)} ({esc(report.mode)})'}"
        f"</dd><dt>generated</dt><dd>{esc(_iso(report.created))} UTC by cloudckpt "
        f"{esc(__version__)}</dd>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp, 1000)}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cloudckpt report: {esc(report.uri, 200)}</title><style>{_CSS}</style></head>"
        f"<body><h1>Checkpoints of a run</h1><dl class=\"summary\">{summary}</dl>"
        f"{_charts(report)}<h2>Checkpoints</h2>{_table(report)}"
        f'<script type="application/json" id="{DATA_ID}">{_json_block(report_data(report))}'
        "</script></body></html>\n")
