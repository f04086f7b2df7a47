"""Training throughput and MFU, logged while training: Lightning's ThroughputMonitor, with a dense peak of
our own where Lightning has none or a sparse one.

Lightning 2.6 finds no peak for a GPU that names itself plainly ``NVIDIA H200`` (it knows only names with
``SXM1``/``NVL1``, and reads ``FLOPs not found``), and its H200 figures are the 2:4-sparse ones (2,000
TFLOP/s bf16), twice what dense training can reach.  MFU here is against the dense tensor-core peak of
NVIDIA's datasheets, as ``benchmarks/gpu_throughput.py`` computes it.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

# dense bf16/fp16 tensor-core peaks (FLOP/s) per GPU, from NVIDIA's datasheets: H200 SXM as H100 SXM (the
# same GH100 chip and clocks); H200 NVL at its lower power
_DENSE_HALF_PEAK = {"h200 nvl": 835.5e12, "h200": 989.4e12}


def dense_peak_flops(device_name: str, dtype) -> float | None:
    """The dense peak FLOP/s of a GPU named ``device_name`` (``torch.cuda.get_device_name``) in ``dtype``, for
    the GPUs whose Lightning figure is missing or sparse; None: use Lightning's."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = device_name.lower()
    for key, peak in _DENSE_HALF_PEAK.items():  # the longer key first
        if all(part in name for part in key.split()):
            return peak
    return None


def throughput_monitor(window: int):
    """Lightning's ThroughputMonitor over the last ``window`` steps, logged with the other metrics:
    ``train/device/samples_per_sec`` (windows), ``train/device/items_per_sec`` (real, unpadded positions),
    ``train/device/flops_per_sec`` (the module's ``flops_per_batch``), and ``train/device/mfu`` on a GPU
    whose peak is known (Lightning's table: A100, H100, ...; H200 from ``dense_peak_flops``); with several
    processes also the global rates."""
    from lightning.pytorch.callbacks import ThroughputMonitor
    from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

    class Monitor(ThroughputMonitor):
        def setup(self, trainer, pl_module, stage: str) -> None:
            super().setup(trainer, pl_module, stage)
            device = trainer.strategy.root_device
            if device.type != "cuda":
                return
            peak = dense_peak_flops(torch.cuda.get_device_name(device), _plugin_to_compute_dtype(trainer.precision_plugin))
            if peak is not None:
                self.available_flops = peak
                for throughput in self._throughputs.values():
                    throughput.available_flops = peak

    return Monitor(batch_size_fn=lambda b: int(b["tokens"].shape[0]),
                   length_fn=lambda b: int(b["pad_mask"].sum()), window_size=max(2, window), separator="/")


class EventsPerSecond(pl.Callback):
    """``perf/events_per_s``: real events (no [SUM]/[END], no padding) trained per second of the epoch's wall
    time, summed over processes.  A callback, not the module's own epoch-end hook: Lightning runs callbacks'
    ``on_train_epoch_end`` before the module's, so Ray Train's report callback (placed after this one) sent
    each epoch's metrics without it, and a Ray run's result read ``perf/events_per_s: None``."""

    def __init__(self):
        self.events, self.t0 = 0, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.events, self.t0 = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # summed on the batch's device, read once at the epoch's end: no device sync per step
        self.events = self.events + batch["pad_mask"].sum() - batch["tokens"].shape[0]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        dt = time.perf_counter() - self.t0
        if dt > 0:
            pl_module.log("perf/events_per_s", float(self.events) / dt, sync_dist=True, reduce_fx="sum")
