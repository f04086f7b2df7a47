"""Keyed pseudonymisation of entity values (IPs, users, hosts) in alerts and score files.

HMAC-SHA256 with a deployment key from an environment variable: the same value always maps to the same
pseudonym within a deployment (analysts can still correlate), and without the key nobody can test a guess.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# candidates (validated by ipaddress): groups of hex and colons with "::" or eight groups
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?:%\w+)?"
                  r"(?!\w|[:.]\w)")
USER = re.compile(r"\b(?:user|uid|for user|by user)[=: ]\s*([A-Za-z_][\w.\-]{0,31})", re.IGNORECASE)


def _is_ipv6(candidate: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(candidate.split("%", 1)[0]).version == 6
    except ValueError:
        return False


class Pseudonymizer:
    def __init__(self, key: bytes, kinds: list[str] | tuple[str, ...]):
        if len(key) < 16:
            raise ValueError("pseudonymisation key must be at least 16 bytes")
        self.key = key
        self.kinds = set(kinds)

    def token(self, kind: str, value: str) -> str:
        digest = hmac.new(self.key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]
        return f"{kind}~{digest}"

    def text(self, text: str | None, values: dict[str, list[str]]) -> str | None:
        """Replace every occurrence of the given entity values in free text (raw lines, titles, templates),
        then any other address or user name the text holds (:meth:`scrub`)."""
        if not text:
            return text
        pairs = sorted(((v, self.token(k, v)) for k, vs in values.items() if k in self.kinds for v in vs),
                       key=lambda p: -len(p[0]))
        for value, token in pairs:
            text = re.sub(rf"(?<![\w.]){re.escape(value)}(?![\w])", token, text)
        return self.scrub(text)

    def scrub(self, text: str | None) -> str | None:
        """Addresses (IPv4 and IPv6, which are not entities of their own) and ``user=<name>``-style names in
        any text: template words, rejection reasons quoting raw values."""
        if not text:
            return text
        if self.kinds & {"ip", "src_ip", "dst_ip"}:
            text = IPV6.sub(lambda m: self.token("ip", m.group(0)) if _is_ipv6(m.group(0)) else m.group(0), text)
            text = IPV4.sub(lambda m: self.token("ip", m.group(0)), text)
        if "user" in self.kinds:
            text = USER.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + self.token("user", m.group(1)), text)
        return text

    def alert(self, alert: dict) -> dict:
        ents = alert.get("entities", {})
        ent = alert["entity"]
        if ent["type"] in self.kinds:
            ents = {**ents, ent["type"]: list(dict.fromkeys([*ents.get(ent["type"], []), ent["value"]]))}
        out = dict(alert)
        out["entities"] = {k: ([self.token(k, v) for v in vs] if k in self.kinds else vs) for k, vs in ents.items()}
        if ent["type"] in self.kinds:
            out["entity"] = {"type": ent["type"], "value": self.token(ent["type"], ent["value"])}
            out["session_id"] = self.text(alert["session_id"], ents)
        out["title"] = self.text(alert["title"], ents)
        out["surprising_events"] = [
            {**e, "raw": self.text(e.get("raw"), ents), "file": e.get("file"), "template": self.text(e.get("template"), ents),
             "expected": [{**x, "template": self.text(x.get("template"), ents)} for x in e.get("expected", [])]}
            for e in alert["surprising_events"]]
        out["pseudonymized"] = sorted(self.kinds)
        return out


def from_config(detect_cfg) -> Pseudonymizer | None:
    if not detect_cfg.pseudonymize:
        return None
    key = os.environ.get(detect_cfg.pseudonym_key_env)
    if not key:
        raise ValueError(f"detect.pseudonymize=true needs a key in the environment variable "
                         f"{detect_cfg.pseudonym_key_env} (at least 16 bytes; keep it secret and stable)")
    return Pseudonymizer(key.encode(), list(detect_cfg.pseudonymize_kinds))
