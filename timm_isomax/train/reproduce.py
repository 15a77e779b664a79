"""Reproducing a published model from its hub config: retrain it with the recorded recipe, measure it, and compare
the numbers with the recorded ones. ``timm-isomax reproduce`` is the command over these functions.

    >>> config = resolve_hub_config("resnet10t_isomaxplus.mnist")
    >>> retrain(config, output="outputs/again")
    >>> check_recipe(config, "outputs/again")
    >>> measured = measure(config, "outputs/again")
    >>> metric_differences(config.metrics, measured.metrics, RETRAINED_TOLERANCE)

A config with ``seeds`` trains its recipe once per seed; the published seed is the one whose run has the highest
validation AUROC of its chosen score (never a test number), and the card states the mean over all of them:

    >>> config, choice = publish_seed_choice(config)   # trains the missing seeds, chooses, fills source_checkpoint
"""
import dataclasses
import json
import shlex
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..hub import WEIGHTS_NAME, HubConfig, load_hub_config, packaged_hub_configs, read_config, recorded_provenance, weights_sha256
from ..hub.config import RETRAINED_TOLERANCE, SAME_WEIGHTS_TOLERANCE, metric_differences
from ..hub.provenance import DATA_CONFIG_KEYS
from ..ood.evaluation import CONVENTIONS, evaluate_model, load_eval_set, load_model
from .arguments import settings_from_args
from .state import EVALUATION_NAME, SETTINGS_NAME, TRAINING_DIR, describe_changes
from .trainer import train

__all__ = ["retrain", "recipe_command", "with_data_root", "resolve_hub_config", "check_data", "check_recipe", "measure",
           "compare", "seed_folder", "with_seed", "publish_seed_choice", "SEED_CRITERION", "RECORDED_DATA_ROOT"]

SEED_CRITERION = ("the highest validation AUROC of each run's chosen OOD score (its mean over the run's OOD "
                  "validation sets, training/evaluation.json); the test sets only give the numbers")


def recipe_command(config: HubConfig, resume: bool = False, output: Optional[str] = None) -> List[str]:
    """The ``timm-isomax finetune`` arguments of the config's recipe; ``output``: another folder to train into."""
    args = list(config.finetune_args)
    if output is not None:
        args[args.index("--output") + 1] = output
    if resume and "--resume" not in args:
        args.append("--resume")
    return args


def retrain(config: HubConfig, resume: bool = False, output: Optional[str] = None) -> None:
    """Train the config's recipe (parsed exactly as ``timm-isomax finetune`` parses it) into its
    ``source_checkpoint`` folder, or ``output``; ``resume`` continues an interrupted run there."""
    train(settings_from_args(recipe_command(config, resume, output)))


def with_seed(config: HubConfig, seed: int) -> HubConfig:
    """A copy of ``config`` whose recipe trains with ``--seed seed`` (set, or added)."""
    args = list(config.finetune_args)
    if "--seed" in args[:-1]:
        args[args.index("--seed") + 1] = str(seed)
    else:
        args[args.index("--output"):args.index("--output")] = ["--seed", str(seed)]
    return dataclasses.replace(config, finetune_args=args)


def seed_folder(config: HubConfig, seed: int) -> Path:
    """Where the run of one of the config's ``seeds`` trains: ``<source_checkpoint>.seed<k>``."""
    return Path(f"{config.source_checkpoint}.seed{seed}")


def _validation_auroc(folder: Path) -> float:
    # the validation AUROC of the run's chosen score, as its final evaluation recorded it
    path = folder / TRAINING_DIR / EVALUATION_NAME
    if not path.is_file():
        raise ValueError(f"{folder} holds no final evaluation ({path}), so its seed cannot be compared on validation; "
                         f"retrain it: delete the folder and run `timm-isomax reproduce` again.")
    evaluation = json.loads(path.read_text())
    return evaluation["selection"]["aurocs"][evaluation["score"]]["mean"]


def _mean_std(values: List[float]) -> Dict[str, float]:
    return dict(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0)


def publish_seed_choice(config: HubConfig, train_missing: bool = True, resume: bool = False,
                        log: Callable[[str], None] = print) -> Tuple[HubConfig, Dict[str, Any]]:
    """For a config with ``seeds``: train each seed's run into :func:`seed_folder` (unless it finished there;
    ``train_missing=False`` requires them all), choose the seed by :data:`SEED_CRITERION`, copy its folder to
    ``source_checkpoint`` and measure every seed on the test sets. Returns the chosen seed's measurement (as
    :func:`measure` gives it: the config with that seed in its ``finetune_args``, what ``--check`` retrains and the
    card prints, and its metrics; the copy in ``source_checkpoint`` holds the same bytes) and the ``seed_choice``
    record: ``{"seed", "criterion", "validation_auroc": {seed: value}, "runs": {seed: {"accuracy", "score", "ood"}},
    "mean": {"accuracy": {"mean", "std"}, "ood": {set: {metric: {"mean", "std"}}}}}``."""
    seeds = list(config.seeds or ())
    if not seeds:
        raise ValueError(f"{config.path} lists no seeds to choose from; add \"seeds\": [0, 1, 2] or reproduce it as it is.")
    for seed in seeds:
        folder = seed_folder(config, seed)
        seeded = with_seed(config, seed)
        if (folder / "config.json").is_file():
            try:
                check_recipe(seeded, folder)
            except ValueError as error:  # a seed's folder from another recipe: kept runs are never mixed in
                raise ValueError(f"seed {seed}'s folder holds another recipe's run ({error}); delete {folder} so that "
                                 f"`timm-isomax reproduce {config.path}` trains it again.") from None
        elif train_missing:
            log("timm-isomax finetune " + shlex.join(recipe_command(seeded, resume, str(folder))))
            retrain(seeded, resume=resume, output=str(folder))
        else:
            raise ValueError(f"{folder} holds no trained model for seed {seed}; run `timm-isomax reproduce "
                             f"{config.path}` without --evaluate-only to train it.")
    validation = {seed: _validation_auroc(seed_folder(config, seed)) for seed in seeds}
    chosen = max(seeds, key=lambda seed: validation[seed])  # max keeps the first listed of equal values
    target = Path(config.source_checkpoint)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(seed_folder(config, chosen), target)
    measured = {seed: measure(with_seed(config, seed), str(seed_folder(config, seed))) for seed in seeds}
    runs = {}
    for seed in seeds:
        metrics = measured[seed].metrics
        runs[seed] = dict(accuracy=metrics["accuracy"], score=metrics["score"],
                          ood={name: {k: row[k] for k in ("auroc", "fpr_at_95_tpr")} for name, row in metrics["ood"].items()})
    mean = dict(accuracy=_mean_std([run["accuracy"] for run in runs.values()]),
                ood={name: {metric: _mean_std([run["ood"][name][metric] for run in runs.values()])
                            for metric in runs[chosen]["ood"][name]} for name in runs[chosen]["ood"]})
    choice = dict(seed=chosen, criterion=SEED_CRITERION,
                  validation_auroc={str(seed): validation[seed] for seed in seeds},
                  runs={str(seed): runs[seed] for seed in seeds}, mean=mean)
    return measured[chosen], choice


def _is_local_path(source: str) -> bool:
    # "../shared/data/mnist", "/data/x", "x/test.parquet": paths; "org/name" or "mnist" may be Hub dataset ids
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith(".parquet")


# where the recorded dataset paths of the shipped configs point: the data beside a repository checkout
RECORDED_DATA_ROOT = "../shared/data"


def with_data_root(config: HubConfig, data_root: Optional[str]) -> HubConfig:
    """A copy of ``config`` that reads the data under ``data_root``: each recorded path (and recipe argument)
    under ``../shared/data`` moves there; the config's file is not touched."""
    if data_root is None:
        return config

    def moved(value: str) -> str:
        if value == RECORDED_DATA_ROOT or value.startswith(RECORDED_DATA_ROOT + "/"):
            return str(Path(data_root) / value[len(RECORDED_DATA_ROOT):].lstrip("/"))
        return value

    return dataclasses.replace(config, dataset=dict(config.dataset, path=moved(config.dataset["path"])),
                               ood_datasets=[dict(d, path=moved(d["path"])) for d in config.ood_datasets],
                               finetune_args=[moved(a) for a in config.finetune_args])


def resolve_hub_config(entry: str) -> HubConfig:
    """The hub config a command line names: a JSON file, or the name of a config shipped in the package
    (``resnet10t_isomaxplus.mnist``), as a pip install has them."""
    if entry.endswith(".json") or Path(entry).exists():
        return load_hub_config(entry)
    shipped = {config.name: config for config in packaged_hub_configs()}
    if entry not in shipped:
        raise FileNotFoundError(f"{entry!r} is neither a hub config file nor the name of a shipped one "
                                f"({', '.join(sorted(shipped))}); pass a file (hub_configs/NAME.json) or one of those names.")
    return shipped[entry]


def check_data(config: HubConfig) -> None:
    """One-line ``FileNotFoundError`` unless every local dataset path of the config (its evaluation sets and
    its recipe's ``--dataset`` / ``--ood-dataset``) exists. Relative paths are relative to the folder this runs
    in (the repository root, with ``../shared/data`` beside it), so run elsewhere they all miss: said here,
    before any training, rather than as a failed run or a "differ" from ``--check``."""
    recipe = settings_from_args(list(config.finetune_args))
    sources = [config.dataset["path"], *(d["path"] for d in config.ood_datasets), recipe.dataset, *recipe.ood_datasets]
    missing = [source for source in dict.fromkeys(sources) if _is_local_path(source) and not Path(source).expanduser().exists()]
    if missing:
        raise FileNotFoundError(
            f"{config.path} names datasets that are not here: {', '.join(missing)} (looked for {Path(missing[0]).resolve()}); "
            f"its dataset paths are relative to the folder reproduce runs in ({Path.cwd()}): run it from the "
            f"repository root, with the data at {RECORDED_DATA_ROOT} beside it, or pass --data-root DIR (the folder "
            f"holding {', '.join(sorted({Path(m).name for m in missing}))}).")


def check_recipe(config: HubConfig, folder: Union[str, Path]) -> None:
    """Refuse to measure a model folder that another recipe trained than the config's ``finetune_args``
    (its ``training/config.json`` is the record): its numbers would go onto a card that describes other
    weights. Where and how visibly it ran (output folder, workers, device, progress) may differ."""
    record = Path(folder) / TRAINING_DIR / SETTINGS_NAME
    if not record.is_file():
        raise ValueError(f"{folder} holds no record of how it was trained ({record}), so nothing shows it is the "
                         f"recipe in {config.path}; retrain it: `timm-isomax reproduce {config.path}`.")
    trained = json.loads(record.read_text())
    recipe = settings_from_args(list(config.finetune_args)).to_json()
    changes = describe_changes(trained, recipe, pair="{saved!r} (recipe: {new!r})")
    if changes:
        raise ValueError(f"{folder} was trained with other settings than {config.path}'s finetune_args ({changes}); "
                         f"fix finetune_args to the run's settings ({record}) "
                         f"or retrain: `timm-isomax reproduce {config.path}`.")


def measure(config: HubConfig, folder: Optional[str] = None) -> HubConfig:
    """Evaluate the model in ``folder`` (default: ``config.source_checkpoint``); returns a copy of the config
    with the measured metrics, label names and data config (the argument is left as it was)."""
    folder = Path(folder or config.source_checkpoint)
    model = load_model(f"local-dir:{folder}")
    limit = config.evaluation.get("limit")
    id_set = load_eval_set(config.dataset["path"], config.dataset["eval_split"], limit=limit, name=config.dataset["name"])
    ood_sets = [load_eval_set(d["path"], d["split"], limit=limit, name=d["name"]) for d in config.ood_datasets]
    result = evaluate_model(model, id_set, ood_sets, batch_size=config.evaluation.get("batch_size", 256), name=config.name)
    score = model.ood_config["score"]
    saved = read_config(folder)
    command = f"timm-isomax reproduce {config.path}" if config.path else "timm-isomax reproduce"
    metrics = dict(
        accuracy=result.accuracy,
        id_images=len(id_set.dataset),
        ood_images={s.name: len(s.dataset) for s in ood_sets},
        score=score,
        ood=result.metrics[score],
        conventions={key: CONVENTIONS[key] for key in ("score", "operating_point", *result.metrics[score]["mean"])},
        threshold=model.ood_config.get("threshold"),
        threshold_tpr=model.ood_config.get("tpr"),
        threshold_fitted_on=model.ood_config.get("fitted_on"),
        # the head's temperature: 1.0 unless the model was calibrated (timm_isomax.calibrate_temperature)
        temperature=result.temperature,
        command=command,
        # which weights these numbers describe: push refuses any other folder (timm_isomax.hub.publish)
        weights_sha256=weights_sha256(folder / WEIGHTS_NAME),
    )
    # the trainer's record of a validation that was the test data: the card says so beside these numbers
    validation_is_test = recorded_provenance(saved).get("data", {}).get("val_is_test")
    if validation_is_test:
        metrics["validation_is_test"] = validation_is_test
    data_config = {k: saved["pretrained_cfg"][k] for k in DATA_CONFIG_KEYS if k in saved.get("pretrained_cfg", {})}
    return dataclasses.replace(config, metrics=metrics, label_names=saved.get("label_names"), data_config=data_config)


def compare(config: HubConfig, folder: Union[str, Path], tolerance: Optional[float] = None
            ) -> Tuple[dict, float, List[Tuple[str, object, object, bool]]]:
    """Re-measure the model in ``folder`` and compare with the config's recorded numbers: returns the measured
    metrics, the tolerance used (``tolerance``, else ``SAME_WEIGHTS_TOLERANCE`` when the weights are the
    recorded ones bit for bit, ``RETRAINED_TOLERANCE`` otherwise) and ``(name, recorded, measured, within)`` rows."""
    recorded = config.metrics
    if not recorded:
        raise ValueError(f"{config.path} records no metrics to check; run `timm-isomax reproduce {config.path}` first.")
    check_recipe(config, folder)
    measured = measure(config, str(folder)).metrics
    same_weights = measured["weights_sha256"] == recorded.get("weights_sha256")
    limit = tolerance if tolerance is not None else SAME_WEIGHTS_TOLERANCE if same_weights else RETRAINED_TOLERANCE
    return measured, limit, metric_differences(recorded, measured, limit)
