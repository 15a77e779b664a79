"""The names of every OOD score, by family, and what a name needs: plain data, so that a model's saved
``ood_config`` can be checked (:mod:`timm_isomax.models.classifier`) without the detectors that compute them
(:mod:`timm_isomax.ood.detectors`)."""
import re
from typing import Dict, Optional, Tuple

from .scores import SCORES

__all__ = ["LOGIT_SCORES", "FEATURE_SCORES", "KNN_KS", "POSTHOC_SCORES", "LINEAR_ONLY_SCORES", "knn_k", "is_score_name",
           "needs_features", "score_problem"]

# The logit scores each head is reported with (max_logit is mds for the IsoMax heads: one row; DisMax's max logit is
# -(min d + mean d) / T, not a minimum distance, so it keeps its own name).
LOGIT_SCORES: Dict[str, Tuple[str, ...]] = {
    "softmax": ("msp", "max_logit", "energy", "entropic"),
    "isomax": ("entropic", "mds", "energy", "msp"),
    "isomaxplus": ("mds", "entropic", "energy", "msp"),
    "dismax": ("mmles", "mmls", "max_logit", "entropic", "energy", "msp"),
}
# Scores of the features and the head's class vectors, for every head.
FEATURE_SCORES: Tuple[str, ...] = ("norm_cosine", "feature_norm")
# The neighbour counts KNN is scored with (Sun et al.: 50 for CIFAR-10); validation picks among them.
KNN_KS: Tuple[int, ...] = (10, 50, 200)
# Post-hoc detectors fitted on the bank; the linear-only ones read a linear classifier's weight and bias.
POSTHOC_SCORES: Tuple[str, ...] = ("mahalanobis", "vim", "react", "ash")
LINEAR_ONLY_SCORES: Tuple[str, ...] = ("vim", "react", "ash")
_KNN_NAME = re.compile(r"knn([1-9][0-9]*)$")


def knn_k(name: str) -> Optional[int]:
    """The k of a ``knn<k>`` score name, or None for any other name."""
    match = _KNN_NAME.match(name)
    return int(match[1]) if match else None


def is_score_name(name: str) -> bool:
    """Whether ``name`` is a score of any family (``knn<k>`` for any k >= 1)."""
    return isinstance(name, str) and (name in SCORES or name in FEATURE_SCORES or name in POSTHOC_SCORES
                                      or knn_k(name) is not None)


def needs_features(name: str) -> bool:
    """Whether score ``name`` reads the pre-logit features (every score but the logit scores)."""
    return name not in SCORES


def score_problem(name: str) -> Optional[str]:
    """What is wrong with a score name, or None."""
    if is_score_name(name):
        return None
    return (f"unknown OOD score {name!r}; choose one of {', '.join(sorted(SCORES))} (logits), "
            f"{', '.join(FEATURE_SCORES)} (features), knn<k> such as knn50 (a feature bank), or "
            f"{', '.join(POSTHOC_SCORES)} (post-hoc, fitted on the bank).")
