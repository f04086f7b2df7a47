"""Typed configuration schema.

Every pipeline composes its Hydra config on top of :class:`RootConfig`, registered as ``schema`` in
Hydra's ConfigStore.  Because the root is a structured config, a misspelled key or a value of the wrong
type is refused by Hydra before any work starts, with the offending key in the message.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PathsConfig:
    # Everything a run writes lives under root: prepared data, models, MLflow store and artifacts.
    root: str = "runs"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite(x) -> bool:
    import math

    return isinstance(x, int | float) and math.isfinite(x)


@dataclass
class SessionConfig:
    # "entity": one session per value of entity_type (e.g. HDFS block id); "window": fixed time windows;
    # "entity_window": per entity and time window (flows per source host every window_s);
    # "event": every event alone (flow tables without hosts or times, e.g. CICIDS samples);
    # "count": consecutive windows of window_events events in time order (sparse logs such as BGL samples).
    by: str = "entity"
    window_events: int = 20
    entity_type: str = "block_id"
    window_s: float = 3600.0
    # Sessions longer than this are split into consecutive chunks (each scored; a session's score is
    # the max over its chunks).  Counted in the manifest as "sessions_split".
    max_events: int = 256
    # A session is closed (gets [END]) once its entity has been idle this long before the input ends;
    # sessions still open when the input ends are scored without [END]. 0 = every session is closed.
    # Time windows are closed when their span has fully elapsed within the input.
    idle_close_s: float = 0.0

    def __post_init__(self):  # value ranges are checked when the config is composed, before any work
        _check(self.by in ("entity", "window", "entity_window", "event", "count"),
               f"data.session.by must be entity, window, entity_window, event or count, got {self.by!r}")
        _check(self.window_events >= 1, f"data.session.window_events must be >= 1, got {self.window_events}")
        _check(_finite(self.window_s) and self.window_s > 0, f"data.session.window_s must be > 0, got {self.window_s}")
        _check(self.max_events >= 1, f"data.session.max_events must be >= 1, got {self.max_events}")
        _check(_finite(self.idle_close_s) and self.idle_close_s >= 0,
               f"data.session.idle_close_s must be >= 0, got {self.idle_close_s}")


@dataclass
class SplitConfig:
    # "chronological": sessions ordered by first timestamp, fractions of the session count;
    # "chronological_events": events ordered by time, fractions of the event count, by a session's first event;
    # "chronological_time": fractions of the time span (first to last event), by session start;
    # "seeded": hash of session id;
    # "predefined": the dataset builder assigns splits itself (e.g. hdfs_keys).
    method: str = "chronological"
    train_frac: float = 0.6
    val_frac: float = 0.1
    seed: int = 17
    # optional cut (ISO 8601 time, UTC unless it says otherwise): sessions starting at or after it are test,
    # whatever the fractions; the fractions then divide the data before it ("train on Monday, test on the
    # rest of the week": test_from=2017-07-04, train_frac=0.8, val_frac=0.2)
    test_from: str | None = None
    # the fractions divide each input file on its own (several captures or days, each split in time order:
    # every one trains on its early part, validates and tests on its later ones); a session belongs to the
    # input of its first event.  False: the inputs are one stream.
    per_input: bool = False

    def __post_init__(self):
        _check(0 <= self.train_frac <= 1 and 0 <= self.val_frac <= 1 and self.train_frac + self.val_frac <= 1 + 1e-9,
               f"data.split.train_frac ({self.train_frac}) and val_frac ({self.val_frac}) must lie in [0, 1] "
               "and add up to at most 1")


@dataclass
class DataConfig:
    name: str = "hdfs_sample"
    # reader: a raw-text preset from loglm.ingest.formats.PRESETS (hdfs, bgl, linux, openssh, ... every
    # loghub system), "jsonl", "cef" (ArcSight CEF, loglm.ingest.cef), a flow format ("zeek", "cicflowmeter",
    # "netflow", "vpcflow"), or a sequence builder
    # ("hdfs_keys", "hdfs_blocks")
    format: str = "hdfs"
    inputs: list[str] = field(default_factory=list)
    # your own raw-text header in loghub notation, e.g. "<Month> <Day> <Time> <Host> <Component>: <Content>"
    # (overrides the preset); time_fields are joined by a space and read with time_format
    # ("epoch", a strptime format, or "noyear:<strptime format>")
    header: str | None = None
    time_fields: list[str] = field(default_factory=list)
    time_format: str = "epoch"
    label_field: str | None = None
    # header field -> entity kind, e.g. {Host: hostname}
    entity_fields: dict[str, str] = field(default_factory=dict)
    # raw text: header fields naming the program that wrote a line, part of each event ("sshd: Accepted ..."),
    # so one message from two programs is two events and a program new on a host is an unseen event.
    # null: the preset's (syslog, syslog_iso: [Component]; rfc5424: [App]; the loghub presets and a header of
    # your own: none); [] reads the content alone.  jsonl: the fields holding it (journald: [SYSLOG_IDENTIFIER])
    event_fields: list[str] | None = None
    # structured readers (jsonl, flows): field mapping, see loglm.ingest.json_reader / loglm.ingest.flows
    fields: dict[str, str] = field(default_factory=dict)
    # jsonl: build each event from these fields instead of one message (security events whose meaning is in
    # their fields: event.code, event.outcome, eventName, errorCode ...): "fields: event.code=4625 ..." with
    # the values kept exactly (never masked) and each combination its own template (never generalised)
    message_fields: list[str] = field(default_factory=list)
    # raw text formats: a line the header does not match continues the record before it (Java stack traces,
    # Python tracebacks): it joins that record's raw text (an alert's evidence), the event stays the first
    # line's, and it is counted as "continued", not rejected.  Off: such lines are rejected, each with its line.
    multiline: bool = False
    # timestamps without a year (traditional syslog, "noyear:" formats): each is placed in the latest year
    # that does not put it after this reference (loglm.ingest.noyear): "mtime" (a file's last line before its
    # modification time, every line before that last line), "now", a year (2024: the logs end in 2024) or an
    # ISO date (2024-06-30: they end on or before it).  Streams place lines before the clock (or the year given)
    year_reference: str = "mtime"
    # optional file with one anomalous entity id per line (evaluation only, never used for training)
    anomalous_ids: str | None = None
    session: SessionConfig = field(default_factory=SessionConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    shard_rows: int = 50_000
    # prepare writes events to this many hash partitions by session key and builds sessions one partition at a
    # time: its memory is about 1/spill_partitions of the corpus's events.  null: from the inputs' size (16 up
    # to ~6M lines, doubling so a partition holds about 400k events, at most 256; partitioned.spill_partitions)
    spill_partitions: int | None = None
    max_line_bytes: int = 65_536
    # train only on sessions not labelled anomalous (labels come from anomalous_ids, when given); sessions
    # holding events with an unknown label (e.g. Zeek "Background") are held out of training too
    train_normal_only: bool = True
    # per-event labels (BGL first field, flow label columns): these mean normal, these mean "not labelled"
    # (excluded from metrics); any other value is anomalous
    normal_labels: list[str] = field(default_factory=lambda: ["-", "Benign", "BENIGN", "benign", "normal", "Normal"])
    unknown_labels: list[str] = field(default_factory=lambda: ["Background", "background"])
    # "session": metrics per session; "event": per event (each flow inherits its session's score)
    eval_unit: str = "session"
    # flows with eval_unit=event: also report per source-destination pair per window of this many seconds
    # (a pair-window takes its flows' highest score and is anomalous if any of its flows is; 0 = off)
    eval_pair_window_s: float = 0.0
    # flows: quantile buckets for duration/bytes/packets, well-known ports kept, sentence back-off count
    flow_buckets: int = 8
    flow_port_budget: int = 64
    flow_min_count: int = 2
    # flows: the model also reads each flow's field tokens (port, direction, size buckets, ...) as facets beside
    # its sentence token, so a flow that backs off to a coarse sentence keeps its fields (loglm.ingest.flows).
    # Off by default: on cic_flowprep it doubles few-shot kind accuracy on the model's flow vectors but raises
    # the median test FPR (0.0325 -> 0.044, seeds 42/1/2); docs/accuracy.md "Flow facets"
    flow_facets: bool = False
    # CIDRs of the monitored network: flow direction (in/out/int/ext) from addresses; empty = the sensor's
    # own local_orig/local_resp flags
    local_networks: list[str] = field(default_factory=list)
    # inputs read with other reader settings than the ones above, so one corpus can mix formats (Zeek conn
    # logs beside NetFlow Parquet, syslog beside JSON lines): each item has ``match``, a glob on an input
    # file's path or name, and the reader settings that differ (READER_FIELDS: format, fields, header,
    # time_fields, time_format, label_field, entity_fields, max_line_bytes).  The first match wins; other
    # inputs are read with the settings above.  Sessions, splits and the vocabulary are shared.
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):  # checked when the config is composed, before any work
        for i, src in enumerate(self.sources):
            _check(isinstance(src.get("match"), str) and src["match"] != "",
                   f"data.sources[{i}] needs match: a glob on the input path or name, e.g. '*.parquet'")
            extra = sorted(set(src) - {"match", *READER_FIELDS})
            _check(not extra, f"data.sources[{i}] ({src['match']!r}) sets {extra}: only reader settings "
                              f"{list(READER_FIELDS)} can differ per source (sessions, splits and labels are shared)")
        from loglm.ingest.noyear import check_reference

        why = check_reference(self.year_reference)
        _check(why is None, str(why))
        _check(not self.event_fields or self.format not in NOT_LINE_TEXT or
               (self.format == "jsonl" and not self.message_fields),
               f"data.event_fields names the program of raw text lines and JSON lines (data.format=jsonl with a "
               f"message field); data.format={self.format} builds its events from fields of its own"
               + (" (name the program among data.message_fields)" if self.message_fields else ""))
        _check(not self.multiline or self.format not in NOT_LINE_TEXT,
               f"data.multiline joins continuation lines of raw text logs; data.format={self.format} reads "
               "records of its own (JSON objects, flows, sequences)")


# formats whose records are not raw text lines under a header (data.multiline does not apply)
NOT_LINE_TEXT = ("jsonl", "cef", "zeek", "cicflowmeter", "netflow", "vpcflow", "hdfs_keys", "hdfs_blocks", "id_sequences")
# the DataConfig fields that say how a file is read (data.sources may set them per input)
READER_FIELDS = ("format", "fields", "header", "time_fields", "time_format", "label_field", "entity_fields",
                 "event_fields", "max_line_bytes", "message_fields", "multiline", "year_reference")


@dataclass
class TokenizerConfig:
    # Drain-style miner: similarity a line must reach to join an existing template
    sim_threshold: float = 0.4
    max_templates: int = 10_000
    # templates seen fewer times than this in training become UNK
    min_count: int = 1
    gap_buckets: int = 16
    # seconds: timestamps are floored to this clock before time gaps are measured (0: as read).  Set it to the
    # coarsest resolution your logs carry when sources or days differ (CIC-IDS2017's Monday has seconds, its
    # Tuesday and Wednesday minutes): otherwise a model trained on the finer clock reads every later gap as new
    time_resolution_s: float = 0.0
    # mask typed parameters (block ids, IPs, paths, numbers, hex) before mining
    mask_params: bool = True


@dataclass
class ModelConfig:
    name: str = "small"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    max_len: int = 258  # [SUM] + session.max_events + [END]

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.d_model % self.n_heads == 0,
               f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        _check(0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.max_len >= 3, f"model.max_len must be >= 3, got {self.max_len}")


@dataclass
class ObjectiveConfig:
    mask_ratio: float = 0.15
    # weight of the LogBERT-style hypersphere term on the summary token (0 disables it)
    hypersphere_weight: float = 0.1
    center_momentum: float = 0.99
    top_k: int = 5
    # flows with facets (data.flow_facets): each training event's facet reads as "a value training never saw"
    # with this chance, field by field, so the model learns that id and does not lean on one field
    # (loglm.objectives.drop_facets; cic_flowprep seed 42: test FPR 0.0965 at 0, 0.044 at 0.25)
    facet_dropout: float = 0.25
    # each training event that is not a prediction target reads as [UNK] with this chance, so the model learns
    # what an event it never saw means beside the events it predicts (loglm.objectives.hide_as_unseen)
    unk_rate: float = 0.0
    # flows with facets: weight of per-field masked prediction, each masked flow's ten fields predicted from its
    # context beside its sentence token (loglm.objectives.masked_facet_loss; 0: off, the sentence token only)
    facet_loss_weight: float = 0.0

    def __post_init__(self):
        _check(0 < self.mask_ratio < 1, f"objective.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        _check(0 <= self.facet_dropout < 1, f"objective.facet_dropout must be in [0, 1), got {self.facet_dropout}")
        _check(0 <= self.unk_rate < 1, f"objective.unk_rate must be in [0, 1), got {self.unk_rate}")
        _check(self.facet_loss_weight >= 0, f"objective.facet_loss_weight must be >= 0, got {self.facet_loss_weight}")


def _importable(path: str) -> Any:
    """The object a ``_target_`` names (``package.module.name``), imported; without Hydra, so that the
    torch-free engine can build configs."""
    import importlib

    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError("give module.name")
    return getattr(importlib.import_module(module), name)


def _check_target(path: str, where: str, what: str = "class") -> None:
    """A misspelled ``_target_`` is refused when the config is composed, not when the work starts."""
    try:
        _importable(path)
    except Exception as e:
        raise ValueError(f"{where}={path!r} is not an importable {what}: {e}") from None


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    accelerator: str = "cpu"
    devices: int = 1
    precision: str = "32-true"
    num_workers: int = 0
    seed: int = 42
    # the batch of one optimizer step across all training processes: when set, each process takes
    # global_batch_size / world size (world = ray.num_workers on Ray, trainer.devices locally), so the number of
    # steps per epoch and the learning-rate schedule do not change with the number of workers; null: every
    # process takes batch_size (the global batch grows with the world)
    global_batch_size: int | None = None
    log_every_n_steps: int = 10
    patience: int = 5
    progress_bar: bool = True
    # a share of each epoch's batches (<= 1.0), or a number of batches (> 1, e.g. 200)
    limit_train_batches: float = 1.0
    # after Ctrl-C / SIGTERM the job marks its run KILLED and exits; if it is still alive this many seconds
    # later (a step or a lock that does not return), it exits at once (a second signal does so immediately)
    stop_grace_s: float = 60.0
    # a training batch with at least this share of padding skips it in the embeddings and every layer but
    # attention's score step, and draws dropout masks with rand (null: never). It pays from about 10% padding
    # (1.37x HF BERT at 39%: batches drawn at random, without length bucketing); length-bucketed batches
    # (about 2% padding, the default sampler) stay below it and run padded, where that is faster. Ignored under
    # DeepSpeed ZeRO (loglm.training.strategies.unpad_share)
    unpad_share: float | None = 0.1
    # float32 matmuls on a CUDA GPU (torch.set_float32_matmul_precision, set in every training process):
    # "high" lets them use TF32 tensor cores (Lightning's own advice on such GPUs), "highest" keeps full fp32.
    # bf16-mixed steps barely use fp32 matmuls; precision=32-true ones run several times faster on "high".
    # Ignored on CPU
    matmul_precision: str = "high"
    # extra Lightning callbacks, each {_target_: <class>, <its arguments>}, instantiated in every training
    # process beside LogLM's own, e.g. '+trainer.callbacks=[{_target_:lightning.pytorch.callbacks.LearningRateMonitor}]'
    callbacks: list[Any] = field(default_factory=list)

    def train_batches(self) -> float | int:
        """limit_train_batches as Lightning reads it: a float share, or an int number of batches."""
        v = self.limit_train_batches
        return int(v) if v > 1 else float(v)

    def __post_init__(self):
        _check(self.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {self.max_epochs}")
        _check(self.batch_size >= 1, f"trainer.batch_size must be >= 1, got {self.batch_size}")
        _check(_finite(self.lr) and 0 < self.lr <= 10, f"trainer.lr must be in (0, 10], got {self.lr}")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0,
               f"trainer.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0 and self.patience >= 0 and self.devices >= 1 and self.num_workers >= 0,
               "trainer.warmup_steps, patience and num_workers must be >= 0 and trainer.devices >= 1")
        _check(_finite(self.limit_train_batches) and self.limit_train_batches > 0,
               f"trainer.limit_train_batches must be > 0, got {self.limit_train_batches}")
        _check(self.limit_train_batches <= 1 or float(self.limit_train_batches).is_integer(),
               f"trainer.limit_train_batches above 1 counts batches: give a whole number, got {self.limit_train_batches}")
        _check(_finite(self.stop_grace_s) and self.stop_grace_s > 0, f"trainer.stop_grace_s must be > 0, got {self.stop_grace_s}")
        _check(self.unpad_share is None or 0 <= self.unpad_share < 1,
               f"trainer.unpad_share must be in [0, 1) or null, got {self.unpad_share}")
        _check(self.matmul_precision in ("highest", "high", "medium"),
               f"trainer.matmul_precision must be highest, high or medium, got {self.matmul_precision!r}")
        for i, spec in enumerate(self.callbacks):
            _check(isinstance(spec, dict) and isinstance(spec.get("_target_"), str),
                   f"trainer.callbacks[{i}] must be a mapping with a _target_ class, got {spec!r}")
            _check_target(spec["_target_"], f"trainer.callbacks[{i}]._target_")


@dataclass
class LoggerConfig:
    # the tracking backend, a class from _target_: loglm.tracking.MLflowTracking (every run tracked) or
    # loglm.tracking.NoTracking (logger=none: no MLflow at all; run ids are random, models and reports are
    # still written under paths.root, bundles are not registered); a class of your own with their methods
    _target_: str = "loglm.tracking.MLflowTracking"
    # None -> sqlite store at <paths.root>/mlflow.db with artifacts under <paths.root>/mlartifacts
    tracking_uri: str | None = None
    experiment: str = "loglm-pretrain"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        _check_target(self._target_, "logger._target_")


@dataclass
class DetectConfig:
    target_fpr: float = 0.01
    # raw inputs=[...] are read with the data settings the model was trained with ("model": format, header,
    # fields, sessions, from its config.yaml) or with this command's data.* ("command")
    data_from: str = "model"
    # a validation set with fewer normal items than the target needs (1/target_fpr - 1) is refused before
    # training ("refuse"), or calibrated on anyway with a recorded warning ("warn"); loglm/detect/thresholds.py
    small_validation: str = "refuse"
    # session score: "miss_ratio" (share of events outside the model's top-k, tie-broken by mean
    # surprisal), "mean_surprisal", "median_surprisal" (the window's typical event), "max_surprisal",
    # "mean_excess_surprisal" (each event's surprisal minus its prediction's entropy; scorer "views" only)
    score: str = "miss_ratio"
    top_k: int = 5
    # "views": n_views masked views per window (every event masked once; cost constant per window);
    # "rtd": one unmasked pass through a replaced-event-detection head (students distilled with rtd_weight > 0)
    scorer: str = "views"
    n_views: int = 5
    unk_surprisal: float = 20.0
    # miss_ratio: the tie-breaking mean surprisal is divided by this, so a window without misses scores below
    # any window with one (max_events up to 10,000); calibrations made before it existed used 1e4
    tie_scale: float = 1e6
    # an event type training never saw ([UNK]) is an alarm by itself: it lifts its window's score above every
    # window without one (+1 on miss_ratio, +unk_surprisal on the surprisal scores)
    unknown_alarm: bool = True
    # which unit that alarm lifts: "window" (the window holding the unseen event: blocks, sessions) or "event"
    # (the unseen event alone; its window's other events keep the score of the window's known events, and the
    # window alerts through it). null: decided at calibration from data.eval_unit, the unit that is reported
    # (per flow: "event"); recorded in calibration.json, which detection follows
    alarm_unit: str | None = None
    # with alarm_unit=event, what a known event (flow) scores as an item: "own" (the score rule applied to the
    # event alone: its excess surprisal under mean_excess_surprisal, its surprisal under the other surprisal
    # rules, its miss under miss_ratio; its window then scores its highest event, so the window alerts when
    # one of its events does) or "window" (the rule over its window's known events, as before 2026-12-03).
    # Recorded in calibration.json, which detection follows (calibrations without it: "window")
    event_score: str = "own"
    # whether the window's [END] position (the model's surprise that a closed window ends there) counts in the
    # window score. null: decided at calibration from the sessions -- not for time windows (data.session.by
    # window / entity_window: the clock ends them, not their events), yes otherwise (a block or a connection
    # that stops early is an anomaly); recorded in calibration.json, which detection follows
    end_in_score: bool | None = None
    # a closed window shorter than every closed normal training window ended where training never saw a
    # session end, and alarms like an unseen event type (where end_in_score holds: blocks, connections; not time
    # windows). The model cannot judge such an end: on hdfs_loglead the 2-event blocks, all anomalous, were
    # caught or not by the seed (the [END] a 2-event block ends on ranked 5th / 1st / 9th for seeds 42 / 1 / 2)
    short_alarm: bool = True
    # the length of that rule: set at calibration from the training split (calibration.json
    # "min_closed_events"), which detection follows; a value given here is replaced; 0 = no rule
    min_closed_events: int = 0
    # recalibration on a new environment's unlabelled traffic (pipelines.calibrate), with unknown_alarm:
    # "alert": the threshold is the quantile of the windows without an unseen event, and windows holding one
    # alert whatever it is (unlabelled traffic cannot tell a new normal service from an attack; where scans are
    # frequent, ranking them all pushed the threshold above the attacks); "rank": the quantile of all windows
    recalibration_unseen: str = "alert"
    # an analysts' feedback table (loglm feedback) read by recalibration: sessions with a malicious verdict are
    # left out of its traffic, and with "alert" above the windows holding an unseen event in sessions judged
    # benign are ranked with the rest (an analyst said they are this place's normal traffic); others stay aside
    recalibration_feedback: str | None = None
    # windows per scoring batch, and at most this many padded positions per batch (bounded memory on long
    # windows); small batches keep a small encoder in cache (measured best on 2 cores, `make bench`)
    batch_size: int = 64
    max_batch_tokens: int = 1024
    # where the torch model scores and embeds (evaluation, calibration after training, detect, calibrate,
    # tune, embed): "cpu", "cuda" / "cuda:N", or "auto" (a CUDA GPU where there is one). Scores come out in
    # full fp32 on either; on a GPU raise batch_size and max_batch_tokens (e.g. 1024 and 262144), which are
    # sized for a CPU's cache. Exported bundles and the torch-free engine always run on the CPU
    device: str = "cpu"
    evidence_events: int = 5
    expected_per_event: int = 3
    # also write every session's score (Parquet) next to the alerts, for SIEM enrichment and audits
    write_scores: bool = True
    # replace entity values (IPs, users, hosts) by keyed HMAC pseudonyms in alerts and score files
    pseudonymize: bool = False
    # findings (<alerts>.ocsf.jsonl): alerts of one entity at most this many seconds apart are one finding
    group_gap_s: float = 600.0
    # an HTML report (<alerts>.html): timeline, score histogram, PR/ROC with labels, top alerts
    report: bool = True
    # likely ATT&CK techniques on every alert (loglm/analyst/attack.py): from its kind when known, else from
    # the similarity of its evidence to the technique descriptions
    attack_context: bool = True
    # each alert's session vector beside the alerts (<alerts>.vectors.jsonl, loglm/analyst/alert_vectors.py):
    # the triage page finds similar sessions for, and groups, alerts no embeddings file holds (a stream's)
    alert_vectors: bool = True
    # a few-shot kinds file (`loglm kinds fit`): each alert is labelled with the closest known kind and a
    # confidence, "unknown" below the file's min_confidence
    kinds: str | None = None
    pseudonymize_kinds: list[str] = field(default_factory=lambda: ["ip", "src_ip", "dst_ip", "pair", "user", "hostname"])
    pseudonym_key_env: str = "LOGLM_PSEUDONYM_KEY"
    # streaming (detect follow=true): sessions close after this much event-time inactivity; at most this
    # many sessions stay open (the least recently active is closed early): memory stays bounded
    # null: twice the longest pause inside 99.9% of normal training sessions (calibration.json
    # "session_pause_s"), else 60 s
    stream_idle_close_s: float | None = None
    max_open_sessions: int = 100_000
    # streaming: a status line on stderr (lines read and rejected, sessions scored, alerts, sessions open,
    # lines/s) at most this often while lines arrive, for an operator's journal; 0 = none
    stream_status_s: float = 60.0
    # streaming: serve Prometheus metrics (lines, rejections, sessions, alerts, sessions open, the input's
    # age, event-time lag) at http://127.0.0.1:PORT/metrics while the stream runs (0: a free port, printed);
    # null: none
    metrics_port: int | None = None
    # also write each alert as an ArcSight CEF line to <alerts>.cef (batch and stream), for SIEMs and
    # forwarders that take CEF over syslog (loglm.detect.cef_alerts)
    cef: bool = False

    def __post_init__(self):  # checked when the config is composed, before any work
        from loglm.detect.score_core import SCORE_RULES

        _check(self.score in SCORE_RULES, f"detect.score must be one of {tuple(SCORE_RULES)}, got {self.score!r}")
        _check(re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device) is not None,
               f"detect.device must be cpu, auto, cuda or cuda:N, got {self.device!r}")
        _check(not (SCORE_RULES[self.score].excess and self.scorer == "rtd"),
               f"detect.score={self.score} reads each masked prediction's entropy, which detect.scorer=rtd does "
               "not make: use detect.scorer=views")
        if not 0 < self.target_fpr < 1:
            raise ValueError(f"detect.target_fpr must be in (0, 1), got {self.target_fpr}")
        if self.small_validation not in ("refuse", "warn"):
            raise ValueError(f"detect.small_validation must be 'refuse' or 'warn', got {self.small_validation!r}")
        _check(self.alarm_unit in (None, "window", "event"),
               f"detect.alarm_unit must be 'window', 'event' or null, got {self.alarm_unit!r}")
        _check(self.event_score in ("own", "window"),
               f"detect.event_score must be 'own' or 'window', got {self.event_score!r}")
        if self.recalibration_unseen not in ("alert", "rank"):
            raise ValueError(f"detect.recalibration_unseen must be 'alert' or 'rank', got {self.recalibration_unseen!r}")
        _check(self.metrics_port is None or 0 <= self.metrics_port <= 65535,
               f"detect.metrics_port must be a port (0-65535, 0: a free one) or null, got {self.metrics_port}")
        if self.stream_idle_close_s is not None and not self.stream_idle_close_s > 0:
            raise ValueError(f"detect.stream_idle_close_s must be > 0 (or null: from the training data), "
                             f"got {self.stream_idle_close_s}")


@dataclass
class DistillConfig:
    # student architecture (the CPU model)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    dropout: float = 0.0
    # "layers": copy evenly spaced teacher blocks (and embeddings) where shapes match; "fresh": random init
    init: str = "layers"
    temperature: float = 2.0
    kl_weight: float = 1.0
    hard_weight: float = 0.5
    cosine_weight: float = 0.5
    # ELECTRA-style replaced-event detection head trained on teacher-sampled replacements (0 disables);
    # a student with it scores a window in one forward pass (detect.scorer=rtd)
    rtd_weight: float = 2.0
    # replacements are drawn from the teacher's masked-event distribution at this temperature (> 1: less
    # plausible events too), mixed with this share of uniformly drawn events
    proposal_temperature: float = 3.0
    proposal_uniform: float = 0.0
    max_epochs: int = 10
    lr: float = 0.002
    experiment: str = "loglm-distill"


@dataclass
class ExportConfig:
    # also write model.int8.onnx (dynamic int8 quantisation); used when it keeps parity
    quantize: bool = True
    # refuse to write a bundle whose ONNX scores differ from torch by more than this
    parity_atol: float = 1e-3
    # the int8 model is preferred only when its surprisals stay within this of torch's (nats) and it keeps
    # at least 99.9% of the alert decisions; otherwise fp32 is preferred (int8 stays in the bundle)
    int8_parity_atol: float = 0.05
    parity_windows: int = 256
    # attention as ONNX Runtime's fused com.microsoft.MultiHeadAttention op (false: standard ONNX ops only)
    fused_attention: bool = True
    # optional Ed25519 signature over the bundle manifest (MANIFEST.sig): path to a PEM private key
    # (`loglm keygen --out DIR`); detection hosts verify with the public key (`loglm detect --verify-key`)
    signing_key: str | None = None
    registry_name: str = "loglm-detector"
    alias: str = "candidate"
    out: str | None = None


@dataclass
class SuiteConfig:
    # python -m pipelines.evaluate dataset=<protocol>: LogLM and baselines on one split (conf/dataset)
    enabled: bool = False
    protocol: str | None = None
    # conf/baseline/<name>.yaml each (a factory from _target_ and its settings; loglm/baselines/detectors.py).
    # DeepLog twice: scored by its most surprising event, and by its paper's top-g rule; which is its best
    # depends on the data (hdfs_keys F1 0.99 vs 0.76; hdfs_loglead 0.16 vs 0.73; openstack_kalaki 0.00 vs 0.96)
    baselines: list[str] = field(default_factory=lambda: ["deeplog", "deeplog_topg", "pca", "iforest"])
    # trained baselines: null = DeepLog gets LogLM's trainer.max_epochs and early-stops on validation normal
    # sessions with trainer.patience, as LogLM does; KitNET its own best measured (10 epochs)
    baseline_epochs: int | None = None
    # tokenizer settings the window baselines (DeepLog, PCA, IsolationForest on counts) read their events with,
    # where they differ from LogLM's best: the suite prepares the same inputs a second time with them
    # (<data.name>.baselines, the same sessions, splits and test items, another vocabulary), so every model
    # runs at its own best in one job. Empty: the baselines read LogLM's vocabulary
    baseline_tokenizer: dict[str, Any] = field(default_factory=dict)
    # where eval_<protocol>.md/.json go (default: reports/ next to paths.root)
    reports_dir: str | None = None

    def __post_init__(self):  # each baseline is conf/baseline/<name>.yaml: a missing one is refused up front
        from loglm.baselines.detectors import baseline_path

        for name in self.baselines:
            baseline_path(name)
        known = {f.name for f in dataclasses.fields(TokenizerConfig)}
        unknown = sorted(set(self.baseline_tokenizer) - known)
        _check(not unknown, f"suite.baseline_tokenizer: unknown tokenizer setting(s) {unknown}; "
                            f"known: {sorted(known)}")


@dataclass
class DemoConfig:
    # second stage of the demo: whole HDFS block lifetimes (measurable detection quality)
    blocks_data: str | None = "hdfs_blocks_sample"
    blocks_epochs: int = 10


@dataclass
class SynthConfig:
    # python -m pipelines.synth: a generated raw HDFS corpus from the shipped block lifecycles (loglm.synth)
    lines: int = 1_000_000
    anomaly_rate: float = 0.03
    blocks_per_s: float = 10.0
    seed: int = 0
    batch_blocks: int = 2000
    # null: the shipped data/hdfs_loglead sample and its anomalous block ids
    source: str | None = None
    source_anomalous_ids: str | None = None

    def __post_init__(self):
        _check(self.lines >= 1, f"synth.lines must be >= 1, got {self.lines}")
        _check(0 <= self.anomaly_rate <= 1, f"synth.anomaly_rate must lie in [0, 1], got {self.anomaly_rate}")
        _check(self.blocks_per_s > 0, f"synth.blocks_per_s must be > 0, got {self.blocks_per_s}")


@dataclass
class StrategyConfig:
    # the factory of the Lightning strategy: a function (strategy config, trainer config, on_ray) -> a
    # Strategy or Lightning's name for one (loglm.training.strategies: single, ddp, deepspeed); a strategy of
    # your own is a YAML file in conf/strategy/ naming your function
    _target_: str = "loglm.training.strategies.single"
    # the label runs are tagged with (conf/strategy: single, ddp, deepspeed_stage2, deepspeed_stage3)
    name: str = "single"
    # DeepSpeed ZeRO stage (0: not DeepSpeed); ZeRO writes its own sharded checkpoints, and ZeRO-3 shards the
    # weights (gathered to one fp32 file at the end)
    zero_stage: int = 0
    offload_optimizer: bool = False
    allgather_bucket_size: int = 200_000_000
    reduce_bucket_size: int = 200_000_000

    def __post_init__(self):
        _check(self.zero_stage in (0, 1, 2, 3), f"strategy.zero_stage must be 0 (no ZeRO), 1, 2 or 3, got {self.zero_stage}")
        _check_target(self._target_, "strategy._target_", "function")

    @property
    def sharded_checkpoints(self) -> bool:
        """DeepSpeed writes its own (sharded) checkpoints: LogLM's verified single-file checkpoint I/O is not used."""
        return self.zero_stage > 0

    @property
    def shards_weights(self) -> bool:
        """ZeRO-3: no process holds the whole model; weights come from the final checkpoint, gathered."""
        return self.zero_stage == 3


@dataclass
class LauncherConfig:
    # "local": this process (and trainer.devices processes); "ray": Ray Train workers
    name: str = "local"

    def __post_init__(self):
        _check(self.name in ("local", "ray"), f"launcher.name must be local or ray, got {self.name!r}")


@dataclass
class RayConfig:
    # null: start a private local Ray instance on 127.0.0.1; "auto" or "ray://host:10001": join a cluster
    address: str | None = None
    # CPUs of the private local instance (null = all)
    num_cpus: int | None = None
    # prepare: input lines per read task (backend=ray, and backend=local with several workers); each task
    # writes a file per spill partition, so fewer, bigger tasks write fewer small files (16M lines on 2
    # workers: 100k -> 500k took prepare from 10.6 to 9.6 s at 1M lines, 37.6 -> 34.5 s at 4M)
    lines_per_task: int = 500_000
    # pretraining launcher=ray: workers, GPUs, resources per worker, where checkpoints go
    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    # how Ray Train places the workers: PACK (fewest nodes), SPREAD (one per node where it can), ...
    placement_strategy: str = "PACK"
    storage_path: str | None = None
    max_failures: int = 2


@dataclass
class TuneConfig:
    # analysts' verdicts: benign sessions are trained on as normal, malicious ones are kept out
    feedback: str | None = None
    max_epochs: int = 5
    lr: float = 3e-4
    # share of the new traffic's sessions the new threshold is calibrated on (not trained on)
    val_frac: float = 0.3
    # the registered version gets this alias; `loglm model promote` moves "champion" to it
    alias: str = "candidate"
    export: bool = True
    # templates (log) or flow sentences the model never saw, found in the new traffic's training sessions at
    # least tokenizer.min_count times, become new tokens (their embeddings start from the known ones' mean):
    # without it they stay [UNK] and the tuned model cannot learn them
    grow_vocab: bool = True

    def __post_init__(self):
        _check(self.max_epochs >= 1 and 0 < self.val_frac < 1 and 0 < self.lr <= 10,
               f"tune.max_epochs >= 1, tune.val_frac in (0, 1) and tune.lr in (0, 10] (got {self.max_epochs}, "
               f"{self.val_frac}, {self.lr})")


@dataclass
class RootConfig:
    stage: str = "pretrain"
    # prepare: "local" (this process) or "ray" (Ray Data parses and masks the input in parallel tasks)
    backend: str = "local"
    # prepare backend=local: processes reading and building sessions (null = one per core; inputs under 32 MiB
    # are read in this process)
    workers: int | None = None
    # prepare: show the first N lines of each input as prepare reads them (time, entities, session, event
    # text, or the rejection reason) and stop; nothing is written (loglm.ingest.preview)
    preview: int | None = None
    ray: RayConfig = field(default_factory=RayConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    # model directory or MLflow run id (detect / evaluate)
    ckpt: str | None = None
    # raw input files or directories for detect; empty -> the prepared data's test split
    inputs: list[str] = field(default_factory=list)
    # where detect writes alerts (default: <model dir>/alerts/<data.name>.jsonl)
    out: str | None = None
    split: str = "test"
    # detect: follow the inputs (growing files, side by side; or "-" for stdin, or a loopback syslog listener
    # tcp://127.0.0.1:PORT / udp://127.0.0.1:PORT, alone) and alert as sessions close;
    # follow_exit_s ends the run after that long without new lines (null = follow forever)
    follow: bool = False
    follow_exit_s: float | None = None
    # where following a file begins: "resume" (after the last line an earlier run with the same out scored,
    # saved in <out>.follow.json, when the file is still that one; else its first line; outputs appended),
    # "start" (its first line; outputs started empty) or "end" (lines written from now on; outputs appended)
    follow_from: str = "resume"
    # embed: one vector per event too (context half and own half), into <out>.events.parquet
    embed_events: bool = False
    demo: DemoConfig = field(default_factory=DemoConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # teacher model for distillation: model directory or MLflow run id
    teacher: str | None = None
    # an exported bundle directory (torch-free detection)
    bundle: str | None = None
    # continue a stopped pretraining or distillation run: its MLflow run id, a Lightning checkpoint path, or
    # auto (the newest unfinished run of the same config)
    resume_from: str | None = None
    # start pretraining from a trained model's weights (a new run; same vocabulary): tuning
    init_from: str | None = None
    tune: TuneConfig = field(default_factory=lambda: TuneConfig())
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self):  # pairs of settings that only fail together, refused before any work
        _check(not (self.strategy.shards_weights and self.launcher.name == "local"),
               "strategy=deepspeed_stage3 (ZeRO-3) runs under launcher=ray, where it is tested (2 workers, "
               "tests/test_ray_train.py); with launcher=local use strategy=deepspeed_stage2, ddp or single")
        _check(not (self.stage == "distill" and self.strategy.shards_weights),
               "distillation trains a small student beside a frozen teacher: use strategy=single, ddp or "
               "deepspeed_stage2 (ZeRO-3 gathers only a pretrained encoder)")
        _check(not (self.resume_from and self.init_from),
               "resume_from continues a run, init_from starts a new one from a model's weights: give one")
        g, world = self.trainer.global_batch_size, self.world_size()
        _check(g is None or (g >= world and g % world == 0),
               f"trainer.global_batch_size={g} must be a multiple of the world size {world} "
               f"({'ray.num_workers' if self.launcher.name == 'ray' else 'trainer.devices'})")

    def world_size(self) -> int:
        """Training processes: Ray Train workers, or Lightning devices on this machine."""
        return self.ray.num_workers if self.launcher.name == "ray" else self.trainer.devices

    def per_process_batch(self) -> int:
        """Sessions per step in one training process (trainer.global_batch_size split over the world)."""
        g = self.trainer.global_batch_size
        return self.trainer.batch_size if g is None else g // self.world_size()


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def register_schema() -> None:
    """Register the typed root schema and the ``${loglm_root:}`` resolver (the project checkout)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    if "schema.yaml" not in store.repo:  # storing converts the whole dataclass tree: 0.23 s, once a process
        store.store(name="schema", node=RootConfig)
    if not OmegaConf.has_resolver("loglm_root"):
        OmegaConf.register_new_resolver("loglm_root", lambda: str(PROJECT_ROOT))


def materialize(cfg: Any) -> RootConfig:
    """A composed Hydra config as the typed dataclass tree every ``run(cfg)`` takes."""
    from omegaconf import OmegaConf

    if isinstance(cfg, RootConfig):
        return cfg
    unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=False), RootConfig)
    if unknown:
        raise ValueError("unknown config key" + ("s " if len(unknown) > 1 else " ") + "; ".join(unknown)
                         + " (a key added with + must exist in the schema, loglm/config.py)")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def unknown_keys(tree: Any, schema: type, prefix: str = "") -> list[str]:
    """Dotted paths in ``tree`` that ``schema`` (a dataclass) has no field for, each with the closest field
    name: ``+model.d_modle=64`` would otherwise be composed and then dropped without a word."""
    import difflib
    import typing

    if not isinstance(tree, dict) or not dataclasses.is_dataclass(schema):
        return []
    hints = typing.get_type_hints(schema)
    out = []
    for key, value in tree.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            out.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
            continue
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out.extend(unknown_keys(value, kind, f"{prefix}{key}."))
    return out


def compose(config_name: str = "pretrain", overrides: list[str] | None = None) -> RootConfig:
    """The typed config a pipeline gets for these command-line overrides (for notebooks, tests, benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    return materialize(cfg)


def data_config_from_dict(d: dict) -> DataConfig:
    """Rebuild a DataConfig sent to a Ray task as a plain dict."""
    d = dict(d)
    d["session"] = SessionConfig(**d["session"])
    d["split"] = SplitConfig(**d["split"])
    return DataConfig(**d)


def stored_data(stored):
    """A model's recorded data settings as it read its lines: a model from before ``data.event_fields``
    (its record has no such key) read each line's content alone, and so goes on doing so."""
    if "event_fields" in stored:
        return stored
    if isinstance(stored, dict):
        return {**stored, "event_fields": []}
    from omegaconf import OmegaConf

    return OmegaConf.merge(stored, {"event_fields": []})


def trained_data_config(model_dir: Path, fallback: DataConfig, labels: bool = True) -> DataConfig:
    """The data settings a model was trained with (its ``config.yaml``), so a student, a detector or a
    recalibration ingests logs the same way; ``fallback`` when the model folder records none.  ``labels=False``
    (detection, recalibration): without the training set's label list (``anomalous_ids``)."""
    from omegaconf import OmegaConf

    path = Path(model_dir) / "config.yaml"
    if path.is_file():
        stored = OmegaConf.load(path).data
        data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), stored_data(stored)))
    else:
        data = fallback
    return data if labels else dataclasses.replace(data, anomalous_ids=None)


def load_group(group: str, name: str) -> Any:
    """One option of a config group (e.g. data/hdfs_blocks_sample) as its typed dataclass."""
    from omegaconf import OmegaConf

    register_schema()
    schema = {"data": DataConfig, "model": ModelConfig, "tokenizer": TokenizerConfig, "detect": DetectConfig,
              "distill": DistillConfig, "export": ExportConfig, "strategy": StrategyConfig,
              "launcher": LauncherConfig,
              "objective": ObjectiveConfig, "trainer": TrainerConfig, "logger": LoggerConfig}[group]
    path = PROJECT_ROOT / "conf" / group / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config {group}={name} ({path})")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path)))


def to_plain(cfg: Any) -> dict:
    """A fully resolved plain dict (what Ray workers and MLflow params get)."""
    from omegaconf import OmegaConf

    if isinstance(cfg, dict):
        return cfg
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
