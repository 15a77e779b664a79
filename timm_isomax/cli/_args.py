"""Argument types the commands share."""
import argparse

from timm_isomax.ood.detectors import score_problem

__all__ = ["score_name"]


def score_name(text: str) -> str:
    """An OOD score name (a logit score, a feature score, ``knn<k>`` or a post-hoc detector), or argparse's error."""
    problem = score_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
