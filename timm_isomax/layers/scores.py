"""OOD scores computed from logits. Every score follows one convention: higher = more in-distribution.

* :func:`mds`: minimum distance score, the IsoMax+ score: the largest logit, i.e. ``-|s| * min_c d_c``.
* :func:`entropic`: negative entropy of ``softmax(logits)``, the IsoMax score (no entropic scale at
  inference, as in the paper).
* :func:`mmles`: max-mean logit entropy score, the DisMax score: ``max_c logits + mean_c logits`` plus the
  negative entropy of ``softmax(logits)``; :func:`mmls` is its first two terms.
* SoftMax baselines: :func:`msp` (maximum softmax probability), :func:`max_logit`, :func:`energy`
  (``T * logsumexp(logits / T)``); :func:`entropic` doubles as the SoftMax entropy score.

Softmax-based scores are computed in float64: a saturated float32 softmax returns exactly 1.0 for many
inputs, and the resulting ties change AUROC.
"""
from typing import Callable, Dict

import torch

__all__ = ["mds", "entropic", "mmls", "mmles", "msp", "max_logit", "energy", "SCORES", "get_score"]


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        got = f"shape {tuple(logits.shape)}, {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"scores take float logits of shape (batch, num_classes), got {got}.")


def mds(logits: torch.Tensor) -> torch.Tensor:
    """Minimum distance score of IsoMax+: ``max_c logits`` = ``-|s| * min_c ||f^ - p^_c||``.

    Example:
        >>> mds(torch.tensor([[-1.0, -3.0], [-2.5, -2.0]]))
        tensor([-1., -2.])
    """
    _check_logits(logits)
    return logits.max(dim=1).values


def entropic(logits: torch.Tensor) -> torch.Tensor:
    """Negative entropy ``sum_c p_c log p_c`` of ``softmax(logits)`` (the IsoMax score), float64."""
    _check_logits(logits)
    log_probs = torch.log_softmax(logits.double(), dim=1)
    return (log_probs.exp() * log_probs).sum(dim=1)


def mmls(logits: torch.Tensor) -> torch.Tensor:
    """Max-mean logit score of DisMax: ``max_c logits + mean_c logits``, float64.

    For DisMax logits ``-(d_c + mean d) / T`` it is ``-(min_c d_c + 3 mean_c d_c) / T``: low for an input far from
    its nearest prototype and from all the others.

    Example:
        >>> mmls(torch.tensor([[-1.0, -3.0], [-2.5, -2.0]]))
        tensor([-3.0000, -4.2500], dtype=torch.float64)
    """
    _check_logits(logits)
    logits = logits.double()
    return logits.max(dim=1).values + logits.mean(dim=1)


def mmles(logits: torch.Tensor) -> torch.Tensor:
    """Max-mean logit entropy score (MMLES), the DisMax paper's OOD score: :func:`mmls` plus :func:`entropic`
    (the negative entropy of ``softmax(logits)``, no entropic scale), float64. All three terms grow for
    in-distribution inputs; it depends on the head's temperature beyond a scale, so calibrate first."""
    return mmls(logits) + entropic(logits)


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017), float64."""
    _check_logits(logits)
    return torch.softmax(logits.double(), dim=1).max(dim=1).values


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al., 2022). For IsoMax+ logits this equals :func:`mds`."""
    _check_logits(logits)
    return logits.max(dim=1).values


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al., 2020), float64."""
    _check_logits(logits)
    return temperature * torch.logsumexp(logits.double() / temperature, dim=1)


SCORES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mds": mds,
    "entropic": entropic,
    "mmls": mmls,
    "mmles": mmles,
    "msp": msp,
    "max_logit": max_logit,
    "energy": energy,
}


def get_score(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score function called ``name`` (one of :data:`SCORES`).

    Example:
        >>> get_score("msp") is msp
        True
    """
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(f"unknown OOD score {name!r}; choose one of {sorted(SCORES)}.") from None
