"""Keyed pseudonymisation of entity values (IPs, users, hosts) in alerts and score files.

HMAC-SHA256 with a deployment key from an environment variable: the same value always maps to the same
pseudonym within a deployment (analysts can still correlate), and without the key nobody can test a guess.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re


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
        """Replace every occurrence of the given entity values in free text (raw lines, titles)."""
        if not text:
            return text
        pairs = sorted(((v, self.token(k, v)) for k, vs in values.items() if k in self.kinds for v in vs),
                       key=lambda p: -len(p[0]))
        for value, token in pairs:
            text = re.sub(rf"(?<![\w.]){re.escape(value)}(?![\w])", token, text)
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
        out["surprising_events"] = [{**e, "raw": self.text(e.get("raw"), ents), "file": e.get("file")}
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
