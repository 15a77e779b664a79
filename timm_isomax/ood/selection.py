"""Choosing a model's OOD score without the test sets: on ID validation images against OOD validation images.

The OOD validation sets are never among the test sets. They are:

* pseudo-OOD made from the ID validation images themselves: :class:`JigsawImages` cuts each image into a
  ``grid x grid`` puzzle and shuffles the pieces (the jigsaw images of Block Selection, Yu et al., CVPR 2023):
  local statistics of the ID data, global structure of none of its classes;
* where a protocol has one, a held-out part of a real OOD set (e.g. the validation part of the clean
  TinyImageNet-32 near set, ``benchmarks/views/``), disjoint from its test part.

A run trained on mosaics (DisMax's FPR) leaves the puzzles out when it has a real OOD validation set: it detects
any composite image, so the puzzles would choose the score that best detects mosaics
(:func:`timm_isomax.train.final.jigsaw_left_out`).

:func:`choose_score` takes the candidate with the highest mean AUROC over the OOD validation sets (ID positive);
ties go to the earlier candidate, so a head's own paper score wins a tie. It also measures how sure that choice
is: the margin over the runner-up and its spread over paired bootstrap resamples of the validation images. Where
the margin is within two of those standard deviations, validation cannot tell the two scores apart
(``Selection.decisive`` is false), which the run says rather than present a coin flip as a finding.

Example:
    >>> selection = choose_score({"mds": id_mds, "knn50": id_knn},
    ...                          {"jigsaw": {"mds": jig_mds, "knn50": jig_knn}})
    >>> selection.chosen, selection.aurocs["knn50"]["mean"]
"""
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from .metrics import auroc

__all__ = ["jigsaw", "JigsawImages", "Selection", "choose_score", "margin_note", "JIGSAW_GRID", "JIGSAW_SET", "MARGIN_RESAMPLES"]

# 4 x 4 pieces: 8-pixel pieces of a 32-pixel image, about the receptive field of a CIFAR network's first stage.
JIGSAW_GRID = 4
# The name of the pseudo-OOD set in every record.
JIGSAW_SET = "jigsaw"
# Paired bootstrap resamples behind the spread of the choice's margin: its standard deviation to about 5% of
# itself, in about 0.15 s for 5,000 ID and 2 x 5,000 OOD validation scores (measured on 2 CPU cores).
MARGIN_RESAMPLES = 200


def jigsaw(image: torch.Tensor, grid: int = JIGSAW_GRID, generator: "torch.Generator | None" = None) -> torch.Tensor:
    """``image`` (C, H, W) cut into ``grid x grid`` equal pieces, shuffled by a permutation that moves at least one
    piece (rows and columns beyond a multiple of ``grid`` stay where they are).

    Example:
        >>> jigsaw(torch.arange(16.).reshape(1, 4, 4), grid=2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1, 4, 4])
    """
    if image.ndim != 3 or grid < 2 or image.shape[1] < grid or image.shape[2] < grid:
        raise ValueError(f"jigsaw needs an image (C, H, W) at least {grid} pixels high and wide, and grid >= 2; got "
                         f"shape {tuple(image.shape)}, grid {grid}.")
    channels, height, width = image.shape
    ph, pw = height // grid, width // grid
    body = image[:, :ph * grid, :pw * grid]
    pieces = body.reshape(channels, grid, ph, grid, pw).permute(1, 3, 0, 2, 4).reshape(grid * grid, channels, ph, pw)
    order = torch.randperm(grid * grid, generator=generator)
    while torch.equal(order, torch.arange(grid * grid)):  # the identity would be the ID image itself
        order = torch.randperm(grid * grid, generator=generator)
    shuffled = pieces[order].reshape(grid, grid, channels, ph, pw).permute(2, 0, 3, 1, 4).reshape(channels, ph * grid, pw * grid)
    out = image.clone()
    out[:, :ph * grid, :pw * grid] = shuffled
    return out


class JigsawImages(torch.utils.data.Dataset):
    """The images of ``dataset`` (items ``(image, label)``, already transformed) as jigsaw puzzles, label -1; each
    index always gets the same shuffle (seeded by ``seed`` and the index).

    Its ``transform``, ``dataset`` and ``mode`` describe it to a feature cache (another key than the plain images).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, grid: int = JIGSAW_GRID, seed: int = 0):
        self.images, self.grid, self.seed = dataset, grid, seed
        self.transform = f"jigsaw(grid={grid}, seed={seed}) of {getattr(dataset, 'transform', None)!r}"
        self.dataset = getattr(dataset, "dataset", None)
        self.mode = getattr(dataset, "mode", None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, _ = self.images[index]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return jigsaw(image, self.grid, generator), -1


@dataclass
class Selection:
    """The chosen score and the validation AUROCs behind the choice: ``aurocs[score][set]`` and ``["mean"]``;
    ``runner_up`` (the next best candidate), ``margin`` (the chosen score's mean AUROC minus the runner-up's) and
    ``margin_std`` (its standard deviation over paired bootstrap resamples of the validation images), where there
    are two candidates or more."""

    chosen: str
    aurocs: Dict[str, Dict[str, float]]
    sets: Sequence[str]
    criterion: str = "highest mean AUROC (ID positive) over the OOD validation sets"
    runner_up: Optional[str] = None
    margin: Optional[float] = None
    margin_std: Optional[float] = None

    @property
    def decisive(self) -> bool:
        """Whether validation tells the chosen score from the runner-up: a margin beyond two standard deviations
        of it (one candidate: nothing to tell apart)."""
        return self.runner_up is None or self.margin > 2 * self.margin_std

    def to_json(self) -> Dict[str, Any]:
        return dict(asdict(self), decisive=self.decisive)


def _float64(values) -> np.ndarray:
    # float64 keeps every score's order and ties (bf16 and float32 values are exact in it)
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _margin_std(id_scores: Mapping[str, np.ndarray], ood_scores: Mapping[str, Mapping[str, np.ndarray]], first: str,
                second: str, resamples: int, seed: int) -> float:
    # the same resampled images for both scores (paired): what varies is the data, not the pairing
    generator = np.random.default_rng(seed)
    n_id = len(id_scores[first])
    differences = []
    for _ in range(resamples):
        rows = generator.integers(0, n_id, n_id)
        per_set = []
        for scores in ood_scores.values():
            picked = generator.integers(0, len(scores[first]), len(scores[first]))
            per_set.append(auroc(id_scores[first][rows], scores[first][picked])
                           - auroc(id_scores[second][rows], scores[second][picked]))
        differences.append(sum(per_set) / len(per_set))
    return float(np.std(differences, ddof=1))


def choose_score(id_scores: Mapping[str, torch.Tensor], ood_scores: Mapping[str, Mapping[str, torch.Tensor]],
                 note: Optional[str] = None, resamples: int = MARGIN_RESAMPLES, seed: int = 0) -> Selection:
    """The candidate (a key of ``id_scores``, in order of preference) with the highest mean AUROC of the ID validation
    scores against each OOD validation set's (``ood_scores[set][score]``); ``note`` (e.g. why a set was left out)
    joins the recorded criterion. The margin over the runner-up gets its spread from ``resamples`` paired bootstrap
    resamples (seeded by ``seed``: the same scores give the same record)."""
    if not id_scores or not ood_scores:
        raise ValueError("choosing a score needs candidate scores and at least one OOD validation set.")
    if resamples < 2:
        raise ValueError(f"the margin's spread needs at least 2 bootstrap resamples, got {resamples}.")
    id_values = {name: _float64(values) for name, values in id_scores.items()}
    ood_values = {set_name: {name: _float64(scores[name]) for name in id_scores} for set_name, scores in ood_scores.items()}
    aurocs = {}
    for name in id_values:
        per_set = {set_name: auroc(id_values[name], scores[name]) for set_name, scores in ood_values.items()}
        aurocs[name] = dict(per_set, mean=sum(per_set.values()) / len(per_set))
    ranked = sorted(aurocs, key=lambda name: -aurocs[name]["mean"])  # a stable sort keeps the first of equal means
    criterion = Selection.criterion + (f" ({note})" if note else "")
    selection = Selection(ranked[0], aurocs, list(ood_scores), criterion)
    if len(ranked) > 1:
        selection.runner_up = ranked[1]
        selection.margin = aurocs[ranked[0]]["mean"] - aurocs[ranked[1]]["mean"]
        selection.margin_std = _margin_std(id_values, ood_values, ranked[0], ranked[1], resamples, seed)
    return selection


def margin_note(record: Mapping[str, Any]) -> str:
    """How sure a recorded choice (``Selection.to_json()``, as in ``training/evaluation.json``) is, as a clause for a
    log line; ``""`` for a record with one candidate or from before margins were measured.

    Example:
        >>> margin_note(dict(chosen="knn50", runner_up="entropic", margin=0.0002, margin_std=0.0015, decisive=False))
        'runner-up entropic by 0.02 +- 0.15 points (paired bootstrap): validation cannot tell knn50 from entropic, so ...'
    """
    if record.get("runner_up") is None:
        return ""
    text = (f"runner-up {record['runner_up']} by {100 * record['margin']:.2f} +- {100 * record['margin_std']:.2f} "
            f"points (paired bootstrap)")
    if record.get("decisive"):
        return text
    return (text + f": validation cannot tell {record['chosen']} from {record['runner_up']}, so the choice between "
            f"them is a coin flip; compare them on the OOD data you care about (--score sets the score)")
