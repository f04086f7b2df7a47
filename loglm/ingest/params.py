"""Typed parameters inside a log message: found, masked for template mining, kept as entities."""

from __future__ import annotations

import re

# Entities are the typed parameters an analyst pivots on: their values are kept.  Order matters: more
# specific patterns first, so a block id is never read as a number.
ENTITY_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("block_id", re.compile(r"blk_-?\d+")),
    ("ip", re.compile(r"(?<![\w.])/?(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")),
    # host names: dotted names with a port, or ending in a common top-level domain (so Java class names
    # such as org.apache.Foo stay text)
    ("hostname", re.compile(r"(?<![\w.\-/])(?:[A-Za-z0-9\-]+\.)+(?:[A-Za-z][A-Za-z0-9\-]*:\d{1,5}|"
                            r"(?:com|net|org|edu|gov|mil|int|io|hk|cn|uk|de|jp|ru|fr|local|lan|internal|arpa)"
                            r"(?::\d{1,5})?)(?![\w.\-])")),
]
# Other parameters are only masked, one pattern after the other (placeholders hold no digits, so a later
# pattern never rewrites an earlier placeholder).
MASK_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("uuid", re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")),
    ("path", re.compile(r"(?<![\w])(?:/[\w.\-]+)+/?")),
    ("hex", re.compile(r"\b0x[0-9a-fA-F]+\b")),
    ("num", re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")),
]
PARAM_PATTERNS = ENTITY_PATTERNS + MASK_PATTERNS
ENTITY_KINDS = {kind for kind, _ in ENTITY_PATTERNS}
_USER = re.compile(r"\b(?:user|uid|for user|by user)[=: ]\s*([A-Za-z_][\w.\-]{0,31})", re.IGNORECASE)
_ENTITIES = re.compile("|".join(f"(?P<{name}>{pat.pattern})" for name, pat in ENTITY_PATTERNS))
_MASKS = [(pat, f"<{kind}>") for kind, pat in MASK_PATTERNS]
# Every pattern treats all digits alike, so a message's masking depends only on its *shape* (digits 1-9
# written as 0, same length, same offsets): shapes repeat far more than messages and are cached.
_ZERO = str.maketrans("123456789", "000000000")
_TOKEN = re.compile(r"\S+")
_CACHE_LIMIT = 100_000
_line_cache: dict[str, tuple[str, tuple[tuple[str, int, int], ...]]] = {}
_token_cache: dict[str, tuple[str, tuple[tuple[str, int, int], ...]]] = {}
Masked = tuple[str, tuple[tuple[str, int, int], ...]]


def _mask_token_shape(token: str) -> Masked:
    spans: list[tuple[str, int, int]] = []

    def keep(m: re.Match[str]) -> str:
        kind = m.lastgroup or "num"
        spans.append((kind, m.start(), m.end()))
        return f"<{kind}>"

    masked = _ENTITIES.sub(keep, token)
    for pat, placeholder in _MASKS:
        masked = pat.sub(placeholder, masked)
    return masked, tuple(spans)


def _mask_line_shape(shape: str) -> Masked:
    # No pattern spans whitespace (and a token edge looks to the patterns like a space), so a line is
    # masked token by token; runs of whitespace become one space (the miner splits on whitespace anyway).
    out: list[str] = []
    spans: list[tuple[str, int, int]] = []
    for m in _TOKEN.finditer(shape):
        token = m.group(0)
        hit = _token_cache.get(token)
        if hit is None:
            hit = _mask_token_shape(token)
            if len(_token_cache) >= _CACHE_LIMIT:
                _token_cache.clear()
            _token_cache[token] = hit
        out.append(hit[0])
        base = m.start()
        spans.extend((kind, base + a, base + b) for kind, a, b in hit[1])
    return " ".join(out), tuple(spans)


def mask_params(content: str) -> tuple[str, dict[str, list[str]]]:
    """Replace typed parameters by ``<kind>`` placeholders; return the masked text and the entity values.

    Entity values (block ids, IPs, host names, users) are returned per kind in order of appearance; other
    parameters (uuids, paths, hex, numbers) are only masked.  The regular expressions run once per distinct
    message shape (see ``_ZERO``): this is the hot path of ingest.
    """
    shape = content.translate(_ZERO)
    hit = _line_cache.get(shape)
    if hit is None:
        hit = _mask_line_shape(shape)
        if len(_line_cache) >= _CACHE_LIMIT:
            _line_cache.clear()
        _line_cache[shape] = hit
    masked, spans = hit
    found: dict[str, list[str]] = {}
    for kind, a, b in spans:
        value = content[a:b]
        if kind in ("ip", "hostname"):
            value = value.lstrip("/").split(":")[0]
        found.setdefault(kind, []).append(value)
    lowered = content.lower()
    if "user" in lowered or "uid" in lowered:
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
