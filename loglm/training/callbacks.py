"""Lightning callbacks of the pretraining job."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


class BestWeights(pl.Callback):
    """Writes model.safetensors each time validation loss improves (rank 0 only)."""

    def __init__(self, folder: Path, meta: dict, encoder_attr: str = "encoder", enabled: bool = True):
        self.folder, self.meta, self.encoder_attr, self.enabled = folder, meta, encoder_attr, enabled
        self.best, self.best_epoch = float("inf"), -1

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}  # kept in checkpoints, so resume keeps the best

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None or float(loss) >= self.best:
            return
        if not self.enabled:  # still track the best loss; weights come from elsewhere (ZeRO-3)
            self.best, self.best_epoch = float(loss), trainer.current_epoch
            return
        from loglm.model.store import save_weights

        self.best, self.best_epoch = float(loss), trainer.current_epoch
        save_weights(self.folder, getattr(module, self.encoder_attr), module.center,
                     {**self.meta, "epoch": trainer.current_epoch, "step": trainer.global_step, "val_loss": self.best})


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
