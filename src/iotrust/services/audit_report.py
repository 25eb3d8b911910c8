"""The posture audit as one self-contained HTML page with charts.

:func:`build_html` gathers what the page shows besides the findings: devices per lifecycle
state, live credentials by days to expiry and by age (two SQL aggregates), the severities of
past ``audit.completed`` events, the blast-radius ranking, and the hardware assessment of every
registered model with a profile (:func:`iotrust.services.hardware.render_html`). :func:`render`
turns that into the page. Charts are drawn with matplotlib's Agg backend on
:class:`matplotlib.figure.Figure` objects (no pyplot, no global state, no display) and embedded
as ``data:image/png;base64`` images, so the file needs nothing else to be read. Every value from
the registry is escaped with :func:`html.escape`.

This module does not run the checks (:mod:`iotrust.services.audit`) and writes no file.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iotrust.adapters.sql.audit import AuditTx
from iotrust.adapters.sql.store import Database
from iotrust.core import audit as au
from iotrust.core import hardware as hw
from iotrust.core.audit_reach import Reach, blast_radius
from iotrust.ports import Clock
from iotrust.services import audit as audit_svc
from iotrust.services import hardware as hw_svc
from iotrust.services.settings import Settings

__all__ = ["CHART_IDS", "EDGES_DAYS", "ReportData", "build_html", "render"]

#: Bucket edges (days) of the credential expiry and age histograms.
EDGES_DAYS: Final = (1, 7, 30, 90, 365)
#: The ``data-chart`` ids of the images the page carries.
_SHOWN: Final = 10
CHART_IDS: Final = ("lifecycle", "credentials", "severity-history", "blast-radius")
_COLOURS: Final = {"critical": "#8b0000", "high": "#d9534f", "medium": "#f0ad4e",
                   "low": "#5bc0de", "info": "#999999"}
_STATE_COLOURS: Final = {"expected": "#999999", "active": "#5cb85c", "quarantined": "#f0ad4e",
                         "retired": "#555555"}
_STYLE: Final = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: .3em .5em; text-align: left; vertical-align: top; }
.sev { font-weight: bold; text-transform: uppercase; font-size: .8em; }
.critical { color: #8b0000; } .high { color: #d9534f; } .medium { color: #b07000; }
.low { color: #317a91; } .info { color: #777; }
figure { display: inline-block; margin: 0 1em 1em 0; }
code { font-size: .85em; }
"""


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the page shows."""

    report: audit_svc.AuditReport
    history: Sequence[tuple[datetime, Mapping[str, Any]]]
    histogram: Mapping[str, Sequence[int]]
    ranking: Sequence[Reach]
    assessments: Sequence[hw.Assessment]
    domain: str = "iotrust"


def gather(db: Database, settings: Settings, clock: Clock,
           report: audit_svc.AuditReport) -> ReportData:
    """Read the figures' data from the registry (one read-only transaction, plus history)."""
    with db.transaction(readonly=True) as tx:
        snapshot = audit_svc.open_snapshot(tx, settings, clock)
        histogram = AuditTx(tx).credential_histogram(report.at, EDGES_DAYS)
        ranking = blast_radius(snapshot.policy_sets(), snapshot.policies())
        assessments = [m.assessment for m in snapshot.models() if m.assessment is not None]
        domain = tx.get_domain()
    return ReportData(report=report, history=audit_svc.audit_history(db), histogram=histogram,
                      ranking=ranking, assessments=assessments,
                      domain=domain.name if domain is not None else "iotrust")


def build_html(db: Database, settings: Settings, clock: Clock,
               report: audit_svc.AuditReport) -> str:
    """The whole page for ``report``."""
    return render(gather(db, settings, clock, report))


# --------------------------------------------------------------------------------------------
# Charts


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(chart_id: str, title: str, fig: Figure) -> str:
    e = html.escape
    return (f'<figure data-chart="{e(chart_id)}"><img alt="{e(title)}" '
            f'src="data:image/png;base64,{_png(fig)}"><figcaption>{e(title)}</figcaption>'
            "</figure>")


def _lifecycle_chart(states: Mapping[str, int]) -> Figure:
    fig = Figure(figsize=(4.5, 3))
    ax = fig.add_subplot()
    names = ["expected", "active", "quarantined", "retired", *sorted(
        set(states) - set(_STATE_COLOURS))]
    values = [states.get(n, 0) for n in names]
    ax.bar(names, values, color=[_STATE_COLOURS.get(n, "#777777") for n in names])
    ax.set_ylabel("devices")
    ax.set_title("Fleet by lifecycle state")
    for i, v in enumerate(values):
        ax.annotate(str(v), (i, v), ha="center", va="bottom", fontsize=8)
    return fig


def _bucket_labels() -> list[str]:
    labels = [f"< {EDGES_DAYS[0]} d"]
    labels += [f"{a}-{b} d" for a, b in itertools.pairwise(EDGES_DAYS)]
    labels.append(f">= {EDGES_DAYS[-1]} d")
    return labels


def _credentials_chart(histogram: Mapping[str, Sequence[int]]) -> Figure:
    fig = Figure(figsize=(7, 3))
    labels = _bucket_labels()
    for i, (key, title, colour) in enumerate((("expiry", "days to expiry", "#d9534f"),
                                              ("age", "age", "#337ab7"))):
        ax = fig.add_subplot(1, 2, i + 1)
        values = list(histogram.get(key, [0] * len(labels)))
        ax.bar(range(len(labels)), values, color=colour)
        ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_title(f"Live credentials by {title}", fontsize=9)
        ax.set_ylabel("credentials")
    return fig


def _history_chart(history: Sequence[tuple[datetime, Mapping[str, Any]]]) -> Figure:
    fig = Figure(figsize=(7, 3))
    ax = fig.add_subplot()
    times: list[Any] = [at for at, _ in history]
    for severity in au.Severity:
        values = []
        for _, data in history:
            counts = data.get("by_severity")
            values.append(int(counts.get(severity.value, 0)) if isinstance(counts, dict) else 0)
        ax.plot(times, values, marker="o", label=severity.value,
                color=_COLOURS[severity.value])
    ax.set_title("Findings by severity over time")
    ax.set_ylabel("findings")
    if history:
        ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return fig


def _blast_chart(ranking: Sequence[Reach]) -> Figure:
    top = list(ranking[:15])
    fig = Figure(figsize=(7, max(2.0, 0.35 * len(top) + 1)))
    ax = fig.add_subplot()
    labels = [f"{', '.join(r.policies) or 'default'} ({r.state}, {r.devices})" for r in top]
    values = [r.reachable for r in top]
    ax.barh(range(len(top)), values,
            color=["#8b0000" if r.everything else "#d9534f" for r in top])
    ax.set_yticks(range(len(top)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("other devices reachable")
    ax.set_title("Blast radius, worst first" if top else "Blast radius: no shared rules")
    return fig


# --------------------------------------------------------------------------------------------
# Page


def _evidence(evidence: Mapping[str, Any]) -> str:
    e = html.escape
    items = []
    for key, value in evidence.items():
        text = value if isinstance(value, str) else repr(value)
        items.append(f"<li><b>{e(str(key))}</b>: <code>{e(text[:600])}</code></li>")
    return "<ul>" + "".join(items) + "</ul>"


def _findings_table(findings: Sequence[au.Finding]) -> str:
    e = html.escape
    if not findings:
        return "<p>No findings.</p>"
    rows = []
    for f in findings:
        shown = ", ".join(f.affected[:_SHOWN]) + (" ..." if len(f.affected) > _SHOWN else "")
        rows.append(
            f'<tr class="finding" data-check="{e(f.check_id)}" '
            f'data-severity="{e(f.severity.value)}">'
            f'<td class="sev {e(f.severity.value)}">{e(f.severity.value)}</td>'
            f"<td><code>{e(f.check_id)}</code></td><td>{e(f.title)}</td>"
            f"<td><code>{e(shown)}</code></td><td>{_evidence(f.evidence)}</td>"
            f"<td>{e(f.suggested_action)}</td></tr>")
    return ("<table><thead><tr><th>severity</th><th>check</th><th>finding</th><th>affected</th>"
            "<th>evidence</th><th>suggested action</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _checks_table(report: audit_svc.AuditReport) -> str:
    e = html.escape
    rows = "".join(f"<tr><td><code>{e(r.check_id)}</code></td><td>{e(r.title)}</td>"
                   f"<td>{r.findings}</td><td>{r.suppressed}</td><td>{r.seconds:.3f}</td></tr>"
                   for r in report.runs)
    log = report.event_log
    note = ""
    if log is not None:
        how = (f"incremental, from the checkpoint at record {log['since_seq']}"
               if log["mode"] == "incremental" else "full, from record 1")
        note = (f'<p id="event-log-verification">Event log: {int(log["records"])} record(s) '
                f"verified ({e(how)}); last full verification: {e(str(log['full_at']))}. "
                "<code>iotrust audit --full</code> re-verifies the whole chain.</p>")
    return ("<table><thead><tr><th>check</th><th>title</th><th>findings</th><th>suppressed</th>"
            f"<th>seconds</th></tr></thead><tbody>{rows}</tbody></table>{note}")


def render(data: ReportData) -> str:
    """The HTML page."""
    e = html.escape
    report = data.report
    counts = ", ".join(f'<span class="{e(k)}">{v} {e(k)}</span>'
                       for k, v in report.by_severity.items())
    charts = "".join((
        _figure("lifecycle", "Fleet by lifecycle state", _lifecycle_chart(report.device_states)),
        _figure("credentials", "Credential expiry and age", _credentials_chart(data.histogram)),
        _figure("severity-history", "Findings by severity over time",
                _history_chart(data.history)),
        _figure("blast-radius", "Blast-radius ranking", _blast_chart(data.ranking)),
    ))
    hardware = "".join(hw_svc.render_html(a) for a in data.assessments) or \
        "<p>No registered model has a hardware profile.</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Posture audit: {e(data.domain)}</title><style>{_STYLE}{hw_svc._STYLE}</style>"  # noqa: SLF001 - the hardware fragment's own style
        "</head><body>\n"
        f"<h1>Posture audit of {e(data.domain)}</h1>\n"
        f"<p>{e(report.at.isoformat())} · {sum(report.device_states.values())} devices · "
        f"{len(report.findings)} findings ({counts}) · {report.seconds:.2f} s</p>\n"
        f'<section id="charts">{charts}</section>\n'
        f'<section id="findings"><h2>Findings</h2>{_findings_table(report.findings)}</section>\n'
        f'<section id="checks"><h2>Checks</h2>{_checks_table(report)}</section>\n'
        f'<section id="hardware"><h2>Hardware assessments</h2>{hardware}</section>\n'
        "</body></html>\n")
