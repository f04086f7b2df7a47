"""Training throughput and MFU of a LogLM encoder size: real training steps (masked-event loss, backward,
AdamW) on full-length synthetic sessions, optionally under DeepSpeed ZeRO (one process).

    python -m benchmarks.gpu_throughput --model base --zero 2 --dtype bf16 --steps 60   # one GPU
    python -m benchmarks.gpu_throughput --device cpu --model tiny --steps 5 --seq 64    # dry run

MFU = achieved model FLOP/s / peak (``--peak-tflops``, default 989 = H100/H200 dense bf16).  Model FLOPs
per token = 6 x (non-embedding parameters + the tied output head at masked positions)
+ 12 x layers x d_model x sequence length (attention).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--zero", type=int, default=2, help="DeepSpeed ZeRO stage; 0 = plain torch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq", type=int, default=256, help="events per session (model.max_len - 2 at most)")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args()

    import torch

    from loglm.config import load_group
    from loglm.training.module import LogLMModule

    m = load_group("model", args.model)
    enc = {"vocab_size": args.vocab, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
           "d_ff": m.d_ff, "dropout": 0.1, "max_len": max(m.max_len, args.seq + 2), "gap_buckets": 16}
    device = torch.device(args.device)
    module = LogLMModule(enc, hypersphere_weight=0.1).to(device).train()
    params = sum(p.numel() for p in module.parameters())
    # FLOPs as the training job logs them (LogEncoder.train_flops: embeddings left out, the tied head at the
    # masked positions, attention included)
    flops_per_token = module.encoder.train_flops(1, args.seq + 2, 0.15) / (args.seq + 2)

    engine = None
    if args.zero:
        import deepspeed

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        deepspeed.init_distributed()
        ds_cfg = {"train_micro_batch_size_per_gpu": args.batch, "zero_optimization": {"stage": args.zero},
                  "bf16": {"enabled": args.dtype == "bf16"}, "gradient_clipping": 1.0}
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=ds_cfg)
    else:
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, args.vocab, (args.batch, args.seq + 2), generator=gen)
    tokens[:, 0], tokens[:, -1] = 3, 4  # [SUM] ... [END]
    batch = {"tokens": tokens.to(device), "gaps": torch.zeros_like(tokens).to(device),
             "pad_mask": torch.ones_like(tokens, dtype=torch.bool).to(device)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16" and engine is None)

    def step():
        if engine is not None:
            loss = engine.module._step(batch)["loss"]
            engine.backward(loss)
            engine.step()
        else:
            with autocast:
                loss = module._step(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(min(5, args.steps)):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tok_s = args.batch * (args.seq + 2) * args.steps / dt
    out = {"model": args.model, "parameters": params, "device": str(device),
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "dtype": args.dtype,
           "zero_stage": args.zero, "batch": args.batch, "seq": args.seq + 2, "steps": args.steps,
           "tokens_per_s": round(tok_s), "tflops": round(tok_s * flops_per_token / 1e12, 2),
           "mfu": round(tok_s * flops_per_token / (args.peak_tflops * 1e12), 4), "final_loss": float(loss.detach()),
           "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
