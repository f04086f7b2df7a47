"""Template mining: group log messages into event templates (a Drain-style fixed-depth miner).

Messages are first masked (typed parameters become ``<kind>``), then grouped by token count and first
token; within a group a message joins the most similar template when at least ``sim_threshold`` of its
tokens agree, and differing positions become ``<*>``.  Template ids are assigned in order of first
appearance and never change, so a miner continued on new data keeps old ids stable.  An exact-text cache
makes repeated messages (the bulk of any log) a dictionary lookup.

A message may carry a **namespace**: the program that wrote it (syslog's ``sshd`` in ``sshd[42]: ...``,
``data.event_fields``), written ``<program>\x1f<message>`` (:func:`with_namespace`).  It is the message's first
token, must be equal for two messages to share a template (it is part of the group key, beside the message's
own first token, and never becomes ``<*>``) and carries no weight in the similarity, so within one program
messages group exactly as they would without it.  "Session opened for user root" from ``su`` and from
``sshd`` are then two events, and a program that never wrote on a host before is an unseen event.  Shown as
``sshd: <message>`` (:func:`shown`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loglm.ingest.cache import BoundedCache

WILDCARD = "<*>"
FLOW_SENTENCE_START = "proto="  # loglm.ingest.flows writes every flow sentence starting so
FIELD_SENTENCE_START = "fields:"  # loglm.ingest.json_lines writes every field sentence (data.message_fields) so
EXACT_STARTS = (FLOW_SENTENCE_START, FIELD_SENTENCE_START)
NAMESPACE_END = "\x1f"  # ends a message's namespace (ASCII unit separator; removed from the text it prefixes)


def with_namespace(namespace: str | None, masked: str) -> str:
    """``masked`` prefixed by its namespace (a program name; whitespace in it becomes ``_``), or as it is
    when there is none.  The caller removes ``NAMESPACE_END`` from ``masked`` first (:func:`clean`)."""
    if not namespace:
        return masked
    return "_".join(namespace.replace(NAMESPACE_END, " ").split()) + NAMESPACE_END + masked


_PID = re.compile(r"\[[^\[\]]*\]$")


def namespace_of(values) -> str | None:
    """A record's namespace from the values of its program fields (``data.event_fields``): ``-`` (RFC 5424's
    nil) and empty ones left out, a trailing ``[pid]`` dropped (the syslog presets, and a header of one's own,
    read ``sshd[1001]`` as the program field: every process would otherwise be a program of its own); several
    are joined by ``/``; None when nothing is left."""
    parts = [_PID.sub("", v) for v in values if v and v != "-"]
    parts = [v for v in parts if v]
    return "/".join(parts) if parts else None


def clean(text: str) -> str:
    """``text`` without the namespace separator (a line that holds one reads it as a space)."""
    return text.replace(NAMESPACE_END, " ") if NAMESPACE_END in text else text


def shown(masked: str) -> str:
    """A message as people read it: ``sshd: Accepted ...`` for ``sshd\x1fAccepted ...``."""
    return masked.replace(NAMESPACE_END, ": ", 1) if NAMESPACE_END in masked else masked


def namespace_in(masked: str) -> str | None:
    """The namespace (program) a message carries, or None."""
    return masked.partition(NAMESPACE_END)[0] if NAMESPACE_END in masked else None


def tokens_of(masked: str) -> list[str]:
    """A message's tokens; a namespace is the first, kept with its ``NAMESPACE_END``."""
    if NAMESPACE_END not in masked:
        return masked.split()
    namespace, _, body = masked.partition(NAMESPACE_END)
    return [namespace + NAMESPACE_END, *body.split()]


@dataclass
class Template:
    id: int
    tokens: list[str]
    count: int = 0

    @property
    def text(self) -> str:
        if self.tokens and self.tokens[0].endswith(NAMESPACE_END):
            return self.tokens[0][:-1] + ": " + " ".join(self.tokens[1:])
        return " ".join(self.tokens)


class TemplateMiner:
    def __init__(self, sim_threshold: float = 0.4, max_templates: int = 10_000):
        self.sim_threshold = sim_threshold
        self.max_templates = max_templates
        self.templates: list[Template] = []
        self._groups: dict[tuple[int, str], list[int]] = {}
        # masked message -> template id, bounded by key bytes (a flood of unique lines cannot grow them)
        self._cache: BoundedCache = BoundedCache(64 << 20, 1024)
        self._match_cache: BoundedCache = BoundedCache(64 << 20, 1024)

    @staticmethod
    def _group_key(tokens: list[str]) -> tuple:
        namespace = tokens[0] if tokens and tokens[0].endswith(NAMESPACE_END) else None
        first = tokens[1 if namespace else 0] if len(tokens) > (1 if namespace else 0) else ""
        if any(c.isdigit() for c in first) or first.startswith("<"):
            first = WILDCARD
        return (len(tokens), first) if namespace is None else (len(tokens), namespace, first)

    @staticmethod
    def _similarity(template: list[str], tokens: list[str]) -> float:
        """Share of the message's constant tokens the template has at the same place.

        Wildcards and masked parameters (``<ip>``, ``<num>``, ...) carry no evidence either way: two
        messages that agree only on their parameters are not the same event.
        """
        same = constant = 0
        for t, s in zip(template, tokens):
            if ("<" in s and ">" in s) or s.endswith(NAMESPACE_END):  # the namespace: equal by the group key
                continue
            constant += 1
            if t == s:
                same += 1
        if not constant:  # a message of parameters only joins a template of exactly those parameters
            return float(all(t == s for t, s in zip(template, tokens)))
        return same / constant

    def _best(self, tokens: list[str]) -> tuple[int | None, float]:
        best, best_sim = None, -1.0
        for tid in self._groups.get(self._group_key(tokens), ()):
            sim = self._similarity(self.templates[tid].tokens, tokens)
            if sim > best_sim:
                best, best_sim = tid, sim
        return best, best_sim

    def add(self, masked: str) -> int:
        """Assign a template to a masked message, creating or generalising one as needed."""
        tid = self._cache.get(masked)
        if tid is not None:
            self.templates[tid].count += 1
            return tid
        tokens = tokens_of(masked)
        best, sim = self._best(tokens)
        # a flow or field sentence is its own template, never generalised (corpora that mix log lines and flows)
        need = 1.0 if tokens and tokens[0].startswith(EXACT_STARTS) else self.sim_threshold
        if best is not None and sim >= need:
            tpl = self.templates[best]
            tpl.tokens = [t if t == s else WILDCARD for t, s in zip(tpl.tokens, tokens)]
            tid = best
        else:
            if len(self.templates) >= self.max_templates:
                raise OverflowError(
                    f"template limit reached ({self.max_templates}); raise tokenizer.max_templates or "
                    "check the input format (a wrong header format makes every line a new template)")
            tid = len(self.templates)
            self.templates.append(Template(tid, tokens))
            self._groups.setdefault(self._group_key(tokens), []).append(tid)
        self.templates[tid].count += 1
        self._cache.put(masked, tid)
        self._match_cache.clear()  # a template may have been generalised: earlier match answers are stale
        return tid

    def match(self, masked: str) -> int | None:
        """Template of a message without changing the miner (detection time); None when unseen."""
        tid = self._cache.get(masked)
        if tid is not None:
            return tid
        if masked in self._match_cache:  # templates never change while matching: answers can be kept
            return self._match_cache[masked]
        tokens = tokens_of(masked)
        best, _ = self._best(tokens)
        found = None
        if best is not None and all(t == s or t == WILDCARD for t, s in zip(self.templates[best].tokens, tokens)):
            found = best
        self._match_cache.put(masked, found)
        return found

    def append(self, other: TemplateMiner) -> dict[int, int]:
        """Add ``other``'s templates after this miner's own, as new ids (``other`` id -> new id).

        Existing templates are left exactly as they are (never generalised by the new messages), so a
        model's tokens keep their meaning when a vocabulary grows (tuning on a new environment's traffic).
        """
        if len(self.templates) + len(other.templates) > self.max_templates:
            raise OverflowError(f"template limit reached ({self.max_templates}) while adding "
                                f"{len(other.templates)} templates; raise tokenizer.max_templates")
        ids: dict[int, int] = {}
        for tpl in other.templates:
            tid = len(self.templates)
            self.templates.append(Template(tid, list(tpl.tokens), tpl.count))
            self._groups.setdefault(self._group_key(tpl.tokens), []).append(tid)
            ids[tpl.id] = tid
        self._match_cache.clear()
        return ids

    def state(self) -> dict:
        return {"sim_threshold": self.sim_threshold, "max_templates": self.max_templates,
                "templates": [{"id": t.id, "tokens": t.tokens, "count": t.count} for t in self.templates]}

    @classmethod
    def from_state(cls, state: dict) -> TemplateMiner:
        miner = cls(state["sim_threshold"], state["max_templates"])
        for item in state["templates"]:
            tpl = Template(item["id"], list(item["tokens"]), item["count"])
            assert tpl.id == len(miner.templates), "template ids must be dense and ordered"
            miner.templates.append(tpl)
            miner._groups.setdefault(cls._group_key(tpl.tokens), []).append(tpl.id)
        return miner
