"""The torch-free bundle runtime: an exported bundle (ONNX model, vocabulary, calibration, ingest settings), checked against its manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from loglm.artifacts import check_calibration, check_vocab_size, inside, verify_manifest
from loglm.detect.score_core import log_softmax, rtd_outputs_from_logits
from loglm.vocab import Vocabulary

BUNDLE_FORMAT = "loglm-bundle/1"
# a public key here makes every bundle need a valid signature by its private key (loglm/signing.py)
VERIFY_KEY_ENV = "LOGLM_BUNDLE_VERIFY_KEY"
REQUIRED = ("model.onnx", "vocab.json", "calibration.json", "bundle.json", "model.safetensors", "model_card.md")


class Bundle:
    def __init__(self, folder: Path, variant: str | None = None, threads: int = 0, verify: bool = True,
                 verify_key: str | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"bundle directory not found: {self.folder}")
        verify_key = (verify_key or os.environ.get(VERIFY_KEY_ENV) or None) if verify else None
        self.signature = None
        if verify_key:  # authenticity before integrity: the signed manifest is what the files are checked against
            from loglm.signing import verify_folder

            self.signature = verify_folder(self.folder, verify_key)
        manifest = verify_manifest(self.folder, REQUIRED) if verify else None
        self.info = json.loads((self.folder / "bundle.json").read_text())
        if self.info.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{self.folder}: not a LogLM bundle (format={self.info.get('format')!r})")
        self.variant = variant or self.info["preferred_variant"]
        if self.variant not in self.info["variants"]:
            raise ValueError(f"{self.folder}: no model variant {self.variant!r} (has {sorted(self.info['variants'])})")
        onnx_file = self.info["variants"][self.variant]["file"]
        if not inside(self.folder, onnx_file) or (manifest is not None and onnx_file not in manifest["files"]):
            raise ValueError(f"{self.folder}: variant {self.variant!r} names {onnx_file!r}, which is not a file of "
                             "this bundle's manifest; a bundle never reads files outside itself")
        self.vocab = Vocabulary.load(self.folder / "vocab.json")
        if "encoder" in self.info:
            check_vocab_size(self.vocab.size, self.info["encoder"]["vocab_size"], self.folder)
        self.calibration = check_calibration(json.loads((self.folder / "calibration.json").read_text()),
                                             self.folder / "calibration.json")
        self.meta = {"run_id": self.info.get("run_id"), "bundle": self.folder.name, "variant": self.variant}
        # batches run concurrently, one onnxruntime thread each: on small encoders that beats splitting each
        # op across threads (measured ~1.3x on 2 cores, `make bench` key inference)
        self.workers = threads if threads > 0 else len(os.sched_getaffinity(0))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.folder / onnx_file), opts, providers=["CPUExecutionProvider"])
        outputs = {o.name for o in self.session.get_outputs()}
        self.outputs_top_k = "top_tokens" in outputs
        self.has_embedding = "window_vector" in outputs

    def embed(self, tok: np.ndarray, gap: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """(B, d) unit vectors of padded windows (loglm.analyst.embed)."""
        if not self.has_embedding:
            raise ValueError(f"bundle {self.folder} was exported before its graph had a window_vector output: "
                             "export it again (python -m pipelines.export ckpt=<model>)")
        return self.session.run(["window_vector"], {"tokens": tok, "gaps": gap, "pad_mask": pad})[0]

    def embed_events(self, tok: np.ndarray, gap: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """(B, L, 2d) vectors of every position (context half, own half; with flow facets each facet too:
        (B, L, (2 + F) d); LogEncoder.event_embedding)."""
        self.embed(tok[:1], gap[:1], pad[:1])  # the same clear error for an older bundle
        return self.session.run(["event_vectors"], {"tokens": tok, "gaps": gap, "pad_mask": pad})[0]

    def logp(self, tok: np.ndarray, gap: np.ndarray, pad: np.ndarray, target: np.ndarray) -> np.ndarray:
        logits = self.session.run(["logits"], {"tokens": tok, "gaps": gap, "pad_mask": pad})[0]
        return log_softmax(logits[target].astype(np.float32))

    def rtd(self, tok: np.ndarray, gap: np.ndarray, pad: np.ndarray):
        feed = {"tokens": tok, "gaps": gap, "pad_mask": pad}
        if self.outputs_top_k:
            return tuple(self.session.run(["replaced", "top_tokens", "top_logp"], feed))
        logits, replaced = self.session.run(["logits", "replaced"], feed)  # bundles exported with full logits
        return rtd_outputs_from_logits(logits, replaced, self.info["detect"]["expected_per_event"])

    def scorer(self):
        from loglm.detect.score_core import score_windows_rtd_with, score_windows_with

        def score(toks, gaps, closed, dcfg):
            if dcfg.scorer == "rtd":
                return score_windows_rtd_with(self.rtd, toks, gaps, closed, dcfg, self.workers)
            return score_windows_with(self.logp, toks, gaps, closed, dcfg, self.workers)

        return score
