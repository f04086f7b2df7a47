"""The `loglm` command: `loglm detect --bundle DIR INPUT...` (torch-free engine) or `loglm <pipeline> key=value ...`."""

from __future__ import annotations

import argparse
import json
import runpy
import sys

PIPELINES = ("prepare", "pretrain", "distill", "export", "detect", "calibrate", "evaluate", "embed", "demo")


def detect_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm detect", description="Score raw logs with an exported LogLM bundle (CPU).")
    p.add_argument("--bundle", required=True, help="bundle directory written by `pipelines.export`")
    p.add_argument("--out", help="alerts file (JSON lines); default <bundle>/alerts/detect.jsonl")
    p.add_argument("--threads", type=int, default=0, help="batches scored in parallel, one onnxruntime thread each (0 = one per core)")
    p.add_argument("--variant", choices=["fp32", "int8"], help="model variant (default: the bundle's preferred)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--follow", action="store_true",
                   help="stream: follow growing files side by side (or, alone, '-' for stdin or tcp://127.0.0.1:PORT / "
                        "udp://127.0.0.1:PORT to receive syslog from a local relay), alerting as sessions close")
    p.add_argument("--follow-exit-s", type=float, help="with --follow: stop after this long without new lines")
    p.add_argument("--follow-from", choices=["resume", "start", "end"], default="resume",
                   help="with --follow on a file: go on after the last line a run with this --out scored (resume, "
                        "the default; saved in <out>.follow.json), from its first line (start), or its end (end)")
    p.add_argument("--verify-key", help="PEM Ed25519 public key: refuse a bundle not signed by its private key "
                                        "(default: $LOGLM_BUNDLE_VERIFY_KEY)")
    p.add_argument("--kinds", help="few-shot kinds file (`loglm kinds fit`): alerts get a kind and ATT&CK from it")
    p.add_argument("--cef", action="store_true",
                   help="also write each alert as an ArcSight CEF line to <out>.cef (for a SIEM's CEF/syslog intake)")
    p.add_argument("--metrics-port", type=int,
                   help="with --follow: Prometheus metrics at http://127.0.0.1:PORT/metrics while the stream runs "
                        "(0: a free port, printed)")
    p.add_argument("--no-report", action="store_true",
                   help="skip the HTML report (<out>.html); the engine then imports no plotting library")
    p.add_argument("inputs", nargs="+", help="raw log files or directories (with --follow also -, tcp://, udp://)")
    a = p.parse_args(argv)
    from loglm.engine.detect import run
    from loglm.signals import until_exit

    with until_exit():  # a stream that ended as a stop signal arrived still prints its summary
        try:
            summary = run(a.bundle, a.inputs, a.out, a.threads, a.variant, a.batch_size, a.follow, a.follow_exit_s,
                          a.verify_key, report=not a.no_report, kinds=a.kinds, follow_from=a.follow_from, cef=a.cef,
                          metrics_port=a.metrics_port)
        except (FileNotFoundError, ValueError) as e:
            print(f"loglm detect: error: {e}", file=sys.stderr)
            return 2
        json.dump(summary, sys.stdout, indent=2)
        print()
        sys.stdout.flush()
    return 0


def embed_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm embed",
                                description="One vector per session of raw logs, with an exported bundle (CPU, torch-free).")
    p.add_argument("--bundle", required=True, help="bundle directory written by `pipelines.export`")
    p.add_argument("--out", help="Parquet file (default <bundle>/embeddings/inputs.parquet)")
    p.add_argument("--threads", type=int, default=0, help="batches embedded in parallel (0 = one per core)")
    p.add_argument("--events", action="store_true", help="one vector per event too, into <out>.events.parquet")
    p.add_argument("--verify-key", help="PEM Ed25519 public key the bundle must be signed with")
    p.add_argument("inputs", nargs="+", help="raw log files or directories (with --follow also -, tcp://, udp://)")
    a = p.parse_args(argv)
    import dataclasses
    from pathlib import Path

    from loglm.analyst.embed import run
    from loglm.engine.detect import bundle_config
    from loglm.engine.runtime import Bundle

    try:
        bundle = Bundle(Path(a.bundle), threads=a.threads, verify_key=a.verify_key)
        cfg = dataclasses.replace(bundle_config(bundle, a.inputs, a.out), embed_events=a.events)
        summary = run(cfg, bundle, bundle.embed, bundle.workers, event_fn=bundle.embed_events)
    except (FileNotFoundError, ValueError) as e:
        print(f"loglm embed: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def calibrate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm calibrate", description=(
        "Set an exported bundle's threshold again from recent, unlabelled traffic (CPU, torch-free): a new bundle "
        "beside it; the old one is untouched (rolling back is using it again)."))
    p.add_argument("--bundle", required=True, help="bundle directory written by `pipelines.export`")
    p.add_argument("--out", help="the new bundle's directory (default <bundle>-recal-<time>, beside it)")
    p.add_argument("--target-fpr", type=float, help="target false-positive rate (default: the bundle's)")
    p.add_argument("--threads", type=int, default=0, help="batches scored in parallel (0 = one per core)")
    p.add_argument("--verify-key", help="PEM Ed25519 public key the bundle must be signed with")
    p.add_argument("--signing-key", help="PEM Ed25519 private key to sign the new bundle (without it, unsigned)")
    p.add_argument("--variant", choices=["fp32", "int8"],
                   help="the variant detection will use (default: the bundle's preferred)")
    p.add_argument("--feedback", help="analysts' verdicts on that traffic's alerts (the `loglm feedback` table): "
                   "sessions marked malicious are left out, unseen events of sessions marked benign ranked "
                   "(detect.recalibration_feedback)")
    p.add_argument("inputs", nargs="+", help="recent raw logs or flows of the place the bundle will watch")
    a = p.parse_args(argv)
    from loglm.detect.recalibrate import run_bundle

    try:
        summary = run_bundle(a.bundle, a.inputs, a.out, a.target_fpr, a.threads, a.verify_key, a.signing_key,
                             a.variant, feedback=a.feedback)
    except (FileNotFoundError, ValueError) as e:
        print(f"loglm calibrate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def keygen_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm keygen", description="Write an Ed25519 key pair for signing bundles.")
    p.add_argument("--out", required=True, help="folder for signing_key.pem (private) and verify_key.pem (public)")
    a = p.parse_args(argv)
    from pathlib import Path

    from loglm.signing import generate_keypair

    try:
        private, public = generate_keypair(Path(a.out))
    except ValueError as e:
        print(f"loglm keygen: error: {e}", file=sys.stderr)
        return 2
    print(f"signing key (keep private): {private}\nverify key (for detection hosts): {public}\n"
          f"sign: python -m pipelines.export ckpt=<model> export.signing_key={private}\n"
          f"verify: loglm detect --bundle <bundle> --verify-key {public} <inputs>")
    return 0


USAGE = (f"usage: loglm detect --bundle DIR [--verify-key PEM] INPUT...   (torch-free detection)\n"
         f"       loglm embed --bundle DIR [--out FILE] INPUT...          (one vector per session, torch-free)\n"
         f"       loglm calibrate --bundle DIR [--target-fpr F] INPUT...  (threshold from recent traffic, torch-free)\n"
         f"       loglm similar --embeddings F --session ID              (similar sequences)\n"
         f"       loglm kinds fit --embeddings F --examples CSV --out K  (few-shot kinds for detect.kinds=)\n"
         f"       loglm feedback --alerts F --alert-id ID --verdict benign|malicious\n"
         f"       loglm triage --alerts F [--embeddings E]                (triage page on 127.0.0.1)\n"
         f"       loglm model list|promote|rollback ...                   (registry: champion / candidate)\n"
         f"       loglm keygen --out DIR                                 (bundle signing keys)\n"
         f"       loglm {{{','.join(PIPELINES)}}} [key=value ...]   (the pipelines; key=value as in conf/)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv and argv[0] == "detect" and any(a.startswith("--bundle") or a in ("-h", "--help") for a in argv[1:]):
        return detect_main(argv[1:])
    if argv and argv[0] == "calibrate" and any(a.startswith("--bundle") or a in ("-h", "--help") for a in argv[1:]):
        return calibrate_main(argv[1:])
    if argv and argv[0] == "keygen":
        return keygen_main(argv[1:])
    if argv and argv[0] == "embed" and any(a.startswith("--bundle") or a in ("-h", "--help") for a in argv[1:]):
        return embed_main(argv[1:])
    from loglm.analyst.cli import COMMANDS

    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    if not argv or argv[0] not in PIPELINES:
        print(USAGE, file=sys.stderr)
        return 2
    sys.argv = [f"pipelines.{argv[0]}", *argv[1:]]
    runpy.run_module(f"pipelines.{argv[0]}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
