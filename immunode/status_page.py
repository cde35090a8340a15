"""The status page: the status snapshot (`immunode.snapshot`) as HTML, and the page's query string as the study
list's search. Every value is escaped: UIDs, AE titles, descriptions, names and reasons come from the network.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from urllib.parse import urlencode

from immunode.snapshot import (
    StatusSnapshot,
    Verdict,
    delivery_detail,
    health_line,
    job_detail,
    results_text,
    when,
)
from storage.overview import MAX_PAGE_SIZE, StudyCondition, StudyPage, StudyQuery, StudyRow

e = html.escape

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.5em} table{border-collapse:collapse;width:100%;font-size:.85em}
th,td{border:1px solid #ccc;padding:.3em;text-align:left;vertical-align:top;overflow-wrap:anywhere} th{background:#eee}
code{font-size:.85em;word-break:break-all} .empty{color:#777} .FAILED{color:#b00;font-weight:bold}
.SUCCEEDED{color:#070} .banner{background:#ffd;padding:.5em;border:1px solid #cc9}
.health{padding:.5em;border:1px solid #999;font-weight:bold} .OK{background:#dfd} .ATTENTION{background:#ffd}
.FAILING{background:#fdd} form.search{margin:.5em 0} form.search label{margin-right:.8em} .uid{color:#666}
.paging{margin:.5em 0}
"""
DELIVERY_COLUMNS = ["id", "kind", "instance", "destination", "state", "attempts, next attempt, last error", ""]


def parse_query(parameters: Mapping[str, Sequence[str]]) -> tuple[StudyQuery, tuple[str, ...]]:
    """The study list's search from the page's query string; values that do not parse are left out, and said."""
    problems: list[str] = []

    def value(name: str) -> str:
        return (parameters.get(name) or [""])[0].strip()

    def day(name: str) -> date | None:
        text = value(name)
        if not text:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            problems.append(f"{name}: not a date (YYYY-MM-DD): {text[:40]!r}")
            return None

    def number(name: str, default: int, maximum: int) -> int:
        text = value(name)
        if text.isdigit() and 1 <= int(text) <= maximum:
            return int(text)
        if text:
            problems.append(f"{name}: a number from 1 to {maximum}")
        return default

    condition = None
    if value("state"):
        try:
            condition = StudyCondition(value("state"))
        except ValueError:
            problems.append(f"state: one of {', '.join(c.value for c in StudyCondition)}")
    query = StudyQuery(
        patient_id=value("patient")[:64],
        accession_number=value("accession")[:16],
        date_from=day("from"),
        date_to=day("to"),
        condition=condition,
        page=number("page", 1, 1_000_000),
        page_size=number("size", 25, MAX_PAGE_SIZE),
    )
    return query, tuple(problems)


def query_string(query: StudyQuery, page: int) -> str:
    values = {
        "patient": query.patient_id,
        "accession": query.accession_number,
        "from": query.date_from.isoformat() if query.date_from else "",
        "to": query.date_to.isoformat() if query.date_to else "",
        "state": query.condition.value if query.condition else "",
        "size": str(query.page_size) if query.page_size != 25 else "",
        "page": str(page) if page != 1 else "",
    }
    return urlencode({k: v for k, v in values.items() if v})


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    """Cells are HTML already (escaped by the caller); headers are escaped here."""
    if not rows:
        return f"<p class=empty>{e(empty)}</p>"
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _at(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}Z"


def _search_form(query: StudyQuery, problems: tuple[str, ...]) -> str:
    options = "".join(
        f"<option value='{c.value}'{' selected' if query.condition is c else ''}>{c.value}</option>"
        for c in StudyCondition
    )
    said = "".join(f"<p class=FAILED>{e(p)}</p>" for p in problems)
    return f"""<form class=search method=get action='/'>
<label>Patient ID <input name=patient value="{e(query.patient_id)}" size=14></label>
<label>Accession <input name=accession value="{e(query.accession_number)}" size=12></label>
<label>Study date from <input name=from type=date value="{query.date_from or ""}"></label>
<label>to <input name=to type=date value="{query.date_to or ""}"></label>
<label>State <select name=state><option value=''>any</option>{options}</select></label>
<button>Search</button> <a href='/'>clear</a></form>{said}"""


def _study_cells(row: StudyRow, snapshot: StatusSnapshot, names: bool) -> list[str]:
    now = snapshot.taken_at
    patient = e(row.patient_id) + (
        f"<br><span class=uid>issuer {e(row.issuer_of_patient_id)}</span>" if row.issuer_of_patient_id else ""
    )
    jobs = "<br>".join(
        f"{e(j.pipeline)} <span class='state {e(j.state.value)}'>{e(j.state.value)}</span>"
        + (f": {e(detail)}" if (detail := job_detail(j, snapshot.max_job_attempts, now)) else "")
        for j in row.jobs
    )
    results = results_text(row)
    deliveries = "<br>".join(
        f"{e(d.kind.value)} &rarr; {e(d.destination)}: {e(delivery_detail(d, now))}" for d in row.deliveries
    )
    cells = [patient]
    if names:
        cells.append(e(row.patient_name or ""))
    cells += [
        e(row.accession_number),
        e(row.study_date.isoformat() if row.study_date else ""),
        e(" ".join(row.modalities)),
        f"{e(row.description)}<br><code class=uid>{e(row.study_instance_uid)}</code>",
        str(row.instances),
        f"<span class='state {e(row.condition.value)}'>{e(row.condition.value)}</span>"
        + (f" (revision {row.revision})" if row.revision > 1 else ""),
        e(_at(row.last_received_at)),
        jobs or "-",
        e(results) or "-",
        deliveries or "-",
    ]
    return cells


def _paging(page: StudyPage) -> str:
    query = page.query
    links = []
    if query.page > 1:
        links.append(f"<a href='/?{e(query_string(query, query.page - 1))}'>&larr; newer</a>")
    if query.page < page.pages:
        links.append(f"<a href='/?{e(query_string(query, query.page + 1))}'>older &rarr;</a>")
    return (
        f"<p class=paging>{page.total} stud{'y' if page.total == 1 else 'ies'}; page {query.page} of {page.pages} "
        f"{' '.join(links)}</p>"
    )


def _studies(snapshot: StatusSnapshot, query: StudyQuery, problems: tuple[str, ...], names: bool) -> str:
    form = _search_form(query, problems)
    page = snapshot.studies
    if page is None:
        return form + "<p class=FAILED>The index did not answer: no study list.</p>"
    headers = ["patient ID"] + (["patient name"] if names else [])
    headers += ["accession", "study date", "modalities", "description, study", "instances", "state"]
    headers += ["last instance", "jobs", "results", "deliveries"]
    rows = [_study_cells(row, snapshot, names) for row in page.rows]
    return (
        form
        + _paging(page)
        + _table(headers, rows, "no study matches" if problems or query != StudyQuery() else "no studies received")
    )


def render(snapshot: StatusSnapshot, refresh_s: int, problems: tuple[str, ...] = ()) -> str:
    """The page of one snapshot; `problems`: search values that did not parse."""
    now = snapshot.taken_at
    health = snapshot.health
    query = snapshot.studies.query if snapshot.studies is not None else StudyQuery()
    reasons = "".join(f"<li>{e(r)}</li>" for r in health.reasons)
    failure_rows = [
        [str(j.job_id), e(j.pipeline), f"<code>{e(j.study_instance_uid)}</code>", e(j.error)] for j in snapshot.failures
    ]
    delivery_rows = [
        [
            str(d.delivery_id),
            e(d.kind.value),
            f"<code>{e(d.sop_instance_uid)}</code>",
            e(d.destination),
            e(d.state),
            e(delivery_detail(d, now)),
            f"<form method=post action='/retry/delivery/{d.delivery_id}'><button>retry</button></form>"
            if d.state == "DEAD"
            else "",
        ]
        for d in snapshot.unsent
    ]
    conflict_total, conflicts = snapshot.conflicts
    conflict_rows = [
        [e(_at(c.at)), e(c.kind.value), f"<code>{e(c.study_instance_uid)}</code>", e(c.received), e(c.indexed)]
        for c in conflicts
    ]
    quarantine_total, quarantined = snapshot.quarantined
    quarantine_rows = [
        [e(_at(q.at)), e(q.path), f"<code>{e(q.sop_instance_uid)}</code>", e(q.reason)] for q in quarantined
    ]
    problem_rows = [
        [e(_at(p.at)), e(p.level), f"<code>{e(p.study_instance_uid)}</code>", e(p.message)] for p in snapshot.problems
    ]
    audit_rows = [[e(_at(a.at)), e(a.line().removeprefix("audit "))] for a in snapshot.audit]
    version_rows = [
        [f"<code>{e(c.study_instance_uid)}</code>", e(v.pipeline), f"v{v.number}", str(v.job_id), e(v.line())]
        for c in snapshot.versions
        for v in c.versions
    ]
    counts = ", ".join(f"{s.value} {n}" for s, n in sorted(snapshot.delivery_counts.items(), key=lambda i: i[0].value))
    spooled = f" {snapshot.spooled} record(s) spooled, written when the index answers." if snapshot.spooled else ""
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content="{int(refresh_s)}">
<title>immunode status</title>
<style>{STYLE}</style></head><body>
<h1>immunode status</h1>
<p class='health {e(health.verdict.value)}'>{e(health_line(health, now))}</p>
{f"<ul>{reasons}</ul>" if health.verdict is not Verdict.OK else ""}
<p class=banner>Research use only. This page reloads every {int(refresh_s)} s; taken {e(when(now, now))}.
Deliveries: {e(counts or "none")}.{e(spooled)}</p>
<h2>Studies, their jobs, results and deliveries</h2>
{_studies(snapshot, query, problems, snapshot.patient_names)}
<h2>Result versions (each supersedes the one before)</h2>
{_table(["study", "pipeline", "version", "job", "series, SR, why"], version_rows, "no results yet")}
<h2>Failures</h2>
{_table(["job", "pipeline", "study", "reason"], failure_rows, "no failed jobs")}
<h2>Deliveries not sent, dead letters</h2>
{_table(DELIVERY_COLUMNS, delivery_rows, "every result delivered")}
<h2>Identity conflicts ({conflict_total}: instances refused, not merged)</h2>
{_table(["at", "kind", "study", "named", "the index holds"], conflict_rows, "none")}
<h2>Quarantine ({quarantine_total} file(s) found without an index row that could not be indexed)</h2>
{_table(["at", "file", "instance", "reason"], quarantine_rows, "none")}
<h2>Refusals and problems</h2>
{_table(["at", "level", "study", "message"], problem_rows, "none")}
<h2>Audit trail</h2>
{_table(["at", "record"], audit_rows, "no audit records")}
</body></html>
"""
