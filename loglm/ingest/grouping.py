"""Grouping accuracy of a template miner against ground-truth event ids (Zhu et al., ICSE-SEIP 2019).

A message counts as correctly parsed when the set of messages its miner put in its group is exactly the
set of messages that share its true event id.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def grouping_accuracy(predicted: list, truth: list) -> float:
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} messages")
    if not truth:
        return 0.0
    by_pred: dict = defaultdict(list)
    true_sizes: dict = defaultdict(int)
    for i, (p, t) in enumerate(zip(predicted, truth)):
        by_pred[p].append(i)
        true_sizes[t] += 1
    correct = 0
    for members in by_pred.values():
        ids = {truth[i] for i in members}
        if len(ids) == 1 and true_sizes[truth[members[0]]] == len(members):
            correct += len(members)
    return correct / len(truth)


def loghub_truth(structured_csv: Path) -> list[str]:
    """EventId per line of a loghub ``*_structured.csv``."""
    with open(structured_csv, newline="", encoding="utf-8") as fh:
        return [row["EventId"] for row in csv.DictReader(fh)]
