"""Object-level agreement between two label images (matching by IoU)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["match_f1"]


def match_f1(pred_labels: np.ndarray, true_labels: np.ndarray, iou: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 of predicted objects matched one-to-one to true objects.

    A predicted and a true object match when their intersection over union is at least
    ``iou``; the one-to-one matching maximises the summed IoU of matched pairs (Hungarian
    assignment). For ``iou >= 0.5`` the matching is unique anyway, since an object can
    overlap at most one other object by more than half their union.

    Parameters
    ----------
    pred_labels, true_labels : (Y, X) or (Z, Y, X) ndarray of int
        Label images of the same shape, 0 = background.
    iou : float
        IoU threshold in (0, 1].

    Returns
    -------
    dict
        ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
        ``f1 = 2 tp / (2 tp + fp + fn)`` (each 1.0 when both images are empty, 0.0 when
        only one is), and the counts ``tp``, ``fp``, ``fn``.

    Raises
    ------
    ValueError
        If the shapes differ or ``iou`` is outside (0, 1].

    References
    ----------
    Caicedo, J. C. et al. (2019) Nucleus segmentation across imaging experiments: the 2018
    Data Science Bowl. Nat Methods 16: 1247–1253 (F1 of objects matched at an IoU threshold).
    """
    pred = np.asarray(pred_labels)
    true = np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"match_f1: shapes differ, pred {pred.shape} vs true {true.shape}")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"match_f1: iou must be in (0, 1], got {iou}")

    # Compact ids so the contingency table is (objects × objects), not (max id × max id).
    _, p = np.unique(pred.ravel(), return_inverse=True)
    _, t = np.unique(true.ravel(), return_inverse=True)
    p_ids = np.unique(pred)
    t_ids = np.unique(true)
    p_off = 1 if p_ids[0] == 0 else 0  # index of the first object (0 is background)
    t_off = 1 if t_ids[0] == 0 else 0
    n_p, n_t = len(p_ids), len(t_ids)
    table = np.bincount(p * n_t + t, minlength=n_p * n_t).reshape(n_p, n_t)
    inter = table[p_off:, t_off:].astype(np.float64)
    area_p = table.sum(axis=1)[p_off:]
    area_t = table.sum(axis=0)[t_off:]
    n_pred, n_true = inter.shape

    tp = 0
    if n_pred and n_true:
        union = area_p[:, None] + area_t[None, :] - inter
        scores = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        rows, cols = linear_sum_assignment(scores, maximize=True)
        tp = int(np.count_nonzero(scores[rows, cols] >= iou))
    fp, fn = n_pred - tp, n_true - tp
    if n_pred == 0 and n_true == 0:
        precision = recall = f1 = 1.0  # nothing to find and nothing found: perfect agreement
    else:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
