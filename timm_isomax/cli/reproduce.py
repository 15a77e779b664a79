"""Reproduce a published model from its hub config: train with the recorded recipe, evaluate, record.

    timm-isomax reproduce hub_configs/resnet10t_isomaxplus.mnist.json
    timm-isomax reproduce resnet10t_isomaxplus.mnist --data-root /data   # a shipped config, by name

1. runs `timm-isomax finetune` with the config's ``finetune_args`` (into its ``source_checkpoint`` folder);
2. evaluates the result with timm_isomax.evaluation on the ID test split and every OOD set;
3. writes the measured numbers (accuracy, OOD metrics per set with their conventions, the deployment
   threshold, the temperature, the weights' hash), the label names and the data config into the hub config,
   and the model card (README.md, with the numbers as `model-index` metadata) into the model folder.

--evaluate-only skips step 1 (the folder must hold the trained model, made with exactly this recipe: its
training/config.json is compared with finetune_args); --resume continues an interrupted training run.
Run it from the repository root: the recorded dataset paths are relative to it (../shared/data/NAME); elsewhere,
--data-root DIR reads them from DIR/NAME instead (the recorded paths stay as they are).

--check writes nothing: it retrains the recipe into a scratch folder (--check-dir, default
SOURCE_CHECKPOINT.check) and compares the numbers it measures there with the recorded ones; with
--evaluate-only it re-measures the source_checkpoint folder instead (the weights `timm-isomax push` uploads).
Numbers must agree within --tolerance (default: 0.01 points where the weights are the recorded ones bit for
bit, 1.0 point where training gave other weights; the threshold within that many % of its value). Exit code
0: all agree; 1: some differ (each is listed); 2: an error.

    timm-isomax reproduce hub_configs/resnet10t_isomaxplus.mnist.json --check
    timm-isomax reproduce hub_configs/resnet10t_isomaxplus.mnist.json --check --evaluate-only
"""
import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Union

import datasets

from timm_isomax.hub.folder import WEIGHTS_NAME, read_config, write_model_card
from timm_isomax.hub.config import (RETRAINED_TOLERANCE, SAME_WEIGHTS_TOLERANCE, HubConfig, load_hub_config,
                                    metric_differences, packaged_hub_configs, write_hub_config)
from timm_isomax.cli.finetune import main as finetune_main, parse_args as finetune_settings
from timm_isomax.train.state import SETTINGS_NAME, TRAINING_DIR, describe_changes
from timm_isomax.hub.provenance import recorded_provenance, weights_sha256
from timm_isomax.ood.evaluation import CONVENTIONS, evaluate_model, load_eval_set, load_model


def train(config: HubConfig, resume: bool = False, output: Optional[str] = None) -> None:
    """Run ``timm-isomax finetune`` with the config's recipe (its own argument parsing: exactly as typed);
    ``output``: another folder to train into than the recipe's ``--output``."""
    args = list(config.finetune_args)
    if output is not None:
        args[args.index("--output") + 1] = output
    if resume and "--resume" not in args:
        args.append("--resume")
    print("timm-isomax finetune " + shlex.join(args))
    code = finetune_main(args)
    if code:
        # an error (exit 2 from main), never exit 1: that says "numbers differ" to `reproduce --check`
        raise ValueError(f"fine-tuning failed (exit code {code}, its error above); fix the recipe in {config.path}, "
                         f"or pass --resume if the run was interrupted.")


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
    recipe = finetune_settings(list(config.finetune_args))
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
    recipe = finetune_settings(list(config.finetune_args)).to_json()
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
        # which weights these numbers describe: push refuses any other folder (timm_isomax.provenance)
        weights_sha256=weights_sha256(folder / WEIGHTS_NAME),
    )
    # the trainer's record of a validation that was the test data: the card says so beside these numbers
    validation_is_test = recorded_provenance(saved).get("data", {}).get("val_is_test")
    if validation_is_test:
        metrics["validation_is_test"] = validation_is_test
    data_config = {k: saved["pretrained_cfg"][k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
                   if k in saved.get("pretrained_cfg", {})}
    return dataclasses.replace(config, metrics=metrics, label_names=saved.get("label_names"), data_config=data_config)


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def check(config: HubConfig, evaluate_only: bool, check_dir: Optional[str], tolerance: Optional[float],
          resume: bool = False) -> int:
    """``reproduce --check``: re-measure (after retraining unless ``evaluate_only``) and compare with the
    recorded numbers; prints each comparison and returns the exit code (0 all agree, 1 some differ)."""
    recorded = config.metrics
    if not recorded:
        raise ValueError(f"{config.path} records no metrics to check; run `timm-isomax reproduce {config.path}` first.")
    folder = config.source_checkpoint if evaluate_only else (check_dir or f"{config.source_checkpoint}.check")
    if evaluate_only and not (Path(folder) / "config.json").is_file():
        raise ValueError(f"{folder} holds no trained model; run without --evaluate-only to retrain it.")
    if not evaluate_only:
        train(config, resume=resume, output=folder)
    check_recipe(config, folder)
    measured = measure(config, folder).metrics
    same_weights = measured["weights_sha256"] == recorded.get("weights_sha256")
    limit = tolerance if tolerance is not None else SAME_WEIGHTS_TOLERANCE if same_weights else RETRAINED_TOLERANCE
    print(f"weights in {folder}: {'the recorded ones, bit for bit' if same_weights else 'other than the recorded ones'} "
          f"(SHA-256 {measured['weights_sha256'][:12]}, recorded {str(recorded.get('weights_sha256'))[:12]}); "
          f"tolerance {limit:g} points (threshold: {limit:g}% of its value)")
    rows = metric_differences(recorded, measured, limit)
    width = max(len(name) for name, *_ in rows)
    for name, old, new, within in rows:
        diff = f"{100 * (new - old):+.3f} points" if isinstance(old, float) and isinstance(new, float) and name != "threshold" else ""
        print(f"  {'ok  ' if within else 'DIFF'} {name:<{width}}  recorded {_show(old):>10}  measured {_show(new):>10}  {diff}")
    differing = [name for name, *_, within in rows if not within]
    if evaluate_only and not same_weights:
        differing.append("weights_sha256")
        print(f"  DIFF {config.source_checkpoint} holds other weights than the recorded ones: `timm-isomax push` "
              f"refuses it; re-measure with `timm-isomax reproduce {config.path} --evaluate-only`")
    if differing:
        print(f"{config.name}: {len(differing)} recorded number(s) differ from the re-measured ones: {', '.join(differing)}")
        return 1
    print(f"{config.name}: all {len(rows)} recorded numbers agree with the re-measured ones")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="timm-isomax reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hub_config", help="a hub config JSON file (hub_configs/NAME.json), or a shipped config's name "
                                      "(resnet10t_isomaxplus.mnist)")
    p.add_argument("--data-root", metavar="DIR", help=f"read the datasets recorded under {RECORDED_DATA_ROOT} from DIR "
                                                       f"instead (default: {RECORDED_DATA_ROOT}, beside a checkout)")
    p.add_argument("--evaluate-only", action="store_true", help="skip training: evaluate the existing model folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    p.add_argument("--check", action="store_true", help="compare re-measured numbers with the recorded ones; write nothing")
    p.add_argument("--check-dir", help="with --check: the folder to retrain into (default: SOURCE_CHECKPOINT.check)")
    p.add_argument("--tolerance", type=float, metavar="POINTS",
                   help=f"with --check: allowed difference in percentage points (default {SAME_WEIGHTS_TOLERANCE:g} for "
                        f"the recorded weights, {RETRAINED_TOLERANCE:g} for retrained ones)")
    args = p.parse_args(argv)
    datasets.disable_progress_bars()
    try:
        if (args.check_dir or args.tolerance is not None) and not args.check:
            raise ValueError("--check-dir and --tolerance only apply with --check.")
        if args.tolerance is not None and not args.tolerance >= 0:
            raise ValueError(f"--tolerance must be a number of points >= 0, got {args.tolerance}.")
        config = resolve_hub_config(args.hub_config)
        run_config = with_data_root(config, args.data_root)  # what runs here; the file keeps its recorded paths
        check_data(run_config)
        if args.check:
            return check(run_config, args.evaluate_only, args.check_dir, args.tolerance, resume=args.resume)
        if not args.evaluate_only:
            train(run_config, resume=args.resume)
        elif not (Path(config.source_checkpoint) / "config.json").is_file():
            raise ValueError(f"{config.source_checkpoint} holds no trained model; run without --evaluate-only first.")
        check_recipe(run_config, config.source_checkpoint)
        measured = measure(run_config)
        config = dataclasses.replace(config, metrics=measured.metrics, label_names=measured.label_names,
                                     data_config=measured.data_config)
        write_hub_config(config)
        card = write_model_card(config, config.source_checkpoint)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = config.metrics
    print(f"{config.name}: accuracy {metrics['accuracy']:.2%}, {metrics['score']} AUROC "
          + ", ".join(f"{k} {v['auroc']:.2%}" for k, v in metrics["ood"].items()))
    print(f"wrote the metrics into {config.path} and the model card {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
