"""The page for people: ``GET /``, and a status or archive URL opened in a
browser.

Server-rendered HTML, one request per page: no external assets, no script,
no build step. The style sheet is one constant, allowed by its hash in the
Content-Security-Policy, which allows nothing else (no script at all, no
inline style attribute, nothing from another origin). Progress bars are
``<progress>`` elements, and a page refreshes itself (``<meta
http-equiv="refresh">``) while tasks run. Every value a request or upstream
chose is escaped (:mod:`archiverd.api.markup`).

Which answer a request gets is :func:`prefers_html`: HTML only when its
Accept header rates ``text/html`` above ``application/json``, so a JSON
client (``Accept: application/json``, ``*/*``, or no Accept at all) gets
exactly the JSON it always got.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

from twisted.web.iweb import IRequest

from archiverd import wire
from archiverd.api.dashboard import Overview, Progress, StorageUse, TaskView
from archiverd.api.markup import Markup, duration, join, link, render, size

#: Seconds between refreshes of a page whose tasks are running.
REFRESH = 2

CSS = """
:root { color-scheme: light; --ok: #1a7f37; --bad: #cf222e; --dim: #57606a; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328;
  background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 12px 24px; }
header h1 { display: inline; font-size: 20px; margin: 0 12px 0 0; }
header .meta { color: #c9d1d9; }
main { padding: 8px 24px 24px; max-width: 1280px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 6px;
  margin: 16px 0; padding: 8px 16px 12px; }
h2 { font-size: 16px; margin: 8px 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eaeef2;
  vertical-align: top; }
th { color: var(--dim); font-weight: 600; font-size: 13px; }
td.num, th.num { text-align: right; white-space: nowrap; }
.archive { font-family: ui-monospace, monospace; font-size: 13px;
  word-break: break-all; }
.dim { color: var(--dim); }
.cause { color: var(--bad); white-space: pre-wrap; word-break: break-word; }
.SUCCESS { color: var(--ok); font-weight: 600; }
.FAILURE { color: var(--bad); font-weight: 600; }
.PENDING, .STARTED, .PROGRESS { color: #9a6700; font-weight: 600; }
progress { width: 220px; height: 14px; vertical-align: middle; }
.figures { display: flex; gap: 32px; flex-wrap: wrap; }
.figure b { display: block; font-size: 22px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; }
dt { color: var(--dim); }
dd { margin: 0; word-break: break-all; }
footer { padding: 0 24px 24px; color: var(--dim); font-size: 13px; }
"""

_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()

#: No script, no style but the one above, nothing from elsewhere.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'self'; "
    "script-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Signed URLs are on the page: tell no one where a click came from.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- negotiation -------------------------------------------------------------


def prefers_html(accept: bytes | str | None) -> bool:
    """Whether an Accept header names ``text/html`` (as a browser's does) and
    rates it above ``application/json``, each rated by its most specific
    media range (RFC 9110 12.5.1). A tie, ``*/*`` or no header means JSON:
    what every client got before there were pages. An Accept that does not
    contain "html" is answered without being parsed (status polls are hot)."""
    if not accept:
        return False
    if isinstance(accept, bytes):
        if b"html" not in accept.lower():
            return False
        accept = accept.decode("latin-1")
    elif "html" not in accept.lower():
        return False
    ranges = _ranges(accept)
    html = _quality(ranges, "text", "html")
    return html > 0 and html > _quality(ranges, "application", "json")


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    ranges = []
    for item in accept.split(","):
        kind, _, params = item.partition(";")
        main, _, sub = kind.strip().lower().partition("/")
        if not main or not sub:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    q = 0.0  # a range we cannot read counts for nothing
        ranges.append((main, sub, q))
    return ranges


def _quality(ranges: list[tuple[str, str, float]], main: str, sub: str) -> float:
    best, specificity = 0.0, -1
    for r_main, r_sub, q in ranges:
        if (r_main, r_sub) == (main, sub):
            rank = 2
        elif (r_main, r_sub) == (main, "*"):
            rank = 1
        elif (r_main, r_sub) == ("*", "*"):
            rank = 0
        else:
            continue
        if rank > specificity:
            best, specificity = q, rank
    return best


def send(request: IRequest, page: Markup, code: int = 200) -> bytes:
    """``page`` as the answer, with the headers every page has."""
    request.setResponseCode(code)
    for name, value in _HEADERS.items():
        request.setHeader(name, value)
    return page.encode("utf-8")


# -- pieces ------------------------------------------------------------------


def _document(title: str, body: Markup, base: str, refresh: bool) -> Markup:
    return render(
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "{refresh}<title>{title}</title><style>{css}</style></head>\n"
        "<body>{body}\n"
        '<footer><a href="{base}/">dashboard</a> · '
        '<a href="{base}/archiver/openapi.json">API (OpenAPI)</a> · '
        '<a href="{base}/metrics">metrics</a> · '
        '<a href="{base}/__heartbeat__">heartbeat</a></footer>'
        "</body></html>\n",
        refresh=Markup(
            f'<meta http-equiv="refresh" content="{REFRESH}">' if refresh else ""
        ),
        title=title,
        css=Markup(CSS),
        body=body,
        base=base,
    )


def status_url(base: str, task_id: str) -> str:
    """Where a task's status is: the URL a 202's Location names."""
    return f"{base}/archiver/status/{quote(task_id, safe='@')}"


def _bar(progress: Progress) -> Markup:
    fraction = progress.fraction
    if fraction is None:
        return Markup('<progress class="bar"></progress>')  # indeterminate
    return render(
        '<progress class="bar" value="{value}" max="{max}">{pct:.0f}%</progress>',
        value=progress.received,
        max=progress.expected,
        pct=100 * fraction,
    )


def _amount(progress: Progress) -> str:
    text = size(progress.received)
    if progress.expected:
        text += f" of {size(progress.expected)} ({100 * (progress.fraction or 0):.0f}%)"
    return text


def _rate(progress: Progress) -> str:
    return "–" if progress.rate is None else f"{size(progress.rate)}/s"


def _eta(progress: Progress) -> str:
    return "–" if progress.eta is None else duration(progress.eta)


def _archive_cell(view: TaskView, base: str) -> Markup:
    name = view.archive or view.task_id
    if not view.task_id:
        return render('<span class="archive">{name}</span>', name=name)
    return render(
        '<span class="archive">{a}</span>',
        a=link(status_url(base, view.task_id), name),
    )


# -- GET / -------------------------------------------------------------------


def dashboard_page(overview: Overview, base: str) -> Markup:
    """``GET /`` for ``overview``; links are under ``base``."""
    body = join(
        [
            render(
                "<header><h1>archiverd</h1>"
                '<span class="meta">version {version} · commit {commit}</span>'
                "</header><main>",
                version=overview.version,
                commit=overview.commit[:12],
            ),
            _about(overview),
            _storage(overview.storage),
            _running(overview, base),
            _queue(overview, base),
            _recent(overview, base),
            Markup("</main>"),
        ]
    )
    busy = bool(overview.running or overview.queued_total)
    return _document("archiverd", body, base, refresh=busy)


def _about(overview: Overview) -> Markup:
    asked = overview.hits + overview.misses
    ratio = f"{100 * overview.hits / asked:.0f}%" if asked else "–"
    figures = render(
        '<div class="figures">'
        '<div class="figure" id="running-count"><b>{running}</b>running '
        "(at most {most})</div>"
        '<div class="figure" id="queued-count"><b>{queued}</b>queued</div>'
        '<div class="figure" id="hits"><b>{hits}</b>hits (302)</div>'
        '<div class="figure" id="misses"><b>{misses}</b>misses (fetched)</div>'
        '<div class="figure"><b>{ratio}</b>hit ratio</div></div>',
        running=len(overview.running),
        most=overview.max_concurrent,
        queued=overview.queued_total,
        hits=overview.hits,
        misses=overview.misses,
        ratio=ratio,
    )
    sources = join(
        render(
            "<tr><td>{name}</td><td>{kind}</td><td>{host}</td></tr>",
            name=name,
            kind=kind,
            host=host,
        )
        for name, kind, host in overview.sources
    )
    return render(
        '<section id="about"><h2>This daemon</h2>'
        "<p>An archive cache: it fetches each repository archive from its "
        "source once, stores it in every region, and redirects clients to "
        "storage.</p>{figures}"
        '<h2>Sources</h2><table id="sources"><tr><th>name</th><th>kind</th>'
        "<th>host</th></tr>{sources}</table></section>",
        figures=figures,
        sources=sources,
    )


def _storage(storage: StorageUse) -> Markup:
    rows = join(
        render(
            '<tr><td>{name}</td><td class="num">{used}</td></tr>',
            name=r.name,
            used="–" if r.used is None else size(r.used),
        )
        for r in storage.regions
    )
    total = storage.used
    if storage.limit and total is not None:
        limit = render(
            '<p id="storage-limit">{used} of {limit} ({text}, all regions) '
            '<progress class="bar" value="{value}" max="{max}"></progress></p>',
            used=size(total),
            limit=size(storage.limit),
            text=storage.limit_text,
            value=min(total, storage.limit),
            max=storage.limit,
        )
    elif storage.limit_text:
        limit = render(
            '<p id="storage-limit">limit: {text}</p>', text=storage.limit_text
        )
    else:
        limit = Markup('<p id="storage-limit" class="dim">no size limit</p>')
    note = (
        render('<p class="dim">{note}</p>', note=storage.note) if storage.note else ""
    )
    return render(
        '<section id="storage"><h2>Storage ({backend})</h2>'
        '<table><tr><th>region</th><th class="num">stored</th></tr>{rows}</table>'
        "{limit}{note}</section>",
        backend=storage.backend,
        rows=rows,
        limit=limit if storage.backend == "file" else Markup(""),
        note=Markup(note),
    )


def _running(overview: Overview, base: str) -> Markup:
    if not overview.running:
        rows = Markup('<tr><td colspan="6" class="dim">nothing in flight</td></tr>')
    else:
        rows = join(
            render(
                '<tr class="task" data-task-id="{task_id}">'
                '<td>{archive}<br><span class="dim">{status}</span></td>'
                '<td>{bar}</td><td class="num">{amount}</td>'
                '<td class="num">{rate}</td><td class="num">{eta}</td>'
                '<td class="num">{elapsed}</td></tr>',
                task_id=view.task_id,
                archive=_archive_cell(view, base),
                status=view.status,
                bar=_bar(view.progress),
                amount=_amount(view.progress),
                rate=_rate(view.progress),
                eta=_eta(view.progress),
                elapsed=duration(view.elapsed),
            )
            for view in overview.running
        )
    return render(
        '<section id="in-flight"><h2>In flight</h2><table>'
        '<tr><th>archive</th><th>progress</th><th class="num">bytes</th>'
        '<th class="num">rate</th><th class="num">ETA</th>'
        '<th class="num">elapsed</th></tr>{rows}</table></section>',
        rows=rows,
    )


def _queue(overview: Overview, base: str) -> Markup:
    if not overview.queued_total:
        return Markup(
            '<section id="queue"><h2>Queue</h2>'
            '<p class="dim">no task is waiting for a slot</p></section>'
        )
    rows = join(
        render(
            '<tr class="task"><td class="num">{ahead}</td><td>{archive}</td>'
            '<td class="num">{waited}</td></tr>',
            ahead=view.ahead if view.ahead is not None else "?",
            archive=_archive_cell(view, base),
            waited=duration(view.elapsed),
        )
        for view in overview.queued
    )
    more = overview.queued_total - len(overview.queued)
    return render(
        '<section id="queue"><h2>Queue: {total} waiting</h2><table>'
        '<tr><th class="num">ahead</th><th>archive</th>'
        '<th class="num">waiting</th></tr>{rows}</table>{more}</section>',
        total=overview.queued_total,
        rows=rows,
        more=render('<p class="dim">and {n} more</p>', n=more) if more else "",
    )


def _recent(overview: Overview, base: str) -> Markup:
    if not overview.recent:
        rows = Markup('<tr><td colspan="5" class="dim">none yet</td></tr>')
    else:
        rows = join(
            render(
                '<tr class="task"><td class="num">{ago} ago</td>'
                '<td>{archive}</td><td class="{state}">{state}</td>'
                '<td class="num">{size}</td><td class="num">{took}</td></tr>'
                "{cause}",
                state=view.state,
                ago=duration(overview.now - (view.finished or overview.now)),
                archive=_archive_cell(view, base),
                size="" if view.size is None else size(view.size),
                took=duration(view.elapsed),
                cause=(
                    render(
                        '<tr><td></td><td colspan="4" class="cause">{c}</td></tr>',
                        c=view.status,
                    )
                    if view.failed
                    else ""
                ),
            )
            for view in overview.recent
        )
    return render(
        '<section id="recent"><h2>Last {n} finished</h2><table>'
        '<tr><th class="num">finished</th><th>archive</th><th>outcome</th>'
        '<th class="num">size</th><th class="num">took</th></tr>{rows}'
        "</table></section>",
        n=len(overview.recent),
        rows=rows,
    )


# -- a task ------------------------------------------------------------------


def task_page(view: TaskView, base: str) -> Markup:
    """A task's page: progress, then the download link per region."""
    progress = view.progress
    if view.state == wire.SUCCESS and view.urls:
        links = join(
            render(
                "<li>{region}: {a}</li>",
                region=region,
                a=link(_absolute(base, url), "download"),
            )
            for region, url in view.urls.items()
        )
        outcome = render(
            '<h2>Download</h2><ul id="downloads">{links}</ul>', links=links
        )
    elif view.failed:
        outcome = render(
            '<h2>Why it failed</h2><p class="cause">{c}</p>', c=view.status
        )
    elif view.state in (wire.STARTED, wire.PROGRESS):
        outcome = render(
            '<p id="progress">{bar} {amount} · {rate} · ETA {eta}</p>',
            bar=_bar(progress),
            amount=_amount(progress),
            rate=_rate(progress),
            eta=_eta(progress),
        )
    else:
        outcome = Markup("")
    facts = [("state", render('<span class="{s}">{s}</span>', s=view.state))]
    facts.append(("status", render('<span id="status">{t}</span>', t=view.status)))
    if view.src_url:
        facts.append(("from", render("{u}", u=view.src_url)))
    if view.regions:
        facts.append(("regions", render("{r}", r=", ".join(view.regions))))
    if progress.received:
        facts.append(("received", render("{b}", b=_amount(progress))))
    if view.size is not None:
        facts.append(
            ("size", render("{b} ({n} bytes)", b=size(view.size), n=view.size))
        )
    if view.sha256:
        facts.append(("sha256", render("{h}", h=view.sha256)))
    if view.elapsed is not None:
        facts.append(("elapsed", render("{d}", d=duration(view.elapsed))))
    body = render(
        '<header><h1>archiverd</h1><span class="meta">task</span></header><main>'
        '<section id="task"><h2 class="archive">{name}</h2>'
        "<dl>{facts}</dl>{outcome}</section></main>",
        name=view.archive or view.task_id or "unknown task",
        facts=join(render("<dt>{k}</dt><dd>{v}</dd>", k=k, v=v) for k, v in facts),
        outcome=outcome,
    )
    title = f"{view.state}: {view.archive or view.task_id}"
    # An unknown task is not polled by its page (it may never be known).
    waiting = not view.done and view.status != wire.UNKNOWN_STATUS
    return _document(title, body, base, refresh=waiting)


def _absolute(base: str, url: str) -> str:
    return base + url if url.startswith("/") else url
