"""Controlled HDFS-format logs for behavioural tests: a fixed normal block lifecycle, injectable anomalies."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

T0 = datetime(2008, 11, 9, 20, 0, 0)


def _line(t: datetime, pid: int, level: str, comp: str, content: str) -> str:
    return f"{t:%y%m%d %H%M%S} {pid} {level} {comp}: {content}"


def normal_block(blk: str, rng: random.Random, t: datetime) -> list[tuple[datetime, str]]:
    ip = lambda: f"10.250.{rng.randint(0, 20)}.{rng.randint(1, 250)}"  # noqa: E731
    out = [(t, f"BLOCK* NameSystem.allocateBlock: /user/root/rand/part-{rng.randint(0, 999):05d}. {blk}")]
    for _ in range(3):
        out.append((t, f"Receiving block {blk} src: /{ip()}:{rng.randint(30000, 60000)} dest: /{ip()}:50010"))
    t2 = t + timedelta(seconds=1)
    for i in range(3):
        out.append((t2, f"PacketResponder {i} for block {blk} terminating"))
        out.append((t2, f"Received block {blk} of size 67108864 from /{ip()}"))
    for _ in range(3):
        out.append((t2, f"BLOCK* NameSystem.addStoredBlock: blockMap updated: {ip()}:50010 is added to {blk} size 67108864"))
    return out


def render(events: list[tuple[datetime, str]]) -> list[str]:
    comp = {"BLOCK*": "dfs.FSNamesystem", "Receiving": "dfs.DataNode$DataXceiver",
            "PacketResponder": "dfs.DataNode$PacketResponder", "Received": "dfs.DataNode$PacketResponder"}
    lines = []
    for t, content in events:
        c = comp.get(content.split()[0], "dfs.DataNode")
        level = "WARN" if "exception" in content.lower() else "INFO"
        lines.append(_line(t, 100 + len(lines) % 50, level, c, content))
    return lines


def make_log(n_blocks: int, seed: int, start: datetime = T0, anomalies: dict[int, str] | None = None
             ) -> tuple[list[str], dict[str, str]]:
    """Lines of n_blocks interleaved sessions; anomalies maps block index -> 'swap' | 'unseen' | 'cut' | 'replicate' (a benign new operation)."""
    rng = random.Random(seed)
    events: list[tuple[datetime, str]] = []
    kinds: dict[str, str] = {}
    for b in range(n_blocks):
        blk = f"blk_{rng.randint(10**17, 10**18)}"
        t = start + timedelta(seconds=2 * b)
        ev = normal_block(blk, rng, t)
        kind = (anomalies or {}).get(b)
        if kind == "swap":  # terminating before anything was received
            ev.insert(1, ev.pop(5))
        elif kind == "unseen":
            ev.insert(6, (ev[5][0], f"writeBlock {blk} received exception java.io.IOException: Connection reset by peer"))
        elif kind == "replicate":  # a normal operation training never showed: the block is copied elsewhere
            t3 = ev[-1][0] + timedelta(seconds=1)
            ev += [(t3, f"BLOCK* ask 10.250.1.{rng.randint(1, 250)}:50010 to replicate {blk} to datanode(s) "
                        f"10.250.2.{rng.randint(1, 250)}:50010"),
                   (t3, f"10.250.1.{rng.randint(1, 250)}:50010 Starting thread to transfer block {blk} to "
                        f"10.250.2.{rng.randint(1, 250)}:50010")]
        elif kind == "cut":
            ev = ev[:4]
        if kind:
            kinds[blk] = kind
        events.extend(ev)
    events.sort(key=lambda e: e[0])
    return render(events), kinds


def synthetic_run_overrides(root, n_blocks: int, seed: int) -> list[str]:
    """Writes a normal synthetic log under root; returns the overrides that train a tiny LogLM on it."""
    lines, _ = make_log(n_blocks, seed)
    log = root / "train.log"
    log.write_text("\n".join(lines) + "\n")
    return [f"paths.root={root}", "debug=tests", "data.name=synthetic", f"data.inputs=[{log}]",
            "data.anomalous_ids=null", "data.split.method=seeded"]


def windows_logons(days: int, seed: int, first_day: int = 0, attack: bool = False, users: int = 30) -> list[dict]:
    """Winlogbeat-shaped (ECS) Windows Security logon events, one dict per event in time order: each day every
    user logs on interactively, makes a few network logons and logs off (now and then after a mistyped
    password, or with an explicit logoff 4647). ``attack``: on the last day one user (``user7``) takes 40
    failed network logons from one outside address within 80 s, then a success, a special logon (4672) and
    a new account (4720)."""
    rng = random.Random(seed)
    names = [f"user{i}" for i in range(users)]

    def event(t: datetime, user: str, code: int, outcome: str, kind: str | None, ip: str) -> dict:
        e = {"@timestamp": f"{t:%Y-%m-%dT%H:%M:%S}Z", "event": {"code": code, "outcome": outcome},
             "user": {"name": user}, "source": {"ip": ip}}
        if kind:
            e["winlog"] = {"logon": {"type": kind}}
        return e

    start = datetime(2024, 5, 1, 8, 0, 0)
    out = []
    for d in range(first_day, first_day + days):
        for k, user in enumerate(names):
            t = start + timedelta(days=d, minutes=rng.randint(0, 120))
            steps = [(4625, "failure", "Interactive")] if rng.random() < 0.1 else []
            steps += [(4624, "success", "Interactive")] + [(4624, "success", "Network")] * rng.randint(1, 5)
            steps += [(4634, "success", None)] * rng.randint(1, 3)
            if rng.random() < 0.2:
                steps.append((4647, "success", None))
            for code, outcome, kind in steps:
                t += timedelta(seconds=rng.randint(5, 600))
                out.append(event(t, user, code, outcome, kind, f"10.0.0.{k + 10}"))
        if attack and d == first_day + days - 1:
            t = start + timedelta(days=d, hours=3)
            for _ in range(40):
                t += timedelta(seconds=2)
                out.append(event(t, "user7", 4625, "failure", "Network", "203.0.113.5"))
            for dt, code in ((2, 4624), (30, 4672), (60, 4720)):
                out.append(event(t + timedelta(seconds=dt), "user7", code, "success", "Network" if code == 4624 else None,
                                 "203.0.113.5"))
    out.sort(key=lambda e: e["@timestamp"])
    return out


def java_log(records: int, seed: int, start: datetime = datetime(2015, 10, 18, 18, 1, 0)) -> list[str]:
    """A Hadoop-format application log (``2015-10-18 18:01:47,978 WARN [main] org.apache...: text``) where a
    share of the records carry a Java stack trace on the lines below them (an exception line, ``\\tat``
    frames, sometimes ``Caused by:`` and ``... N more``), as real Java services write them."""
    rng = random.Random(seed)
    messages = [("INFO", "org.apache.hadoop.mapred.Task", "Task attempt_{} is done. And is in the process of committing"),
                ("INFO", "org.apache.hadoop.ipc.Client", "Retrying connect to server: host{}:8030"),
                ("WARN", "org.apache.hadoop.hdfs.DFSClient", "Error Recovery for block blk_{} in pipeline"),
                ("ERROR", "org.apache.hadoop.yarn.YarnChild", "Exception running child : attempt_{}")]
    lines, t = [], start
    for i in range(records):
        t += timedelta(milliseconds=rng.randint(5, 3000))
        level, comp, text = messages[rng.randrange(len(messages))]
        lines.append(f"{t:%Y-%m-%d %H:%M:%S},{t.microsecond // 1000:03d} {level} [main] {comp}: {text.format(i)}")
        if level in ("WARN", "ERROR") and rng.random() < 0.7:
            lines.append(f"java.io.IOException: Connection reset by peer {i}")
            lines += [f"\tat org.apache.hadoop.ipc.Client$Connection.run(Client.java:{rng.randint(100, 999)})"
                      for _ in range(rng.randint(2, 8))]
            if rng.random() < 0.4:
                lines.append("Caused by: java.net.ConnectException: Connection refused")
                lines += ["\tat sun.nio.ch.SocketChannelImpl.checkConnect(Native Method)", f"\t... {rng.randint(2, 9)} more"]
    return lines


def cef_firewall(days: int, seed: int, first_day: int = 0, scan: bool = False, hosts: int = 12) -> list[str]:
    """A firewall's CEF events as forwarded to a SIEM (an RFC 3164 syslog prefix, ``rt`` in epoch milliseconds
    or CEF's ``MMM dd yyyy HH:mm:ss`` form): each day every internal host opens web and DNS connections,
    now and then one is denied. ``scan``: on the last day ``10.1.0.66`` probes 60 ports of one server within
    a minute (denied; the IDS names the scan), then the day goes on as usual."""
    rng = random.Random(seed)
    start = datetime(2024, 5, 1, 8, 0, 0)

    def line(t: datetime, cls: str, name: str, sev: int, src: str, dst: str, dpt: int, act: str) -> str:
        stamp = str(int(t.replace(tzinfo=UTC).timestamp() * 1000)) if rng.random() < 0.7 else f"{t:%b %d %Y %H:%M:%S} UTC"
        return (f"<134>{t:%b %e %H:%M:%S} fw01 CEF:0|Acme|NGFW|9.1|{cls}|{name}|{sev}|rt={stamp} src={src} "
                f"spt={rng.randint(30000, 60000)} dst={dst} dpt={dpt} proto=TCP act={act} dvchost=fw01 "
                f"msg=session {rng.randint(10**5, 10**6)} {name.lower()}")

    out = []
    for d in range(first_day, first_day + days):
        for k in range(hosts):
            src = f"10.1.0.{k + 10}"
            t = start + timedelta(days=d, minutes=rng.randint(0, 60))
            for _ in range(rng.randint(20, 40)):
                t += timedelta(seconds=rng.randint(5, 120))
                dst, dpt = rng.choice([("192.0.2.10", 443), ("192.0.2.11", 443), ("192.0.2.53", 53), ("192.0.2.12", 80)])
                if rng.random() < 0.03:
                    out.append((t, line(t, "TRAFFIC", "Connection denied", 3, src, "198.51.100.7", 25, "deny")))
                else:
                    out.append((t, line(t, "TRAFFIC", "Connection allowed", 1, src, dst, dpt, "allow")))
        if scan and d == first_day + days - 1:
            t = start + timedelta(days=d, hours=1)
            out.append((t, line(t, "THREAT", "TCP Port Scan", 8, "10.1.0.66", "192.0.2.10", 0, "alert")))
            for port in rng.sample(range(1, 10000), 60):
                t += timedelta(seconds=1)
                out.append((t, line(t, "TRAFFIC", "Connection denied", 3, "10.1.0.66", "192.0.2.10", port, "deny")))
    out.sort(key=lambda x: x[0])
    return [x for _, x in out]
