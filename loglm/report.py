"""One self-contained HTML report per detection or evaluation run (plots inline, no network access), and
the same plots as PNG files for MLflow.

Contents: an alert timeline (every scored session against time, the threshold, alerts marked), the score
histogram with the threshold, precision-recall and ROC curves when labels are known, the metrics table, and
the top alerts with their events, the surprising ones highlighted by surprisal, with what the model
expected instead.  Every string that comes from a log line is HTML-escaped: log lines are attacker
controlled.  Entities are shown as the alerts carry them (pseudonymised when ``detect.pseudonymize``).
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.sub{color:#5b6577;margin-bottom:16px} .grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.card{border:1px solid #dde2ea;border-radius:8px;padding:10px;background:#fff} img{max-width:100%}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{border-bottom:1px solid #eef1f5;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f5f7fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.kpi{display:flex;gap:10px;flex-wrap:wrap;margin:8px 0} .kpi div{background:#f5f7fa;border-radius:6px;padding:6px 10px}
.kpi b{display:block;font-size:18px} .alert{border:1px solid #dde2ea;border-left:4px solid #c0392b;border-radius:6px;padding:8px 12px;margin:10px 0}
.sev-critical{border-left-color:#7b1fa2}.sev-high{border-left-color:#c0392b}.sev-medium{border-left-color:#e67e22}.sev-low{border-left-color:#f1c40f}
code{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all}
.ev td{font-size:12px} .muted{color:#5b6577}
"""


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def curves(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, fpr, tpr) at every distinct score threshold, highest first (the points
    scikit-learn's curves give, in numpy: the report, also drawn by the torch-free engine, does not pull in
    scikit-learn, scipy and pandas for two curves)."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], (y[order] == 1)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last item of each group of tied scores
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    pos, neg = max(1.0, float(y.sum())), max(1.0, float((~y).sum()))
    precision = np.r_[tp / (tp + fp), 1.0]
    recall = np.r_[tp / pos, 0.0]
    return precision, recall, np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]


class SessionView:
    """Every scored session's score, start time and label (-1: unknown), what a report's plots are drawn
    from, gathered a piece at a time as numpy rows: 24 bytes a session (a Python tuple per session held
    about 140, the largest thing a 16M-line detection kept)."""

    def __init__(self):
        self._parts: list[np.ndarray] = []

    def add(self, rows: list[dict]) -> None:
        """Rows as :func:`loglm.detect.detector.session_score_rows` makes them (score, start_ts, label)."""
        self._parts.append(np.array([(r["score"], r["start_ts"], -1 if r["label"] is None else r["label"])
                                     for r in rows], dtype=np.float64).reshape(-1, 3))

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, starts, labels) of every session, in the order added."""
        v = np.concatenate(self._parts) if self._parts else np.zeros((0, 3))
        return v[:, 0].copy(), v[:, 1].copy(), v[:, 2].astype(np.int64)


TIMELINE_POINTS = 50_000  # sessions drawn on the timeline at most: every alert (or labelled anomaly), then a sample


def timeline_sample(highlight: np.ndarray, limit: int = TIMELINE_POINTS) -> np.ndarray:
    """Indices of the sessions the timeline draws: all of them up to ``limit``; beyond, every highlighted one
    (alerts, labelled anomalies) and evenly spaced others up to ``limit`` (highlighted ones evenly spaced
    too where they alone exceed it).  A scatter of a million sessions reads as one blob and its drawing held
    hundreds of MB; the histogram and curves still count every session."""
    n = len(highlight)
    if n <= limit:
        return np.arange(n)

    def even(idx: np.ndarray, k: int) -> np.ndarray:
        return idx if len(idx) <= k else idx[np.linspace(0, len(idx) - 1, k).round().astype(np.int64)]

    hi = even(np.flatnonzero(highlight), limit)
    rest = even(np.flatnonzero(~highlight), limit - len(hi))
    return np.sort(np.concatenate([hi, rest]))


def _dates(times: np.ndarray) -> np.ndarray:
    """Epoch seconds as numpy datetimes (UTC, millisecond): matplotlib plots them without a Python object each."""
    return (np.asarray(times, dtype=np.float64) * 1000.0).round().astype("int64").astype("datetime64[ms]")


def make_plots(scores: np.ndarray, times: np.ndarray, threshold: float, labels: np.ndarray | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    alerting = scores > threshold
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    shown = timeline_sample(alerting if labels is None else labels == 1)
    when, s = _dates(times[shown]), scores[shown]
    normal_c = "#7f8c9d"
    if labels is not None:
        lab = labels[shown]
        known = lab >= 0
        colors = np.where(lab == 1, "#c0392b", normal_c)
        ax.scatter(when[known], s[known], s=8, c=colors[known], alpha=0.7,
                   label="labelled anomalous (red) / normal (grey)")
    else:
        ax.scatter(when[~alerting[shown]], s[~alerting[shown]], s=6, c=normal_c, alpha=0.6, label="session")
        ax.scatter(when[alerting[shown]], s[alerting[shown]], s=12, c="#c0392b", label="alert")
    ax.axhline(threshold, color="#1f4e79", lw=1.2, ls="--", label=f"threshold {threshold:.4g}")
    sample = "" if len(shown) == len(scores) else (
        f"; {len(shown):,} of {len(scores):,} drawn: every {'alert' if labels is None else 'labelled anomaly'}"
        " and an even sample of the rest")
    ax.set_title(f"Sessions over time (score at each session's start{sample})", fontsize=9 if sample else None)
    ax.set_ylabel("score")
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    plots["timeline"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    bins = np.histogram_bin_edges(scores, bins=40) if len(scores) else 10
    if labels is not None:
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, color=normal_c, label="normal")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, color="#c0392b", label="anomalous")
        if (labels < 0).any():
            ax.hist(scores[labels < 0], bins=bins, alpha=0.4, color="#95a5a6", label="unlabelled")
    else:
        ax.hist(scores, bins=bins, color=normal_c, label="sessions")
    ax.axvline(threshold, color="#1f4e79", ls="--", lw=1.2, label="threshold")
    ax.set_yscale("log")
    ax.set_title("Score histogram")
    ax.set_xlabel("score")
    ax.legend(fontsize=7)
    plots["histogram"] = _png(fig)

    if labels is not None and len(set(labels[labels >= 0].tolist())) == 2:
        y, s = labels[labels >= 0], scores[labels >= 0]
        prec, rec, fpr, tpr = curves(y, s)
        pred = s > threshold
        op_r = (pred & (y == 1)).sum() / max(1, (y == 1).sum())
        op_p = (pred & (y == 1)).sum() / max(1, pred.sum())
        op_f = (pred & (y == 0)).sum() / max(1, (y == 0).sum())
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        ax.plot(rec, prec, color="#1f4e79")
        ax.scatter([op_r], [op_p], color="#c0392b", zorder=3, label="calibrated threshold")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall")
        ax.legend(fontsize=7)
        plots["pr_curve"] = _png(fig)
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        ax.plot(fpr, tpr, color="#1f4e79")
        ax.plot([0, 1], [0, 1], color="#bdc3c7", lw=0.8)
        ax.scatter([op_f], [op_r], color="#c0392b", zorder=3, label="calibrated threshold")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC")
        ax.legend(fontsize=7)
        plots["roc_curve"] = _png(fig)
    return plots


def _esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _alert_html(a: dict) -> str:
    top = max((e["surprisal"] for e in a["surprising_events"]), default=1.0) or 1.0
    rows = []
    for e in a["surprising_events"]:
        alpha = min(1.0, max(0.08, e["surprisal"] / top))
        expected = "; ".join(f"{_esc(x['template'])} ({x['p']:.2f})" for x in e.get("expected", [])[:3])
        flag = "" if e.get("known_event", True) else " <b>[never seen in training]</b>"
        rows.append(
            f"<tr style='background:rgba(192,57,43,{alpha * 0.35:.2f})'><td class=num>#{e['position']}</td>"
            f"<td>{_esc(e['time'])}<br><span class=muted>{_esc(Path(str(e['file'])).name)}:{e['line']}</span></td>"
            f"<td class=num>{e['surprisal']:.2f}</td><td><code>{_esc(e['template'])}</code>{flag}"
            f"<br><code class=muted>{_esc(e.get('raw'))}</code></td><td><code>{expected}</code></td></tr>")
    ents = "; ".join(f"<b>{_esc(k)}</b>: {_esc(', '.join(map(str, v[:8])))}{' …' if len(v) > 8 else ''}"
                     for k, v in a["entities"].items())
    label = f" · label {a['label']}" if "label" in a else ""
    return (f"<div class='alert sev-{_esc(a['severity'])}'><b>{_esc(a['title'])}</b> "
            f"<span class=muted>({_esc(a['severity'])}, score {a['score']:.4g} &gt; {a['threshold']:.4g}{label})</span><br>"
            f"<span class=muted>{_esc(a['start_time'])} → {_esc(a['end_time'])} · {a['n_events']} events · "
            f"alert {_esc(a['alert_id'])}</span><br>{ents}"
            f"<table class=ev><tr><th>pos</th><th>when / where</th><th>surprisal</th><th>event (template / raw line)</th>"
            f"<th>model expected</th></tr>{''.join(rows)}</table></div>")


def write_report(path: Path, title: str, subtitle: str, scores: np.ndarray, times: np.ndarray, threshold: float,
                 alerts: list[dict], labels: np.ndarray | None = None, metrics: dict | None = None,
                 facts: dict | None = None, top_alerts: int = 20, n_alerts: int | None = None) -> dict[str, bytes]:
    """Write the HTML report; returns the PNG plots (name -> bytes) for MLflow.  ``alerts``: the highest first,
    at least ``top_alerts`` of them where there are; ``n_alerts``: how many there are in all (default: all given)."""
    n_alerts = len(alerts) if n_alerts is None else n_alerts
    scores = np.asarray(scores, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    plots = make_plots(scores, times, threshold, labels)
    img = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in plots.items()}
    kpis = {"sessions scored": len(scores), "alerts": int((scores > threshold).sum()), "threshold": f"{threshold:.4g}",
            **(facts or {})}
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{_esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1><div class=sub>{_esc(subtitle)}</div>",
             "<div class=kpi>" + "".join(f"<div>{_esc(k)}<b>{_esc(v)}</b></div>" for k, v in kpis.items()) + "</div>"]
    if metrics:
        cols = ["n", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "fpr", "auroc", "pr_auc"]
        parts.append("<h2>Metrics (threshold from validation normal data)</h2><table><tr><th>items</th>"
                     + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for part, m in metrics.items():
            if "n" not in m:  # not a metrics row (fpr_by_period)
                continue
            cells = "".join(f"<td class=num>{m[c]:.4f}</td>" if isinstance(m.get(c), float) else f"<td class=num>{_esc(m.get(c))}</td>"
                            for c in cols)
            parts.append(f"<tr><td>{_esc(part)}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("<h2>Alert timeline</h2><div class=card><img alt='timeline' src='" + img["timeline"] + "'></div>")
    parts.append("<h2>Scores</h2><div class=grid><div class=card><img alt='histogram' src='" + img["histogram"] + "'></div>")
    if "pr_curve" in img:
        parts.append("<div class=card><img alt='precision-recall' src='" + img["pr_curve"] + "'></div>"
                     "<div class=card><img alt='roc' src='" + img["roc_curve"] + "'></div>")
    parts.append("</div>")
    parts.append(f"<h2>Top alerts ({min(top_alerts, len(alerts))} of {n_alerts})</h2>")
    parts.extend(_alert_html(a) for a in alerts[:top_alerts])
    if not alerts:
        parts.append("<p class=muted>No session scored above the threshold.</p>")
    parts.append(f"<p class=muted>Generated by LogLM {datetime.now(UTC).isoformat(timespec='seconds')}.</p></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(path)
    return plots
