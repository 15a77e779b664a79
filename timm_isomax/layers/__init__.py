"""The head's mathematics, free of timm and of files: distance heads (:mod:`.heads`), their losses
(:mod:`.losses`), logit OOD scores (:mod:`.scores`) and DisMax's fractional probability batches (:mod:`.fpr`)."""
from . import fpr, scores
from .heads import DisMaxHead, IsoMaxHead, IsoMaxPlusHead, euclidean_distances
from .losses import DisMaxLoss, IsoMaxLoss, IsoMaxPlusLoss

__all__ = ["IsoMaxPlusHead", "IsoMaxHead", "DisMaxHead", "euclidean_distances", "IsoMaxPlusLoss", "IsoMaxLoss",
           "DisMaxLoss", "scores", "fpr"]
