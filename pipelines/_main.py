"""Shared entry-point plumbing: compose the typed config, run one loglm function, print its result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable


def entry(config_name: str, run: Callable[[object], dict], show: Callable[[dict], None] | None = None):
    import hydra

    from loglm.config import PROJECT_ROOT, materialize, register_schema

    register_schema()

    @hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name=config_name)
    def main(cfg) -> None:
        result = run(materialize(cfg))
        if show is not None:
            show(result)
        else:
            json.dump(result, sys.stdout, indent=2, default=str)
            print()

    return main
