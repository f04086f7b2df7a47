"""MFU while training: a dense peak for the GPUs Lightning's table misses or lists sparse (H200)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def test_dense_peaks_for_h200_names_and_none_where_lightnings_table_is_used():
    from loglm.training.throughput import dense_peak_flops

    assert dense_peak_flops("NVIDIA H200", torch.bfloat16) == 989.4e12  # how an H200 SXM names itself
    assert dense_peak_flops("NVIDIA H200 NVL", torch.float16) == 835.5e12
    assert dense_peak_flops("NVIDIA H200", torch.float32) is None  # Lightning's own figure (or none)
    assert dense_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) is None


def test_the_monitor_reports_mfu_on_an_h200_where_lightning_finds_no_peak(monkeypatch):
    """Seen on an H200 (2026-12-04): Lightning read 'FLOPs not found for NVIDIA H200' and logged no MFU."""
    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn

    from loglm.training.throughput import throughput_monitor

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
                              precision_plugin=MixedPrecision("bf16-mixed", "cuda"), world_size=1,
                              enable_validation=True, state=SimpleNamespace(stage=RunningStage.TRAINING))
    monitor = throughput_monitor(10)
    with pytest.warns(UserWarning, match="FLOPs not found"):  # Lightning's own lookup, then ours
        monitor.setup(trainer, None, TrainerFn.FITTING)
    assert monitor.available_flops == 989.4e12
    assert {t.available_flops for t in monitor._throughputs.values()} == {989.4e12}

    trainer.strategy.root_device = torch.device("cpu")  # no GPU: no peak, no MFU
    cpu = throughput_monitor(10)
    cpu.setup(trainer, None, TrainerFn.FITTING)
    assert cpu.available_flops is None
