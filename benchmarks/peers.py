"""Peers that `make bench` runs beside LogLM on the same input: Drain3 (template mining)."""

from __future__ import annotations

# Drain3 configured as in its own example config (examples/drain3.ini of the drain3 project):
# masking instructions, sim_th 0.4, depth 4, max_children 100, max_clusters 1024, "_" as extra delimiter.
DRAIN3_EXAMPLE_MASKING = [
    (r"((?<=[^A-Za-z0-9])|^)(([0-9a-f]{2,}:){3,}([0-9a-f]{2,}))((?=[^A-Za-z0-9])|$)", "ID"),
    (r"((?<=[^A-Za-z0-9])|^)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})((?=[^A-Za-z0-9])|$)", "IP"),
    (r"((?<=[^A-Za-z0-9])|^)([0-9a-f]{6,} ?){3,}((?=[^A-Za-z0-9])|$)", "SEQ"),
    (r"((?<=[^A-Za-z0-9])|^)([0-9A-F]{4} ?){4,}((?=[^A-Za-z0-9])|$)", "SEQ"),
    (r"((?<=[^A-Za-z0-9])|^)(0x[a-f0-9A-F]+)((?=[^A-Za-z0-9])|$)", "HEX"),
    (r"((?<=[^A-Za-z0-9])|^)([\-\+]?\d+)((?=[^A-Za-z0-9])|$)", "NUM"),
    (r"(?<=executed cmd )(\".+?\")", "CMD"),
]


def drain3_miner(masking: bool = True, max_clusters: int | None = 1024):
    """A Drain3 TemplateMiner with the example configuration; ``masking=False`` drops the masking rules,
    ``max_clusters=None`` lifts the cap on templates (Drain3 evicts the least recently used beyond it)."""
    import logging

    from drain3 import TemplateMiner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    logging.getLogger("drain3").setLevel(logging.WARNING)
    cfg = TemplateMinerConfig()
    cfg.profiling_enabled = False
    cfg.drain_sim_th = 0.4
    cfg.drain_depth = 4
    cfg.drain_max_children = 100
    cfg.drain_max_clusters = max_clusters
    cfg.drain_extra_delimiters = ["_"]
    cfg.mask_prefix, cfg.mask_suffix = "<:", ":>"
    cfg.masking_instructions = [MaskingInstruction(p, m) for p, m in DRAIN3_EXAMPLE_MASKING] if masking else []
    return TemplateMiner(config=cfg)
