"""Typed parameters inside a log message: found, masked for template mining, kept as entities."""

from __future__ import annotations

import re

# Order matters: more specific patterns first, so a block id is never read as a number.
PARAM_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("block_id", re.compile(r"blk_-?\d+")),
    ("ip", re.compile(r"(?<![\w.])/?(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")),
    ("path", re.compile(r"(?<![\w])(?:/[\w.\-]+)+/?")),
    ("hex", re.compile(r"\b0x[0-9a-fA-F]+\b")),
    ("num", re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")),
]
# Entity kinds are the typed parameters an analyst pivots on.
ENTITY_KINDS = {"block_id", "ip"}
_USER = re.compile(r"\b(?:user|uid|for user|by user)[=: ]\s*([A-Za-z_][\w.\-]{0,31})", re.IGNORECASE)
_COMBINED = re.compile("|".join(f"(?P<{name}>{pat.pattern})" for name, pat in PARAM_PATTERNS))


def mask_params(content: str) -> tuple[str, dict[str, list[str]]]:
    """Replace typed parameters by ``<kind>`` placeholders; return the masked text and the values."""
    found: dict[str, list[str]] = {}

    def repl(m: re.Match[str]) -> str:
        kind = m.lastgroup or "num"
        value = m.group(0)
        if kind == "ip":
            value = value.lstrip("/").split(":")[0]
        found.setdefault(kind, []).append(value)
        return f"<{kind}>"

    masked = _COMBINED.sub(repl, content)
    user = _USER.search(content)
    if user:
        found.setdefault("user", []).append(user.group(1))
    return masked, found


def entities_of(params: dict[str, list[str]]) -> dict[str, list[str]]:
    """Distinct entity values per kind, in order of appearance."""
    out: dict[str, list[str]] = {}
    for kind, values in params.items():
        if kind in ENTITY_KINDS or kind == "user":
            out[kind] = list(dict.fromkeys(values))
    return out
