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


def test_float32_matmuls_take_the_configured_precision_on_a_cuda_gpu_only(monkeypatch):
    """On the H200 Lightning warned that tensor cores went unused (fp32 matmuls at 'highest');
    trainer.matmul_precision sets them where a process trains on CUDA, and leaves a CPU run alone."""
    from loglm.config import TrainerConfig
    from loglm.training.job import cuda_matmul_precision

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert TrainerConfig().matmul_precision == "high"
        assert cuda_matmul_precision("high", "cpu") is False
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert cuda_matmul_precision("high", "gpu") is False
        assert torch.get_float32_matmul_precision() == "highest"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert cuda_matmul_precision("medium", "gpu") is True
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(ValueError, match="matmul_precision"):
            TrainerConfig(matmul_precision="tf32")
    finally:
        torch.set_float32_matmul_precision(before)


def test_training_output_drops_lightnings_noise_and_keeps_every_other_warning():
    """A newcomer's first `make demo` printed a litlogger advertisement and two warnings about Lightning's own
    internals; quiet_lightning drops those three and nothing else."""
    import io
    import logging
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from loglm.training.job import LIGHTNING_NOISE, quiet_lightning

    # Lightning prints through a handler of its own on "lightning.pytorch" (added at import where the root
    # logger has none, as in a pipeline; pytest's root has one, so the test adds it)
    log = logging.getLogger("lightning.pytorch")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_lightning()
            quiet_lightning()  # idempotent
            warnings.warn(f"{LIGHTNING_NOISE[1]} since 2.6", stacklevel=1)
            warnings.warn(f"{LIGHTNING_NOISE[2]}. In combination with multi-process data loading ...", stacklevel=1)
            warnings.warn("The number of training batches (16) is smaller than the logging interval", stacklevel=1)
        rank_zero_info(f"{LIGHTNING_NOISE[0]} and experiment tracking, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    finally:
        log.removeHandler(handler)
    assert [str(w.message) for w in seen] == ["The number of training batches (16) is smaller than the logging "
                                              "interval"]
    assert out.getvalue() == "GPU available: False, used: False\n"
