"""Evaluate saved timm models (IsoMax, IsoMax+ or SoftMax) on an ID dataset against OOD datasets.

The library side of ``timm-isomax evaluate``: load models and datasets, preprocess with each model's
own timm data config, compute logits and scores, and turn them into metric rows, a text table, JSON and
CSV. Plots live in :mod:`timm_isomax.ood.plots`.

Example:
    >>> id_set = load_eval_set("../shared/data/mnist", "test", limit=1000)
    >>> ood_sets = [load_eval_set("../shared/data/notmnist", "test", limit=1000)]
    >>> results = evaluate_models(["local-dir:out/resnet10t_isomaxplus"], id_set, ood_sets)
    >>> print(format_table(results, id_set, ood_sets))
"""
import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import torch
from torch import nn

from ..data import dataset_for_model, find_columns, image_digests, load_sample
from .deploy import recorded_ood_config
from .detectors import Outputs, Scorer, candidate_scores, model_outputs, model_parts, needs_features, score_problem
from ..models.inference import predict_logits
from .feature_scores import feature_bank_of
from .metrics import MEAN_ROW, METRIC_DESCRIPTIONS, METRIC_NAMES, METRIC_TITLES, TPR_LEVEL, ood_metrics_table, percent
from ..models.classifier import IsoMaxClassifier
from ..models.conversion import convert_softmax_model
from ..models.factory import create_model
from ..data import dataset_name

__all__ = [
    "EvalSet",
    "ModelEvaluation",
    "load_eval_set",
    "resolve_model_name",
    "load_model",
    "default_score_names",
    "compute_logits",
    "compute_outputs",
    "evaluate_model",
    "evaluate_models",
    "evaluate_conversion",
    "result_rows",
    "format_table",
    "results_dict",
    "write_results",
    "CONVENTIONS",
]

# What every report says about how its numbers were computed (the conventions differ between papers).
CONVENTIONS: Dict[str, str] = {
    "score": "higher = more in-distribution; ID is the positive class unless a metric says otherwise",
    "operating_point": f"first ROC point (most confident threshold first) with TPR >= {TPR_LEVEL:.0%}",
    **METRIC_DESCRIPTIONS,
}

@dataclass
class EvalSet:
    """One split of an image dataset, ready for evaluation (``limit`` already applied)."""

    name: str
    source: str
    split: str
    dataset: datasets.Dataset

    def describe(self) -> Dict[str, Any]:
        return dict(name=self.name, source=self.source, split=self.split, images=len(self.dataset))


def load_eval_set(source: str, split: str = "test", limit: Optional[int] = None, name: Optional[str] = None,
                  seed: int = 0, subset: str = "balanced") -> EvalSet:
    """Load ``split`` of ``source`` (anything :func:`timm_isomax.data.load_image_dataset` takes), keeping
    ``limit`` images: a class-balanced sample seeded by ``seed`` (uniform where the set has no labels), or
    with ``subset="first"`` the first ones. Labels are optional (OOD sets may be label-free).

    Example:
        >>> ood = load_eval_set("../shared/data/notmnist", "test", limit=500)
    """
    return EvalSet(name or dataset_name(source), source, split, load_sample(source, split, limit, seed, subset))


def resolve_model_name(name: str) -> str:
    """A plain path to an existing model folder becomes ``local-dir:PATH``; anything else is a timm name.

    Example:
        >>> resolve_model_name("out/resnet10t_isomaxplus")   # a folder holding config.json
        'local-dir:out/resnet10t_isomaxplus'
    """
    if ":" not in name and Path(name).is_dir():
        return f"local-dir:{name}"
    return name


def load_model(name: str, pretrained: bool = True) -> nn.Module:
    """``timm.create_model`` for any name it takes (``local-dir:``, ``hf-hub:``, a plain model folder),
    in eval mode, with one-line errors for unknown names and missing folders."""
    name = resolve_model_name(name)
    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1])
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} holds no config.json: not a model folder (write one with save_pretrained).")
    model = create_model(name, pretrained=pretrained)
    return model.eval()


def _has_features(model: nn.Module) -> bool:
    try:
        model_parts(model)
    except ValueError:
        return False
    return True


def default_score_names(model: nn.Module) -> List[str]:
    """Every score the trainer reports for the model's head (:func:`timm_isomax.ood.detectors.candidate_scores`): its
    logit scores, the feature scores where its logits are one head on its pre-logits, and KNN and the post-hoc
    detectors where a feature bank was saved beside it; the model's own first (the one its threshold uses: an IsoMax
    model's ``ood_config["score"]``, or the score a SoftMax run chose, :func:`~timm_isomax.ood.recorded_ood_config`).
    All of them, because which score suits which head is an open question the benchmark measures
    (docs/benchmarks.md), not one to hide here."""
    head = model.head_type if isinstance(model, IsoMaxClassifier) else "softmax"
    with_features = _has_features(model)
    names = list(candidate_scores(head, with_features, with_features and feature_bank_of(model) is not None))
    own = recorded_ood_config(model)[0].get("score")
    return [own, *(score for score in names if score != own)] if own else names


def _image_digests(eval_set: EvalSet) -> set:
    return image_digests(eval_set.dataset, find_columns(eval_set.dataset)[0])


def _threshold_fitted_on_id_set(model: nn.Module, id_set: EvalSet) -> Optional[str]:
    # the trainer records fitted_on as "SOURCE:SPLIT", "SOURCE:SPLIT[...]" for a sample of it, or with
    # "[held out ...]" for a share of the training split (other rows than the split's own evaluation)
    fitted_on = recorded_ood_config(model)[0].get("fitted_on")
    if not isinstance(fitted_on, str) or "[held out" in fitted_on:
        return None
    source, _, split = fitted_on.split("[")[0].rpartition(":")
    same_source = source == id_set.source or (Path(source).exists() and Path(id_set.source).exists()
                                              and Path(source).resolve() == Path(id_set.source).resolve())
    return fitted_on if split == id_set.split and same_source else None


def check_eval_sets(model: nn.Module, id_set: EvalSet, ood_sets: Sequence[EvalSet]) -> List[str]:
    """Warnings (also issued) about sets that would give a number without meaning: ID class names other
    than the model's (the accuracy compares other classes), an ID set the model's threshold was fitted on
    (it validated on its test data), OOD sets that share images with the ID set (AUROC tends to 50 on the
    shared part)."""
    problems = []
    model_names = list(getattr(model, "pretrained_cfg", {}).get("label_names") or [])
    _, label_column = find_columns(id_set.dataset)
    id_names = list(getattr(id_set.dataset.features.get(label_column), "names", []) or []) if label_column else []
    if model_names and id_names and model_names != id_names:
        differ = next(i for i in range(min(len(model_names), len(id_names)) + 1)
                      if i == min(len(model_names), len(id_names)) or model_names[i] != id_names[i])
        problems.append(f"the ID set {id_set.name} names its classes otherwise than the model does (first difference at "
                        f"index {differ}: {id_names[differ:differ + 1]} vs {model_names[differ:differ + 1]}; "
                        f"{len(id_names)} vs {len(model_names)} classes): its accuracy compares other classes.")
    fitted_on = _threshold_fitted_on_id_set(model, id_set)
    if fitted_on:
        problems.append(f"the model's deployment threshold was fitted on {fitted_on}, the ID set {id_set.name} itself "
                        f"(it validated on its test data): the numbers at that threshold are not held out.")
    id_digests = _image_digests(id_set) if ood_sets else set()
    for ood in ood_sets:
        shared = len(id_digests & _image_digests(ood))
        if shared:
            problems.append(f"the OOD set {ood.name} shares {shared} images with the ID set {id_set.name}: those "
                            f"cannot be told apart, so its AUROC says little; use a disjoint OOD set.")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return problems


def compute_logits(model: nn.Module, eval_set: EvalSet, batch_size: int = 256, device: Union[str, torch.device] = "cpu",
                   amp: bool = False, workers: int = 0, progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits (N, C) and labels (N,; -1 = no label) of ``model`` on ``eval_set``, preprocessed
    with the model's own data config; ``amp``: autocast (``timm_isomax.models.inference.amp_dtype``)."""
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(dataset_for_model(model, eval_set.dataset), batch_size=batch_size,
                                         num_workers=workers)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"{eval_set.name} ({len(eval_set.dataset)} images)", unit="batch", leave=False)
    return predict_logits(model.to(device), loader, device, amp=amp)


def compute_outputs(model: nn.Module, eval_set: EvalSet, batch_size: int = 256, device: Union[str, torch.device] = "cpu",
                    amp: bool = False, workers: int = 0, progress: bool = False, with_features: bool = True) -> Outputs:
    """The pre-logit features (where the model's logits are one head on them and ``with_features``), float32 logits
    and labels (-1 = no label) of ``model`` on ``eval_set``, preprocessed with the model's own data config."""
    device = torch.device(device)
    if not (with_features and _has_features(model)):
        logits, labels = compute_logits(model, eval_set, batch_size, device, amp, workers, progress)
        return Outputs(None, logits, labels)
    features_of, head = model_parts(model.to(device))
    loader = torch.utils.data.DataLoader(dataset_for_model(model, eval_set.dataset), batch_size=batch_size,
                                         num_workers=workers)
    return model_outputs(features_of, head, loader, device, amp, progress,
                         f"{eval_set.name} ({len(eval_set.dataset)} images)")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> Optional[float]:
    labelled = labels >= 0
    # no labels, or labels from another label space (e.g. an ImageNet model on CIFAR): no accuracy
    if not labelled.any() or labels.max() >= logits.shape[1]:
        return None
    return (logits[labelled].argmax(dim=1) == labels[labelled]).double().mean().item()


def _no_accuracy_reason(id_set: EvalSet, labels: torch.Tensor, num_classes: int) -> str:
    """Why the ID set gives no accuracy (shown as "-" in the table), in words."""
    features = id_set.dataset.features
    if find_columns(id_set.dataset)[1] is None:
        for column in ("label", "labels"):
            if column in features:  # a label column find_columns cannot take: strings, floats, ...
                kind = getattr(features[column], "dtype", type(features[column]).__name__)
                return (f"its column {column!r} holds {kind} values, not class indices (encode them in the model's class "
                        f"order, e.g. dataset.class_encode_column({column!r}))")
        return "it has no label column"
    if not (labels >= 0).any():
        return "none of its rows has a label"
    return (f"its labels go up to {int(labels.max())} but the model has {num_classes} classes (another label space, "
            f"e.g. an ImageNet model on CIFAR)")


@dataclass
class ModelEvaluation:
    """Accuracy, OOD scores and metrics of one model.

    ``metrics[score][ood_name or "mean"][metric]``; ``id_scores[score]`` and ``ood_scores[score][ood_name]``
    hold the raw scores (for plots).
    """

    name: str
    source: str
    architecture: str
    head: str
    num_classes: int
    accuracy: Optional[float]
    temperature: Optional[float]
    ood_config: Optional[Dict[str, Any]]
    id_scores: Dict[str, np.ndarray] = field(repr=False)
    ood_scores: Dict[str, Dict[str, np.ndarray]] = field(repr=False)
    metrics: Dict[str, Dict[str, Dict[str, float]]]

    def summary(self) -> Dict[str, Any]:
        """Everything but the raw scores, JSON-ready."""
        keys = ("name", "source", "architecture", "head", "num_classes", "accuracy", "temperature", "ood_config", "metrics")
        return {key: getattr(self, key) for key in keys}


def evaluate_model(model: nn.Module, id_set: EvalSet, ood_sets: Sequence[EvalSet], score_names: Optional[Sequence[str]] = None,
                   name: Optional[str] = None, source: Optional[str] = None, batch_size: int = 256,
                   device: Union[str, torch.device] = "cpu", amp: bool = False, workers: int = 0,
                   progress: bool = False) -> ModelEvaluation:
    """Accuracy on ``id_set`` (where it has labels in the model's label space) and every metric of
    :func:`timm_isomax.ood.metrics.ood_metrics` per score and OOD set, plus the macro mean.

    ``score_names`` defaults to :func:`default_score_names`; ``name`` (shown in reports) and ``source``
    (where the model came from) default to the architecture.

    Example:
        >>> result = evaluate_model(model, id_set, [ood_set])
        >>> result.metrics["mds"]["notmnist"]["auroc"]
    """
    chosen_names = bool(score_names)
    score_names = list(score_names or default_score_names(model))
    check_eval_sets(model, id_set, ood_sets)
    with_features = any(needs_features(score) for score in score_names)
    kwargs = dict(batch_size=batch_size, device=device, amp=amp, workers=workers, progress=progress,
                  with_features=with_features)
    id_outputs = compute_outputs(model, id_set, **kwargs)
    ood_outputs = {ood.name: compute_outputs(model, ood, **kwargs) for ood in ood_sets}
    head = model_parts(model)[1] if id_outputs.features is not None else model.get_classifier()
    scorer = Scorer(head, feature_bank_of(model) if with_features else None)
    id_logits, id_labels = id_outputs.logits, id_outputs.labels
    if not chosen_names:  # the defaults: every score that fits this model's bank, as the trainer's final evaluation
        score_names = _fitting_scores(scorer, score_names, id_outputs)
    id_scores = {score: values.numpy() for score, values in scorer.scores(score_names, id_outputs.features, id_logits).items()}
    ood_scores = {score: {} for score in score_names}
    for ood, outputs in ood_outputs.items():
        for score, values in scorer.scores(score_names, outputs.features, outputs.logits).items():
            ood_scores[score][ood] = values.numpy()
    is_isomax = isinstance(model, IsoMaxClassifier)
    architecture = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    accuracy = _accuracy(id_logits, id_labels)
    if accuracy is None:  # the table shows "-": say why
        warnings.warn(f"no accuracy on the ID set {id_set.name} for {name or architecture}: "
                      f"{_no_accuracy_reason(id_set, id_labels, int(id_logits.shape[1]))}.", stacklevel=2)
    return ModelEvaluation(
        name=name or architecture,
        source=source or name or architecture,
        architecture=architecture,
        head=model.head_type if is_isomax else "softmax",
        num_classes=int(id_logits.shape[1]),
        accuracy=accuracy,
        temperature=float(model.head.temperature) if is_isomax else None,
        ood_config=dict(model.ood_config) if is_isomax else None,
        id_scores=id_scores,
        ood_scores=ood_scores,
        # no OOD set (e.g. an ImageNet model here): accuracy only
        metrics={score: ood_metrics_table(id_scores[score], ood_scores[score]) for score in score_names} if ood_sets else {},
    )


def _fitting_scores(scorer: Scorer, names: Sequence[str], outputs: Outputs) -> List[str]:
    # left out of the defaults with a warning; a score asked for by name still fails with its reason
    fitting, left_out = scorer.fitting(names, outputs.features, outputs.logits)
    for name, reason in left_out.items():
        warnings.warn(f"score {name} left out: {reason}", stacklevel=3)
    return fitting


def _display_names(model_names: Sequence[str]) -> List[str]:
    # a model folder is shown by its folder name; repeated names get "#2", "#3", ...
    resolved = [resolve_model_name(n) for n in model_names]
    names = [Path(n.split(":", 1)[1]).name if n.startswith("local-dir:") else n for n in resolved]
    return [f"{n}#{names[:i].count(n) + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def evaluate_models(model_names: Sequence[str], id_set: EvalSet, ood_sets: Sequence[EvalSet], pretrained: bool = True,
                    score_names: Optional[Sequence[str]] = None, **kwargs: Any) -> List[ModelEvaluation]:
    """Load and evaluate each model in turn (see :func:`evaluate_model` for ``kwargs``)."""
    for score in score_names or ():
        if score_problem(score):  # fail on a misspelt score before loading anything
            raise ValueError(score_problem(score))
    names = {ood.name for ood in ood_sets}
    if len(names) < len(ood_sets) or MEAN_ROW in names:
        raise ValueError(f"OOD set names must be unique and not {MEAN_ROW!r}; got {[o.name for o in ood_sets]}.")
    results = []
    for model_name, display in zip(model_names, _display_names(model_names)):
        model = load_model(model_name, pretrained)
        results.append(evaluate_model(model, id_set, ood_sets, score_names, name=display, source=model_name, **kwargs))
    return results


def evaluate_conversion(softmax: nn.Module, id_set: EvalSet, ood_sets: Sequence[EvalSet], name: str,
                        head_type: str = "isomaxplus", **kwargs: Any) -> Tuple[ModelEvaluation, ModelEvaluation, nn.Module]:
    """Evaluate a SoftMax model, convert a copy of it to IsoMax+ (or DisMax, ``head_type``) with no training
    (:func:`timm_isomax.convert_softmax_model`) and evaluate that on the same data.

    Returns the two evaluations (named ``"<name> (SoftMax)"`` and ``"<name>_<head_type> (zero-shot)"``) and the
    converted model (its ``conversion`` report says how the prototypes were made).

    Example:
        >>> source, converted, model = evaluate_conversion(load_softmax_model("resnet50.a1_in1k"), id_set, [ood])
        >>> converted.accuracy - source.accuracy
    """

    softmax.eval()
    source = evaluate_model(softmax, id_set, ood_sets, name=f"{name} (SoftMax)", **kwargs)
    converted_model = convert_softmax_model(softmax, head_type=head_type).eval()
    converted = evaluate_model(converted_model, id_set, ood_sets, name=f"{name}_{head_type} (zero-shot)", **kwargs)
    return source, converted, converted_model


def result_rows(evaluations: Sequence[ModelEvaluation]) -> List[Dict[str, Any]]:
    """One flat row per model, score and OOD set (and the macro ``"mean"`` row): the CSV / table rows."""
    return [
        dict(model=e.name, head=e.head, score=score, accuracy=e.accuracy, ood_dataset=ood, **row)
        for e in evaluations for score, table in e.metrics.items() for ood, row in table.items()
    ]


def format_table(evaluations: Sequence[ModelEvaluation], id_set: EvalSet, ood_sets: Sequence[EvalSet]) -> str:
    """A plain-text table of accuracy and every OOD metric (in %), its conventions in the header."""
    header = ["model", "score", "ID acc", "OOD set"] + [METRIC_TITLES[m] for m in METRIC_NAMES]
    # with one OOD set the macro mean repeats it: the text table leaves it out (JSON and CSV keep it)
    rows = [row for row in result_rows(evaluations) if len(ood_sets) > 1 or row["ood_dataset"] != MEAN_ROW]
    body = [[row["model"], row["score"], percent(row["accuracy"]), row["ood_dataset"]]
            + [percent(row[m]) for m in METRIC_NAMES] for row in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def fmt(line):  # text columns left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i in (0, 1, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    describe = lambda s: f"{s.name} ({s.split}, {len(s.dataset)} images)"  # noqa: E731
    lines = [
        f"ID: {describe(id_set)}; OOD: {', '.join(describe(s) for s in ood_sets)}. All values in %.",
        f"Scores: {CONVENTIONS['score']}. Operating point: {CONVENTIONS['operating_point']}.",
        "FPR@95 / TNR@95: ID positive (ODIN/Mahalanobis/IsoMax papers): OOD accepted / rejected at 95% ID accepted.",
        "FPR95(OOD+): OOD positive (OpenOOD/pytorch-ood): ID rejected at 95% OOD rejected.",
        "AUPR-In/Out: average precision, ID / OOD positive. DTACC: max over thresholds of (TPR+TNR)/2. "
        f"'{MEAN_ROW}': macro mean over OOD sets.",
        "",
        fmt(header),
        "  ".join("-" * w for w in widths),
    ]
    return "\n".join(lines + [fmt(line) for line in body])


def results_dict(evaluations: Sequence[ModelEvaluation], id_set: EvalSet, ood_sets: Sequence[EvalSet],
                 settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The JSON report: conventions, datasets, settings and each model's summary."""
    return dict(conventions=CONVENTIONS, id_dataset=id_set.describe(), ood_datasets=[s.describe() for s in ood_sets],
                settings=dict(settings or {}), models=[e.summary() for e in evaluations])


def write_results(evaluations: Sequence[ModelEvaluation], id_set: EvalSet, ood_sets: Sequence[EvalSet],
                  output: Union[str, Path], settings: Optional[Dict[str, Any]] = None) -> List[Path]:
    """Write ``results.json`` and ``results.csv`` (fractions, not %) into ``output``; returns the paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output / "results.json", output / "results.csv"
    json_path.write_text(json.dumps(results_dict(evaluations, id_set, ood_sets, settings), indent=2) + "\n")
    rows = result_rows(evaluations)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [json_path, csv_path]
