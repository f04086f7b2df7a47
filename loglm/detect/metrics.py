"""Detection metrics at a fixed threshold, plus threshold-free AUROC / PR-AUC, on all and unique items."""

from __future__ import annotations

import numpy as np

# HDFS_1 prevalence (loghub anomaly_label.csv): used to re-weight F1 from measured FPR and recall
HDFS_NORMAL, HDFS_ANOMALOUS = 553_366, 16_838


def detection_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    pred = s > threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = len(set(y.tolist())) == 2
    return {
        "precision": precision, "recall": recall, "f1": f1, "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "auroc": float(roc_auc_score(y, s)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, s)) if both else float("nan"),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(y), "threshold": float(threshold),
    }


def reweighted_f1(recall: float, fpr: float, n_normal: int = HDFS_NORMAL, n_anomalous: int = HDFS_ANOMALOUS) -> float:
    """F1 expected at a given prevalence: TP = recall x anomalies, FP = FPR x normals."""
    tp = recall * n_anomalous
    fp = fpr * n_normal
    precision = tp / (tp + fp) if tp + fp else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def f1_ceiling(n_anomalous: int, n_normal: int, fpr: float) -> float:
    """The highest F1 any detector can reach on a split of ``n_anomalous`` anomalous and ``n_normal`` normal
    items while its false-positive rate is ``fpr``: every anomaly caught, ``fpr x n_normal`` false positives.

    A threshold that honestly targets an FPR caps F1 this way: on a split with few anomalies (66 among 2,415
    HDFS blocks) a 1% target allows about 23 false positives, so F1 cannot exceed 0.85 there."""
    if n_anomalous <= 0:
        return 0.0
    return 2 * n_anomalous / (2 * n_anomalous + fpr * n_normal)


def f1_ceiling_of(m: dict, fpr: float) -> float:
    """``f1_ceiling`` of the split that ``detection_metrics`` counted in ``m``."""
    return f1_ceiling(m["tp"] + m["fn"], m["fp"] + m["tn"], fpr)


def unique_items(keys: list, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct (event sequence, label) once; its score is the max over its copies."""
    best: dict = {}
    for k, y, s in zip(keys, labels, scores):
        key = (k, int(y))
        if key not in best or s > best[key]:
            best[key] = s
    ys = np.array([k[1] for k in best], dtype=int)
    ss = np.array(list(best.values()), dtype=np.float64)
    return ys, ss
