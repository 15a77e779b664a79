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
ties go to the earlier candidate, so a head's own paper score wins a tie.

Example:
    >>> selection = choose_score({"mds": id_mds, "knn50": id_knn},
    ...                          {"jigsaw": {"mds": jig_mds, "knn50": jig_knn}})
    >>> selection.chosen, selection.aurocs["knn50"]["mean"]
"""
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from .metrics import auroc

__all__ = ["jigsaw", "JigsawImages", "Selection", "choose_score", "JIGSAW_GRID", "JIGSAW_SET"]

# 4 x 4 pieces: 8-pixel pieces of a 32-pixel image, about the receptive field of a CIFAR network's first stage.
JIGSAW_GRID = 4
# The name of the pseudo-OOD set in every record.
JIGSAW_SET = "jigsaw"


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
    """The chosen score and the validation AUROCs behind the choice: ``aurocs[score][set]`` and ``["mean"]``."""

    chosen: str
    aurocs: Dict[str, Dict[str, float]]
    sets: Sequence[str]
    criterion: str = "highest mean AUROC (ID positive) over the OOD validation sets"

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def choose_score(id_scores: Mapping[str, torch.Tensor], ood_scores: Mapping[str, Mapping[str, torch.Tensor]],
                 note: Optional[str] = None) -> Selection:
    """The candidate (a key of ``id_scores``, in order of preference) with the highest mean AUROC of the ID validation
    scores against each OOD validation set's (``ood_scores[set][score]``); ``note`` (e.g. why a set was left out)
    joins the recorded criterion."""
    if not id_scores or not ood_scores:
        raise ValueError("choosing a score needs candidate scores and at least one OOD validation set.")
    aurocs = {}
    for name, id_values in id_scores.items():
        per_set = {set_name: auroc(id_values, scores[name]) for set_name, scores in ood_scores.items()}
        aurocs[name] = dict(per_set, mean=sum(per_set.values()) / len(per_set))
    chosen = max(aurocs, key=lambda name: aurocs[name]["mean"])  # max keeps the first of equal means
    criterion = Selection.criterion + (f" ({note})" if note else "")
    return Selection(chosen, aurocs, list(ood_scores), criterion)
