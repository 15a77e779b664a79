#!/usr/bin/env python
"""Where a model puts ID and OOD features: norms and distances to the prototypes, per set, side by side.

A distance-based head scores OOD by how far a feature lies from the prototypes, so when a score is inverted
(OOD images nearer their nearest prototype than test images are) the geometry says why. Per set this prints
the mean (and std) of: the feature norm ||f||; the distance to the nearest prototype (the MDS score, negated);
the gap from the nearest to the second nearest (what the entropic score grows with); the mean distance to all
prototypes; the distance to the prototypes' centroid. Per OOD set it adds the AUROC of the feature norm alone
(which a unit-feature head discards) and of MDS. For IsoMax+ (and DisMax) the distances are between unit vectors,
as the head computes them; for IsoMax, between the raw vectors; a SoftMax model (a linear head) gets the norm only.

    python scripts/distance_diagnosis.py --model outputs/benchmark_runs/cifar10_converge/seed0/isomax \\
        --id-dataset ../shared/data/cifar10 --ood-dataset ../shared/data/tinyimagenet32 \\
        --ood-dataset ../shared/data/mnist --limit 2000
"""
import argparse
from typing import Dict, Optional

import torch

from timm_isomax import IsoMaxHead, IsoMaxPlusHead
from timm_isomax.data import dataset_for_model
from timm_isomax.evaluation import EvalSet, load_eval_set, load_model
from timm_isomax.metrics import auroc
from timm_isomax.train.features import compute_features

COLUMNS = ["feature norm", "nearest distance", "2nd - nearest", "mean distance", "centroid distance"]


def features_of(model: torch.nn.Module, eval_set: EvalSet, batch_size: int) -> torch.Tensor:
    """The head's input features (N, D), float32: the pre-logits, preprocessed as ``timm-isomax evaluate`` does."""
    def pre_logits(images: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(images), pre_logits=True)

    dataset = dataset_for_model(model, eval_set.dataset)
    return compute_features(pre_logits, model, dataset, batch_size, torch.device("cpu"))[0]


def geometry(features: torch.Tensor, prototypes: Optional[torch.Tensor], unit: bool) -> Dict[str, torch.Tensor]:
    """Per image: each column of COLUMNS (the feature norm only where there are no ``prototypes``)."""
    norms = features.norm(dim=1)
    if prototypes is None:
        return {"feature norm": norms}
    if unit:  # IsoMax+ compares directions only
        features = torch.nn.functional.normalize(features, dim=1)
        prototypes = torch.nn.functional.normalize(prototypes, dim=1)
    distances = torch.cdist(features, prototypes)
    nearest_two = distances.topk(2, dim=1, largest=False).values
    return {"feature norm": norms, "nearest distance": nearest_two[:, 0],
            "2nd - nearest": nearest_two[:, 1] - nearest_two[:, 0], "mean distance": distances.mean(dim=1),
            "centroid distance": (features - prototypes.mean(dim=0)).norm(dim=1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help="a model folder or timm name (IsoMax, IsoMax+, DisMax or SoftMax)")
    parser.add_argument("--id-dataset", required=True)
    parser.add_argument("--ood-dataset", action="append", required=True, help="repeatable")
    parser.add_argument("--limit", type=int, default=2000, help="images per set (class-balanced sample, seed 0)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    model = load_model(args.model)
    head = model.get_classifier()
    if isinstance(head, (IsoMaxHead, IsoMaxPlusHead)):  # DisMax is an IsoMax+ head too
        prototypes, unit = head.prototypes.detach().float(), isinstance(head, IsoMaxPlusHead)
        norms = prototypes.norm(dim=1)
        print(f"{args.model}: {type(head).__name__}, {prototypes.shape[0]} prototypes of dimension "
              f"{prototypes.shape[1]}, prototype norms {norms.mean():.3f} ± {norms.std():.3f}, "
              f"{'unit' if unit else 'raw'} distances; {args.limit} images per set\n")
    else:
        prototypes, unit = None, False
        print(f"{args.model}: {type(head).__name__} head, no prototypes: the feature norm only; "
              f"{args.limit} images per set\n")
    print("| set | " + " | ".join(COLUMNS) + " | AUROC of the norm % | AUROC of MDS % |")
    print("|---|" + "---|" * (len(COLUMNS) + 2))
    id_values = None
    for source in [args.id_dataset] + args.ood_dataset:
        eval_set = load_eval_set(source, "test", limit=args.limit)
        values = geometry(features_of(model, eval_set, args.batch_size), prototypes, unit)
        cells = [f"{values[c].mean():.3f} ± {values[c].std():.3f}" if c in values else "" for c in COLUMNS]
        if id_values is None:  # the first set is the ID set
            id_values, name, aurocs = values, f"{eval_set.name} (ID)", ["", ""]
        else:  # ID positive, higher = ID: a large norm, a small nearest distance (MDS = -nearest distance)
            name = eval_set.name
            aurocs = [f"{100 * auroc(id_values['feature norm'], values['feature norm']):.2f}",
                      f"{100 * auroc(-id_values['nearest distance'], -values['nearest distance']):.2f}"
                      if prototypes is not None else ""]
        print(f"| {name} | " + " | ".join(cells + aurocs) + " |")


if __name__ == "__main__":
    main()
