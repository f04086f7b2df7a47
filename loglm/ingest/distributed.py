"""Ingest on Ray Data: the per-line work (decode, header parse, masking, entity extraction) runs as
parallel tasks over byte ranges of the inputs; template mining, sessions and shards stay in order on the
driver, so ``backend=ray`` produces exactly the token ids and sessions of ``backend=local``.

Why this split: reading and masking are stateless and take most of the time (regular expressions); a
template's id depends on the order in which messages are first seen, so mining must see the lines in input
order, and it is cheap (an exact-text cache answers almost every line).  Ray Data keeps the task outputs
in input order (``preserve_order``), streams them back, and spreads the tasks over every node of the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from loglm.ingest.readers import (
    FLOW_FORMATS,
    UNREADABLE,
    LineAccount,
    Rejection,
    bounded_lines,
    cr_terminated,
    expand_inputs,
    make_reader,
    open_binary,
    parse_line_safely,
    unreadable,
)
from loglm.ingest.sessions import Events, sessionize

META, RECORD, REJECT = 0, 1, 2


def plan_tasks(paths: list[Path], fmt: str, lines_per_task: int) -> list[dict]:
    """Byte ranges of ``lines_per_task`` lines per plain file; a compressed or Parquet file is one task."""
    tasks = []
    for path in paths:
        kind = "parquet" if path.suffix == ".parquet" else "lines"
        if kind == "parquet" or path.suffix == ".gz" or cr_terminated(path):  # CR-terminated: one task
            tasks.append({"kind": kind, "path": os.fspath(path), "start": 0, "end": -1, "first_line": 1, "prime": 0})
            continue
        prime = _leading_metadata(path, fmt)
        start, line_no, count, pos = 0, 1, 0, 0
        with open(path, "rb") as fh:
            while True:
                block = fh.read(1 << 23)
                if not block:
                    break
                i = 0
                while True:
                    j = block.find(b"\n", i)
                    if j < 0:
                        break
                    count += 1
                    i = j + 1
                    if count == lines_per_task:
                        end = pos + i
                        tasks.append({"kind": kind, "path": os.fspath(path), "start": start, "end": end,
                                      "first_line": line_no, "prime": prime if start else 0})
                        start, line_no, count = end, line_no + lines_per_task, 0
                pos += len(block)
        if pos > start:
            tasks.append({"kind": kind, "path": os.fspath(path), "start": start, "end": pos, "first_line": line_no,
                          "prime": prime if start else 0})
    return tasks


def _leading_metadata(path: Path, fmt: str) -> int:
    """Lines at the top of a structured file that later ranges need to be read right (headers)."""
    if fmt == "zeek":
        n = 0
        with open(path, "rb") as fh:
            for line in fh:
                if not line.startswith(b"#"):
                    break
                n += 1
        return n
    return 1 if fmt in ("cicflowmeter", "netflow") else 0


def _lines(task: dict, max_line_bytes: int):
    """(line number, raw bytes) of a task's range, read line by line with bounded memory as the local reader
    does (:func:`bounded_lines`); a whole (gzip) file that turns out damaged ends with (line number,
    exception), which becomes the same rejection the local reader gives."""
    if task["end"] < 0:
        n = 0
        try:
            path = Path(task["path"])
            cr = cr_terminated(path)
            with open_binary(path) as fh:
                for n, raw in enumerate(bounded_lines(fh, max_line_bytes, cr), start=1):
                    yield n, raw
        except UNREADABLE as e:
            yield n + 1, e
        return
    with open(task["path"], "rb") as fh:
        fh.seek(task["start"])
        n = task["first_line"]
        for raw in bounded_lines(fh, max_line_bytes):
            yield n, raw
            n += 1
            if fh.tell() >= task["end"]:  # ranges end at a line end
                return


def parse_tasks(batch: dict, data: dict, mask: bool) -> dict:
    """A Ray Data map_batches function: every input line of the batch's tasks as one output row."""
    from loglm.config import data_config_from_dict
    from loglm.ingest.prepare import event_parts

    cfg = data_config_from_dict(data)
    out: dict[str, list] = {k: [] for k in ("kind", "source", "line_no", "ts", "masked", "raw", "entities",
                                            "label", "fields", "reason")}

    def emit(kind, source, line_no, ts=0.0, masked="", raw="", ents="", label=None, fields=None, reason=""):
        for k, v in zip(out, (kind, source, line_no, ts, masked, raw, ents, label, fields, reason)):
            out[k].append(v)

    for i in range(len(batch["path"])):
        task = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
        reader = make_reader(cfg)
        source = task["path"]
        if task["kind"] == "parquet":
            acct = LineAccount()
            items = ((it.line_no, it) for it in reader.read(Path(source), acct))
        else:
            if task["prime"]:  # headers from the top of the file set how this range is read
                with open(source, "rb") as fh:
                    for n in range(1, task["prime"] + 1):
                        parse_line_safely(reader.parse_line, fh.readline(), source, n)
            items = ((n, unreadable(source, n - 1, raw) if isinstance(raw, BaseException)
                      else parse_line_safely(reader.parse_line, raw, source, n)) for n, raw in _lines(task, cfg.max_line_bytes))
        for line_no, item in items:
            if item is None:
                emit(META, source, line_no)
            elif isinstance(item, Rejection):
                emit(REJECT, source, line_no, reason=item.reason)
            else:
                masked, ents = event_parts(item, mask)
                emit(RECORD, source, line_no, item.ts, masked if masked is not None else "", item.raw,
                     json.dumps(ents), item.label, None if item.fields is None else json.dumps(item.fields),
                     "" if masked is not None else "flow")
    return out


def parse_inputs_ray(inputs: list[str], data, miner, mask: bool, ray_cfg):
    """The Ray Data twin of :func:`loglm.ingest.prepare.parse_inputs` (training side: the miner learns)."""
    from loglm.ingest.prepare import Parsed
    from loglm.ray_cluster import ray_session

    tasks = plan_tasks(expand_inputs(inputs), data.format, ray_cfg.lines_per_task)
    flows = data.format in FLOW_FORMATS
    account = LineAccount()
    rejections: list[tuple[str, int, str]] = []
    ev = Events()
    with ray_session(ray_cfg) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # template ids depend on input order
        ds = ray.data.from_items(tasks).map_batches(
            parse_tasks, batch_size=1, fn_kwargs={"data": dataclasses.asdict(data), "mask": mask})
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            cols = {name: batch.column(name).to_pylist() for name in batch.column_names}
            for r in range(batch.num_rows):
                account.read += 1
                kind = cols["kind"][r]
                if kind == META:
                    account.metadata += 1
                    continue
                source, line_no = cols["source"][r], cols["line_no"][r]
                if kind == REJECT:
                    account.reject(cols["reason"][r])
                    rejections.append((source, line_no, cols["reason"][r]))
                    continue
                account.accepted += 1
                masked = cols["masked"][r]
                ev.source.append(source)
                ev.line_no.append(line_no)
                ev.ts.append(cols["ts"][r])
                ev.template.append(-1 if flows else miner.add(masked))
                ev.masked.append(masked)
                ev.raw.append(cols["raw"][r])
                ev.entities.append(json.loads(cols["entities"][r]))
                ev.label.append(cols["label"][r])
                ev.fields.append(None if cols["fields"][r] is None else json.loads(cols["fields"][r]))
    sessions = sessionize(ev, data.session, account, rejections)
    return Parsed(ev, account, rejections, sessions)
