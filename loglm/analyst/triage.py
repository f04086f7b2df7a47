"""Triage page: a local web page over an alerts file (127.0.0.1 only).

Alerts ranked by score; each opens to its raw lines with what the model expected instead, entities, time
span, similar past sequences (when an embeddings file is given), its kind and ATT&CK context; two buttons
record the analyst's verdict into the feedback table (loglm.analyst.feedback).  With an embeddings file the
alerts are also grouped (loglm.analyst.groups): ``/groups`` lists one row per group, and a group's page records
one verdict for every alert in it.

Stack: Starlette on uvicorn, both already installed with MLflow's server (no new dependency), pages rendered
on the server as plain HTML with a few lines of JavaScript for the buttons (no build step, no CDN: it works
on an air-gapped analyst host).
"""

from __future__ import annotations

import html
import json
import sys
from collections import Counter
from pathlib import Path

from loglm.analyst import feedback as fb

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2733;max-width:1180px}
table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #e3e7ee;text-align:left;vertical-align:top}
.sev-critical{color:#7b1fa2;font-weight:600}.sev-high{color:#c0392b;font-weight:600}.sev-medium{color:#e67e22}.sev-low{color:#8a6d00}
code{font:12px ui-monospace,Menlo,monospace;white-space:pre-wrap;word-break:break-all}.muted{color:#5b6577}
button{padding:6px 14px;margin-right:8px;border:1px solid #8895a7;border-radius:4px;background:#f4f6f9;cursor:pointer}
.verdict{font-weight:600}a{color:#1f4e79}.warn{color:#c0392b}"""

SCRIPT = """async function verdict(id, v){
  const kind = document.getElementById('kind').value, note = document.getElementById('note').value;
  const r = await fetch('/api/feedback', {method:'POST', headers:{'content-type':'application/json'},
    body: JSON.stringify({alert_id:id, verdict:v, kind:kind, note:note})});
  const j = await r.json();
  document.getElementById('status').textContent = r.ok ? ('recorded: ' + j.verdict) : ('error: ' + j.error);
}
async function groupVerdict(id, v){
  const kind = document.getElementById('kind').value, note = document.getElementById('note').value;
  const members = Array.from(document.querySelectorAll('tr.member'), tr => tr.dataset.alert);
  const r = await fetch('/api/feedback', {method:'POST', headers:{'content-type':'application/json'},
    body: JSON.stringify({group:id, members:members, verdict:v, kind:kind, note:note})});
  const j = await r.json();
  document.getElementById('status').textContent = r.ok ? ('recorded: ' + j.verdict + ' for ' + j.alerts + ' alerts')
    : ('error: ' + j.error);
}
function watch(n, reloads){  // the index page: say when the alerts file has gained alerts (a stream writes it)
  setInterval(async () => {
    try {
      const j = await (await fetch('/api/state')).json();
      const live = document.getElementById('live');
      if (j.reloads !== reloads) live.innerHTML = 'the alerts file was replaced or rewritten: <a href="/">reload</a>';
      else if (j.alerts !== n) live.innerHTML = (j.alerts - n) + ' new alerts: <a href="/">reload</a>';
    } catch (e) {}
  }, 2000);
}"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _attacks(a: dict) -> str:
    items = [f"<a href='{_e(t['url'])}'>{_e(t['id'])}</a> {_e(t['name'])} <span class=muted>({_e(t.get('source'))}"
             + (f", {t['similarity']:.2f}" if "similarity" in t else "") + ")</span>" for t in a.get("attacks", [])]
    return "<br>".join(items) or "<span class=muted>none</span>"


LOCAL_HOSTS = ("127.0.0.1", "localhost")


def cross_site(headers) -> tuple[int, str] | None:
    """(status, reason) for a verdict that does not come from the page itself, else None.  A verdict trains the
    model (benign sessions are tuned on as normal), so another site must not be able to post one through the
    analyst's browser: only JSON is taken (a cross-site JSON post needs a CORS preflight, which this server never
    grants; a form or ``text/plain`` post does not), and a request from another origin is refused."""
    from urllib.parse import urlsplit

    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return 415, "verdicts are posted as application/json by the triage page"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).hostname not in LOCAL_HOSTS:
        return 403, f"a verdict from another site ({origin}) is refused"
    return None


class Triage:
    """The page's state: the alerts file read on before each request (:class:`AlertsFile`: a stream's new alerts
    appear, a file being written is read whole lines only, a replaced or rewritten one is read again), ranked,
    grouped again when it changed."""

    def __init__(self, alerts_path: str | Path, feedback_path: str | Path, embeddings: str | Path | None = None,
                 group_cosine: float | None = None, wait: bool = False):
        from loglm.analyst.alert_vectors import AlertVectors
        from loglm.analyst.alerts_file import AlertsFile

        self.alerts_path = Path(alerts_path)
        self.feedback_path = Path(feedback_path)
        self.file = AlertsFile(self.alerts_path)
        self.own = AlertVectors(self.alerts_path)  # each alert's session vector, written beside the alerts
        self.wait = wait  # an alerts file not there yet is waited for (a page started before its stream)
        self.missing = False
        self.embeddings = Path(embeddings) if embeddings else None
        self.meta = self.vectors = self.index = self.space = None
        self._emb_ident = None  # (inode, size, mtime) of the embeddings file read
        self.embeddings_error: str | None = None
        self.embeddings_loads = 0
        from loglm.analyst.groups import GROUP_MIN_COSINE

        self.group_cosine = None if group_cosine == 0 else group_cosine or GROUP_MIN_COSINE
        self.alerts: list[dict] = []
        self._seen = (-1, -1, -1, -1)
        self._load_embeddings(first=True)
        self.refresh()

    def _load_embeddings(self, first: bool = False) -> None:
        """Read the embeddings file when it changed (``pipelines.embed`` wrote it again: it writes a file whole,
        then renames it into place); one that cannot be read keeps the vectors read before, and says why."""
        if self.embeddings is None:
            return
        from loglm.analyst.embed import embeddings_model, read_embeddings
        from loglm.analyst.search import VectorIndex

        try:
            st = self.embeddings.stat()
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            if ident == self._emb_ident:
                return
            meta, vectors = read_embeddings(self.embeddings)
        except (OSError, ValueError) as e:
            if first:
                raise
            self.embeddings_error = f"{self.embeddings}: {e}; the vectors read before are used"
            return
        self.meta, self.vectors, self.index = meta, vectors, VectorIndex(vectors)
        self.space = embeddings_model(meta)  # the file's model
        self._emb_ident, self.embeddings_error = ident, None
        self.embeddings_loads += 1

    def _read(self) -> tuple[int, int, int, int]:
        """Read what the alerts file and its vectors gained: (reloads, alerts, vectors, embeddings loads) so far."""
        try:
            self.file.refresh()
        except FileNotFoundError:
            if self._seen == (-1, -1, -1, -1) or self.missing:
                if not self.wait:
                    raise FileNotFoundError(f"no alerts file {self.alerts_path} (loglm triage --wait waits for "
                                            "a stream to write it)") from None
                self.missing = True
                return 0, 0, 0, self.embeddings_loads
            return self._seen  # moved away (rotated): the alerts read so far stay on the page
        self.missing = False
        self.own.refresh()
        return self.file.reloads, len(self.file.alerts), len(self.own.by_alert), self.embeddings_loads

    def refresh(self) -> bool:
        """Read what the alerts file gained (or all of it again); rank and group again when it changed."""
        from loglm.analyst.alert_vectors import comparable
        from loglm.analyst.groups import group_alerts_file, groups_of

        self._load_embeddings()
        seen = self._read()
        if seen == self._seen:
            return False
        self._seen = seen
        # one row per alert id: a stream restarted after a crash can write an alert again (the same id)
        self.alerts = sorted({a["alert_id"]: a for a in self.file.alerts}.values(), key=lambda a: -a["score"])
        self.by_id = {a["alert_id"]: a for a in self.alerts}
        # alert groups (loglm.analyst.groups): with session vectors, one verdict for a repeated pattern
        self.leader: dict[str, str] = {a["alert_id"]: a["alert_id"] for a in self.alerts}
        # alerts' own vectors, where they come from the embeddings file's model
        self.own_vectors = comparable(self.alerts, self.own.by_alert, self.space, self.vectors is not None)
        # around the file's mean, or without a file around the alerts' model's own centre (none: not grouped)
        grouped = group_alerts_file(self.alerts, self.alerts_path, self.meta, self.vectors, self.group_cosine,
                                    self.own) if self.group_cosine is not None else None
        self.grouped = grouped is not None
        if self.grouped:
            self.leader = grouped
        self.groups = groups_of({a["alert_id"]: self.leader[a["alert_id"]] for a in self.alerts})
        self.group_no = {lead: n for n, lead in enumerate(self.groups, 1)}  # in score order of their leaders
        return True

    def page(self, title: str, body: str) -> str:
        return (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title><style>{CSS}</style>"
                f"<script>{SCRIPT}</script></head><body>{body}</body></html>")

    def index_page(self) -> str:
        verdicts = fb.read(self.feedback_path)
        rows = []
        for rank, a in enumerate(self.alerts, 1):
            v = verdicts.get(a["alert_id"], {}).get("verdict", "")
            kind = a.get("kind", {}).get("name", "")
            top = ", ".join(t["id"] for t in a.get("attacks", [])[:2])
            rows.append(f"<tr data-alert='{_e(a['alert_id'])}'><td>{rank}</td><td class='sev-{_e(a['severity'])}'>{_e(a['severity'])}</td>"
                        f"<td><a href='/alert/{_e(a['alert_id'])}'>{_e(a['title'])}</a></td><td>{a['score']:.4g}</td>"
                        f"<td>{_e(a['start_time'])}</td><td>{a['n_events']}</td><td>{self._group_cell(a)}</td>"
                        f"<td>{_e(kind)}</td><td>{_e(top)}</td><td class=verdict>{_e(v)}</td></tr>")
        rejected = (f"<p class=warn id=embeddings>{_e(self.embeddings_error)}</p>" if self.embeddings_error else "")
        rejected += (f"<p class=warn id=rejected>{len(self.file.rejected)} lines of the alerts file are not alerts and are "
                    f"left out: {_e(self.file.describe_rejected())}</p>" if self.file.rejected else "")
        if self.missing:
            rejected += (f"<p class=warn id=waiting>waiting for {_e(self.alerts_path)}: no such file yet (the "
                         "stream creates it when it starts)</p>")
        body = (f"<h1>LogLM triage</h1><p class=muted>{len(self.alerts)} alerts from {_e(self.alerts_path)}, ranked by "
                f"score; verdicts go to {_e(self.feedback_path)}</p><p id=live class=warn></p>{rejected}"
                f"<script>watch({len(self.alerts)}, {self.file.reloads})</script>{self._groups_line()}<table><tr><th>#</th>"
                "<th>severity</th><th>alert</th><th>score</th><th>start</th><th>events</th><th>group</th><th>kind</th>"
                "<th>ATT&amp;CK</th><th>verdict</th></tr>" + "".join(rows) + "</table>")
        return self.page("LogLM triage", body)

    def _group_cell(self, a: dict) -> str:
        lead = self.leader[a["alert_id"]]
        n = len(self.groups[lead])
        return "" if n == 1 else f"<a class=group href='/group/{_e(lead)}'>G{self.group_no[lead]} ({n})</a>"

    def _groups_line(self) -> str:
        if self.group_cosine is None:
            return ""  # turned off (--group-cosine 0)
        if not self.grouped:
            return ("<p class=muted>alert groups need a centre to compare the alerts' vectors around: an "
                    "embeddings file of past sessions (loglm triage --embeddings ...), or the model's own, which "
                    "detection writes beside the alerts (a model calibrated since 2026-12-05)</p>")
        around = "past sessions' mean" if self.vectors is not None else "the model's normal sessions' mean"
        return (f"<p>{len(self.groups)} groups (<a href='/groups'>one row each</a>): alerts whose sessions' vectors "
                f"have cosine &ge; {self.group_cosine:g} with their group's highest-scoring alert, centred on "
                f"{around}</p>")

    def groups_page(self) -> str:
        verdicts = fb.read(self.feedback_path)
        rows = []
        for lead, members in self.groups.items():
            a = self.by_id[lead]
            judged = Counter(verdicts[m]["verdict"] for m in members if m in verdicts)
            rows.append(f"<tr data-group='{_e(lead)}'><td>G{self.group_no[lead]}</td><td>{len(members)}</td>"
                        f"<td><a href='/group/{_e(lead)}'>{_e(a['title'])}</a></td><td>{a['score']:.4g}</td>"
                        f"<td class=verdict>{_e(', '.join(f'{v} {n}' for v, n in sorted(judged.items())))}</td></tr>")
        body = (f"<p><a href='/'>&larr; all alerts</a></p><h1>Alert groups</h1><p class=muted>{len(self.alerts)} "
                f"alerts in {len(self.groups)} groups, each led by its highest-scoring alert</p>"
                "<table><tr><th>group</th><th>alerts</th><th>leading alert</th><th>score</th><th>verdicts</th></tr>"
                + "".join(rows) + "</table>")
        return self.page("LogLM alert groups", body)

    def group_page(self, lead: str) -> str | None:
        members = self.groups.get(lead)
        if members is None:
            return None
        verdicts = fb.read(self.feedback_path)
        rows = "".join(
            f"<tr class=member data-alert='{_e(m)}'><td><a href='/alert/{_e(m)}'>{_e(self.by_id[m]['title'])}</a></td>"
            f"<td>{self.by_id[m]['score']:.4g}</td><td>{_e(self.by_id[m]['start_time'])}</td>"
            f"<td>{self.by_id[m]['n_events']}</td><td class=verdict>{_e(verdicts.get(m, {}).get('verdict', ''))}</td></tr>"
            for m in members)
        n = len(members)
        body = (f"<p><a href='/groups'>&larr; all groups</a></p><h1>Group G{self.group_no[lead]}: {n} alerts like "
                f"<a href='/alert/{_e(lead)}'>{_e(self.by_id[lead]['title'])}</a></h1>"
                "<table><tr><th>alert</th><th>score</th><th>start</th><th>events</th><th>verdict</th></tr>"
                f"{rows}</table><h2>Verdict for the whole group</h2>"
                "<p><input id=kind placeholder='kind (optional), e.g. SSH brute force' size=40> "
                "<input id=note placeholder='note' size=40></p>"
                f"<p><button id=benign onclick=\"groupVerdict('{_e(lead)}','benign')\">Benign: all {n}</button>"
                f"<button id=malicious onclick=\"groupVerdict('{_e(lead)}','malicious')\">Malicious: all {n}</button>"
                "<span id=status class=muted></span></p>")
        return self.page(f"Group G{self.group_no[lead]}", body)

    def similar(self, a: dict, k: int = 10) -> list[dict]:
        """The past sessions (the embeddings file) nearest the alert's session: by the alert's own vector when
        detection wrote one, else by its session's row in the file."""
        if self.index is None:
            return []
        from loglm.analyst.search import similar_for_alert

        return similar_for_alert(self.meta, self.vectors, a, self.own_vectors.get(a["alert_id"]), k, index=self.index)

    def alert_page(self, alert_id: str) -> str | None:
        from loglm.analyst.search import label_name

        a = self.by_id.get(alert_id)
        if a is None:
            return None
        verdict = fb.read(self.feedback_path).get(alert_id, {})
        ev_rows = []
        for e in a["surprising_events"]:
            expected = "<br>".join(f"<code>{_e(x['template'])}</code> ({x['p']:.2f})" for x in e.get("expected", [])[:3])
            seen = "" if e.get("known_event", True) else " <b>[never seen in training]</b>"
            ev_rows.append(f"<tr class=event><td>#{e['position']}</td><td>{_e(e['time'])}<br><span class=muted>"
                           f"{_e(Path(str(e['file'])).name)}:{e['line']}</span></td><td>{e['surprisal']:.2f}</td>"
                           f"<td><code>{_e(e['template'])}</code>{seen}<br><code class=muted>{_e(e.get('raw'))}</code></td>"
                           f"<td>{expected}</td></tr>")
        ents = "<br>".join(f"<b>{_e(k)}</b>: {_e(', '.join(map(str, v[:20])))}" for k, v in a["entities"].items())
        sim = self.similar(a)
        sim_rows = "".join(f"<tr class=similar><td>{_e(s['session_id'])}</td><td>{s['similarity']:.3f}</td>"
                           f"<td>{_e(label_name(s.get('label')))}</td><td>{s.get('n_events')}</td></tr>" for s in sim)
        similar = ("<table><tr><th>session</th><th>cosine</th><th>label</th><th>events</th></tr>" + sim_rows + "</table>"
                   if sim else "<p class=muted>similar past sessions need an embeddings file of them (loglm triage --embeddings ...)</p>")
        kind = a.get("kind")
        kind_text = (f"{_e(kind['name'])} (confidence {kind['confidence']:.2f})" if kind
                     else "<span class=muted>not labelled (detect.kinds=...)</span>")
        body = (f"<p><a href='/'>&larr; all alerts</a></p><h1>{_e(a['title'])}</h1>"
                f"<p><span class='sev-{_e(a['severity'])}'>{_e(a['severity'])}</span> · score {a['score']:.4g} &gt; "
                f"threshold {a['threshold']:.4g} · {_e(a['start_time'])} → {_e(a['end_time'])} · {a['n_events']} events, "
                f"{a['n_unexpected_events']} unexpected · alert <code>{_e(a['alert_id'])}</code></p>"
                + (f"<p>group: {self._group_cell(a)} alerts like this one, judged at once on the group's page</p>"
                   if len(self.groups[self.leader[alert_id]]) > 1 else "")
                + f"<h2>Kind</h2><p id=kindname>{kind_text}</p>"
                f"<h2>ATT&amp;CK context</h2><p id=attacks>{_attacks(a)}</p>"
                f"<h2>Entities</h2><p>{ents}</p>"
                "<h2>Surprising events</h2><table><tr><th>pos</th><th>time / line</th><th>surprisal</th>"
                f"<th>event</th><th>the model expected</th></tr>{''.join(ev_rows)}</table>"
                f"<h2>Similar sequences</h2>{similar}"
                f"<h2>Verdict</h2><p>current: <span class=verdict id=current>{_e(verdict.get('verdict', 'none'))}</span></p>"
                "<p><input id=kind placeholder='kind (optional), e.g. SSH brute force' size=40> "
                "<input id=note placeholder='note' size=40></p>"
                f"<p><button id=benign onclick=\"verdict('{_e(alert_id)}','benign')\">Benign</button>"
                f"<button id=malicious onclick=\"verdict('{_e(alert_id)}','malicious')\">Malicious</button>"
                "<span id=status class=muted></span></p>")
        return self.page(a["title"], body)

    def app(self):
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse
        from starlette.routing import Route

        async def index(request: Request):
            self.refresh()
            return HTMLResponse(self.index_page())

        async def alert(request: Request):
            self.refresh()
            page = self.alert_page(request.path_params["alert_id"])
            return HTMLResponse(page) if page else HTMLResponse("no such alert", status_code=404)

        async def groups(request: Request):
            self.refresh()
            return HTMLResponse(self.groups_page())

        async def group(request: Request):
            self.refresh()
            page = self.group_page(request.path_params["lead"])
            return HTMLResponse(page) if page else HTMLResponse("no such group", status_code=404)

        async def state(request: Request):  # polled every 2 s by an open index page: reads, never regroups
            self._read()
            return JSONResponse({"alerts": len(self.file.alerts), "reloads": self.file.reloads,
                                 "rejected_lines": len(self.file.rejected)})

        async def post_feedback(request: Request):
            refused = cross_site(request.headers)
            if refused:
                return JSONResponse({"error": refused[1]}, status_code=refused[0])
            self.refresh()
            try:
                body = json.loads(await request.body())
                if body.get("group") is not None:  # one verdict for every alert of a group
                    members = self.groups.get(str(body["group"]))
                    if body.get("members") is not None:  # the members the analyst saw (the file may have grown since)
                        if not isinstance(body["members"], list):
                            raise ValueError("members is a list of alert ids")
                        members = [str(m) for m in body["members"]]
                        unknown = [m for m in members if m not in self.by_id]
                        if unknown or not members:
                            return JSONResponse({"error": f"no such alerts: {unknown[:5]}" if unknown
                                                 else "no members"}, status_code=404)
                    if members is None:
                        return JSONResponse({"error": "no such group"}, status_code=404)
                    rows = fb.record_many(self.feedback_path, [self.by_id[m] for m in members],
                                          str(body.get("verdict")), body.get("kind") or None,
                                          str(body.get("note") or ""), alerts_file=str(self.alerts_path),
                                          group=str(body["group"]))
                    return JSONResponse({"verdict": rows[0]["verdict"], "alerts": len(rows), "group": body["group"]})
                a = self.by_id.get(str(body.get("alert_id")))
                if a is None:
                    return JSONResponse({"error": "no such alert"}, status_code=404)
                row = fb.record(self.feedback_path, a, str(body.get("verdict")), body.get("kind") or None,
                                str(body.get("note") or ""), alerts_file=str(self.alerts_path))
            except ValueError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            return JSONResponse(row)

        # a page served on loopback is still reachable from any site the analyst's browser opens: only requests
        # naming this host are served (DNS rebinding), and verdicts come only from this page (cross-site posts)
        return Starlette(routes=[Route("/", index), Route("/alert/{alert_id}", alert), Route("/groups", groups),
                                 Route("/group/{lead}", group), Route("/api/state", state),
                                 Route("/api/feedback", post_feedback, methods=["POST"])],
                         middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(LOCAL_HOSTS))])


def serve(alerts: str, feedback: str, embeddings: str | None = None, port: int = 8765,
          group_cosine: float | None = None, wait: bool = False) -> None:
    import uvicorn

    triage = Triage(alerts, feedback, embeddings, group_cosine, wait)
    if triage.missing:
        print(f"loglm triage: waiting for {alerts} (no such file yet)", file=sys.stderr, flush=True)
    print(f"loglm triage: http://127.0.0.1:{port}/ ({len(triage.alerts)} alerts in {len(triage.groups)} groups; "
          f"verdicts to {feedback})", flush=True)
    if triage.file.rejected:
        print(f"loglm triage: {len(triage.file.rejected)} lines are not alerts and are left out: "
              f"{triage.file.describe_rejected()}", file=sys.stderr, flush=True)
    uvicorn.run(triage.app(), host="127.0.0.1", port=port, log_level="warning")
