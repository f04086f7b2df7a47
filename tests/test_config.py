from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose
from hydra.errors import ConfigCompositionException

from loglm.config import RootConfig

GROUPS = {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in (ROOT / "conf").iterdir() if p.is_dir()}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_typed(group, option):
    if group == "baseline":  # not composed into the root: suite.baselines names them; each builds a Detector
        from loglm.baselines.detectors import build

        model = build(option, {"vocab_size": 12, "seed": 0, "epochs": 1, "patience": 1, "unk_surprisal": 20.0,
                               "local_networks": ()})
        assert model.unit in ("window", "flow") and callable(model.fit) and callable(model.score)
        compose("evaluate", [f"suite.baselines=[{option}]"])
        return
    extra = ["launcher=ray"] if (group, option) == ("strategy", "deepspeed_stage3") else []  # ZeRO-3 needs Ray
    cfg = compose("pretrain", [f"{group}={option}", *extra])
    assert isinstance(cfg, RootConfig)


@pytest.mark.parametrize("job", ["pretrain", "distill"])
@pytest.mark.parametrize("launcher", GROUPS["launcher"])
@pytest.mark.parametrize("strategy", GROUPS["strategy"])
def test_every_launcher_strategy_pair_builds_its_strategy_or_is_refused_up_front(job, launcher, strategy):
    """Each advertised pair gives a Lightning strategy object (what Trainer gets) for both training jobs; the
    pairs that cannot run (ZeRO-3 without Ray; ZeRO-3 for a student) are refused when the config is composed,
    not after training."""
    from loglm.training.strategies import lightning_strategy

    overrides = [f"launcher={launcher}", f"strategy={strategy}"]
    if (launcher, strategy) == ("local", "deepspeed_stage3"):
        with pytest.raises(ValueError, match="ZeRO-3.*launcher=ray"):
            compose(job, overrides)
        return
    if (job, strategy) == ("distill", "deepspeed_stage3"):
        with pytest.raises(ValueError, match="distillation.*deepspeed_stage2"):
            compose(job, overrides)
        return
    cfg = compose(job, overrides)
    built = lightning_strategy(cfg.strategy, cfg.trainer, on_ray=launcher == "ray")
    if launcher == "ray":
        assert type(built).__module__.startswith("ray.") or "Ray" in type(built).__name__
    elif strategy.startswith("deepspeed"):
        assert built.config["zero_optimization"]["stage"] == int(strategy[-1])
    else:
        assert built == {"single": "auto", "ddp": "ddp"}[strategy]


@pytest.mark.parametrize("name", ["prepare", "pretrain", "detect", "evaluate", "demo"])
def test_every_pipeline_config_composes(name):
    cfg = compose(name)
    assert cfg.stage == name
    assert Path(cfg.paths.root).is_absolute()


def test_misspelled_key_is_refused_with_its_name():
    with pytest.raises(ConfigCompositionException) as e:
        compose("pretrain", ["model.d_modle=64"])
    assert "d_modle" in str(e.value.__cause__ or e.value)


def test_a_key_added_with_plus_that_the_schema_lacks_is_refused_not_dropped(tmp_path):
    """``+model.d_modle=64`` composed and was then dropped without a word (the model kept d_model=128)."""
    with pytest.raises(ValueError, match=r"model\.d_modle \(did you mean model\.d_model\?\)"):
        compose("pretrain", ["+model.d_modle=64"])
    with pytest.raises(ValueError, match=r"data\.sesion"):
        compose("pretrain", ["+data.sesion={by: entity}"])
    # free-form maps keep taking new keys
    assert compose("pretrain", ["+logger.tags.team=soc"]).logger.tags["team"] == "soc"
    proc = subprocess.run([sys.executable, "-m", "pipelines.prepare", "+model.d_modle=64", f"paths.root={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "loglm: error: unknown config key model.d_modle" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_wrong_type_is_refused_with_its_name():
    with pytest.raises(Exception) as e:
        compose("pretrain", ["trainer.max_epochs=many"])
    assert "max_epochs" in str(e.value) + str(e.value.__cause__)


def test_cli_refuses_bad_key_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.prepare", "data.sesion.by=entity",
                           f"paths.root={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "sesion" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_experiment_preset_overrides():
    cfg = compose("pretrain", ["experiment=hdfs_demo"])
    assert cfg.data.name == "hdfs_sample" and cfg.logger.run_name == "hdfs-demo"


@pytest.mark.parametrize("pipeline, override, reason", [
    ("pretrain", "data.name=nothing_here", "has no prepared data"),
    ("distill", "teacher=/nonexistent", "is neither a model directory nor a run id")])
def test_a_users_mistake_prints_the_reason_not_a_traceback(tmp_path, pipeline, override, reason):
    """...and before Lightning is imported (about 10 s of CPU: the job checks its data and its teacher first;
    ``-X importtime`` lists every module the process imported)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", f"pipelines.{pipeline}", override,
                           f"paths.root={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    said = "\n".join(line for line in lines if not line.startswith("import time:"))
    assert proc.returncode == 2
    assert said.strip().startswith("loglm: error:") and reason in said
    assert "Traceback" not in said
    assert "torch" in imported and "lightning" not in imported


@pytest.mark.parametrize("override, message", [
    ("model.d_model=-1", "model.d_model must be >= 1"), ("model.n_heads=3", "divisible by model.n_heads"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1"), ("trainer.lr=1e12", "trainer.lr must be in"),
    ("trainer.batch_size=0", "trainer.batch_size must be >= 1"), ("data.session.window_s=0", "window_s must be > 0"),
    ("data.session.by=hour", "data.session.by must be"), ("data.split.train_frac=0.95", "add up to at most 1"),
    ("detect.target_fpr=2", "detect.target_fpr must be in"),
    ("detect.recalibration_unseen=drop", "detect.recalibration_unseen must be"),
])
def test_value_ranges_are_refused_when_the_config_is_composed(override, message):
    """Before any work (these used to fail after minutes of training, or not at all: d_model=-1 after 91 s
    with the run left RUNNING, max_epochs=0 with a FINISHED run and no model)."""
    with pytest.raises(ValueError, match=message):
        compose("pretrain", [override])


def test_global_batch_size_is_split_over_the_world_so_the_schedule_does_not_change():
    """trainer.global_batch_size is declared once; each process takes its share (Ray workers or devices)."""
    ray2 = compose("pretrain", ["launcher=ray", "ray.num_workers=2", "trainer.global_batch_size=64"])
    assert ray2.world_size() == 2 and ray2.per_process_batch() == 32
    ray4 = compose("pretrain", ["launcher=ray", "ray.num_workers=4", "trainer.global_batch_size=64"])
    assert ray4.per_process_batch() == 16  # 4 x 16 = 2 x 32: the same sessions per optimizer step
    local = compose("pretrain", ["trainer.global_batch_size=64"])
    assert local.world_size() == 1 and local.per_process_batch() == 64
    assert compose("pretrain", ["trainer.batch_size=48"]).per_process_batch() == 48  # unset: per process
    with pytest.raises(ValueError, match="multiple of the world size 4"):
        compose("pretrain", ["launcher=ray", "ray.num_workers=4", "trainer.global_batch_size=66"])



def own_strategy(strategy, trainer, on_ray):
    """A strategy factory of a user's own (what ``conf/strategy/<name>.yaml`` would name)."""
    return {"mine": strategy.name, "on_ray": on_ray}


def test_a_strategy_or_callback_of_ones_own_comes_from_its_target_and_a_wrong_one_is_refused_up_front():
    from loglm.training.strategies import lightning_strategy

    cfg = compose("pretrain", ["strategy._target_=test_config.own_strategy", "strategy.name=mine"])
    assert lightning_strategy(cfg.strategy, cfg.trainer, on_ray=False) == {"mine": "mine", "on_ray": False}
    with pytest.raises(ValueError, match="strategy._target_='loglm.training.strategies.nope' is not an importable"):
        compose("pretrain", ["strategy._target_=loglm.training.strategies.nope"])
    with pytest.raises(ValueError, match=r"trainer.callbacks\[0\]._target_=.*LearningRateMonitr.*not an importable class"):
        compose("pretrain", ["trainer.callbacks=[{_target_:lightning.pytorch.callbacks.LearningRateMonitr}]"])
    with pytest.raises(ValueError, match=r"trainer.callbacks\[0\] must be a mapping with a _target_"):
        compose("pretrain", ["trainer.callbacks=[LearningRateMonitor]"])
    with pytest.raises(ValueError, match="unknown baseline 'deeplogg'.*known: deeplog, deeplog_topg, flow_iforest"):
        compose("evaluate", ["suite.baselines=[deeplogg]"])
    with pytest.raises(ValueError, match=r"suite.baseline_tokenizer: unknown tokenizer setting\(s\) \['min_cnt'\]"):
        compose("evaluate", ["+suite.baseline_tokenizer.min_cnt=1"])


@pytest.mark.parametrize("name", GROUPS["dataset"])
def test_a_dataset_is_its_experiments_preset(name):
    """dataset=X names a protocol's preset; the preset itself lives once, in conf/experiment."""
    from loglm.config import to_plain

    alias = (ROOT / "conf" / "dataset" / f"{name}.yaml").read_text()
    experiment = alias.rsplit("/experiment@_global_:", 1)[1].split()[0]
    assert (ROOT / "conf" / "experiment" / f"{experiment}.yaml").is_file()
    assert to_plain(compose("evaluate", [f"dataset={name}"])) == to_plain(compose("evaluate", [f"experiment={experiment}"]))
    assert compose("evaluate", [f"dataset={name}"]).suite.enabled


def test_debug_fast_runs_the_whole_training_job_in_seconds(tmp_path):
    from synthetic import synthetic_run_overrides

    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    overrides = [o for o in synthetic_run_overrides(tmp_path, 120, seed=3) if o != "debug=tests"] + ["debug=fast"]
    cfg = compose("pretrain", overrides)
    assert (cfg.model.name, cfg.trainer.max_epochs, cfg.logger._target_) == ("tiny", 1, "loglm.tracking.NoTracking")
    prepare(cfg)
    out = pretrain(cfg)
    assert out["global_step"] <= 5 and not (tmp_path / "mlflow.db").exists()


def test_a_models_data_settings_come_back_with_or_without_its_label_list(tmp_path):
    """Student, detector and recalibration read logs as the model's training data was read; detection and
    recalibration drop the training set's label list (``labels=False``), also when the folder records none."""
    import yaml

    from loglm.config import trained_data_config

    trained = compose("prepare", ["data=hdfs_loglead", "data.anomalous_ids=/elsewhere/ids.txt"]).data
    here = compose("detect", ["data=hdfs_sample", "data.anomalous_ids=/here/ids.txt"]).data
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text(yaml.safe_dump({"data": {"name": trained.name, "format": trained.format,
                                                                "anomalous_ids": trained.anomalous_ids}}))
    kept = trained_data_config(model, here)
    assert kept.name == trained.name and kept.anomalous_ids == "/elsewhere/ids.txt"
    assert trained_data_config(model, here, labels=False).anomalous_ids is None
    assert trained_data_config(tmp_path / "none", here) is here
    bare = trained_data_config(tmp_path / "none", here, labels=False)
    assert bare.anomalous_ids is None and bare.name == here.name


def test_a_killed_deepspeed_op_builds_lock_is_cleared_and_a_live_build_left_alone(tmp_path, monkeypatch, capsys):
    """A DeepSpeed CPU op build killed mid-way leaves torch's lock file, and every later DeepSpeed job on the
    machine waited on it forever (seen: a test run killed at 02:00 hung the next ones). An old lock is removed
    with a warning before DeepSpeed starts; a fresh one (a build in progress) is kept."""
    import os
    import time

    from loglm.training.strategies import clear_stale_build_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    assert clear_stale_build_lock() is False  # none there
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    assert clear_stale_build_lock() is False and lock.exists()  # a build in progress
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert clear_stale_build_lock() is True and not lock.exists()
    assert "build lock left 60 min ago" in capsys.readouterr().err


def test_a_gpu_for_scoring_that_is_not_there_is_refused_before_training(tmp_path, monkeypatch):
    """detect.device=cuda: calibration scores on the GPU after training, so a process without one is refused
    before the run starts (no MLflow run, no model folder), not after the training it would waste."""
    import torch

    from loglm.training.pretrain import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose("pretrain", ["data=hdfs_blocks_sample", f"paths.root={tmp_path}", "detect.device=cuda"])
    with pytest.raises(ValueError, match="detect.device=cuda: no CUDA GPU is usable here"):
        run(cfg)
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_model_recorded_before_event_fields_goes_on_reading_the_content_alone(tmp_path):
    """A model (or bundle) whose recorded data settings have no ``event_fields`` read each line's content alone:
    detection with it does the same, not the preset's program-prefixed events its vocabulary never saw."""
    from types import SimpleNamespace

    from loglm.config import DataConfig, trained_data_config
    from loglm.engine.detect import bundle_config
    from loglm.ingest.formats import format_of

    (tmp_path / "config.yaml").write_text("data:\n  name: auth\n  format: syslog\n")
    old = trained_data_config(tmp_path, DataConfig())
    assert old.event_fields == [] and format_of(old).event_fields == ()
    (tmp_path / "config.yaml").write_text("data:\n  name: auth\n  format: syslog\n  event_fields: null\n")
    assert format_of(trained_data_config(tmp_path, DataConfig())).event_fields == ("Component",)
    bundle = SimpleNamespace(info={"data": {"name": "auth", "format": "syslog", "session": {}}, "detect": {}})
    assert bundle_config(bundle, [], None).data.event_fields == []
