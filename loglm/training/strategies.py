"""Lightning strategies from config: the same LightningModule on one CPU, DDP, or DeepSpeed ZeRO-2/3,
in this process tree or inside Ray Train workers.  ``conf/strategy/<name>.yaml`` names its factory with
``_target_`` (one of the functions below, or a function of your own with the same signature): adding a
strategy is that YAML file and, if Lightning lacks it, that one function.

DeepSpeed on CPU: Lightning's (and Ray's) DeepSpeed strategy refuse to run without CUDA. The
``*CPU`` subclasses below lift only that check (gloo backend, CPU device) so that CI can run a real
ZeRO-2 step on two CPU processes; they are selected only when ``trainer.accelerator=cpu`` and are never
the GPU path.
"""

from __future__ import annotations

from loglm.config import StrategyConfig, TrainerConfig


def deepspeed_config(strategy: StrategyConfig, trainer: TrainerConfig) -> dict:
    """The DeepSpeed JSON config (validated by DeepSpeed itself in tests)."""
    zero = {"stage": strategy.zero_stage, "overlap_comm": trainer.accelerator == "gpu",
            "contiguous_gradients": True, "allgather_bucket_size": strategy.allgather_bucket_size,
            "reduce_bucket_size": strategy.reduce_bucket_size}
    if strategy.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    cfg = {"zero_optimization": zero, "train_micro_batch_size_per_gpu": trainer.batch_size,
           "gradient_clipping": 1.0, "zero_allow_untested_optimizer": True}
    if trainer.precision.startswith("bf16"):
        cfg["bf16"] = {"enabled": True}
    elif trainer.precision.startswith("16"):
        cfg["fp16"] = {"enabled": True}
    return cfg


def unpad_share(strategy: StrategyConfig, trainer: TrainerConfig) -> float | None:
    """The encoder's ``unpad_share`` under this strategy: ``trainer.unpad_share``, except under DeepSpeed ZeRO,
    which gets None (the padded path always).  Each rank decides per batch whether its batch is padded enough
    for the unpadded path, so ranks run different code.  ZeRO-3 gathers (and prefetches) weights per submodule
    call, a collective, and two ranks that disagree wait on each other forever: a 2-worker run on the shipped
    HDFS blocks hung in its first steps (one rank gathering for backward, the other reducing gradients).
    ZeRO-1/2 fill their gradient buckets in the order gradients arrive on each rank; nothing proves that order
    is the same on both paths, so they take the padded path too.  DDP reduces its buckets in a fixed order and
    keeps the setting; the unpadded path was measured on CPU only (docs/memory.md)."""
    return None if strategy.sharded_checkpoints else trainer.unpad_share


STALE_BUILD_LOCK_S = 600.0


def clear_stale_build_lock(name: str = "deepspeed_shm_comm", max_age_s: float = STALE_BUILD_LOCK_S) -> bool:
    """torch builds DeepSpeed's CPU communication op once per machine under a lock file (FileBaton); a build
    killed mid-way leaves the lock behind, and every later DeepSpeed job on the machine then waits on it
    forever without a word.  A lock older than ``max_age_s`` (a build takes about a minute) is removed, with a
    warning naming it; a younger one is another process's build in progress and is left alone."""
    import sys
    import time
    from pathlib import Path

    try:  # where torch.utils.cpp_extension.load builds it (TORCH_EXTENSIONS_DIR, or ~/.cache/.../py311_cpu)
        from torch.utils.cpp_extension import _get_build_directory
    except ImportError:  # another torch: nothing to look at
        return False
    lock = Path(_get_build_directory(name, False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < max_age_s:
        return False
    lock.unlink(missing_ok=True)
    print(f"loglm: WARNING: removed {lock}, a build lock left {age / 60:.0f} min ago by a DeepSpeed op build that "
          "did not finish (a killed job); with it every DeepSpeed job here would wait forever", file=sys.stderr,
          flush=True)
    return True


def _cpu_deepspeed(base):
    import torch

    class CPU(base):
        """DeepSpeed on CPU processes (gloo): CI smoke runs only."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("process_group_backend", "gloo")
            super().__init__(*args, **kwargs)

        def setup_environment(self) -> None:  # skip only the CUDA check
            from lightning.pytorch.strategies import DeepSpeedStrategy

            super(DeepSpeedStrategy, self).setup_environment()

        @property
        def root_device(self):
            return torch.device("cpu", 0)  # DeepSpeed reads a device index; every rank shares the CPU

        def setup_distributed(self) -> None:  # no CUDA device index to validate
            from lightning.fabric.utilities.seed import reset_seed

            reset_seed()
            self.set_world_ranks()
            clear_stale_build_lock()  # DeepSpeed builds its CPU op here; a killed build's lock would hang it
            self._init_deepspeed_distributed()

    CPU.__name__ = CPU.__qualname__ = f"{base.__name__}CPU"
    return CPU


def single(strategy: StrategyConfig, trainer: TrainerConfig, on_ray: bool):
    """One process (one CPU or GPU); under Ray, each worker is one such process in Ray's DDP group."""
    if on_ray:
        from ray.train.lightning import RayDDPStrategy

        return RayDDPStrategy()
    return "auto"


def ddp(strategy: StrategyConfig, trainer: TrainerConfig, on_ray: bool):
    """Data parallel: one replica per process (gloo on CPU, NCCL on GPU)."""
    if on_ray:
        from ray.train.lightning import RayDDPStrategy

        return RayDDPStrategy()
    return "ddp"


def deepspeed(strategy: StrategyConfig, trainer: TrainerConfig, on_ray: bool):
    """DeepSpeed ZeRO (``strategy.zero_stage``); on CPU processes the gloo variant below (CI smoke runs)."""
    if on_ray:
        from ray.train.lightning import RayDeepSpeedStrategy as base
    else:
        from lightning.pytorch.strategies import DeepSpeedStrategy as base
    cls = _cpu_deepspeed(base) if trainer.accelerator == "cpu" else base
    return cls(config=deepspeed_config(strategy, trainer))


def lightning_strategy(strategy: StrategyConfig, trainer: TrainerConfig, on_ray: bool):
    """A Strategy instance (or Lightning's name for it) for ``Trainer(strategy=...)``, from the config's
    ``_target_`` factory (validated when the config was composed)."""
    from hydra.utils import get_method

    return get_method(strategy._target_)(strategy, trainer, on_ray)
