"""Train one backbone with different heads under one recipe, then measure accuracy and OOD detection.

The comparison the papers make: the same architecture, data, recipe and seed, trained as

* ``softmax``: linear classifier + cross-entropy, scored with MSP, max-logit, energy and entropy;
* ``isomax``: IsoMax head + entropic loss, scored with the negative entropy;
* ``isomaxplus``: IsoMax+ head + entropic loss, scored with the minimum distance score.
"""
import functools
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import timm
import torch
from torch import nn

from .engine import interleaved_medians, predict, train_epoch
from .losses import IsoMaxLoss, IsoMaxPlusLoss
from .metrics import ood_metrics
from .model import IsoMaxClassifier
from .scores import get_score

__all__ = ["Recipe", "HeadKind", "HEAD_KINDS", "train_classifier", "evaluate", "compare_heads", "inference_throughput",
           "random_crop_flip", "Protocol", "build_protocol"]


@dataclass(frozen=True)
class HeadKind:
    """How one kind of head is built (arch name suffix), trained (loss) and scored (OOD scores)."""

    suffix: str
    make_loss: Callable[[], nn.Module]
    scores: Tuple[str, ...]


HEAD_KINDS: Dict[str, HeadKind] = {
    "softmax": HeadKind("", nn.CrossEntropyLoss, ("msp", "max_logit", "energy", "entropic")),
    "isomax": HeadKind("_isomax", IsoMaxLoss, ("entropic",)),
    "isomaxplus": HeadKind("_isomaxplus", IsoMaxPlusLoss, ("mds",)),
}


@dataclass(frozen=True)
class Recipe:
    """One training recipe for every head: SGD with Nesterov momentum and a one-cycle schedule.

    ``crop_padding`` > 0: random crops of the zero-padded image (zero is mid-grey after [-1, 1]
    normalisation); ``hflip``: random horizontal flips. Both act on in-memory batches, seeded by ``seed``.
    ``head_weight_decay``: the weight decay of the IsoMax heads' parameters (prototypes, distance scale)
    where it should differ from ``weight_decay`` (an ablation; None: the same).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    crop_padding: int = 0
    hflip: bool = False
    head_weight_decay: Optional[float] = None


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the ``padding``-padded batch back to its size, and random horizontal flips.

    Vectorised over the batch (one gather), so it costs little next to a training step; the offsets come
    from ``generator`` (CPU), which makes augmented training reproducible.
    """
    batch, _, height, width = images.shape
    if padding > 0:
        padded = nn.functional.pad(images, (padding,) * 4)
        top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        rows = (top[:, None] + torch.arange(height, device=images.device))[:, :, None]  # B, H, 1
        cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, :]  # B, 1, W
        index = torch.arange(batch, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)  # gather -> B, H, W, C -> B, C, H, W
    if hflip:
        flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)[:, None, None, None]
        images = torch.where(flip, images.flip(3), images)
    return images.contiguous()


def _parameter_groups(model: nn.Module, recipe: Recipe) -> List[Dict]:
    if recipe.head_weight_decay is None or not isinstance(model, IsoMaxClassifier):
        return [{"params": list(model.parameters())}]
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    return [{"params": [p for p in model.parameters() if id(p) not in head_ids]},
            {"params": head, "weight_decay": recipe.head_weight_decay}]


def train_classifier(model: nn.Module, train_set: torch.utils.data.Dataset, loss_fn: nn.Module, recipe: Recipe,
                     device: torch.device = torch.device("cpu")) -> List[float]:
    """Train ``model`` in place; returns the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(recipe.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                                         generator=generator)
    optimizer = torch.optim.SGD(_parameter_groups(model, recipe), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=True, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * len(loader))
    augment = None
    if recipe.crop_padding > 0 or recipe.hflip:
        augment_generator = torch.Generator().manual_seed(recipe.seed + 1)
        augment = functools.partial(random_crop_flip, padding=recipe.crop_padding, hflip=recipe.hflip,
                                    generator=augment_generator)
    return [train_epoch(model, loader, loss_fn, optimizer, scheduler, device, augment) for _ in range(recipe.epochs)]


def evaluate(model: nn.Module, id_test: torch.utils.data.Dataset, ood_sets: Mapping[str, torch.utils.data.Dataset],
             score_names: Sequence[str], batch_size: int = 256, device: torch.device = torch.device("cpu")) -> Dict:
    """Top-1 accuracy on ``id_test`` and, per score and OOD set, every metric of :func:`~.metrics.ood_metrics`
    (ID positive): ``result["metrics"][score][ood_name]["auroc"]``."""
    def logits_of(dataset):
        return predict(model, torch.utils.data.DataLoader(dataset, batch_size=batch_size), device)

    id_logits, id_labels = logits_of(id_test)
    ood_logits = {name: logits_of(dataset)[0] for name, dataset in ood_sets.items()}
    result = {"accuracy": (id_logits.argmax(dim=1) == id_labels).double().mean().item(), "metrics": {}}
    for score_name in score_names:
        score = get_score(score_name)
        id_scores = score(id_logits)
        result["metrics"][score_name] = {name: ood_metrics(id_scores, score(logits)) for name, logits in ood_logits.items()}
    return result


def inference_throughput(models: Mapping[str, nn.Module], images: torch.Tensor, rounds: int = 5,
                         device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Images per second of each model's eval-mode forward on the batch ``images``, timed interleaved."""
    images = images.to(device)
    for model in models.values():
        model.eval()

    def forward(model):
        with torch.no_grad():
            model(images)

    medians = interleaved_medians({name: functools.partial(forward, model) for name, model in models.items()},
                                  rounds, device=device)
    return {name: len(images) / seconds for name, seconds in medians.items()}


def compare_heads(arch: str, num_classes: int, train_set: torch.utils.data.Dataset, id_test: torch.utils.data.Dataset,
                  ood_sets: Mapping[str, torch.utils.data.Dataset], recipe: Recipe = Recipe(),
                  heads: Sequence[str] = ("softmax", "isomaxplus"), device: torch.device = torch.device("cpu"),
                  throughput_rounds: int = 0, **model_kwargs) -> List[Dict]:
    """Train ``arch`` once per head kind with the same recipe and seed; one result dict per head.

    With ``throughput_rounds`` > 0, the trained models' inference throughput (img/s, a batch of 256 ID test
    images) is measured side by side afterwards: ``row["throughput"]``.

    Example:
        >>> rows = compare_heads("resnet10t", 5, train_set, id_test, {"held-out digits": ood_set},
        ...                      Recipe(epochs=5), in_chans=1)
        >>> rows[1]["metrics"]["mds"]["held-out digits"]["auroc"]
    """
    rows, models = [], {}
    for head in heads:
        kind = HEAD_KINDS[head]
        torch.manual_seed(recipe.seed)
        model = timm.create_model(arch + kind.suffix, num_classes=num_classes, **model_kwargs).to(device)
        start = time.perf_counter()
        losses = train_classifier(model, train_set, kind.make_loss(), recipe, device)
        train_seconds = time.perf_counter() - start
        result = evaluate(model, id_test, ood_sets, kind.scores, device=device)
        rows.append(dict(head=head, arch=arch + kind.suffix, final_loss=losses[-1], train_seconds=train_seconds,
                         recipe=asdict(recipe), **result))
        if hasattr(getattr(model, "head", None), "distance_scale"):  # IsoMax+: the learned |s|, a diagnostic
            rows[-1]["distance_scale"] = model.head.distance_scale.abs().item()
        models[head] = model
    if throughput_rounds > 0:
        batch = torch.stack([id_test[i][0] for i in range(min(256, len(id_test)))])
        rates = inference_throughput(models, batch, throughput_rounds, device)
        for row in rows:
            row["throughput"] = rates[row["head"]]
    return rows


@dataclass
class Protocol:
    """Tensors for one ID-vs-OOD protocol, ready for :func:`compare_heads`."""

    name: str
    num_classes: int
    in_chans: int
    train_set: torch.utils.data.Dataset
    id_test: torch.utils.data.Dataset
    ood_sets: Dict[str, torch.utils.data.Dataset]


def _classes_label(classes: Sequence[int]) -> str:
    classes = sorted(int(c) for c in classes)
    contiguous = classes == list(range(classes[0], classes[-1] + 1))
    return f" {classes[0]}-{classes[-1]}" if contiguous and len(classes) > 2 else " " + ",".join(map(str, classes))


def _limit(dataset, limit):
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


def build_protocol(id_source: str, ood_sources: Sequence[str], img_size: int = 32, train_split: str = "train",
                   test_split: str = "test", ood_split: str = "test", id_classes: Sequence[int] = (),
                   ood_classes: Sequence[int] = (), train_limit: int = None, test_limit: int = None) -> Protocol:
    """Load, preprocess and keep in memory an ID dataset and its OOD sets.

    Images take the ID set's mode (greyscale ID -> a 1-channel model, OOD images converted to match),
    resized to ``img_size`` and normalised to [-1, 1]. ``id_classes`` keeps only those ID classes
    (relabelled 0..K-1); ``ood_classes`` with ``ood_sources == [id_source]`` makes a held-out-class
    protocol. Prefixes of the splits are used when limits are given (the shared sets are class-mixed).
    """
    from .data import ImageDataset, find_columns, load_image_dataset, materialize, select_classes

    train = load_image_dataset(id_source, split=train_split)
    test = load_image_dataset(id_source, split=test_split)
    _, label_column = find_columns(train)
    if label_column is None:
        raise ValueError(f"the ID dataset {id_source!r} has no label column; training needs labels.")
    num_classes = train.features[label_column].num_classes if hasattr(train.features[label_column], "num_classes") else (
        max(train[label_column]) + 1)
    if id_classes:
        relabel = {c: i for i, c in enumerate(id_classes)}
        train, test = (select_classes(d, id_classes, label_column).map(
            lambda row: {label_column: relabel[row[label_column]]}) for d in (train, test))
        num_classes = len(id_classes)
    image_column = find_columns(train)[0]
    mode = "L" if train[0][image_column].mode in ("L", "1", "I;16", "I") else "RGB"
    in_chans = 1 if mode == "L" else 3
    transform = timm.data.create_transform(input_size=(in_chans, img_size, img_size), interpolation="bilinear",
                                           mean=(0.5,) * in_chans, std=(0.5,) * in_chans, crop_pct=1.0)

    def tensors(dataset, limit):
        return materialize(ImageDataset(_limit(dataset, limit), transform, mode=mode))

    ood_sets = {}
    for source in ood_sources:
        ood = load_image_dataset(source, split=ood_split)
        if ood_classes:
            ood = select_classes(ood, ood_classes, find_columns(ood)[1] or "label")
        name = source.rstrip("/").split("/")[-1] + (_classes_label(ood_classes) if ood_classes else "")
        ood_sets[name] = tensors(ood, test_limit)
    name = id_source.rstrip("/").split("/")[-1] + (_classes_label(id_classes) if id_classes else "")
    return Protocol(name, num_classes, in_chans, tensors(train, train_limit), tensors(test, test_limit), ood_sets)
