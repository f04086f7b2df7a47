"""On a CUDA GPU only (marked ``gpu``; skipped elsewhere, so CI and ``make test`` on CPU never run them):
training and validation steps of both LightningModules in bf16 on the device, as DeepSpeed's bf16 runs them
(weights cast to bf16, no autocast).  Run with ``pytest -m gpu tests/test_gpu.py`` on a GPU machine;
``benchmarks/gpu_smoke.sh`` runs the whole pipeline."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ENC = {"vocab_size": 30, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "dropout": 0.1, "max_len": 40,
       "gap_buckets": 4}


def padded_batch(device):
    lengths = torch.tensor([40, 7, 19, 3, 33, 12])  # 46% padding: the unpadded path at unpad_share 0.1
    pad = torch.arange(40)[None, :] < lengths[:, None]
    batch = {"tokens": torch.where(pad, torch.randint(5, 30, (6, 40)), 0),
             "gaps": torch.where(pad, torch.randint(0, 4, (6, 40)), 0), "pad_mask": pad}
    return {k: v.to(device) for k, v in batch.items()}


def test_pretraining_steps_in_bf16_on_the_gpu():
    from loglm.training.module import LogLMModule

    module = LogLMModule(ENC, hypersphere_weight=0.1).cuda().to(torch.bfloat16).train()
    module.encoder.unpad_share = 0.1
    batch = padded_batch("cuda")
    module._step(batch)["loss"].backward()
    module.eval()
    with torch.no_grad():
        module.validation_step(batch, 0)


def test_distillation_steps_in_bf16_on_the_gpu():
    """The validation step once drew its masks with a CPU generator, which cannot draw CUDA tensors."""
    from loglm.model.encoder import EncoderConfig, LogEncoder
    from loglm.training.distill_module import DistillModule

    teacher = LogEncoder(EncoderConfig(**ENC))
    module = DistillModule(teacher, {**ENC, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "rtd_head": True},
                           0.15, 2.0, 1.0, 0.5, 0.5, 1e-3, "random", rtd_weight=1.0)
    module = module.cuda().to(torch.bfloat16).train()
    module.student.unpad_share = 0.1
    batch = padded_batch("cuda")
    module._losses(batch)["loss"].backward()
    module.eval()
    with torch.no_grad():
        module.validation_step(batch, 0)
