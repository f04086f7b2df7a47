"""Lightning callbacks of the pretraining job."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


class BestWeights(pl.Callback):
    """Writes model.safetensors each time validation loss improves (rank 0 writes; under DeepSpeed every rank
    takes part in gathering the fp32 weights, ZeRO-3's sharded ones too)."""

    def __init__(self, folder: Path, meta: dict, encoder_attr: str = "encoder"):
        self.folder, self.meta, self.encoder_attr = folder, meta, encoder_attr
        self.best, self.best_epoch = float("inf"), -1

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}  # kept in checkpoints, so resume keeps the best

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val/loss")
        # rank 0 decides for all: the gather below is collective, and a loss logged without sync differs by rank
        improved = trainer.strategy.broadcast(loss is not None and float(loss) < self.best, src=0)
        if not improved:
            return
        loss = trainer.strategy.broadcast(float(loss) if loss is not None else float("inf"), src=0)
        self.best, self.best_epoch = loss, trainer.current_epoch
        from loglm.model.store import save_weights

        encoder = getattr(module, self.encoder_attr)
        state = trained_weights(trainer, encoder)
        if trainer.is_global_zero:
            save_weights(self.folder, encoder, module.center,
                         {**self.meta, "epoch": trainer.current_epoch, "step": trainer.global_step, "val_loss": self.best},
                         state=state)


def trained_weights(trainer: pl.Trainer, encoder) -> dict | None:
    """The encoder's weights as the optimizer holds them.  Under DeepSpeed with bf16 (or fp16) the module holds
    a rounded copy and the optimizer the fp32 master weights (sharded across ranks under ZeRO-1/2; under ZeRO-3
    the module holds only its shard too): gathered here, on every rank (a collective).  None where the
    module's own weights are the trained ones.  Before, a bf16 DeepSpeed run saved the bf16-rounded copy: every
    tensor differed from the fp32 master weights (by up to 0.004 on a tiny model, one epoch)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if not isinstance(trainer.strategy, DeepSpeedStrategy):
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    state = dict(encoder.state_dict())
    for name, param in encoder.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is not None:
            state[name] = full.detach().cpu()
        shape = tuple(getattr(param, "ds_shape", state[name].shape))  # ZeRO-3: the whole parameter's shape
        if tuple(state[name].shape) != shape:
            raise RuntimeError(f"DeepSpeed gave no fp32 weights for {name} (its shard is {tuple(state[name].shape)}, "
                               f"the parameter {shape}): the model folder cannot be written")
    return state


def ray_report_callback() -> pl.Callback:
    """Ray Train's RayTrainReportCallback (each epoch's checkpoint reported to Ray), which also removes the
    folder it stages those checkpoints in.  Ray's own leaves an empty ``lightning_checkpoints-job_id=...``
    folder per worker in the system temp dir after every run; a cluster that trains daily piles them up."""
    import shutil

    from ray.train.lightning import RayTrainReportCallback

    class ReportAndCleanUp(RayTrainReportCallback):
        def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            shutil.rmtree(self.tmpdir_prefix, ignore_errors=True)

    return ReportAndCleanUp()
