"""Typed parameters inside a log message: found, masked for template mining, kept as entities."""

from __future__ import annotations

import re

from loglm.ingest.cache import BoundedCache

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
# Other parameters are only masked.
MASK_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("uuid", re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")),
    ("path", re.compile(r"(?<![\w])(?:/[\w.\-]+)+/?")),
    ("hex", re.compile(r"\b0x[0-9a-fA-F]+\b")),
    ("num", re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")),
]
PARAM_PATTERNS = ENTITY_PATTERNS + MASK_PATTERNS
ENTITY_KINDS = {kind for kind, _ in ENTITY_PATTERNS}
_ENTITY_OR_USER = frozenset(ENTITY_KINDS | {"user"})
_USER = re.compile(r"\b(?:user|uid|for user|by user)[=: ]\s*([A-Za-z_][\w.\-]{0,31})", re.IGNORECASE)
# one pass, first matching kind wins at each position (the order above)
_PARAMS = re.compile("|".join(f"(?P<{name}>{pat.pattern})" for name, pat in PARAM_PATTERNS))

# Every pattern treats all digits alike, so where a message's parameters are depends only on its *shape*
# (digits 1-9 written as 0: same length, same offsets).  Shapes repeat far more than messages, so the
# regular expressions run once per shape; the masked text is then cut from the message itself.
_ZERO = str.maketrans("123456789", "000000000")
_ZERO_BYTES = bytes.maketrans(b"123456789", b"000000000")  # the same on ASCII text, 15x faster
# shape -> (segments (start, end, placeholder or None for the message's own text), entity spans, whether
# the message mentions a user or uid, the masked text when no digit lies outside the parameters, else None)
Layout = tuple[tuple[tuple[int, int, str | None], ...], tuple[tuple[str, int, int], ...], bool, str | None]
# bounded by key bytes: shapes of ordinary lines repeat, a flood of unique long lines does not
_layouts: BoundedCache = BoundedCache(32 << 20, 1024)


_TOKEN = re.compile(r"\S+")
_PARAM_CHARS = frozenset("0123456789./-")  # a token with none of these cannot hold any parameter
_token_spans: BoundedCache = BoundedCache(8 << 20, 256)


def _layout(shape: str) -> Layout:
    # No pattern spans whitespace and a token's edge looks to every pattern like the space around it, so
    # the patterns run per distinct token shape (tokens repeat across lines far more than whole lines).
    spans: list[tuple[str, int, int]] = []
    for m in _TOKEN.finditer(shape):
        token = m.group(0)
        if _PARAM_CHARS.isdisjoint(token) and token.isascii():  # a regex \d also matches non-ASCII digits
            continue
        hit = _token_spans.get(token)
        if hit is None:
            hit = tuple((t.lastgroup or "num", t.start(), t.end()) for t in _PARAMS.finditer(token))
            _token_spans.put(token, hit)
        base = m.start()
        spans.extend((kind, base + a, base + b) for kind, a, b in hit)
    segments: list[tuple[int, int, str | None]] = []
    entities: list[tuple[str, int, int]] = []
    pos = 0
    for kind, a, b in spans:
        if a > pos:
            segments.append((pos, a, None))
        segments.append((a, b, f"<{kind}>"))
        if kind in ENTITY_KINDS:
            entities.append((kind, a, b))
        pos = b
    if pos < len(shape):
        segments.append((pos, len(shape), None))
    lowered = shape.lower()  # digits aside, the shape is the message: the same words
    # a message whose text between parameters holds no digit is masked the same way whatever its parameters:
    # its masked text is the shape's, computed here once (most lines: HDFS, flows' log companions)
    if all(ph is not None or "0" not in shape[a:b] for a, b, ph in segments):
        const: str | None = "".join([shape[a:b] if ph is None else ph for a, b, ph in segments])
    else:
        const = None
    return tuple(segments), tuple(entities), "user" in lowered or "uid" in lowered, const


def layout_of(content: str) -> Layout:
    """The cached layout of ``content``'s shape: where its parameters are, which are entities, whether it
    may name a user, and its masked text when that does not depend on the digits (see ``_ZERO``)."""
    if content.isascii():  # offsets in bytes are offsets in characters
        key: str | bytes = content.encode("ascii").translate(_ZERO_BYTES)
    else:
        key = content.translate(_ZERO)
    layout = _layouts.get(key)
    if layout is None:
        layout = _layout(key.decode("ascii") if isinstance(key, bytes) else key)
        _layouts.put(key, layout)
    return layout


def mask_params(content: str) -> tuple[str, dict[str, list[str]]]:
    """Replace typed parameters by ``<kind>`` placeholders; return the masked text and the entity values.

    Entity values (block ids, IPs, host names, users) are returned per kind in order of appearance; other
    parameters (uuids, paths, hex, numbers) are only masked.  This is the hot path of ingest: the
    regular expressions run once per distinct message shape (see ``_ZERO``).
    """
    return apply_layout(content, layout_of(content))


def apply_layout(content: str, layout: Layout) -> tuple[str, dict[str, list[str]]]:
    """:func:`mask_params` of ``content`` given its shape's layout (a caller that already knows the shape)."""
    segments, spans, has_user, const = layout
    if const is not None:
        masked = const
    elif len(segments) == 1 and segments[0][2] is None:
        masked = content
    else:
        masked = "".join([content[a:b] if ph is None else ph for a, b, ph in segments])
    found: dict[str, list[str]] = {}
    for kind, a, b in spans:
        value = content[a:b]
        if kind in ("ip", "hostname"):  # without a leading slash or a port
            value = value.lstrip("/").split(":")[0]
        values = found.get(kind)
        if values is None:
            found[kind] = [value]
        else:
            values.append(value)
    if has_user:
        user = _USER.search(content)
        if user:
            found.setdefault("user", []).append(user.group(1))
    return masked, found


def entities_of(params: dict[str, list[str]]) -> dict[str, list[str]]:
    """Distinct entity values per kind, in order of appearance."""
    out: dict[str, list[str]] = {}
    for kind, values in params.items():
        if kind in _ENTITY_OR_USER:
            out[kind] = values if len(values) == 1 else list(dict.fromkeys(values))
    return out
