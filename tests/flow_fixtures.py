"""Small synthetic flow files in the real formats: Zeek conn.log (labeled), CICFlowMeter CSV, NetFlow.

The traffic: one local host browsing (https/http/dns, outbound) every few seconds, and, when asked, an
outside scanner probing the host's ports (inbound S0 flows) -- the shape of the CTU captures.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

ZEEK_HEADER = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tconn
#open\t2022-06-17-00-00-07
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\tlabel\tdetailedlabel
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]\tstring\tstring
"""
HOST = "10.0.0.5"


def zeek_rows(n_normal: int, n_attack: int, seed: int = 0, t0: float = 1_655_071_198.0) -> list[str]:
    rng = random.Random(seed)
    rows = []
    t = t0
    # (port, proto, service, typical bytes out, bytes in, packets out, packets in, seconds)
    services = [(443, "tcp", "ssl", 600, 5000, 10, 12, 0.5), (80, "tcp", "http", 400, 20000, 8, 20, 0.2),
                (53, "udp", "dns", 40, 90, 1, 1, 0.01), (443, "tcp", "-", 100, 100, 3, 3, 2.0)]
    for i in range(n_normal):
        t += rng.uniform(1, 20)
        port, proto, svc, ob, ib, op, ip, dur = services[rng.randrange(len(services))]
        if rng.random() < 0.2:  # some heavier transfers
            ob, ib, op, ip, dur = ob * 10, ib * 30, op * 5, ip * 20, dur * 8
        j = lambda v: max(1, int(v * rng.uniform(0.9, 1.1)))  # noqa: E731
        rows.append((t, f"C{i}", HOST, rng.randint(49152, 65000), f"93.184.{rng.randint(0, 9)}.{rng.randint(1, 250)}",
                     port, proto, svc, f"{dur * rng.uniform(0.9, 1.1):.6f}", j(ob), j(ib), "SF", "T", "F", 0,
                     "ShADadFf", j(op), j(ob) + 400, j(ip), j(ib) + 400, "(empty)", "Benign", "Browsing"))
    attacker = "198.51.100.7"
    ta = t0 + (t - t0) * 0.75
    for i in range(n_attack):
        ta += rng.uniform(0.1, 2)
        rows.append((ta, f"A{i}", attacker, rng.randint(40000, 60000), HOST, rng.choice([22, 23, 445, 3389, 5432, 8080]),
                     "tcp", "-", "0.000010", 0, 0, "S0", "F", "T", 0, "S", 2, 80, 0, 0, "(empty)", "Malicious",
                     "External-Attack"))
    rows.append((ta + 1, "B0", HOST, 50000, "224.0.0.251", 5353, "udp", "dns", "-", "-", "-", "S0", "T", "F", 0, "D",
                 1, 100, 0, 0, "(empty)", "Background", "(empty)"))
    rows.sort(key=lambda r: r[0])
    return ["\t".join(f"{v:.6f}" if k == 0 else str(v) for k, v in enumerate(r)) for r in rows]


def write_zeek(path, n_normal: int = 300, n_attack: int = 40, seed: int = 0) -> None:
    path.write_text(ZEEK_HEADER + "\n".join(zeek_rows(n_normal, n_attack, seed)) + "\n#close\t2022-06-18-00-00-00\n")


def zeek_json_lines(n_normal: int, n_attack: int, seed: int = 0, ts: str = "epoch") -> list[str]:
    """The rows of :func:`zeek_rows` as Zeek writes them with ``LogAscii::use_json=T``: one object per line,
    flat dotted keys, counts and ports as numbers, bools as true/false, sets as lists, unset fields left out;
    ``ts`` as epoch seconds, ``millis`` (``JSON::TS_MILLIS``) or ``iso`` (``JSON::TS_ISO8601``)."""
    header = dict(line.split("\t", 1) for line in ZEEK_HEADER.splitlines() if "\t" in line)
    names, types = header["#fields"].split("\t"), header["#types"].split("\t")
    lines = []
    for row in zeek_rows(n_normal, n_attack, seed):
        obj: dict = {}
        for name, typ, v in zip(names, types, row.split("\t")):
            if v == "-":
                continue
            if typ == "time":
                t = float(v)
                obj[name] = {"epoch": t, "millis": round(t * 1000),
                             "iso": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")}[ts]
            elif typ in ("count", "port", "int"):
                obj[name] = int(v)
            elif typ in ("interval", "double"):
                obj[name] = float(v)
            elif typ == "bool":
                obj[name] = v == "T"
            elif typ.startswith("set["):
                obj[name] = [] if v == "(empty)" else v.split(",")
            else:
                obj[name] = v
        lines.append(json.dumps(obj))
    return lines


ZEEK_DNS_FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "trans_id", "query",
                   "qtype_name", "rcode_name", "AA", "RD", "RA", "answers"]


def zeek_dns_lines(n: int, seed: int = 0, nxdomain_burst: int = 0, t0: float = 1_655_071_198.0) -> list[str]:
    """A Zeek dns.log (TSV with its header): hosts resolving everyday names; ``nxdomain_burst``: one host then
    asks that many random names that do not exist (a DGA's signature)."""
    rng = random.Random(seed)
    header = ["#separator \\x09", "#path\tdns", "#fields\t" + "\t".join(ZEEK_DNS_FIELDS)]
    rows, t = [], t0
    for i in range(n):
        t += rng.uniform(0.5, 5)
        host = f"10.0.0.{rng.randint(2, 9)}"
        name, qtype = rng.choice([("www.example.com", "A"), ("mail.example.com", "MX"), ("cdn.example.net", "AAAA"),
                                  ("time.example.org", "A")])
        rows.append([f"{t:.6f}", f"D{i}", host, str(rng.randint(1024, 65000)), "10.0.0.1", "53", "udp",
                     str(rng.randint(1, 65535)), name, qtype, "NOERROR", "F", "T", "T", "93.184.216.34"])
    for i in range(nxdomain_burst):
        t += 0.2
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(14)) + ".com"
        rows.append([f"{t:.6f}", f"X{i}", "10.0.0.66", str(rng.randint(1024, 65000)), "10.0.0.1", "53", "udp",
                     str(rng.randint(1, 65535)), name, "A", "NXDOMAIN", "F", "T", "T", "-"])
    return header + ["\t".join(r) for r in rows]


VPC_HEADER = ("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action "
              "log-status")


def vpc_flow_lines(n: int, seed: int = 0, t0: int = 1_700_000_000) -> list[str]:
    """AWS VPC flow log records (default version-2 format, space-separated): the local host's outbound
    traffic, a rejected inbound probe now and then, and a NODATA and a SKIPDATA record."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        start = t0 + 10 * i
        if i % 50 == 7:
            lines.append(f"2 123456789012 eni-0a1b2c3d - - - - - - - {start} {start + 60} - NODATA")
        elif i % 97 == 11:
            lines.append(f"2 123456789012 eni-0a1b2c3d - - - - - - - {start} {start + 60} - SKIPDATA")
        elif i % 10 == 3:
            lines.append(f"2 123456789012 eni-0a1b2c3d 198.51.100.7 {HOST} {rng.randint(40000, 60000)} 22 6 1 40 "
                         f"{start} {start + 1} REJECT OK")
        else:
            lines.append(f"2 123456789012 eni-0a1b2c3d {HOST} 93.184.0.{rng.randint(1, 250)} "
                         f"{rng.randint(49152, 65000)} {rng.choice([443, 80, 53])} {rng.choice([6, 6, 17])} "
                         f"{rng.randint(2, 40)} {rng.randint(100, 90000)} {start} {start + rng.randint(0, 59)} ACCEPT OK")
    return lines


CIC_COLUMNS = ["Flow Duration", "Total Fwd Packets", "Total Backward Packets", "Total Length of Fwd Packets",
               "Total Length of Bwd Packets", "Fwd Packet Length Max", "Flow Bytes/s", "Label"]


def write_cicflowmeter(path, n_benign: int = 60, n_attack: int = 20, seed: int = 0) -> None:
    """CICFlowMeter column names with the leading spaces of the original CIC-IDS2017 CSVs."""
    rng = random.Random(seed)
    lines = [",".join(" " + c if i else c for i, c in enumerate(CIC_COLUMNS))]
    for _ in range(n_benign):
        lines.append(f"{rng.randint(100, 5_000_000)},{rng.randint(2, 20)},{rng.randint(2, 20)},"
                     f"{rng.randint(60, 3000)},{rng.randint(100, 90000)},{rng.randint(40, 1500)},"
                     f"{rng.uniform(10, 1e6):.3f},BENIGN")
    for _ in range(n_attack):
        lines.append(f"{rng.randint(1, 60)},1,1,0,0,0,Infinity,PortScan")
    path.write_text("\n".join(lines) + "\n")


def netflow_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"first_seen": 1_700_000_000.0 + i, "sa": HOST, "da": f"93.184.0.{rng.randint(1, 250)}",
             "sp": rng.randint(49152, 65000), "dp": rng.choice([443, 80]), "pr": "TCP", "td": rng.uniform(0, 3),
             "ibyt": rng.randint(100, 5000), "obyt": rng.randint(100, 90000), "ipkt": rng.randint(2, 20),
             "opkt": rng.randint(2, 50)} for i in range(n)]


NETFLOW_FIELDS = {"ts": "first_seen", "src_ip": "sa", "dst_ip": "da", "src_port": "sp", "dst_port": "dp",
                  "proto": "pr", "duration": "td", "fwd_bytes": "ibyt", "bwd_bytes": "obyt", "fwd_pkts": "ipkt",
                  "bwd_pkts": "opkt"}
