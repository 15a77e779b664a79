"""A compact record of a model's OOD scores on its ID validation images: the percentiles 0..100 of one score.

The trainer records it beside the deployment threshold (``ood_config["id_scores"]`` in config.json for IsoMax
models; ``training/evaluation.json`` for every head), so that a model downloaded alone (``hf-hub:``) can still
say where a new image's score lies among the images it was validated on: what ``timm-isomax demo`` draws. 101
numbers (about 1.3 kB of JSON) instead of every score; DisMax's reference code stores percentiles too.

    summary = summarize_scores(val_scores, "mds", threshold)   # {"score", "threshold", "images", "percentiles"}
    share_below(summary, -0.9)                                 # about 0.004: lower than 99.6% of ID validation
    histogram(summary, edges)                                  # the share of images in each bin, for a plot

``threshold`` ties the summary to the threshold fitted on the same scores: a model whose threshold was fitted again
or cleared since (e.g. to calibrate its temperature, which changes the scores) no longer matches its summary, and
:func:`summary_matches` says so instead of drawing a distribution the model no longer has.
"""
import math
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .metrics import ArrayLike, as_score_array

__all__ = ["PERCENTILES", "summarize_scores", "summary_problem", "is_finite_number", "summary_matches", "share_below", "histogram"]

# percentiles 0, 1, ..., 100: the minimum, every 1% step and the maximum
PERCENTILES = np.linspace(0.0, 100.0, 101)
# significant digits kept: far below the spread of any score distribution, and a 7-digit number is short JSON
_DIGITS = 7


def _rounded(value: float) -> float:
    return float(f"{value:.{_DIGITS}g}")


def summarize_scores(scores: ArrayLike, score: str, threshold: Optional[float] = None) -> Dict[str, Any]:
    """The percentile summary of ``scores`` (one score of a model on its ID validation images, higher = more ID).

    Example:
        >>> s = summarize_scores([0.1 * i for i in range(11)], "mds", threshold=0.1)
        >>> s["images"], s["percentiles"][0], s["percentiles"][50], s["percentiles"][100]
        (11, 0.0, 0.5, 1.0)
    """
    values = as_score_array(scores, "scores")
    percentiles = np.percentile(values, PERCENTILES)  # linear interpolation between order statistics
    return dict(score=score, threshold=None if threshold is None else float(threshold), images=int(values.size),
                percentiles=[_rounded(v) for v in percentiles])


def is_finite_number(value: Any) -> bool:
    """A finite int or float, and not a bool (JSON's true is no number): the check of every number a config holds."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summary_problem(summary: Any) -> Optional[str]:
    """What is wrong with a recorded summary (e.g. read from config.json), or None: the keys of
    :func:`summarize_scores`, ``percentiles`` 101 finite non-decreasing numbers."""
    keys = ("score", "threshold", "images", "percentiles")
    if not isinstance(summary, dict) or set(summary) != set(keys):
        return f"id_scores must be an object with keys {list(keys)}, got {summary!r:.80}"
    if not isinstance(summary["score"], str):
        return f"id_scores score must be a score name, got {summary['score']!r:.40}"
    if summary["threshold"] is not None and not is_finite_number(summary["threshold"]):
        return f"id_scores threshold must be a finite number or null, got {summary['threshold']!r:.40}"
    if not (isinstance(summary["images"], int) and not isinstance(summary["images"], bool) and summary["images"] >= 1):
        return f"id_scores images must be a count >= 1, got {summary['images']!r:.40}"
    values = summary["percentiles"]
    if not (isinstance(values, list) and len(values) == len(PERCENTILES) and all(is_finite_number(v) for v in values)):
        return f"id_scores percentiles must be {len(PERCENTILES)} finite numbers (0..100)"
    if any(b < a for a, b in zip(values, values[1:])):
        return "id_scores percentiles must not decrease"
    return None


def summary_matches(summary: Optional[Dict[str, Any]], score: str, threshold: Optional[float]) -> bool:
    """Whether ``summary`` describes ``score`` with ``threshold``: the model's ood config still holds the threshold
    fitted on the scores summarised (see the module's docstring)."""
    return summary is not None and summary["score"] == score and summary["threshold"] == threshold


def share_below(summary: Dict[str, Any], value: float) -> float:
    """The share of the summarised images whose score is below ``value`` (linear between percentiles; 0 below the
    minimum, 1 above the maximum).

    Example:
        >>> share_below(summarize_scores(range(101), "mds"), 25.0)
        0.25
    """
    percentiles = np.asarray(summary["percentiles"], dtype=np.float64)
    return float(np.interp(value, percentiles, PERCENTILES / 100.0, left=0.0, right=1.0))


def histogram(summary: Dict[str, Any], edges: Sequence[float]) -> np.ndarray:
    """The share of the summarised images in each bin ``[edges[i], edges[i + 1])``: the summary's distribution
    function, differenced. A distribution recorded as percentiles draws as a histogram on any bins."""
    cumulative = np.array([share_below(summary, edge) for edge in edges])
    return np.diff(cumulative)
