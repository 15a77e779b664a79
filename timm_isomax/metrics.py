"""OOD detection metrics. Convention throughout: scores are "higher = more in-distribution" and the
in-distribution (ID) set is the positive class unless a name says otherwise.

All metrics are computed in float64 and are exact on ties (half credit, as the Mann-Whitney U statistic
and scikit-learn's ``roc_auc_score``), without sorting more than once.
"""
from typing import Union

import numpy as np
import torch

__all__ = ["auroc", "as_score_array"]

ArrayLike = Union[np.ndarray, torch.Tensor, list]


def as_score_array(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """A flat float64 numpy copy of ``scores``; raises on empty or non-finite input."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty; an OOD metric needs at least one ID and one OOD score.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite values (NaN or inf).")
    return array


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts_group = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group_of_sorted = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[group_of_sorted]
    return ranks


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the ROC curve with ID as positive: P(score_ID > score_OOD) + 0.5 P(tie).

    Example:
        >>> auroc([0.9, 0.8, 0.5], [0.5, 0.1])
        0.9166666666666666
    """
    id_array = as_score_array(id_scores, "id_scores")
    ood_array = as_score_array(ood_scores, "ood_scores")
    ranks = _average_ranks(np.concatenate([id_array, ood_array]))
    n_id, n_ood = id_array.size, ood_array.size
    u_statistic = ranks[:n_id].sum() - n_id * (n_id + 1) / 2.0
    return float(u_statistic / (n_id * n_ood))
