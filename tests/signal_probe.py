"""`python tests/signal_probe.py PHASE MARKER [overrides...]`: pipelines.pretrain with a pause at PHASE, so a
test can send a stop signal while the job is exactly there.  When the job reaches the phase (after the first
epoch's checkpoint exists, so resuming is possible), it writes MARKER and sleeps inside the phase.

PHASE: train_step | validation | checkpoint (inside the checkpoint swap that defers signals) | calibration |
hang (the KILLED bookkeeping after a stop never returns: the watchdog must end the process).
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

phase, marker = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pause(seconds: float = 60.0) -> None:
    marker.write_text(phase)
    time.sleep(seconds)  # a stop signal lands here


def after_first_epoch(module) -> bool:
    return not marker.exists() and module.current_epoch >= 1


if phase in ("train_step", "validation"):
    from loglm.training.module import LogLMModule

    name = f"{phase}_step" if phase == "validation" else "training_step"
    original = getattr(LogLMModule, name)

    def step(self, batch, batch_idx):
        if after_first_epoch(self):
            pause()
        return original(self, batch, batch_idx)

    setattr(LogLMModule, name, step)
elif phase == "checkpoint":
    import loglm.training.checkpoint_io as cio

    original_write = cio.atomic_write_json
    calls = []

    def write_sidecar(path, obj):  # runs inside deferred_signals(), between the checkpoint and its digest
        calls.append(path)
        if len(calls) == 2 and not marker.exists():
            pause(3.0)
        return original_write(path, obj)

    cio.atomic_write_json = write_sidecar
elif phase == "calibration":
    import loglm.detect.calibrate as cal

    original_calibrate = cal.calibrate

    def calibrate(*args, **kwargs):
        pause()
        return original_calibrate(*args, **kwargs)

    cal.calibrate = calibrate
elif phase == "hang":
    import loglm.training.job as job
    from loglm.training.module import LogLMModule

    original_step = LogLMModule.training_step

    def step(self, batch, batch_idx):
        if after_first_epoch(self):
            marker.write_text(phase)
        return original_step(self, batch, batch_idx)

    def stopped_forever(*args, **kwargs):
        time.sleep(600)  # e.g. a tracking store that never answers

    LogLMModule.training_step = step
    job.stopped = stopped_forever
else:
    raise SystemExit(f"unknown phase {phase}")

sys.argv = ["pipelines.pretrain", *sys.argv[3:]]
runpy.run_module("pipelines.pretrain", run_name="__main__")
