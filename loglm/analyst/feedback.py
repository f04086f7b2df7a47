"""The analysts' verdicts on alerts: an append-only JSON-lines table (one row per verdict, newest wins).

Rows: time, alert_id, session_id, entity, verdict (benign | malicious), kind (optional: "SSH brute force"),
note, analyst, the alerts file and model the alert came from.  Appends take a file lock, so the triage page
and `loglm feedback` can write at once.  Tuning (loglm.analyst.tune) reads benign verdicts as normal data;
`loglm kinds fit` reads malicious verdicts with a kind as few-shot examples.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import time
from pathlib import Path

VERDICTS = ("benign", "malicious")


def record(path: str | Path, alert: dict, verdict: str, kind: str | None = None, note: str = "",
           analyst: str | None = None, alerts_file: str | None = None) -> dict:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "alert_id": alert["alert_id"],
           "session_id": alert["session_id"], "entity": alert.get("entity"), "verdict": verdict,
           "kind": kind or None, "note": note[:2000], "analyst": analyst or getpass.getuser(),
           "alerts_file": alerts_file, "model": alert.get("model")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return row


def read(path: str | Path) -> dict[str, dict]:
    """alert_id -> its latest verdict row ({} when there is no table yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    latest: dict[str, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not a JSON feedback row ({e})") from None
        latest[row["alert_id"]] = row
    return latest


def sessions_by_verdict(path: str | Path) -> tuple[set[str], set[str]]:
    """(sessions with a benign verdict, sessions with a malicious one), each alert's latest verdict; a session
    judged both ways (two alerts) is in both, and readers keep it out as malicious."""
    rows = read(path).values()
    return ({r["session_id"] for r in rows if r["verdict"] == "benign"},
            {r["session_id"] for r in rows if r["verdict"] == "malicious"})


def load_alerts(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no alerts file {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find_alert(alerts: list[dict], alert_id: str) -> dict:
    for a in alerts:
        if a["alert_id"] == alert_id:
            return a
    raise ValueError(f"no alert {alert_id!r} among {len(alerts)} alerts")
