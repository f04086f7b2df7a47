"""Shared entry-point plumbing: compose the typed config, run one loglm function, print its result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable


def entry(config_name: str, run: Callable[[object], dict], show: Callable[[dict], None] | None = None):
    import hydra

    from loglm.config import PROJECT_ROOT, materialize, register_schema

    register_schema()

    @hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name=config_name)
    def main(cfg) -> None:
        from loglm.signals import until_exit

        with until_exit():  # a stream that ended as a stop signal arrived still prints its result
            try:
                result = run(materialize(cfg))
            except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
                # a user's mistake (bad setting, missing file, stale data): the reason, not a traceback;
                # HYDRA_FULL_ERROR=1 shows the traceback
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"loglm: error: {e}", file=sys.stderr, flush=True)
                sys.exit(2)
            if show is not None:
                show(result)
            else:
                json.dump(result, sys.stdout, indent=2, default=str)
                print()
                sys.stdout.flush()

    return main
