"""`loglm detect --bundle DIR INPUT...`: raw logs -> alerts with an exported bundle, on CPU, torch-free."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from loglm.config import DataConfig, DetectConfig, RootConfig, SessionConfig


def bundle_config(bundle, inputs: list[str], out: str | None, batch_size: int | None = None) -> RootConfig:
    """The detection config a bundle carries (ingest format, session rule, scoring), plus the inputs."""
    info = bundle.info
    from loglm.config import stored_data

    data = dict(stored_data(dict(info["data"])))
    data["session"] = SessionConfig(**data["session"])
    cfg = RootConfig(data=DataConfig(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(DataConfig)}}),
                     detect=DetectConfig(**info["detect"]), inputs=list(inputs), out=out)
    if batch_size:
        cfg.detect.batch_size = batch_size
    return cfg


def run(bundle_dir: str, inputs: list[str], out: str | None = None, threads: int = 0, variant: str | None = None,
        batch_size: int | None = None, follow: bool = False, follow_exit_s: float | None = None,
        verify_key: str | None = None, report: bool = True, kinds: str | None = None,
        follow_from: str = "resume", cef: bool = False, metrics_port: int | None = None) -> dict:
    """``report=False``: no HTML report, and so no matplotlib import (onnxruntime, numpy and pyarrow only)."""
    from loglm.detect.detector import detect_with
    from loglm.detect.detector import follow as follow_stream
    from loglm.engine.runtime import Bundle

    if str(bundle_dir).startswith("models:/"):  # a registered version: mlflow is imported for this lookup only
        from loglm.analyst.registry import resolve

        bundle_dir = str(resolve(str(bundle_dir), os.environ.get("LOGLM_RUNS", "runs")))
    bundle = Bundle(Path(bundle_dir), variant=variant, threads=threads, verify_key=verify_key)
    if not bundle.info.get("raw_log_ingest", True):
        raise ValueError(f"bundle {bundle_dir} was trained on pre-sequenced data (format "
                         f"{bundle.info['data']['format']!r}); it cannot parse raw log lines")
    cfg = bundle_config(bundle, inputs, out or str(Path(bundle_dir) / "alerts" / "detect.jsonl"), batch_size)
    cfg.detect.report = cfg.detect.report and report
    if kinds:
        cfg.detect.kinds = kinds
    cfg.detect.cef = cef
    cfg.detect.metrics_port = metrics_port
    if follow:
        cfg.follow_exit_s, cfg.follow_from = follow_exit_s, follow_from
        summary = follow_stream(cfg, bundle, bundle.scorer())
    else:
        summary = detect_with(cfg, bundle, bundle.scorer())
    summary["variant"] = bundle.variant
    return summary
