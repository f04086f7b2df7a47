"""The LightningModule: masked-event pretraining of a LogEncoder (plus the optional hypersphere term)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from loglm.model.encoder import EncoderConfig, LogEncoder
from loglm.objectives import (
    IGNORE,
    drop_facets,
    hide_as_unseen,
    hide_facets,
    hypersphere_loss,
    mask_events,
    masked_event_loss,
    masked_facet_loss,
)


class LogLMModule(pl.LightningModule):
    def __init__(self, encoder: dict, mask_ratio: float = 0.15, hypersphere_weight: float = 0.0,
                 center_momentum: float = 0.99, top_k: int = 5, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 50, facet_dropout: float = 0.0, unk_rate: float = 0.0,
                 facet_loss_weight: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = LogEncoder(EncoderConfig(**encoder))
        # flows with facets: each masked flow's fields predicted from its context too (objective.facet_loss_weight);
        # the head is the training objective's, not the model's (the model folder keeps the encoder only)
        self.facet_head = None
        if facet_loss_weight > 0 and self.encoder.facet is not None:
            from loglm.ingest.flows import FACET_FIELDS

            d = self.encoder.cfg.d_model
            self.facet_head = torch.nn.Linear(d, d * len(FACET_FIELDS))
        # centre of normal summary vectors, tracked as an EMA of training batches (never back-propagated)
        self.register_buffer("center", torch.zeros(self.encoder.cfg.d_model))
        self.register_buffer("center_ready", torch.tensor(False))

    def _step(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        hp = self.hparams
        inputs, labels = mask_events(batch["tokens"], batch["pad_mask"], hp.mask_ratio,
                                     self.encoder.cfg.vocab_size, generator)
        target = labels != IGNORE
        if self.training:
            inputs = hide_as_unseen(inputs, batch["pad_mask"], target, hp.get("unk_rate", 0.0), generator)
        gaps = drop_facets(batch["gaps"], hp.facet_dropout, generator) if self.training else batch["gaps"]
        hidden = self.encoder(inputs, hide_facets(gaps, target), batch["pad_mask"])
        logits = self.encoder.logits(hidden[target])  # only the masked positions reach the vocab head
        gold = labels[target]
        out = {"mlm": masked_event_loss(logits, gold), "logits": logits, "gold": gold}
        loss = out["mlm"]
        if self.facet_head is not None and batch["gaps"].dim() == 3:
            out["facet"] = masked_facet_loss(self.facet_head(hidden[target]), self.encoder.facet.weight,
                                             batch["gaps"][target][:, 1:])
            loss = loss + hp.facet_loss_weight * out["facet"]
        if hp.hypersphere_weight > 0:
            summary = hidden[:, 0]
            if self.training:
                with torch.no_grad():
                    mean = summary.detach().mean(0)
                    if bool(self.center_ready):
                        self.center.mul_(hp.center_momentum).add_((1 - hp.center_momentum) * mean)
                    else:
                        self.center.copy_(mean)
                        self.center_ready.fill_(True)
            out["sphere"] = hypersphere_loss(summary, self.center)
            loss = loss + hp.hypersphere_weight * out["sphere"]
        out["loss"] = loss
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self._step(batch)
        # read by Lightning's ThroughputMonitor (train|device|flops_per_sec and, on a known GPU, mfu)
        self.flops_per_batch = self.encoder.train_flops(*batch["tokens"].shape, self.hparams.mask_ratio)
        bs = batch["tokens"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/mlm_loss", out["mlm"], batch_size=bs)
        if "facet" in out:
            self.log("train/facet_loss", out["facet"], batch_size=bs)
        if "sphere" in out:
            self.log("train/sphere_loss", out["sphere"], batch_size=bs)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # a fixed mask per batch makes validation loss comparable across epochs
        gen = torch.Generator(device=batch["tokens"].device).manual_seed(1000 + batch_idx)
        out = self._step(batch, gen)
        k = min(self.hparams.top_k, out["logits"].shape[-1])
        top = out["logits"].topk(k, dim=-1).indices
        gold = out["gold"]
        n = gold.numel()
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=n, sync_dist=True)
        if "facet" in out:
            self.log("val/mlm_loss", out["mlm"], batch_size=n, sync_dist=True)
            self.log("val/facet_loss", out["facet"], batch_size=n, sync_dist=True)
        self.log("val/masked_acc", (top[:, 0] == gold).float().mean(), batch_size=n, sync_dist=True)
        self.log("val/top_k_acc", (top == gold[:, None]).any(-1).float().mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "ln" in name or name.endswith("bias") else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(hp.warmup_steps, total // 5 + 1)

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total - warm)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
