"""The model card of a published model: huggingface_hub's card metadata (``ModelCardData`` with ``EvalResult``s
for the Hub's evaluation results) above a Markdown body that says what the model is, how to load it, what was
measured on which data, how its OOD score was chosen, and how to reproduce it."""
import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Union

from .._io import atomic_write
from ..models.classifier import HEAD_TITLES
from ..ood.feature_scores import FEATURE_BANK_NAME, FeatureBank
from ..layers.score_names import POSTHOC_SCORES
from ..ood.metrics import METRIC_NAMES, METRIC_TITLES, percent
from .folder import CARD_NAME, IMPORT_HINT

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

    from .config import HubConfig

__all__ = ["render_model_card", "write_model_card", "model_card_eval_results"]

_CARD_TAGS = ("image-classification", "timm", "out-of-distribution-detection", "isomax")
# (metric key, column title) in the card's results table; the conventions are spelled out below it
_CARD_COLUMNS = tuple((name, METRIC_TITLES[name] + (" (ID+)" if name in ("fpr_at_95_tpr", "tnr_at_95_tpr") else ""))
                      for name in METRIC_NAMES)
_CITATIONS = """```bibtex
@article{macedo2021entropic,
  title   = {Entropic Out-of-Distribution Detection},
  author  = {Macedo, David and Ren, Tsang Ing and Zanchettin, Cleber and Oliveira, Adriano L. I. and Ludermir, Teresa},
  journal = {IEEE Transactions on Neural Networks and Learning Systems},
  year    = {2021}
}
@article{macedo2021enhanced,
  title   = {Enhanced Isotropy Maximization Loss: Seamless and High-Performance Out-of-Distribution Detection
             Simply Replacing the SoftMax Loss},
  author  = {Macedo, David and Ludermir, Teresa},
  journal = {arXiv preprint arXiv:2105.14399},
  year    = {2021}
}
```"""
# the third paper, cited on the cards of DisMax models
_DISMAX_CITATION = """```bibtex
@article{macedo2022distinction,
  title   = {Distinction Maximization Loss: Efficiently Improving Out-of-Distribution Detection and Uncertainty
             Estimation by Replacing the Loss and Calibrating},
  author  = {Macedo, David and Zanchettin, Cleber and Ludermir, Teresa},
  journal = {arXiv preprint arXiv:2205.05874},
  year    = {2022}
}
```"""
# what the card says a head's logits are (the OOD score comes from the same forward pass)
_HEAD_DESCRIPTIONS = {
    "isomaxplus": "its logits are negative distances between unit features and unit class prototypes, scaled by a "
                  "learned distance scale",
    "isomax": "its logits are negative Euclidean distances between the features and class prototypes",
    "dismax": "its logits are negative distances between unit features and unit class prototypes plus each image's "
              "mean distance to all prototypes, scaled by a learned distance scale",
}


def _shown(value: Optional[float]) -> str:
    return percent(value, missing="n/a")


def _points(value: float) -> float:
    # the model-index values: percent, rounded as the card's table prints them
    return round(100 * value, 2)


# model-index metric (type, name): types the Hub knows (hf.co/metrics) where there is one; the name states the
# convention, since FPR@95 differs between papers (timm_isomax.ood.evaluation.CONVENTIONS)
_INDEX_ACCURACY = ("accuracy", "Top-1 accuracy (%)")
_INDEX_OOD_METRICS = (("auroc", "roc_auc", "AUROC (%), ID positive"),
                      ("fpr_at_95_tpr", "fpr_at_95_tpr", "FPR@95 (%), ID positive: OOD accepted when 95% of ID is accepted"))


def model_card_eval_results(config: "HubConfig") -> List["EvalResult"]:
    """The measured numbers of ``config`` as huggingface_hub ``EvalResult``s: what the card's ``model-index``
    holds and the Hub shows as evaluation results. Values in % (as in the card's table): the ID test split's
    accuracy, then for each OOD set its AUROC and FPR@95 (ID positive) with the config's OOD score. Empty
    until ``timm-isomax reproduce`` has measured the model.

    Example:
        >>> results = model_card_eval_results(load_hub_config("hub_configs/resnet10t_isomaxplus.mnist.json"))
        >>> [(r.dataset_type, r.metric_type) for r in results][:3]
        [('ylecun/mnist', 'accuracy'), ('zalando-datasets/fashion_mnist', 'roc_auc'), ('zalando-datasets/fashion_mnist', 'fpr_at_95_tpr')]
    """
    from huggingface_hub import EvalResult

    metrics = config.metrics or {}
    if metrics.get("accuracy") is None:
        return []
    dataset = config.dataset
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=dataset.get("hub_id") or dataset["name"], dataset_name=dataset["name"],
                          dataset_split=dataset["eval_split"], metric_type=_INDEX_ACCURACY[0],
                          metric_name=_INDEX_ACCURACY[1], metric_value=_points(metrics["accuracy"]))]
    score = metrics.get("score", "?")
    for ood in config.ood_datasets:
        row = metrics.get("ood", {}).get(ood["name"], {})
        for key, metric_type, metric_name in _INDEX_OOD_METRICS:
            if row.get(key) is not None:
                results.append(EvalResult(
                    task_type="image-classification",
                    task_name=f"Out-of-distribution detection ({score} score, in-distribution: {dataset['name']})",
                    dataset_type=ood.get("hub_id") or ood["name"],
                    dataset_name=f"{ood['name']} {ood['split']} (OOD) vs {dataset['name']} {dataset['eval_split']} (ID)",
                    dataset_split=ood["split"], metric_type=metric_type, metric_name=metric_name,
                    metric_value=_points(row[key])))
    return results


def _card_front_matter(config: "HubConfig") -> str:
    # huggingface_hub's own writer: the metadata is exactly what its parser (and the Hub) reads back
    from huggingface_hub import ModelCardData

    results = model_card_eval_results(config)
    data = ModelCardData(library_name="timm", license=config.license, pipeline_tag="image-classification",
                         tags=[*_CARD_TAGS, config.head_type], datasets=[config.dataset.get("hub_id") or config.dataset["name"]],
                         metrics=["accuracy", "roc_auc"], model_name=config.name if results else None,
                         eval_results=results or None)
    return data.to_yaml()


def _extra_lines(score: Optional[str]) -> List[str]:
    # a post-hoc detector's score needs pytorch-ood, an extra: said before the snippet, not as its ImportError
    if score not in POSTHOC_SCORES:
        return []
    return [f"Its OOD score, `{score}`, is pytorch-ood's detector fitted on the feature bank that comes with the "
            "weights: install it with `pip install 'timm-isomax[posthoc]'`.", ""]


def _snippet_prediction(has_threshold: bool) -> List[str]:
    # is_ood needs the deployment threshold in config.json; a card of weights without one must not print a
    # snippet that raises "no OOD threshold" for everyone who copies it
    if has_threshold:
        return ["for p in timm_isomax.predict(model, [image]):",
                "    print(p.label, p.score, p.is_ood)  # score: higher = more in-distribution; is_ood: score < threshold"]
    return ["print(timm_isomax.ood_scores(model, [image]))  # higher = more in-distribution",
            "# these weights carry no OOD threshold: fit one on ID data with timm_isomax.fit_ood_threshold(model, loader)"]


def render_model_card(config: "HubConfig", model_folder: Optional[Union[str, Path]] = None) -> str:
    """The model card (README.md with YAML front matter) of a published model, from its hub config.

    The front matter carries ``model-index`` (:func:`model_card_eval_results`) once the config is measured;
    the usage snippet runs as printed once the repo is on the Hub (``tests/test_hub_http.py`` runs it).
    ``model_folder``: the measured model's folder, whose run record says how its OOD score was chosen and whose
    feature bank the card describes.

    Example:
        >>> card = render_model_card(load_hub_config("hub_configs/resnet10t_isomaxplus.mnist.json"))
    """
    metrics = config.metrics or {}
    lines = ["---", _card_front_matter(config), "---", "",
             f"# {config.name}", "", config.description or f"{config.architecture} trained on {config.dataset['name']}.",
             "", f"Head: {HEAD_TITLES[config.head_type]}; {_HEAD_DESCRIPTIONS[config.head_type]}, so the same "
             "forward pass gives the class and an out-of-distribution (OOD) score, with no extra training or "
             "post-processing.", "",
             "## Usage", "", f"{IMPORT_HINT}; without it timm raises `Unknown model ({config.architecture})`.", "",
             *_extra_lines(metrics.get("score")),
             "```python", "import timm", "", "import timm_isomax  # registers the IsoMax architectures with timm (the wheel also does on `import timm`)", "",
             f'model = timm.create_model("hf-hub:{config.repo_id}", pretrained=True).eval()',
             f'# or, where the installed timm-isomax ships its hub config: timm.create_model("{config.name}", pretrained=True)',
             "", "from PIL import Image", "image = Image.open(\"example.png\")  # your image; preprocessed with the model's data config",
             *_snippet_prediction(metrics.get("threshold") is not None), "```", ""]
    if metrics:
        lines += [f"## Results ({config.dataset['name']} test split as in-distribution)", "",
                  f"Accuracy on {config.dataset['name']} ({config.dataset['eval_split']}, {metrics.get('id_images')} images): "
                  f"**{_shown(metrics.get('accuracy'))}%**. OOD score: `{metrics.get('score')}`. All values in %; "
                  "accuracy, AUROC and FPR@95 are also in this card's `model-index` metadata (the Hub's evaluation results).", "",
                  "| OOD set | images | " + " | ".join(title for _, title in _CARD_COLUMNS) + " |",
                  "|---|---:|" + "---:|" * len(_CARD_COLUMNS)]
        for name, row in metrics.get("ood", {}).items():
            images = metrics.get("ood_images", {}).get(name, "")
            lines.append(f"| {name} | {images} | " + " | ".join(_shown(row.get(k)) for k, _ in _CARD_COLUMNS) + " |")
        lines += ["", "Conventions:", *(f"- {k}: {v}" for k, v in metrics.get("conventions", {}).items()),
                  "- mean: macro mean over the OOD sets", ""]
        if metrics.get("threshold") is not None:
            lines += [f"Deployment threshold (config.json `isomax.threshold`): {metrics['threshold']:.6g}, accepting "
                      f"{_shown(metrics.get('threshold_tpr'))}% of {metrics.get('threshold_fitted_on')}.", ""]
        lines += _seed_choice_lines(metrics.get("seed_choice"))
        lines += _score_and_bank_lines(model_folder)
        if metrics.get("temperature") not in (None, 1.0):
            lines += [f"Calibration temperature: {metrics['temperature']:.4g}.", ""]
        lines += [f"Measured with `{metrics.get('command')}`.", ""]
    validation = _validation_is_test(config)
    lines += ["## Training", "", "Reproduce (from a checkout of timm-isomax, the data under `../shared/data`):", "",
              "```bash", "timm-isomax finetune " + " ".join(config.finetune_args), "```", "",
              *([f"Validation data: {validation}, so the deployment threshold and the monitoring during training saw "
                 f"the test data: the test-split numbers above are not held out.", ""] if validation else []),
              "## Citation", "", _CITATIONS, *([_DISMAX_CITATION] if config.head_type == "dismax" else []), ""]
    return "\n".join(lines)


def _seed_choice_lines(choice: Optional[dict]) -> List[str]:
    # which of the recipe's seeds these weights are, how that seed was chosen, and what the other seeds measure
    if not choice:
        return []
    runs = choice["runs"]
    sets = list(choice["mean"]["ood"])
    lines = [f"Seed {choice['seed']} of {len(runs)} ({', '.join(runs)}), chosen by {choice['criterion']}. Every seed, "
             "each with its own validation-chosen score (AUROC per OOD set, %):", "",
             "| seed | score | validation AUROC | accuracy | " + " | ".join(sets) + " |",
             "|---|---|---:|---:|" + "---:|" * len(sets)]
    for seed, run in runs.items():
        marker = " (published)" if seed == str(choice["seed"]) else ""
        lines.append(f"| {seed}{marker} | `{run['score']}` | {_shown(choice['validation_auroc'][seed])} | "
                     f"{_shown(run['accuracy'])} | " + " | ".join(_shown(run["ood"][name]["auroc"]) for name in sets) + " |")
    mean = choice["mean"]

    def pm(values: dict) -> str:
        return f"{_shown(values['mean'])} ± {_shown(values['std'])}"

    lines += [f"| mean ± std | | | {pm(mean['accuracy'])} | " + " | ".join(pm(mean["ood"][name]["auroc"]) for name in sets)
              + " |", ""]
    return lines


def _validation_is_test(config: "HubConfig") -> Optional[str]:
    """Why the run validated on the test data (as the trainer recorded it, or as the recipe's --val-split says),
    or None."""
    recorded = (config.metrics or {}).get("validation_is_test")
    if recorded:
        return recorded
    args = list(config.finetune_args)
    named = args[args.index("--val-split") + 1] if "--val-split" in args[:-1] else None
    return f"validation is the {named!r} split (--val-split {named})" if named == config.dataset["eval_split"] else None


def write_model_card(config: "HubConfig", folder: Union[str, Path], model_folder: Optional[Union[str, Path]] = None) -> Path:
    """Write :func:`render_model_card` as ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_text(render_model_card(config, model_folder)))
    return path


def _score_and_bank_lines(model_folder: Optional[Union[str, Path]]) -> List[str]:
    # how the model's OOD score was chosen (its run's validation AUROCs), and the feature bank that travels with it
    if model_folder is None:
        return []
    lines = []
    evaluation_path = Path(model_folder) / "training" / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else {}
    selection = evaluation.get("selection")
    if selection:
        ranked = sorted(selection["aurocs"].items(), key=lambda item: -item[1]["mean"])[:5]
        how = ("set by `--score`" if evaluation.get("chosen_by", "").startswith("setting") else
               f"chosen on validation data only: the {selection['criterion']} ({', '.join(selection['sets'])})")
        lines += [f"OOD score `{evaluation['score']}`, {how}. Validation AUROC (mean over those sets), the best five: "
                  + ", ".join(f"`{name}` {_shown(values['mean'])}" for name, values in ranked) + ".", ""]
    if (Path(model_folder) / FEATURE_BANK_NAME).is_file():
        bank = FeatureBank.load(model_folder).describe()
        lines += [f"Feature bank: `{FEATURE_BANK_NAME}`, {bank['rows']} training features of width {bank['width']} "
                  f"({bank['megabytes']} MB; from {bank['source']}), read by the `knn<k>` scores and the post-hoc "
                  "detectors (`timm_isomax.feature_scores.feature_bank_of(model)` downloads it on first use).", ""]
    return lines
