"""OOD detection metrics. Convention throughout: scores are "higher = more in-distribution" and the
in-distribution (ID) set is the positive class unless a name says otherwise.

Every metric is computed in float64 from exact integer counts at each *distinct* score (tied scores form
one threshold, so ties get half credit in AUROC, as the Mann-Whitney U statistic and scikit-learn's
``roc_auc_score``). One sorted pass serves all metrics: each set is sorted once and the two merged in
linear time; 10 million scores take under a second on 2 CPU cores (``scripts/benchmark_metrics.py``).

The metrics of :func:`ood_metrics` (the conventions differ between papers and change the numbers, so
every report should name them; see ``METRIC_DESCRIPTIONS``):

* ``auroc``: area under the ROC curve, ID positive (= OOD positive with negated scores).
* ``fpr_at_95_tpr``: ID positive, the classic papers' FPR@95 (ODIN, Mahalanobis, IsoMax): the share of
  OOD inputs accepted as ID at the operating point where at least 95% of ID inputs are accepted.
* ``tnr_at_95_tpr``: ``1 - fpr_at_95_tpr``, the share of OOD inputs detected there.
* ``fpr95_ood_positive``: OOD positive, negated scores (OpenOOD since v1.5, pytorch-ood): the share of ID
  inputs flagged as OOD at the operating point where at least 95% of OOD inputs are flagged.
* ``aupr_in`` / ``aupr_out``: area under the precision-recall curve with ID positive (score) / OOD
  positive (negated score), as *average precision* (scikit-learn's ``average_precision_score``:
  ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds, no interpolation), not the trapezoid rule.
* ``detection_accuracy``: ``max over thresholds of (TPR + TNR) / 2`` (ID positive), the thresholds
  being every distinct score plus "reject all".

Operating point of the two FPR95 metrics: the *first* point of the ROC curve (thresholds swept from the
most to the least confident) whose TPR is >= 0.95, as OpenOOD and pytorch-ood, not the nearest point.
"""
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "auroc",
    "as_score_array",
    "roc_curve",
    "ood_metrics",
    "ood_metrics_table",
    "METRIC_NAMES",
    "METRIC_DESCRIPTIONS",
    "METRIC_TITLES",
    "percent",
    "MEAN_ROW",
    "TPR_LEVEL",
    "min_count",
]

ArrayLike = Union[np.ndarray, torch.Tensor, list]

TPR_LEVEL = 0.95
# Name of the macro-mean row of ood_metrics_table.
MEAN_ROW = "mean"

METRIC_DESCRIPTIONS: Dict[str, str] = {
    "auroc": "AUROC, ID positive (tied scores count half)",
    "fpr_at_95_tpr": "FPR@95, ID positive (ODIN/Mahalanobis/IsoMax): share of OOD accepted when >=95% of ID is accepted",
    "tnr_at_95_tpr": "TNR@95 = 1 - FPR@95 (ID positive): share of OOD detected when >=95% of ID is accepted",
    "fpr95_ood_positive": "FPR95, OOD positive (OpenOOD/pytorch-ood): share of ID flagged OOD when >=95% of OOD is flagged",
    "aupr_in": "AUPR-In: average precision, ID positive, score",
    "aupr_out": "AUPR-Out: average precision, OOD positive, negated score",
    "detection_accuracy": "detection accuracy: max over thresholds of (TPR + TNR) / 2, ID positive",
}
METRIC_NAMES: Tuple[str, ...] = tuple(METRIC_DESCRIPTIONS)
# The short column title of each metric: one table for the evaluation's text table, the benchmark's Markdown and
# the model card (which marks the two ID-positive rates "(ID+)").
METRIC_TITLES: Dict[str, str] = {"auroc": "AUROC", "fpr_at_95_tpr": "FPR@95", "tnr_at_95_tpr": "TNR@95",
                                 "fpr95_ood_positive": "FPR95(OOD+)", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out",
                                 "detection_accuracy": "DTACC"}


def percent(value: Optional[float], missing: str = "-") -> str:
    """A metric in [0, 1] as percent with two decimals, as every table prints it; ``missing`` where it is None."""
    return missing if value is None else f"{100 * value:.2f}"


def as_score_array(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """``scores`` as a flat float64 numpy array (no copy where it is one); raises on empty or non-finite input."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty; an OOD metric needs at least one ID and one OOD score.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite values (NaN or inf).")
    return array


@dataclass(frozen=True)
class _Counts:
    """Cumulative counts at each distinct score, highest score first, after a leading "reject all" point.

    ``id_above[k]`` / ``ood_above[k]``: ID / OOD scores >= ``thresholds[k]`` (``thresholds[0]`` = +inf).
    """

    thresholds: np.ndarray
    id_above: np.ndarray
    ood_above: np.ndarray

    @property
    def n_id(self) -> int:
        return int(self.id_above[-1])

    @property
    def n_ood(self) -> int:
        return int(self.ood_above[-1])


def _counts(id_scores: ArrayLike, ood_scores: ArrayLike) -> _Counts:
    id_array = np.sort(as_score_array(id_scores, "id_scores"))
    ood_array = np.sort(as_score_array(ood_scores, "ood_scores"))
    # The one sort: each set is sorted above (numpy's SIMD sort; 7x faster than an argsort of the pooled
    # scores, measured), and the two sorted runs are merged by a stable argsort, which for floats is timsort:
    # it finds the two runs and merges them in linear time. Tie order does not matter: ties are merged into
    # one threshold below.
    pooled = np.concatenate([id_array, ood_array])
    order = np.argsort(pooled, kind="stable")[::-1]
    sorted_scores = pooled[order]
    id_cumulative = np.cumsum(order < id_array.size, dtype=np.int64)
    # the last position of each run of equal scores = where a threshold includes the whole tie group
    group_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    id_above = np.r_[np.int64(0), id_cumulative[group_ends]]
    ood_above = np.r_[np.int64(0), group_ends + 1 - id_cumulative[group_ends]]
    return _Counts(np.r_[np.inf, sorted_scores[group_ends]], id_above, ood_above)


def min_count(n: int, rate: float) -> int:
    """The smallest count ``k`` in ``1..n`` with ``k / n >= rate`` in float64 (the comparison ROC code makes
    on ``tpr = tp / n``; ``ceil(rate * n)`` alone can be off by one in floating point)."""
    k = min(max(int(np.ceil(rate * n)), 1), n)
    while k > 1 and (k - 1) / n >= rate:
        k -= 1
    while k < n and k / n < rate:
        k += 1
    return k


def _auroc(counts: _Counts) -> float:
    # Trapezoids between consecutive ROC points, in integer counts: exactly the Mann-Whitney U statistic
    # (a tie group is a diagonal step, i.e. half credit), divided once.
    ood_steps = np.diff(counts.ood_above)
    twice_u = int(np.sum(ood_steps * (counts.id_above[1:] + counts.id_above[:-1])))
    return twice_u / (2 * counts.n_id * counts.n_ood)


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the ROC curve with ID as positive: P(score_ID > score_OOD) + 0.5 P(tie).

    Example:
        >>> auroc([0.9, 0.8, 0.5], [0.5, 0.1])
        0.9166666666666666
    """
    return _auroc(_counts(id_scores, ood_scores))


def roc_curve(id_scores: ArrayLike, ood_scores: ArrayLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with ID positive: ``(fpr, tpr, thresholds)``, one point per distinct score.

    Point ``k`` accepts scores ``>= thresholds[k]``; the first point (``thresholds[0] = inf``) rejects
    everything. Same points as ``sklearn.metrics.roc_curve(is_id, scores, drop_intermediate=False)``.

    Example:
        >>> fpr, tpr, thresholds = roc_curve([0.9, 0.5], [0.5, 0.1])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    counts = _counts(id_scores, ood_scores)
    return counts.ood_above / counts.n_ood, counts.id_above / counts.n_id, counts.thresholds


def _average_precision(positives_step: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """``sum_k (R_k - R_{k-1}) P_k`` over thresholds k (no interpolation, scikit-learn's definition)."""
    taken = positives_step > 0  # points adding no positive add no area (and may have P = 0/0)
    precision = positives[taken] / (positives[taken] + negatives[taken])
    return float(np.sum(positives_step[taken] * precision) / np.sum(positives_step))


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> Dict[str, float]:
    """All OOD detection metrics of this module for one ID / OOD pair of score sets (higher = more ID).

    Definitions in the module docstring and :data:`METRIC_DESCRIPTIONS`; values are fractions in [0, 1].
    Raises ``ValueError`` on an empty set or a NaN / inf score; all-equal scores are valid (AUROC 0.5).

    Example:
        >>> m = ood_metrics([3.0, 2.0, 1.0, 0.5], [1.0, 0.0])
        >>> m["auroc"], m["fpr_at_95_tpr"], m["fpr95_ood_positive"]
        (0.8125, 0.5, 0.5)
    """
    counts = _counts(id_scores, ood_scores)
    n_id, n_ood = counts.n_id, counts.n_ood
    id_above, ood_above = counts.id_above, counts.ood_above
    # ID positive: the first point (most confident threshold first) with TPR >= 95%; id_above only grows
    at_95 = int(np.searchsorted(id_above, min_count(n_id, TPR_LEVEL), side="left"))
    # OOD positive with negated scores: thresholds sweep from the lowest score up, and the sweep's point
    # after point j of ours flags every score not above thresholds[j]: n_ood - ood_above[j] OOD and
    # n_id - id_above[j] ID. Its first point with TPR >= 95% is our last j with few enough OOD above.
    ood_at_95 = int(np.searchsorted(ood_above, n_ood - min_count(n_ood, TPR_LEVEL), side="right")) - 1
    fpr_at_95 = float(ood_above[at_95] / n_ood)
    return {
        "auroc": _auroc(counts),
        "fpr_at_95_tpr": fpr_at_95,
        "tnr_at_95_tpr": 1.0 - fpr_at_95,
        "fpr95_ood_positive": float((n_id - id_above[ood_at_95]) / n_id),
        "aupr_in": _average_precision(np.diff(id_above), id_above[1:], ood_above[1:]),
        "aupr_out": _average_precision(np.diff(ood_above), n_ood - ood_above[:-1], n_id - id_above[:-1]),
        "detection_accuracy": float(np.max(id_above / n_id - ood_above / n_ood) / 2.0 + 0.5),
    }


def ood_metrics_table(id_scores: ArrayLike, ood_scores: Mapping[str, ArrayLike]) -> Dict[str, Dict[str, float]]:
    """:func:`ood_metrics` for each OOD set against the same ID scores, plus a macro-mean row.

    Returns ``{ood_name: metrics, ..., MEAN_ROW: mean of each metric over the OOD sets}``.

    Example:
        >>> table = ood_metrics_table(id_scores, {"fashion_mnist": fashion_scores, "notmnist": letter_scores})
        >>> table["mean"]["auroc"]
    """
    if not ood_scores:
        raise ValueError("no OOD score sets given; pass {name: scores} for at least one OOD set.")
    if MEAN_ROW in ood_scores:
        raise ValueError(f"an OOD set may not be called {MEAN_ROW!r}: that name is the macro-mean row.")
    id_array = as_score_array(id_scores, "id_scores")
    table = {name: ood_metrics(id_array, as_score_array(scores, f"ood_scores[{name!r}]"))
             for name, scores in ood_scores.items()}
    table[MEAN_ROW] = {metric: float(np.mean([row[metric] for row in table.values()])) for metric in METRIC_NAMES}
    return table
