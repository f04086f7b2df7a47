"""Model versions in the MLflow Model Registry: resolve ``models:/<name>@<alias>``, promote, roll back.

Every exported bundle is a version of ``loglm-detector`` (``export.registry_name``); a new export or tuning
round gets the alias ``candidate``.  ``promote`` points ``champion`` at a version; ``rollback`` points it back
at an earlier one.  Each move is recorded on the registered model (tag ``champion_history``), so a rollback
names what it replaced.  Detection takes ``ckpt=models:/loglm-detector@champion`` (or ``--bundle`` with the
same URI): the version's bundle folder is used, checked against its manifest like any other.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

CHAMPION = "champion"


def client_for(root: str | Path, tracking_uri: str | None = None):
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """models:/name@alias or models:/name/version -> (name, alias, version)."""
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return name, None, version


def resolve(uri: str, root: str | Path, tracking_uri: str | None = None) -> Path:
    """The local bundle folder of a registered version (downloaded once under <root>/registry/ if remote)."""
    name, alias, version = parse(uri)
    client = client_for(root, tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as e:
        raise ValueError(f"{uri}: no such registered model version ({type(e).__name__}: {str(e)[:200]})") from None
    source = mv.source
    if source.startswith("file://"):
        local = Path(source[len("file://"):])
        if local.is_dir():
            return local
    import mlflow

    dst = Path(root).resolve() / "registry" / name / str(mv.version)
    if not dst.is_dir():
        dst.parent.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=client.tracking_uri)
    found = [p.parent for p in dst.rglob("bundle.json")]
    if not found:
        raise ValueError(f"{uri} (version {mv.version}, {source}): no bundle in it")
    return found[0]


def versions(name: str, root: str | Path, tracking_uri: str | None = None) -> list[dict]:
    client = client_for(root, tracking_uri)
    aliases: dict[str, list[str]] = {}
    model = client.get_registered_model(name)
    for alias, v in (model.aliases or {}).items():
        aliases.setdefault(str(v), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        out.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mv.creation_timestamp / 1000)),
                    "description": mv.description, "tags": dict(mv.tags or {})})
    return sorted(out, key=lambda v: int(v["version"]))


def calibration_warning(name: str, version: str, root: str | Path, tracking_uri: str | None = None) -> str | None:
    """The warning a version's calibration carries (its bundle's ``calibration.json``), None when it has none:
    a validation split too small for its target FPR, so its threshold promises nothing."""
    folder = resolve(f"models:/{name}/{version}", root, tracking_uri)
    cal = json.loads((folder / "calibration.json").read_text())
    return cal.get("warning")


def move_champion(name: str, version: str, root: str | Path, why: str, tracking_uri: str | None = None) -> dict:
    """Point ``champion`` at ``version`` and append the move to the model's ``champion_history`` tag."""
    client = client_for(root, tracking_uri)
    client.get_model_version(name, str(version))  # refuses an unknown version before anything moves
    model = client.get_registered_model(name)
    previous = (model.aliases or {}).get(CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    history = json.loads((model.tags or {}).get("champion_history", "[]"))
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": why,
                    "from": None if previous is None else str(previous), "to": str(version)})
    client.set_registered_model_tag(name, "champion_history", json.dumps(history[-50:]))
    return {"name": name, "champion": str(version), "previous": None if previous is None else str(previous),
            "action": why}


def promote(name: str, version: str | None, root: str | Path, tracking_uri: str | None = None,
            accept_warning: bool = False) -> dict:
    """``champion`` := ``version`` (default: the version that has the ``candidate`` alias).

    A version whose calibration warned (too few normal validation items for its target FPR: a tuning round on
    a few windows gives one) is refused unless ``accept_warning``; accepting it is recorded in the history."""
    if version is None:
        client = client_for(root, tracking_uri)
        version = str(client.get_model_version_by_alias(name, "candidate").version)
    warning = calibration_warning(name, version, root, tracking_uri)
    if warning and not accept_warning:
        raise ValueError(f"{name} version {version}: its threshold is not trustworthy, so it is not promoted: "
                         f"{warning}. Tune it on more normal data (or with a higher detect.target_fpr), or promote "
                         "it anyway with --accept-calibration-warning (recorded in champion_history)")
    why = "promote (calibration warning accepted)" if warning else "promote"
    return move_champion(name, version, root, why, tracking_uri)


def rollback(name: str, to: str, root: str | Path, tracking_uri: str | None = None) -> dict:
    return move_champion(name, to, root, "rollback", tracking_uri)
