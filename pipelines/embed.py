"""python -m pipelines.embed ckpt=<model dir|run id> [inputs=[file,...] | split=test] [out=...] [embed_events=true]
— one vector per session (and per event)."""

from pipelines._main import entry


def _run(cfg):
    from pathlib import Path

    from loglm.analyst.embed import run, torch_embed_fn, torch_event_embed_fn
    from loglm.detect.detector import model_dir_for, with_model_data
    from loglm.model.store import load_model

    loaded = load_model(model_dir_for(cfg), device=cfg.detect.device)
    return run(with_model_data(cfg, Path(loaded.folder)), loaded, torch_embed_fn(loaded.encoder),
               event_fn=torch_event_embed_fn(loaded.encoder))


if __name__ == "__main__":
    entry("embed", _run)()
