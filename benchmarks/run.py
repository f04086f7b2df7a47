"""`make bench`: throughput figures, written to reports/bench.json and reports/bench.md.

Each section adds one key to bench.json.  Uses ../shared/data when present (the larger real samples),
otherwise the data the repo ships.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
REPORTS = ROOT / "reports"


def hdfs_input() -> Path:
    shared = SHARED / "hdfs_loghub_blocks" / "HDFS_20000.log"
    return shared if shared.is_file() else ROOT / "data" / "hdfs_sample" / "HDFS_20000.log.gz"


def _contents(path: Path, preset: str) -> list[str]:
    from loglm.ingest.formats import PRESETS
    from loglm.ingest.raw_text import RawTextReader
    from loglm.ingest.readers import LineAccount, Record

    return [r.content for r in RawTextReader(PRESETS[preset]).read(path, LineAccount()) if isinstance(r, Record)]


def _mine_ours(contents: list[str]) -> tuple[float, list[int], int]:
    """Mask + mine every message with a fresh miner and a cold masking cache; (seconds, ids, templates)."""
    from loglm.ingest import params
    from loglm.ingest.templates import TemplateMiner

    params._layouts.clear()
    params._token_spans.clear()
    miner = TemplateMiner()
    mask = params.mask_params
    t0 = time.perf_counter()
    ids = [miner.add(mask(c)[0]) for c in contents]
    return time.perf_counter() - t0, ids, len(miner.templates)


def _mine_drain3(contents: list[str], masking: bool = True) -> tuple[float, list[int], int]:
    from benchmarks.peers import drain3_miner

    miner = drain3_miner(masking)
    t0 = time.perf_counter()
    ids = [miner.add_log_message(c)["cluster_id"] for c in contents]
    return time.perf_counter() - t0, ids, len(miner.drain.clusters)


def _mine_drain3_our_masking(contents: list[str]) -> tuple[float, list[int], int]:
    """Drain3 uncapped, mining the messages as our masking rules write them (its own masking off), our masking
    timed in (cold cache): the same work as ``_mine_ours`` with Drain3's tree in place of our miner."""
    from benchmarks.peers import drain3_miner
    from loglm.ingest import params

    params._layouts.clear()
    params._token_spans.clear()
    miner = drain3_miner(masking=False, max_clusters=None)
    mask = params.mask_params
    t0 = time.perf_counter()
    ids = [miner.add_log_message(mask(c)[0])["cluster_id"] for c in contents]
    return time.perf_counter() - t0, ids, len(miner.drain.clusters)


def _median_run(runs: list[tuple]) -> tuple:
    """The run of median time among ``runs`` of (seconds, ...)."""
    return sorted(runs, key=lambda r: r[0])[len(runs) // 2]


SYSLOG_PROGRAMS = [("sshd[{pid}]", "Accepted password for {u} from 10.0.{a}.{b} port {p} ssh2"),
                   ("sshd[{pid}]", "pam_unix(sshd:session): session opened for user {u} by (uid=0)"),
                   ("sshd[{pid}]", "Received disconnect from 10.0.{a}.{b} port {p}:11: disconnected by user"),
                   ("sshd[{pid}]", "pam_unix(sshd:session): session closed for user {u}"),
                   ("CRON[{pid}]", "(root) CMD (run-parts /etc/cron.hourly)"),
                   ("systemd[1]", "Started Session {p} of user {u}."),
                   ("kernel", "[{a}.{p}] eth0: link up"),
                   ("sshd[{pid}]", "Connection closed by 10.0.{a}.{b} port {p} [preauth]")]


def syslog_corpus(path: Path, n: int, seed: int = 1) -> Path:
    """``n`` lines of an auth log in rsyslog's traditional layout (the ``syslog`` preset): 20 hosts, sshd, cron,
    systemd and the kernel, a line every 0.25 s on average from 2024-05-01 (seeded)."""
    import random
    from datetime import datetime, timedelta

    rng = random.Random(seed)
    t = datetime(2024, 5, 1)
    with open(path, "w") as out:
        for _ in range(n):
            t += timedelta(seconds=rng.uniform(0, 0.5))
            tag, msg = SYSLOG_PROGRAMS[rng.randrange(len(SYSLOG_PROGRAMS))]
            out.write(f"{t:%b %e %H:%M:%S} web{rng.randint(1, 20)} {tag.format(pid=rng.randint(100, 99999))}: "
                      f"{msg.format(u=rng.choice(['alice', 'bob', 'root']), a=rng.randint(0, 9), b=rng.randint(1, 250), p=rng.randint(30000, 60000))}\n")
    return path


def timed_prepare(cfg, repeats: int) -> tuple[dict, float]:
    """(prepare's summary, median seconds of ``repeats`` whole prepares of ``cfg``)."""
    from loglm.ingest.prepare import run as prepare

    took = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        summary = prepare(cfg)
        took.append(time.perf_counter() - t0)
    return summary, sorted(took)[len(took) // 2]


def bench_prepare_syslog(tmp: Path, lines: int = 300_000, repeats: int = 3) -> dict:
    """Our prepare stage end to end on a generated auth log read with the ``syslog`` preset (the program part
    of each event), median of ``repeats``."""
    from loglm.config import DataConfig, RootConfig, SessionConfig

    cfg = RootConfig()
    cfg.paths.root = str(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    cfg.data = DataConfig(name="bench_syslog", format="syslog", inputs=[str(syslog_corpus(tmp / "auth.log", lines))],
                          year_reference="2024",
                          session=SessionConfig(by="entity_window", entity_type="hostname", window_s=300))
    summary, median = timed_prepare(cfg, repeats)
    return {"lines": summary["lines"]["read"], "rejected": summary["lines"]["rejected"],
            "seconds_median": round(median, 2), "lines_per_s": round(summary["lines"]["read"] / median, 1)}


def bench_ingest(tmp: Path, repeats: int = 3) -> dict:
    """Template mining, ours vs Drain3 side by side on the same messages (median of `repeats`), grouping
    accuracy on every loghub 2k system, and our whole prepare stage end to end."""
    from loglm.config import DataConfig, RootConfig, SessionConfig
    from loglm.ingest.grouping import grouping_accuracy, loghub_truth

    loghub = SHARED / "loghub_2k"
    inputs = {"hdfs_20k": (hdfs_input(), "hdfs")}
    if (SHARED / "bgl_raw_5k" / "BGL_5000.log").is_file():
        inputs["bgl_5k"] = (SHARED / "bgl_raw_5k" / "BGL_5000.log", "bgl")
    systems = sorted(d.name for d in loghub.iterdir() if (d / f"{d.name}_2k.log").is_file()) if loghub.is_dir() else []
    throughput = {}
    mix: list[str] = []
    for system in systems:
        mix += _contents(loghub / system / f"{system}_2k.log", system.lower())
    named = {name: _contents(path, preset) for name, (path, preset) in inputs.items()}
    if mix:
        named["loghub_mix_30k"] = mix
    for name, contents in named.items():
        ours = _median_run([_mine_ours(contents) for _ in range(repeats)])
        drain = _median_run([_mine_drain3(contents) for _ in range(repeats)])
        bare = _median_run([_mine_drain3(contents, masking=False) for _ in range(repeats)])
        same = _median_run([_mine_drain3_our_masking(contents) for _ in range(repeats)])
        n = len(contents)
        throughput[name] = {"lines": n, "lines_per_s_ours": round(n / ours[0]), "lines_per_s_drain3": round(n / drain[0]),
                            "ratio": round(drain[0] / ours[0], 2), "templates_ours": ours[2], "templates_drain3": drain[2],
                            "lines_per_s_drain3_no_masking": round(n / bare[0]), "templates_drain3_no_masking": bare[2],
                            "lines_per_s_drain3_our_masking_uncapped": round(n / same[0]),
                            "templates_drain3_our_masking_uncapped": same[2],
                            "ratio_our_masking_uncapped": round(same[0] / ours[0], 2)}
    grouping = {}
    for system in systems:
        log = loghub / system / f"{system}_2k.log"
        contents = _contents(log, system.lower())
        truth = loghub_truth(Path(f"{log}_structured.csv"))
        if len(truth) != len(contents):  # every line must parse for the comparison to be line-aligned
            grouping[system] = {"error": f"{len(contents)} of {len(truth)} lines parsed"}
            continue
        _, ours, n_ours = _mine_ours(contents)
        _, drain, n_drain = _mine_drain3(contents)
        _, same, n_same = _mine_drain3_our_masking(contents)
        grouping[system] = {"grouping_accuracy_ours": round(grouping_accuracy(ours, truth), 3),
                            "grouping_accuracy_drain3": round(grouping_accuracy(drain, truth), 3),
                            "grouping_accuracy_drain3_our_masking_uncapped": round(grouping_accuracy(same, truth), 3),
                            "templates_drain3_our_masking_uncapped": n_same,
                            "templates_truth": len(set(truth)), "templates_ours": n_ours, "templates_drain3": n_drain}

    cfg = RootConfig()
    cfg.paths.root = str(tmp)
    src = hdfs_input()
    cfg.data = DataConfig(name="bench_hdfs", format="hdfs", inputs=[str(src)], session=SessionConfig(max_events=256))
    summary, median = timed_prepare(cfg, repeats)
    head = throughput["hdfs_20k"]
    scored = [g for g in grouping.values() if "error" not in g]
    return {
        "method": "mask + mine the same header-parsed messages; fresh miner and cold caches each run; median of "
                  f"{repeats}; Drain3 {_drain3_version()} with its example config (masking, sim_th 0.4, depth 4, "
                  "max_clusters 1024), and uncapped on the messages as our masking writes them (*_our_masking_uncapped)",
        "lines_per_s_ours": head["lines_per_s_ours"], "lines_per_s_drain3": head["lines_per_s_drain3"],
        "ratio": head["ratio"],
        "min_ratio": min(t["ratio"] for t in throughput.values()),
        "grouping_accuracy_ours_mean": round(sum(g["grouping_accuracy_ours"] for g in scored) / max(1, len(scored)), 3),
        "grouping_accuracy_drain3_mean": round(sum(g["grouping_accuracy_drain3"] for g in scored) / max(1, len(scored)), 3),
        "grouping_accuracy_drain3_our_masking_uncapped_mean": round(
            sum(g["grouping_accuracy_drain3_our_masking_uncapped"] for g in scored) / max(1, len(scored)), 3),
        "ratio_our_masking_uncapped": head["ratio_our_masking_uncapped"],
        "min_ratio_our_masking_uncapped": min(t["ratio_our_masking_uncapped"] for t in throughput.values()),
        "systems_below_drain3": [s for s, g in grouping.items()
                                 if "error" in g or g["grouping_accuracy_ours"] < g["grouping_accuracy_drain3"]],
        "prepare_end_to_end_lines_per_s": round(summary["lines"]["read"] / median, 1),
        "prepare_input": str(src),
        **{f"prepare_syslog_{k}": v for k, v in bench_prepare_syslog(tmp / "syslog").items()},
        "throughput": throughput,
        "grouping": grouping,
    }


def _drain3_version() -> str:
    from importlib.metadata import version

    return version("drain3")


def bench_pretrain_cpu(tmp: Path, model: str = "small", batch_size: int = 64, steps: int = 40) -> dict:
    """Training-step throughput (real tokens/s: forward, masked loss, backward, AdamW) of our encoder vs
    Hugging Face BertForMaskedLM of the same dimensions, on the same HDFS block sessions, side by side:

    - ``same_batches``: both get the identical randomly drawn batches (padded to each batch's longest);
    - ``bucketed``: both get our length-bucketed batches (what HF's ``group_by_length`` does for BERT: batches
      of similar length, little padding), the end-to-end comparison.  Padding tokens are never counted;
    - ours runs with the default ``trainer.unpad_share`` (0.1: a batch with at least 10% padding skips it in
      every layer but attention's score step; the random batches do, the bucketed ones stay padded);
      ``same_batches_padded``: ours on the same random batches with ``unpad_share=null`` (every position
      computed, as BERT does), to show what the setting adds.

    Medians of 3 interleaved rounds (``runs`` gives each median's round and the min-max ``spread``).  Left out:
    HF's Trainer loop itself (only its model is timed), mixed precision, torch.compile.
    """
    import random

    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from loglm.config import compose
    from loglm.ingest.prepare import run as prepare
    from loglm.objectives import IGNORE, mask_events
    from loglm.shards import read_sessions
    from loglm.training.data import BucketBatchSampler, SessionDataset, collate
    from loglm.training.module import LogLMModule
    from loglm.training.pretrain import encoder_config
    from loglm.vocab import Vocabulary

    cfg = compose("pretrain", [f"paths.root={tmp}", "data=hdfs_blocks_sample", f"model={model}"])
    summary = prepare(cfg)
    data_dir = Path(summary["path"])
    vocab = Vocabulary.load(data_dir / "vocab.json")
    ds = SessionDataset.from_table(read_sessions(data_dir, "train"))
    enc = encoder_config(cfg, vocab.size, vocab.gap_buckets)
    torch.manual_seed(0)
    ours = LogLMModule(enc, cfg.objective.mask_ratio, cfg.objective.hypersphere_weight, lr=1e-3).train()
    ours.encoder.unpad_share = cfg.trainer.unpad_share  # as pretraining sets it
    bert = BertForMaskedLM(BertConfig(
        vocab_size=vocab.size, hidden_size=enc["d_model"], num_hidden_layers=enc["n_layers"],
        num_attention_heads=enc["n_heads"], intermediate_size=enc["d_ff"], max_position_embeddings=enc["max_len"],
        type_vocab_size=1, hidden_dropout_prob=enc["dropout"], attention_probs_dropout_prob=enc["dropout"],
        attn_implementation="sdpa")).train()
    rng = random.Random(0)
    order = list(range(len(ds)))
    rng.shuffle(order)
    random_batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    bucketed = list(iter(BucketBatchSampler(ds.lengths(), batch_size, shuffle=True, seed=0)))
    n_steps = min(steps, len(random_batches), len(bucketed))

    def ours_step(opt, batch):
        loss = ours._step(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def bert_step(opt, batch):
        gen = torch.Generator().manual_seed(1)
        inputs, labels = mask_events(batch["tokens"], batch["pad_mask"], 0.15, vocab.size, gen)
        labels = torch.where(labels == IGNORE, torch.full_like(labels, -100), labels)
        out = bert(input_ids=inputs, attention_mask=batch["pad_mask"].long(), labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def measure(step, model, batches) -> dict:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        collated = [collate([ds[i] for i in b]) for b in batches]
        for b in collated[:3]:  # warm-up
            step(opt, b)
        real = sum(int(b["pad_mask"].sum()) for b in collated[3:])
        padded = sum(b["pad_mask"].numel() for b in collated[3:])
        t0 = time.perf_counter()
        for b in collated[3:]:
            step(opt, b)
        dt = time.perf_counter() - t0
        return {"tokens_per_s": round(real / dt), "padding_share": round(1 - real / padded, 3), "steps": len(collated) - 3}

    # three rounds, the three measurements interleaved in each, so a transient load (a process of the previous
    # section still exiting) hits all of them alike; each figure is the median of its rounds, with the spread
    def padded(step):  # trainer.unpad_share=null: every position computed, padding included
        def run(opt, batch):
            ours.encoder.unpad_share = None
            try:
                step(opt, batch)
            finally:
                ours.encoder.unpad_share = cfg.trainer.unpad_share
        return run

    rounds = [(measure(ours_step, ours, random_batches[:n_steps]), measure(bert_step, bert, random_batches[:n_steps]),
               measure(ours_step, ours, bucketed[:n_steps]), measure(bert_step, bert, bucketed[:n_steps]),
               measure(padded(ours_step), ours, random_batches[:n_steps]))
              for _ in range(3)]

    def median_run(j: int) -> dict:
        runs = sorted((r[j] for r in rounds), key=lambda m: m["tokens_per_s"])
        return {**runs[1], "spread": [runs[0]["tokens_per_s"], runs[-1]["tokens_per_s"]]}

    same_ours, same_bert, own_ours, own_bert = median_run(0), median_run(1), median_run(2), median_run(3)
    same_padded = median_run(4)
    lengths = np.array(ds.lengths())
    return {
        "model": model, "d_model": enc["d_model"], "layers": enc["n_layers"], "heads": enc["n_heads"],
        "d_ff": enc["d_ff"], "vocab": vocab.size, "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
        "sessions": len(ds), "session_length_mean": round(float(lengths.mean()), 1),
        "session_length_max": int(lengths.max()),
        "tokens_per_s_ours": own_ours["tokens_per_s"], "tokens_per_s_hf_bert": own_bert["tokens_per_s"],
        "ratio": round(own_ours["tokens_per_s"] / own_bert["tokens_per_s"], 2),
        "ratio_same_batches": round(same_ours["tokens_per_s"] / same_bert["tokens_per_s"], 2),
        "unpad_share": cfg.trainer.unpad_share,
        # the same random batches with trainer.unpad_share=null: our padded path against BERT's
        "ratio_same_batches_padded": round(same_padded["tokens_per_s"] / same_bert["tokens_per_s"], 2),
        "ratio_vs_hf_random_batches": round(own_ours["tokens_per_s"] / same_bert["tokens_per_s"], 2),
        "rounds": 3,
        "runs": {"ours_bucketed": own_ours, "hf_bert_bucketed": own_bert, "ours_same_batches": same_ours,
                 "hf_bert_same_batches": same_bert, "ours_same_batches_padded": same_padded},
    }


def accuracy_datasets(names: list[str]) -> list[str]:
    """``--accuracy-datasets`` as ``dataset=`` names: each given as a dataset (``hdfs``) or as the protocol it
    runs (``hdfs_keys``, the bench key).  An unknown name is refused before any protocol runs, naming the valid
    ones (a protocol that fails mid-run costs its training time and would report only an error)."""
    from loglm.config import PROJECT_ROOT, compose

    datasets = sorted(f.stem for f in (PROJECT_ROOT / "conf" / "dataset").glob("*.yaml"))
    protocol_of = {d: compose("evaluate", [f"dataset={d}"]).suite.protocol for d in datasets}
    by_protocol = {p: d for d, p in protocol_of.items()}
    out, unknown = [], []
    for name in names:
        if name in protocol_of:
            out.append(name)
        elif name in by_protocol:
            out.append(by_protocol[name])
        else:
            unknown.append(name)
    if unknown:
        raise SystemExit(f"--accuracy-datasets: unknown {', '.join(unknown)}; give a dataset or its protocol: "
                         + ", ".join(f"{d} ({protocol_of[d]})" for d in datasets))
    return out


ACCURACY_KEYS = ("precision", "recall", "f1", "auroc", "pr_auc", "fpr")


def accuracy_rows(result: dict) -> dict:
    """One protocol suite's result (``loglm.evaluation_suite.run``) as bench rows: ``{model: {metric: value}}``."""
    from loglm.detect.metrics import f1_ceiling_of

    keys = ACCURACY_KEYS
    out = {}
    for m, r in result["models"].items():
        row = {**{k: round(float(r["metrics"]["all"][k]), 4) for k in keys}, "target_fpr": result["target_fpr"],
               "fpr_within_2x_target": bool(r["metrics"]["all"]["fpr"] <= 2 * result["target_fpr"]),
               "unique_f1": round(float(r["metrics"]["unique"]["f1"]), 4),
               # the best F1 any model could reach here with its test FPR at the target (recall 1)
               "f1_ceiling_at_target": round(f1_ceiling_of(r["metrics"]["all"], result["target_fpr"]), 4),
               "validation_too_small": bool(result["models"]["LogLM"].get("calibration_warning"))}
        if "pair_window" in r["metrics"]:  # flows: per source-destination pair and window too
            pw = r["metrics"]["pair_window"]
            row.update({f"pair_window_{k}": round(float(pw[k]), 4) for k in keys})
            row["pair_window_fpr_within_2x_target"] = bool(pw["fpr"] <= 2 * result["target_fpr"])
            row["pair_window_threshold_unit"] = pw.get("threshold_unit", "flow")  # its own, or the flows'
            if "fpr_at_flow_threshold" in pw:
                row["pair_window_fpr_at_flow_threshold"] = round(float(pw["fpr_at_flow_threshold"]), 4)
        if "alerts" in r["metrics"]:  # per-event protocols: the sessions LogLM's detection alerts on
            al = r["metrics"]["alerts"]
            row.update({f"alerts_{k}": round(float(al[k]), 4) for k in ("precision", "recall", "f1", "fpr")})
            row["alerts_fpr_within_2x_target"] = bool(al["fpr"] <= 2 * result["target_fpr"])
            row["alerts_fpr_at_item_threshold"] = round(float(al["fpr_at_item_threshold"]), 4)
        periods = r["metrics"].get("fpr_by_period", {})
        if len(periods) > 1:  # does the threshold hold over the test period: its worst day or quarter
            row["fpr_worst_period"] = round(max(p["fpr"] for p in periods.values()), 4)
        classes = {c: v for c, v in r.get("recall_by_class", {}).items() if v["n"] >= 100}
        if classes:  # the weakest attack class with at least 100 test items
            row["min_class_recall_100"] = round(min(v["recall"] for v in classes.values()), 4)
        out["loglm" if m == "LogLM" else m] = row
    return out


def bench_accuracy(tmp: Path, datasets: list[str], epochs: int | None) -> tuple[dict, dict]:
    """Each protocol's evaluation suite (LogLM + DeepLog + PCA + IsolationForest on one split), with an
    optional smaller training budget: {dataset: {model: {precision, recall, f1, auroc, pr_auc, fpr}}}."""
    from loglm.config import compose
    from loglm.evaluation_suite import run as suite

    out: dict = {}
    runs: dict = {}
    for dataset in datasets:
        overrides = [f"dataset={dataset}", f"paths.root={tmp}", "trainer.progress_bar=false",
                     f"suite.reports_dir={tmp / 'reports'}"]  # keeps reports/eval_*.md (full budgets)
        if epochs:
            overrides += [f"trainer.max_epochs={epochs}", f"suite.baseline_epochs={epochs}"]
        t0 = time.perf_counter()
        try:
            result = suite(compose("evaluate", overrides))
        except Exception as e:  # one protocol that cannot run (no data, a refused calibration) keeps the others
            print(f"bench accuracy: {dataset} failed: {e}", flush=True)
            out[dataset] = {"error": f"{type(e).__name__}: {e}"[:600]}
            runs[dataset] = {"error": True, "seconds": round(time.perf_counter() - t0, 1)}
            continue
        key = result["protocol"]
        import shutil

        kept = REPORTS / "accuracy" / Path(result["markdown"]).name  # the run's per-model tables outlive its folder
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["markdown"], kept)
        out[key] = accuracy_rows(result)
        runs[key] = {"protocol": result["protocol"], "parent_run_id": result["parent_run_id"],
                     "report": str(kept.relative_to(ROOT)),
                     "epochs": epochs or "protocol default", "seconds": round(time.perf_counter() - t0, 1),
                     # a run of some protocols (--accuracy-datasets) keeps the others' rows: each says when
                     "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    return out, runs


def bench_scoring() -> dict:
    """Detection scoring (n_views masked views per window) with the `small` encoder on CPU."""
    import numpy as np
    import torch

    from loglm.config import DetectConfig
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.encoder import EncoderConfig, LogEncoder

    torch.manual_seed(0)
    enc = LogEncoder(EncoderConfig(vocab_size=64, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=258)).eval()
    rng = np.random.default_rng(0)
    n, length = 2048, 24
    toks = [rng.integers(5, 64, size=length) for _ in range(n)]
    gaps = [np.zeros(length, dtype=np.int64) for _ in range(n)]
    cfg = DetectConfig(batch_size=256, n_views=5)
    score_windows(enc, toks[:256], gaps[:256], [True] * 256, cfg)  # warm-up
    runs = []
    for _ in range(3):  # the median of 3, with the spread
        t0 = time.perf_counter()
        score_windows(enc, toks, gaps, [True] * n, cfg)
        runs.append(time.perf_counter() - t0)
    dt = sorted(runs)[1]
    return {"windows": n, "events_per_window": length, "n_views": cfg.n_views, "seconds": round(dt, 3),
            "events_per_s": round(n * length / dt, 1), "events_per_s_spread": [round(n * length / t, 1) for t in
                                                                            (max(runs), min(runs))],
            "runs": 3, "torch_threads": torch.get_num_threads()}


ONNX_PROCESS = """
import json, sys, time
import pyarrow.parquet as pq
from loglm.config import DetectConfig
from loglm.engine.runtime import Bundle
from loglm.windows import windows_of
bundle = Bundle(sys.argv[1], variant=sys.argv[2])
toks, gaps, closed = windows_of(pq.read_table(sys.argv[3]))
dcfg = DetectConfig(**json.loads(sys.argv[4]))
t0 = time.perf_counter()
ws = bundle.scorer()(toks, gaps, closed, dcfg)
dt = time.perf_counter() - t0
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'ray', 'mlflow'})
# VmHWM: this process's own peak RSS (ru_maxrss would carry over the parent's peak across fork + exec)
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": dt, "events": int(sum(len(t) for t in toks)), "peak_rss_mb": hwm,
                  "heavy_modules": heavy}))
"""


def bench_inference(tmp: Path, teacher_epochs: int, student_epochs: int, rtd_weight: float, data: str,
                    per_event_windows: int = 2000) -> dict:
    """Teacher (torch) vs distilled student (torch, ONNX fp32, ONNX int8) on the same real HDFS windows (the
    test split of protocol ``data``), each at its own validation-calibrated threshold."""
    import dataclasses
    import subprocess
    import sys

    import numpy as np
    import pyarrow.parquet as pq

    from loglm.config import compose  # the same composition a user's command line gets
    from loglm.detect.score_core import calibrated_config
    from loglm.detect.torch_scoring import score_windows
    from loglm.engine.runtime import Bundle
    from loglm.evaluation import evaluate_scores, session_scores
    from loglm.export.writer import run as export
    from loglm.ingest.prepare import prepared_dir
    from loglm.ingest.prepare import run as prepare
    from loglm.model.store import load_model
    from loglm.shards import read_sessions
    from loglm.training.distill import run as distill
    from loglm.training.pretrain import run as pretrain
    from loglm.windows import windows_of

    cfg = compose("pretrain", [f"paths.root={tmp}", f"data={data}", "model=small",
                               f"trainer.max_epochs={teacher_epochs}", "trainer.progress_bar=false",
                               f"distill.max_epochs={student_epochs}", f"distill.rtd_weight={rtd_weight}"])
    prepare(cfg)
    teacher_run = pretrain(cfg)
    student_run = distill(dataclasses.replace(cfg, teacher=teacher_run["run_id"]))
    bundle_dir = export(dataclasses.replace(cfg, ckpt=student_run["model_dir"]))["bundle"]
    teacher, student = load_model(teacher_run["model_dir"]), load_model(student_run["model_dir"])
    test = read_sessions(prepared_dir(tmp, cfg.data.name), "test")
    toks, gaps, closed = windows_of(test)
    events = int(sum(len(t) for t in toks))
    dcfg = calibrated_config(cfg.detect, teacher.calibration)
    # the student is scored as it was calibrated (one pass through its replaced-event head when it has one)
    scfg = dataclasses.replace(dcfg, scorer=student.calibration.get("scorer", "views"))
    windows_file = tmp / "windows.parquet"
    pq.write_table(test.select(["tokens", "gaps", "closed"]), windows_file)

    def timed(fn):
        t0 = time.perf_counter()
        ws = fn()
        return ws, time.perf_counter() - t0

    def f1_of(ws, model, table=test) -> dict:
        ids, labels, scores, seqs = session_scores(table, ws.score)
        m = evaluate_scores(ids, labels, scores, seqs, float(model.calibration["threshold"]), True)["all"]
        return {k: round(m[k], 4) for k in ("precision", "recall", "f1", "fpr", "auroc")}

    out = {"data": f"{data}/test", "windows": len(toks), "events": events,
           "teacher_params": teacher.encoder.num_parameters(), "student_params": student.encoder.num_parameters(),
           "teacher_epochs": teacher_epochs, "student_epochs": student_epochs, "n_views": dcfg.n_views,
           "student_scorer": scfg.scorer, "rtd_weight": rtd_weight}
    ws_t, dt = timed(lambda: score_windows(teacher.encoder, toks, gaps, closed, dcfg))
    out["events_per_s_teacher_torch"] = round(events / dt, 1)
    acc = {"teacher_torch": f1_of(ws_t, teacher)}
    ws_s, dt = timed(lambda: score_windows(student.encoder, toks, gaps, closed, scfg))
    out["events_per_s_student_torch"] = round(events / dt, 1)
    acc["student_torch"] = f1_of(ws_s, student)
    for variant in ("fp32", "int8"):
        b = Bundle(Path(bundle_dir), variant=variant)
        ws_o, _ = timed(lambda b=b: b.scorer()(toks, gaps, closed, scfg))
        acc[f"student_onnx_{variant}"] = f1_of(ws_o, student)
        proc = subprocess.run([sys.executable, "-c", ONNX_PROCESS, bundle_dir, variant, str(windows_file),
                               json.dumps(dataclasses.asdict(scfg))], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[f"events_per_s_student_onnx_{variant}"] = round(r["events"] / r["seconds"], 1)
        out[f"peak_rss_mb_onnx_{variant}"] = round(r["peak_rss_mb"], 1)
        out[f"heavy_modules_onnx_{variant}"] = ",".join(r["heavy_modules"]) or "none"
    # the faster ONNX variant that keeps F1 (within 0.01 of fp32) is the one a deployment uses
    keep = [v for v in ("int8", "fp32") if acc[f"student_onnx_{v}"]["f1"] >= acc["student_onnx_fp32"]["f1"] - 0.01]
    best = max(keep, key=lambda v: out[f"events_per_s_student_onnx_{v}"])
    out["onnx_variant"] = best
    out["events_per_s_student_onnx"] = out[f"events_per_s_student_onnx_{best}"]
    out["peak_rss_mb"] = out[f"peak_rss_mb_onnx_{best}"]
    out["ratio"] = round(out["events_per_s_student_onnx"] / out["events_per_s_teacher_torch"], 2)
    out["f1_teacher"] = acc["teacher_torch"]["f1"]
    out["f1_student"] = acc[f"student_onnx_{best}"]["f1"]
    # accuracy cost of constant-cost scoring: n_views masked views vs one pass per event (LogBERT-style), on a
    # seeded subset (one pass per event costs ~10x more); both scorings of the teacher on the same windows
    sub = sorted(np.random.default_rng(0).choice(len(toks), min(per_event_windows, len(toks)), replace=False).tolist())
    st, sg, sc = [toks[i] for i in sub], [gaps[i] for i in sub], [closed[i] for i in sub]
    sub_table = test.take(sub)
    per_event = dataclasses.replace(dcfg, n_views=int(max(len(t) for t in st)) + 1)
    ws_pe, dt = timed(lambda: score_windows(teacher.encoder, st, sg, sc, per_event))
    acc["teacher_torch_subset_one_pass_per_event"] = f1_of(ws_pe, teacher, sub_table)
    acc["teacher_torch_subset_views"] = f1_of(score_windows(teacher.encoder, st, sg, sc, dcfg), teacher, sub_table)
    out["per_event_subset_windows"] = len(sub)
    out["events_per_s_teacher_one_pass_per_event"] = round(sum(len(t) for t in st) / dt, 1)
    out["accuracy"] = acc
    return out


# what each section compares, and what it leaves out (printed under its heading in bench.md)
SECTION_NOTES = {
    "accuracy": "Compares: LogLM and each baseline on the same split of each protocol (EVAL_PROTOCOLS.md), trained "
                "on normal training items (DeepLog with LogLM's epoch budget and early stopping, KitNET its own "
                "measured best), every model thresholded by the same conformal rule on validation normal items "
                "at the same target FPR; test FPR beside the target; `f1_ceiling_at_target`: the best F1 any "
                "model could reach on that split with its test FPR at the target (every anomaly caught). Leaves out: seeds (one run, LogLM seed 42; "
                "the README gives seeds 42/1/2 where they spread), GPU training. Score rules chosen after looking "
                "at a test split say so in README and conf/experiment/*.yaml.",
    "accuracy_runs": "Each protocol's MLflow parent run, report file and wall time of the accuracy section.",
    "analyst": "Compares: few-shot kind labelling on frozen LogLM flow vectors (a model pretrained with "
               "data.flow_facets=true; each flow's vector is its context half and its own half) against the same "
               "classifiers on raw flow features, with one classifier fixed in advance for both (logistic regression "
               "standardised by the unlabelled training flows, `loglm kinds fit`'s default; `best_setting`: the "
               "best per-setting row of each key, chosen on the measured flows themselves, with its name) (balanced accuracy, "
               "cic_flowprep attack classes with >= 100 test flows, 20 draws per k; *_by_window: examples and "
               "classified flows never share a window; zeek_*: the same on zeek_ctu test flows, their detailed "
               "labels as kinds: the attack and two benign services; alert_kinds: per alert, its events' votes, examples from "
               "sessions set aside); ATT&CK techniques from alert evidence (hit@3); exact vs HNSW similar-sequence search "
               "(queries/s, HNSW recall@10 against exact). Leaves out: classes under 100 flows, fine-tuned "
               "embeddings, search on real (not random) vectors at 10^6.",
    "ingest": "Compares: template mining, ours vs Drain3 0.9.1 on the same header-parsed messages (uncapped and "
              "given our masking: the fair peer; and with its example config), grouping accuracy on loghub 2k, "
              "our whole prepare end to end. Leaves out: Drain3's own I/O, multi-process runs (scale does that).",
    "pretrain_cpu": "Compares: training-step tokens/s of our encoder (its defaults) and Hugging Face BertForMaskedLM of "
                    "the same dimensions on identical random batches and on the same length-bucketed batches; "
                    "ours with every position computed (unpad_share=null) as its own row. Leaves out: HF's "
                    "Trainer loop, mixed precision, torch.compile, HF's GPU-only unpadding (flash attention).",
    "scale": "Compares: prepare, 200 pretraining steps and batch detection of the whole raw corpus with that model "
             "on generated HDFS corpora of 1M, 4M and 16M lines (peak "
             "RSS of each stage's process tree, lines/s: the median of 3 prepares of each size, taken in rounds of "
             "every size in turn so the ratio between sizes sees the same machine), and the largest under a 2 GB "
             "address-space cap. Leaves "
             "out: multi-node runs (tests/test_two_nodes.py), real (non-generated) corpora of that size.",
    "stream": "Compares: streaming detection (follow=true, from the file's start, its 1 s idle exit taken off) "
              "and batch detection of the same raw HDFS lines with the same model (the demo's: small, 6 epochs), "
              "lines/s (median of `repeats` runs, with the spread) and peak RSS (the process and its children, "
              "sampled every 50 ms), on the shipped lines and on them four times over (each copy a week later, "
              "its own block ids): what grows with the input and what does not. Leaves out: a live writer (the "
              "file is complete when the stream starts), other formats, the ONNX engine.",
    "scoring_cpu": "Measures: detection scoring speed of the small encoder (n_views masked views per window) on random "
                   "windows, torch on 2 threads. Leaves out: accuracy (inference does that), ONNX.",
    "inference": "Compares: the teacher (torch, 5 masked views) and its distilled student (torch, ONNX fp32, ONNX "
                 "int8; one pass) on the same real test windows, each at its own validation-calibrated threshold, "
                 "with the ONNX process's peak RSS and heavy imports. Leaves out: GPU inference, batching across "
                 "processes.",
}


def _cell(text: str):
    """A bench.md table cell back to its JSON value (numbers, booleans, None), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return {"True": True, "False": False, "None": None}.get(text, text)


def sections_from_markdown(text: str) -> dict:
    """The sections of a bench.md (what write_reports renders: a metric/value table per section, then one table
    per sub-dict) as bench.json would hold them."""
    out: dict = {}
    key = sub = None
    cols: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            key, sub = line[3:].strip(), None
            out[key] = {}
        elif line.startswith("### ") and key:
            sub = line.split(": ", 1)[1].strip()
            out[key][sub], cols = {}, []
        elif key and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if sub is None:
                if cells != ["metric", "value"] and len(cells) == 2:
                    out[key][cells[0]] = _cell(cells[1])
            elif not cols:
                cols = cells[1:]
            else:
                out[key][sub][cells[0]] = dict(zip(cols, map(_cell, cells[1:])))
    if isinstance(out.get("accuracy_runs", {}).get("runs"), dict):  # rendered as one table, held one row each
        out["accuracy_runs"].update(out["accuracy_runs"].pop("runs"))
    return out


def cpu_reference_s(n: int = 10_000_000, repeats: int = 3) -> float:
    """Seconds one core takes for a fixed pure-Python loop (best of ``repeats``): this machine's speed when a
    section was measured.  The same code's prepare ran at 69k lines/s one day and 27k another on this 2-core
    machine; a section's figures compare across runs only beside this."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - t)
    return round(best, 3)


def write_reports(results: dict) -> None:
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / "bench.json"
    if path.is_file():
        merged = json.loads(path.read_text())
    else:  # a checkout without bench.json: the sections bench.md holds are kept, not dropped
        merged = sections_from_markdown((REPORTS / "bench.md").read_text()) if (REPORTS / "bench.md").is_file() else {}
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    ref = cpu_reference_s()
    for key, section in results.items():  # a partial run (--only, fewer datasets) keeps the other entries
        if isinstance(section, dict) and key != "machine":
            section.setdefault("measured_at", now)  # each section keeps the time it was measured
            section.setdefault("cpu_reference_s", ref)  # and how fast the machine was then
        if key in ("accuracy", "accuracy_runs"):
            for k, v in list(section.items()):  # a protocol that failed this time keeps its last measured figures
                old = merged.get(key, {}).get(k)
                if isinstance(v, dict) and v.get("error") and isinstance(old, dict) and not old.get("error"):
                    section[k] = {**old, "last_error": f"{now}: {v['error']}" if isinstance(v["error"], str) else now}
            kept = [k for k, v in merged.get(key, {}).items() if isinstance(v, dict) and k not in section]
            if kept:  # the section's time is this run's, not the kept protocols' (their runs say theirs)
                section["measured_at"] = f"{section['measured_at']} (not {', '.join(kept)}: see accuracy_runs)"
            merged[key] = {**merged.get(key, {}), **section}
        else:
            merged[key] = section
    path.write_text(json.dumps(merged, indent=2) + "\n")
    lines = ["# LogLM benchmarks", "", f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; "
             f"written by `make bench` ({now}). Sections come from different runs when a run measured only some "
             "(`--only`): each says when it was measured (`measured_at`) and how fast one core was then "
             "(`cpu_reference_s`: seconds for a fixed 10^7-step Python loop, 0.78 on 2026-12-01; it has varied "
             "about 2x between days); compare figures within a section.", ""]
    for key, section in merged.items():
        if key == "machine":
            continue
        lines += [f"## {key}", ""]
        if key in SECTION_NOTES:
            lines += [SECTION_NOTES[key], ""]
        scalars = [f"| {k} | {v} |" for k, v in section.items() if not isinstance(v, dict)]
        if scalars:
            lines += ["| metric | value |", "|---|---|", *scalars, ""]
        if key == "accuracy_runs":  # one row per protocol: when it ran, how long, its report
            runs = {k: v for k, v in section.items() if isinstance(v, dict)}
            cols = list(dict.fromkeys(c for row in runs.values() for c in row))
            lines += [f"### {key}: runs", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |" for name, row in runs.items()]
            lines.append("")
        for sub, table in section.items():
            if isinstance(table, dict) and table and all(isinstance(v, dict) for v in table.values()):
                cols = list(next(iter(table.values())))
                lines += [f"### {key}: {sub}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
                lines += [f"| {name} | " + " | ".join(("—" if row.get(c) is None else str(row.get(c))) for c in cols) + " |" for name, row in table.items()]
                lines.append("")
    (REPORTS / "bench.md").write_text("\n".join(lines))


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--teacher-epochs", type=int, default=20,
                        help="the teacher's budget (20: protocol hdfs_keys's, conf/experiment/hdfs_keys.yaml)")
    parser.add_argument("--accuracy-datasets", nargs="*",
                        default=["cic_flowprep", "hdfs_loglead", "zeek_ctu", "openstack_kalaki", "hdfs", "bgl"])
    parser.add_argument("--accuracy-epochs", type=int, default=0,
                        help="training budget of the accuracy section (0 = each protocol's own)")
    parser.add_argument("--student-epochs", type=int, default=20,
                        help="the student's budget (20: its teacher's, so the two are compared on equal training)")
    parser.add_argument("--inference-data", default="hdfs_keys",
                        help="data config of the inference section (its test split is scored)")
    parser.add_argument("--rtd-weight", type=float, default=2.0,
                        help="replaced-event head weight of the student (0 = score with masked views)")
    parser.add_argument("--scale-sizes", nargs="*", type=int, default=[1_000_000, 4_000_000, 16_000_000],
                        help="generated corpus sizes (lines) of the scale section")
    parser.add_argument("--analyst-model", help="model directory for the analyst section (default: pretrain one)")
    parser.add_argument("--stream-model", help="model directory for the stream section (default: pretrain the demo's)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the sections' working folders (prepared data, models, generated corpora) instead "
                             "of removing them at the end; their paths are printed")
    args = parser.parse_args()
    if not args.only or "accuracy" in args.only:
        args.accuracy_datasets = accuracy_datasets(args.accuracy_datasets)
    import shutil

    work = Path(tempfile.mkdtemp(prefix="loglm-bench-"))  # one folder for every section: removed at the end

    def folder(name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))

    sections = {"ingest": lambda: bench_ingest(folder("ingest")),
                "pretrain_cpu": lambda: bench_pretrain_cpu(folder("pretrain_cpu")),
                "accuracy": lambda: bench_accuracy(folder("accuracy"), args.accuracy_datasets, args.accuracy_epochs),
                "scoring_cpu": bench_scoring,
                "analyst": lambda: __import__("benchmarks.analyst", fromlist=["bench_analyst"]).bench_analyst(
                    folder("analyst"), args.analyst_model),
                "scale": lambda: __import__("benchmarks.scale", fromlist=["bench_scale"]).bench_scale(
                    folder("scale"), args.scale_sizes),
                "stream": lambda: __import__("benchmarks.stream", fromlist=["bench_stream"]).bench_stream(
                    folder("stream"), args.stream_model),
                "inference": lambda: bench_inference(folder("inference"), args.teacher_epochs, args.student_epochs,
                                                     args.rtd_weight, args.inference_data)}
    results = {}
    try:
        for name, fn in sections.items():
            if args.only and name not in args.only:
                continue
            print(f"bench {name} ...", flush=True)
            results[name] = fn()
            if name == "accuracy":  # (metrics per dataset and model, how each suite ran)
                results["accuracy"], results["accuracy_runs"] = results["accuracy"]
            print(json.dumps(results[name], indent=2), flush=True)
    finally:
        if args.keep:
            print(f"bench: working folders kept in {work}", flush=True)
        else:  # models, prepared data and GB-sized generated corpora do not outlive the run
            shutil.rmtree(work, ignore_errors=True)
    results["machine"] = {"cpus": __import__("os").cpu_count(), "python": platform.python_version()}
    write_reports(results)
    print(f"wrote {REPORTS / 'bench.json'} and {REPORTS / 'bench.md'}")


if __name__ == "__main__":
    main()
