"""Network flows as log events: canonical flow fields and the flow "sentence" a model reads.

Every flow reader (Zeek conn.log, CICFlowMeter, NetFlow) maps its columns onto :data:`CANONICAL`.  A flow
then becomes one event whose text is a short sentence of field tokens::

    proto=tcp svc=http port=80 state=SF dir=out | dur=3 ob=5 ib=6 op=2 ip=2

categorical fields as they are (well-known destination ports kept exactly up to a budget, other ports as
range classes ``sys``/``reg``/``eph``), and quantile buckets for duration, bytes and packets fitted on the
training flows.  The sentence is the event's template: one flow = one position in the sequence, so flows
and log lines share the vocabulary, the model and the scoring unchanged.  Rare sentences back off: a
training flow whose full sentence occurs fewer than ``min_count`` times is written as its categorical part
(before ``|``), and one whose categorical part is rare too as ``proto=.. dir=..``.  Any later flow is
written as the most specific of its three forms that training wrote (``known``); a flow with none of them
known (say, inbound, when training saw only outbound traffic) is [UNK] to the model.  IP addresses and host names are entities (they key sessions and
appear in alerts), never vocabulary: a model that memorises addresses learns shortcuts.

A flow's token is its most specific known form, so flows that back off share one token whatever their port
or size.  Beside it the model reads the flow's **facets**: each of its ten field tokens (``port=80``,
``dir=in``, ``ob=5``, ...) as its own id (:data:`FACET_FIELDS`, ids fitted on the training flows, 1 = a value
training never saw, 0 = none), embedded and added to the event's vector.  So an inbound flow to port 80 that
training never saw as a whole still tells the model its port, direction and sizes.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# canonical flow fields; readers fill what their format has (missing = None)
CANONICAL = ("ts", "duration", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "service", "state",
             "fwd_bytes", "bwd_bytes", "fwd_pkts", "bwd_pkts", "local_orig", "local_resp", "label")
NUMERIC = ("duration", "fwd_bytes", "bwd_bytes", "fwd_pkts", "bwd_pkts")
SHORT = {"duration": "dur", "fwd_bytes": "ob", "bwd_bytes": "ib", "fwd_pkts": "op", "bwd_pkts": "ip"}
# the field tokens of a flow sentence, in sentence order: one facet id each
FACET_FIELDS = ("proto", "dir", "svc", "port", "state", *(SHORT[n] for n in NUMERIC))
NO_FACET, UNSEEN_FACET = 0, 1  # facet ids 0 (not a flow, padding, a hidden position) and 1 (a value training never saw)


def port_class(port: int | None) -> str:
    if port is None or port < 0:
        return "na"
    return "sys" if port < 1024 else "reg" if port < 49152 else "eph"


@functools.lru_cache(maxsize=1 << 16)
def _is_local(ip: str, networks: tuple) -> bool | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return any(addr.version == net.version and addr in net for net in networks)


def direction(flow: dict, networks: tuple = ()) -> str:
    """out: a local host talks to the outside; in: the outside talks to a local host; int: local to local.

    Local means inside ``networks`` when given; otherwise the sensor's own verdict (Zeek local_orig /
    local_resp), which depends on each sensor's configuration.
    """
    if networks and flow.get("src_ip") and flow.get("dst_ip"):
        lo, lr = _is_local(flow["src_ip"], networks), _is_local(flow["dst_ip"], networks)
    else:
        lo, lr = flow.get("local_orig"), flow.get("local_resp")
    if lo is None and lr is None:
        return "na"
    return {(True, False): "out", (False, True): "in", (True, True): "int", (False, False): "ext"}.get(
        (bool(lo), bool(lr)), "na")


def networks_of(local_networks) -> tuple:
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in local_networks)
    except ValueError as e:
        raise ValueError(f"data.local_networks: {e}") from None


class TrainingFlows:
    """Training flows as the codec fits on them, compactly: each distinct categorical part (proto, direction,
    service, state, destination port) once, and per flow its index and numeric fields (float64, NaN when
    missing): about 48 bytes a flow instead of a dict of about 1 KB, so prepare's driver and the processes
    that count training flows hold flows, not their JSON.  Flow order is kept (the codec's port ranking
    breaks ties by first occurrence)."""

    def __init__(self, local_networks=()):
        from array import array

        self.local_networks = list(local_networks)
        self._networks = networks_of(self.local_networks)
        self.cats: dict[tuple, int] = {}
        self.idx = array("i")
        self.nums = array("d")

    def add(self, flow: dict) -> None:
        cat = (flow.get("proto") or "na", direction(flow, self._networks), flow.get("service") or "-",
               flow.get("state") or "-", flow.get("dst_port"))
        self.idx.append(self.cats.setdefault(cat, len(self.cats)))
        for name in NUMERIC:
            v = flow.get(name)
            self.nums.append(math.nan if v is None else float(v))

    @classmethod
    def of(cls, flows: list[dict], local_networks=()) -> TrainingFlows:
        out = cls(local_networks)
        for f in flows:
            out.add(f)
        return out

    def extend(self, other: TrainingFlows) -> None:
        """Append ``other``'s flows after these (partitions merged in their order)."""
        remap = [self.cats.setdefault(cat, len(self.cats)) for cat in other.cats]
        self.idx.extend(remap[i] for i in other.idx)
        self.nums.extend(other.nums)

    def __len__(self) -> int:
        return len(self.idx)

    def take(self, mask: np.ndarray) -> TrainingFlows:
        """The flows ``mask`` selects (a boolean per flow), in their order."""
        from array import array

        cats, idx, nums = self.arrays()
        out = TrainingFlows(self.local_networks)
        out.cats = dict(self.cats)
        out.idx = array("i", idx[mask].tolist())
        out.nums = array("d", nums[mask].ravel().tolist())
        return out

    def arrays(self) -> tuple[list[tuple], np.ndarray, np.ndarray]:
        """(distinct categorical parts, per-flow index into them, (flows, 5) numeric values)."""
        return (list(self.cats), np.frombuffer(self.idx, np.int32) if len(self.idx) else np.zeros(0, np.int32),
                np.frombuffer(self.nums, np.float64).reshape(-1, len(NUMERIC)) if len(self.nums)
                else np.zeros((0, len(NUMERIC))))


@dataclass
class FlowCodec:
    n_buckets: int = 8
    port_budget: int = 64
    min_count: int = 2
    edges: dict[str, list[float]] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    known: set[str] = field(default_factory=set)  # sentences the training flows were written as
    local_networks: list[str] = field(default_factory=list)  # CIDRs of the monitored network
    # field tokens of the training flows (``port=80``), facet id = 2 + index; empty: the model reads no facets
    facets: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._networks = networks_of(self.local_networks)
        self._facet_id = {f: 2 + i for i, f in enumerate(self.facets)}

    @property
    def n_facets(self) -> int:
        """Size of the facet vocabulary (ids 0 and 1 included); 0 when the codec has no facets."""
        return 2 + len(self.facets) if self.facets else 0

    def fit(self, flows: list[dict] | TrainingFlows, facets: bool = False) -> FlowCodec:
        """Quantile edges, kept ports and frequent sentences (and with ``facets``, every field token), from
        training flows only (dicts, or the compact ``TrainingFlows`` prepare collects)."""
        table = flows if isinstance(flows, TrainingFlows) else TrainingFlows.of(flows, self.local_networks)
        cats, idx, nums = table.arrays()
        self.edges = {}
        for j, name in enumerate(NUMERIC):
            col = nums[:, j]
            values = np.sort(col[~np.isnan(col) & (col > 0)])
            edges: list[float] = []
            if len(values):
                for q in range(1, self.n_buckets - 1):  # bucket 0 is "zero", the rest split positive values
                    edges.append(float(values[min(len(values) - 1, int(q * len(values) / (self.n_buckets - 1)))]))
            self.edges[name] = sorted(set(edges))
        # destination ports below 1024 by count, ties by first occurrence among the flows
        first = {}
        counts: Counter = Counter()
        if len(idx):
            seen, first_at, n = np.unique(idx, return_index=True, return_counts=True)
            for c, at, k in zip(seen.tolist(), first_at.tolist(), n.tolist()):
                port = cats[c][4]
                if port is not None and port < 1024:
                    counts[port] += k
                    first[port] = min(first.get(port, at), at)
        top = sorted(counts, key=lambda p: (-counts[p], first[p]))[: self.port_budget]
        self.ports = sorted(top)
        self.known = self._forms(table)
        self.facets = sorted(self._facets_of(table)) if facets else []
        self._facet_id = {f: 2 + i for i, f in enumerate(self.facets)}
        return self

    def _facets_of(self, table: TrainingFlows) -> set[str]:
        """Every field token among ``table``'s flows."""
        cats, idx, nums = table.arrays()
        out = {tok for c in np.unique(idx).tolist() for tok in self._cat_tokens(cats[c])} if len(idx) else set()
        for j, name in enumerate(NUMERIC):
            col = nums[:, j]
            out |= {f"{SHORT[name]}={self.bucket(name, v)}" for v in np.unique(col[~np.isnan(col)]).tolist()}
            if np.isnan(col).any():
                out.add(f"{SHORT[name]}=na")
        return out

    def _form_counts(self, table: TrainingFlows) -> list[tuple[str, str, str, int]]:
        """(base, categorical part, numeric part, flows) for each distinct form among ``table``'s flows."""
        return self._forms_of(table)[0]

    def _forms_of(self, table: TrainingFlows) -> tuple[list[tuple[str, str, str, int]], np.ndarray]:
        """(``_form_counts``, each flow's index into it)."""
        cats, idx, nums = table.arrays()
        if not len(idx):
            return [], np.zeros(0, np.int64)
        codes = np.empty((len(idx), 1 + len(NUMERIC)), np.int64)
        codes[:, 0] = idx
        for j, name in enumerate(NUMERIC):  # -1: missing, 0: zero or less, k: bucket k (bisect_right + 1)
            col = nums[:, j]
            b = 1 + np.searchsorted(np.asarray(self.edges.get(name, []), np.float64), col, side="right")
            codes[:, 1 + j] = np.where(np.isnan(col), -1, np.where(col <= 0, 0, b))
        rows, inverse, n = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        out = []
        for row, k in zip(rows.tolist(), n.tolist()):
            base, cat = self._categorical(cats[row[0]])
            num = " ".join(f"{SHORT[name]}={'na' if b < 0 else b}" for name, b in zip(NUMERIC, row[1:]))
            out.append((base, cat, num, k))
        return out, np.asarray(inverse).reshape(-1)

    def written(self, flows: TrainingFlows) -> tuple[list[str], np.ndarray]:
        """(the sentence of each distinct form among ``flows``, each flow's index into that list): what
        ``sentence`` gives flow by flow, computed once per form."""
        rows, inverse = self._forms_of(flows)
        out = []
        for base, cat, num, _ in rows:
            full = cat + " | " + num
            out.append(full if full in self.known else cat if cat in self.known else base)
        return out, inverse

    def _forms(self, flows: list[dict] | TrainingFlows) -> set[str]:
        """Each flow's most specific form occurring ``min_count`` times among ``flows``: the full sentence,
        else its categorical part, else ``proto=.. dir=..``."""
        table = flows if isinstance(flows, TrainingFlows) else TrainingFlows.of(flows, self.local_networks)
        rows = self._form_counts(table)
        cat: Counter = Counter()
        full: Counter = Counter()
        for _, c, num, k in rows:
            cat[c] += k
            full[c + " | " + num] += k
        return {c + " | " + num if full[c + " | " + num] >= self.min_count else c if cat[c] >= self.min_count
                else base for base, c, num, _ in rows}

    def sentences(self, flows: TrainingFlows) -> Counter:
        """How many of ``flows`` each sentence writes (what ``sentence`` gives flow by flow)."""
        out: Counter = Counter()
        for (_, _, _, k), sentence in zip(self._form_counts(flows), self.written(flows)[0]):
            out[sentence] += k
        return out

    def grow(self, flows: list[dict] | TrainingFlows) -> set[str]:
        """Make the flows written as none of the known forms known, by ``fit``'s rule; bucket edges, ports and
        known forms stay.  Returns the sentences added (tuning on a new environment's normal traffic)."""
        table = flows if isinstance(flows, TrainingFlows) else TrainingFlows.of(flows, self.local_networks)
        sentences, inverse = self.written(table)
        unknown = np.array([s not in self.known for s in sentences], bool)
        added = self._forms(table.take(unknown[inverse]) if len(inverse) else table) - self.known
        self.known |= added
        return added

    @staticmethod
    def catch_all(sentence: str) -> bool:
        """Whether ``sentence`` is a direction-only form, ``proto=.. dir=..``: what a flow whose service and
        sizes match no known form is written as."""
        parts = sentence.split()
        return len(parts) == 2 and parts[0].startswith("proto=") and parts[1].startswith("dir=")

    def bucket(self, name: str, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "na"
        if value <= 0:
            return "0"
        return str(1 + bisect.bisect_right(self.edges.get(name, []), value))

    def _cat_tokens(self, cat: tuple) -> list[str]:
        """The five categorical field tokens (FACET_FIELDS order) of (proto, direction, service, state, port)."""
        proto, dir_, service, state, port = cat
        port_tok = str(port) if port is not None and port in self._port_set else port_class(port)
        return [f"proto={proto}", f"dir={dir_}", f"svc={service}", f"port={port_tok}", f"state={state}"]

    def _categorical(self, cat: tuple) -> tuple[str, str]:
        """(``proto=.. dir=..``, the categorical part) of (proto, direction, service, state, port)."""
        tokens = self._cat_tokens(cat)
        return " ".join(tokens[:2]), " ".join(tokens)

    def _tokens(self, flow: dict) -> list[str]:
        """The flow's ten field tokens, FACET_FIELDS order: its sentence is their join (with `` | `` after five)."""
        return self._cat_tokens((flow.get("proto") or "na", direction(flow, self._networks),
                                 flow.get("service") or "-", flow.get("state") or "-", flow.get("dst_port"))
                                ) + [f"{SHORT[n]}={self.bucket(n, flow.get(n))}" for n in NUMERIC]

    def _parts(self, flow: dict) -> tuple[str, str, str]:
        tokens = self._tokens(flow)
        return " ".join(tokens[:2]), " ".join(tokens[:5]), " ".join(tokens[5:])

    def sentence(self, flow: dict) -> str:
        base, cat, num = self._parts(flow)
        full = cat + " | " + num
        if full in self.known:
            return full
        return cat if cat in self.known else base

    def facet_ids(self, flow: dict | None) -> list[int]:
        """The flow's facet ids in :data:`FACET_FIELDS` order (all ``NO_FACET`` for a non-flow event)."""
        if flow is None or not self.facets:
            return [NO_FACET] * len(FACET_FIELDS)
        return [self._facet_id.get(tok, UNSEEN_FACET) for tok in self._tokens(flow)]

    @property
    def _port_set(self) -> set[int]:
        cached = getattr(self, "_ports_cached", None)
        if cached is None or cached[0] is not self.ports:
            cached = (self.ports, set(self.ports))
            self._ports_cached = cached
        return cached[1]

    def state(self) -> dict:
        return {"n_buckets": self.n_buckets, "port_budget": self.port_budget, "min_count": self.min_count,
                "edges": self.edges, "ports": self.ports, "known": sorted(self.known),
                "local_networks": self.local_networks, "facets": self.facets}

    @classmethod
    def from_state(cls, d: dict) -> FlowCodec:
        return cls(d["n_buckets"], d["port_budget"], d["min_count"], {k: list(v) for k, v in d["edges"].items()},
                   list(d["ports"]), set(d["known"]), list(d.get("local_networks", [])), list(d.get("facets", [])))


def to_int(value) -> int | None:
    if value is None or value == "" or value == "-":
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        raise ValueError(f"not an integer: {str(value)[:32]!r}") from None


def to_float(value) -> float | None:
    if value is None or value == "" or value == "-":
        return None
    try:
        v = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"not a number: {str(value)[:32]!r}") from None
    return None if math.isnan(v) or math.isinf(v) else v


def to_bool(value) -> bool | None:
    if value in (None, "", "-"):
        return None
    return str(value).strip().lower() in ("t", "true", "1", "yes")


CONVERT = {"ts": to_float, "duration": to_float, "src_port": to_int, "dst_port": to_int,
           "fwd_bytes": to_float, "bwd_bytes": to_float, "fwd_pkts": to_float, "bwd_pkts": to_float,
           "local_orig": to_bool, "local_resp": to_bool}


def canonical_flow(raw: dict[str, str], columns: dict[str, str]) -> dict:
    """Canonical flow from one row: ``columns`` maps canonical name -> the row's column name.

    Raises ValueError naming the column whose value is not what its field needs.
    """
    flow: dict = {}
    for name, col in columns.items():
        value = raw.get(col)
        conv = CONVERT.get(name)
        if conv is None:
            flow[name] = None if value in (None, "", "-", "(empty)") else str(value).strip()
        else:
            try:
                flow[name] = conv(value)
            except ValueError as e:
                raise ValueError(f"column {col!r}: {e}") from None
    if flow.get("proto"):
        flow["proto"] = flow["proto"].lower()
    return flow
