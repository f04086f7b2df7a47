"""python -m pipelines.export ckpt=<run id|model dir>  — ONNX + safetensors bundle, parity-checked, registered."""

from pipelines._main import entry


def _run(cfg):
    from loglm.export.writer import run

    return run(cfg)


if __name__ == "__main__":
    entry("export", _run)()
