"""The end of a run: every score of the head on the validation and test sets, the score chosen on validation only,
its deployment threshold, and the feature bank saved beside the model.

What each set is for:

* ID validation (held out of the training data, or the dataset's validation split): the threshold, and the ID side
  of the choice;
* OOD validation: jigsaw puzzles of the ID validation images (:class:`~timm_isomax.ood.selection.JigsawImages`) and the
  ``ood_val_datasets`` (e.g. the validation part of a clean near set); never the test sets;
* ID test (``test_split``; without it the validation split stands in, as before) against the ``ood_datasets``:
  the metrics reported, for every score; nothing is chosen on them.
"""
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ..data import dataset_for_model, load_sample, tta_views
from ..ood.detectors import Outputs, Scorer, candidate_scores, model_outputs
from ..ood.feature_scores import FeatureBank
from ..ood.metrics import TPR_LEVEL, ood_metrics
from ..ood.deploy import fit_threshold
from ..ood.score_summary import summarize_scores
from ..ood.selection import JIGSAW_SET, JigsawImages, choose_score
from ..data import dataset_name
from .config import TrainConfig
from .features import FeatureCache, frozen_parts

__all__ = ["FinalSets", "final_evaluation", "TestTimeAugmented", "jigsaw_left_out", "JIGSAW_LEFT_OUT"]

# Images per forward pass of the final evaluation (inference only: larger than a training batch).
_EVAL_BATCH = 256


class FinalSets:
    """The image datasets of the final evaluation, preprocessed for ``model``; with a frozen backbone they go
    through its feature cache (inputs are then features)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, splits, data_config: Dict[str, Any],
                 val_images: torch.utils.data.Dataset, ood_images: Dict[str, torch.utils.data.Dataset],
                 cache: Optional[FeatureCache], device: torch.device):
        self.cfg, self.model, self.splits, self.data_config = cfg, model, splits, data_config
        self.val_images, self.ood_images, self.cache, self.device = val_images, ood_images, cache, device

    def _load(self, source: str, split: str) -> torch.utils.data.Dataset:
        rows = load_sample(source, split, self.cfg.val_limit, self.cfg.seed, self.cfg.subset)
        return dataset_for_model(self.model, rows, data_config=self.data_config, skip_undecodable=True)

    def test(self) -> Optional[torch.utils.data.Dataset]:
        if self.cfg.test_split is None:
            return None
        rows = load_sample(self.cfg.dataset, self.cfg.test_split, self.cfg.val_limit, self.cfg.seed, self.cfg.subset)
        columns = dict(image_column=self.splits.image_column, label_column=self.splits.label_column)
        return dataset_for_model(self.model, rows, data_config=self.data_config, **columns)

    def ood_val(self) -> Dict[str, torch.utils.data.Dataset]:
        real = {dataset_name(s): self._load(s, self.cfg.ood_val_split) for s in self.cfg.ood_val_datasets}
        if jigsaw_left_out(self.cfg):
            return real
        return {JIGSAW_SET: JigsawImages(self.val_images, seed=self.cfg.seed), **real}

    def train(self) -> torch.utils.data.Dataset:
        # the training rows with the evaluation transform: what the bank's neighbours look like at inference
        columns = dict(image_column=self.splits.image_column, label_column=self.splits.label_column)
        return dataset_for_model(self.model, self.splits.train, data_config=self.data_config, **columns)


# Why a run leaves the jigsaw puzzles out of its score choice (the selection's criterion says so).
JIGSAW_LEFT_OUT = ("jigsaw puzzles left out: the run trains on FPR's mosaics of four images, which they resemble, so "
                   "every score detects them (DisMax's MSP at validation AUROC 0.98 on cifar10_finetune_resnet20) "
                   "and they would choose the score that best detects mosaics")


def jigsaw_left_out(cfg: TrainConfig) -> bool:
    """Whether the score choice leaves the jigsaw puzzles out: for a run trained with DisMax's FPR (mosaics of
    four images) when a real OOD validation set is there to choose on. Without one the puzzles are all there is,
    and the run says what that risks."""
    return bool(cfg.dismax_fpr and cfg.ood_val_datasets)


def _feature_parts(model: nn.Module, frozen: bool, classifier: nn.Module) -> Tuple[Optional[Callable], nn.Module, bool]:
    # (features_of, head, with_features): a frozen run's inputs are features already; a model whose logits are not
    # one module on its pre-logits is scored on its logits alone
    if frozen:
        return None, classifier, True
    try:
        features_of, head = frozen_parts(model)
    except ValueError:
        return None, model, False
    return features_of, head, True


def _outputs(sets: FinalSets, features_of, head: nn.Module, dataset, name: str, with_features: bool) -> Outputs:
    if sets.cache is not None:  # frozen backbone: the cache computes (or reads) the features
        dataset = torch.utils.data.TensorDataset(*sets.cache.get(dataset, name, _EVAL_BATCH))
    loader = torch.utils.data.DataLoader(dataset, batch_size=_EVAL_BATCH, shuffle=False, num_workers=0)
    return model_outputs(features_of, head, loader, sets.device, sets.cfg.amp, keep_features=with_features)


class TestTimeAugmented(nn.Module):
    """``model`` with test-time augmentation: the weighted mean of its logits over the views of
    :func:`timm_isomax.data.tta_views` at ``level`` (airbench's flips and 1-pixel shifts).

    Example:
        >>> logits = TestTimeAugmented(model, "flip-translate")(images)
    """

    def __init__(self, model: nn.Module, level: str):
        super().__init__()
        self.model, self.level = model, level

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return sum(weight * self.model(view).float() for weight, view in tta_views(images, self.level))


def _tta_record(sets: FinalSets, head_kind: str, classifier: nn.Module, test_set) -> Dict[str, Any]:
    # the logit scores again, on test-time augmented logits: a row of its own beside the run's plain numbers
    augmented = TestTimeAugmented(sets.model, sets.cfg.tta)
    run = lambda dataset: model_outputs(None, augmented, torch.utils.data.DataLoader(  # noqa: E731
        dataset, batch_size=_EVAL_BATCH, shuffle=False), sets.device, sets.cfg.amp, keep_features=False)
    val = run(sets.val_images)
    test = run(test_set) if test_set is not None else val
    scorer = Scorer(classifier)
    names, _ = scorer.fitting(candidate_scores(head_kind, with_features=False), None, val.logits)
    test_scores = scorer.scores(names, None, test.logits)
    metrics: Dict[str, Dict[str, Any]] = {name: {} for name in names}
    for ood_name, dataset in sets.ood_images.items():
        for name, values in scorer.scores(names, None, run(dataset).logits).items():
            metrics[name][ood_name] = ood_metrics(test_scores[name], values)
    return dict(level=sets.cfg.tta, accuracy=_accuracy(test), val_accuracy=_accuracy(val), metrics=metrics)


def _accuracy(outputs: Outputs) -> float:
    return (outputs.logits.argmax(1) == outputs.labels).double().mean().item()


def final_evaluation(sets: FinalSets, head_kind: str, classifier: nn.Module, output: Path) -> Tuple[Dict[str, Any], float]:
    """Score everything, choose on validation, save the bank; returns the evaluation record (``metrics[score][ood]``
    on the test sets, ``selection`` with the validation AUROCs) and the chosen score's threshold."""
    cfg = sets.cfg
    features_of, head, with_features = _feature_parts(sets.model, cfg.freeze_backbone, classifier)
    run = lambda dataset, name: _outputs(sets, features_of, head, dataset, name, with_features)  # noqa: E731
    val = run(sets.val_images, "val")
    bank = None
    if with_features and cfg.feature_bank:
        train = run(sets.train(), "train")
        bank = FeatureBank.build(train.features, train.labels, source=_bank_source(sets.splits), limit=cfg.bank_limit,
                                 seed=cfg.seed)
        bank.save(output)
    scorer = Scorer(head if with_features else classifier, bank)
    names, unavailable = scorer.fitting(candidate_scores(head_kind, with_features, bank is not None), val.features,
                                        val.logits)
    for name, reason in unavailable.items():
        print(f"score {name} left out: {reason}")
    val_scores = scorer.scores(names, val.features, val.logits)
    ood_val = {name: run(dataset, f"ood-val {name}") for name, dataset in sets.ood_val().items()}
    left_out = jigsaw_left_out(cfg)
    if cfg.dismax_fpr and not left_out:
        print("note: the run trains on FPR's mosaics, and jigsaw puzzles (which resemble them) are its only OOD "
              "validation set: the chosen score may be the one that best detects mosaics; pass --ood-val-dataset "
              "with held-out real OOD images to choose on those instead.")
    selection = choose_score(val_scores, {name: scorer.scores(names, o.features, o.logits) for name, o in ood_val.items()},
                             note=JIGSAW_LEFT_OUT if left_out else None)
    chosen = cfg.score or selection.chosen
    if chosen not in val_scores:
        val_scores[chosen] = scorer.score(chosen, val.features, val.logits)
    threshold = fit_threshold(val_scores[chosen], TPR_LEVEL)

    test_set = sets.test()
    test = run(test_set, "test") if test_set is not None else val
    test_scores = scorer.scores(names, test.features, test.logits) if test_set is not None else val_scores
    metrics: Dict[str, Dict[str, Any]] = {name: {} for name in names}
    ood_counts = {}
    for ood_name, dataset in sets.ood_images.items():
        ood = run(dataset, ood_name)
        ood_counts[ood_name] = len(ood.logits)
        for name, values in scorer.scores(names, ood.features, ood.logits).items():
            metrics[name][ood_name] = ood_metrics(test_scores[name], values)
    evaluation = dict(
        head=head_kind, accuracy=_accuracy(test), val_accuracy=_accuracy(val), val_images=len(val.logits),
        test_images=len(test.logits), id_split=cfg.test_split or sets.splits.val_split, ood_images=ood_counts,
        metrics=metrics, score=chosen, chosen_by="setting (--score)" if cfg.score else "validation",
        selection=selection.to_json(), ood_val_images={name: len(o.logits) for name, o in ood_val.items()},
        feature_bank=bank.describe() if bank is not None else None, unavailable_scores=unavailable,
        id_scores=summarize_scores(val_scores[chosen], chosen, threshold))  # what the demo draws (score_summary)
    if cfg.tta != "none" and not cfg.freeze_backbone:
        evaluation["tta"] = _tta_record(sets, head_kind, classifier, test_set)
    return evaluation, threshold


def _bank_source(splits) -> str:
    # where the bank's rows come from, in the words of a threshold's fitted_on
    return f"{splits.source}:{splits.train_split}" + (" (validation rows held out)" if splits.val_split == splits.train_split else "")
