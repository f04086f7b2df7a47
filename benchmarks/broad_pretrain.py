"""Pretrain broadly, adapt locally: one model on more than one network's flows, adapted to a new capture.

    python -m benchmarks.broad_pretrain 008 010 [--root DIR] [--seed S] [--adapt 20,0]

Two source models, trained the same way (`dataset=zeek_ctu` settings, a seeded 90/10 split of every source
session, Benign flows only, threshold from the 10%): **narrow** on the source CTU capture alone, **broad** on
the source capture plus CIC-IDS2017 Monday (59k-flow Parquet in Tempo's ten NetFlow fields, read beside the
Zeek log through `data.sources`; one flow codec and one vocabulary for both networks).  Each is evaluated on
the destination capture's test split (a transfer evaluation: the model's own vocabulary, its own threshold)
and after adaptation (`pipelines.tune` with vocabulary growth on the destination's first k labelled normal
windows before its test split, 0 = all).  Per flow, Background excluded, target FPR 0.01.
Needs ../shared/data/zeek_ctu_conn and ../shared/data/cic2017_flowprep.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.zeek_transfer import CAPTURES, normal_windows, print_rows
from loglm.config import PROJECT_ROOT, compose

SHARED = PROJECT_ROOT.parent / "shared" / "data"
CIC = SHARED / "cic2017_flowprep" / "cic2017_mon_wed.parquet"
# how the CIC Parquet is read: conf/data/cic_flowprep.yaml's reader settings
CIC_SOURCE = {"match": "*.parquet", "format": "netflow", "time_format": "iso",
              "fields": {"ts": "timestamp", "duration": "flow_dur", "dst_ip": "dest_ip", "dst_port": "dest_port",
                         "fwd_pkts": "total_fwd_pkts", "bwd_pkts": "total_bwd_pkts", "label": "attack_type_inferred"}}


def cic_monday(out: Path) -> int:
    """CIC-IDS2017 Monday (all benign) as its own Parquet file."""
    import datetime

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(CIC)
    t = t.filter(pc.less(t.column("timestamp"), pc.cast(datetime.datetime(2017, 7, 4), t.column("timestamp").type)))
    pq.write_table(t, out)
    return t.num_rows


def main(argv: list[str] | None = None) -> dict:
    from loglm.analyst.tune import run as tune
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", choices=sorted(CAPTURES))
    p.add_argument("destination", choices=sorted(CAPTURES))
    p.add_argument("--root", help="runs folder (default: a new temporary one)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--adapt", default="20,0", help="comma-separated k normal windows of the destination (0 = all)")
    p.add_argument("--adapt-epochs", type=int, default=20)
    a = p.parse_args(argv)
    zeek = SHARED / "zeek_ctu_conn"
    root = Path(a.root or tempfile.mkdtemp(prefix="loglm-broad-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = ["dataset=zeek_ctu", f"paths.root={root}", "trainer.progress_bar=false", "suite.enabled=false",
            f"trainer.seed={a.seed}", "data.split.method=seeded", "data.split.train_frac=0.9",
            "data.split.val_frac=0.1"]
    monday = root / "cic_monday.parquet"
    n_monday = cic_monday(monday)
    narrow = compose("evaluate", base + [f"data.name=narrow_{a.source}", f"data.inputs=[{zeek / CAPTURES[a.source]}]"])
    broad = compose("evaluate", base + [f"data.name=broad_{a.source}_cic_monday",
                                        f"data.inputs=[{zeek / CAPTURES[a.source]},{monday}]",
                                        "data.local_networks=[147.32.0.0/16,192.168.10.0/24]"])
    broad = replace(broad, data=replace(broad.data, sources=[CIC_SOURCE]))
    dst = compose("evaluate", ["dataset=zeek_ctu", f"paths.root={root}", "trainer.progress_bar=false",
                               "suite.enabled=false", f"trainer.seed={a.seed}", f"data.name=zeek_{a.destination}",
                               "data.split.method=chronological_events",  # the split zeek_transfer uses
                               f"data.inputs=[{zeek / CAPTURES[a.destination]}]"])
    prepare(dst)
    rows: dict[str, dict] = {}
    info: dict[str, dict] = {"cic_monday_flows": n_monday}
    for name, cfg in (("narrow", narrow), ("broad", broad)):
        prep = prepare(cfg)
        model = pretrain(cfg)
        vocab = json.loads((Path(model["model_dir"]) / "vocab.json").read_text())
        info[name] = {"sessions_by_split": prep.get("sessions_by_split"), "vocab_size": 5 + len(vocab["template_ids"]),
                      "validation_items": model["calibration"]["n_val_sessions"]}
        rows[f"{name}, source threshold"] = evaluate(replace(dst, ckpt=model["model_dir"]))
        for k in (int(x) for x in a.adapt.split(",") if x.strip()):
            sample = root / f"{a.destination}_normal_{k or 'all'}.log"
            took = normal_windows(zeek / CAPTURES[a.destination], sample, k)
            tuned = tune(replace(dst, ckpt=model["model_dir"], inputs=[str(sample)],
                                 tune=replace(dst.tune, export=False, grow_vocab=True, max_epochs=a.adapt_epochs)))
            key = f"{name}, adapted on {took['windows']} normal windows ({took['flows']} flows)"
            rows[key] = evaluate(replace(dst, ckpt=tuned["model_dir"]))
            info[key] = {"new_tokens": (tuned["vocab_growth"] or {}).get("new_tokens"),
                         "validation_items": tuned["validation_items"]}
    out = {"source": a.source, "destination": a.destination, "seed": a.seed, "root": str(root), "info": info,
           "results": print_rows(f"{a.source} (+ CIC Monday) -> {a.destination}", rows,
                                 {k: {"new tokens": v["new_tokens"]} for k, v in info.items()
                                  if isinstance(v, dict) and "new_tokens" in v})}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
