"""Reproduce a published model from its hub config: train with the recorded recipe, evaluate, record.

    timm-isomax reproduce hub_configs/resnet10t_isomaxplus.mnist.json
    timm-isomax reproduce resnet10t_isomaxplus.mnist --data-root /data   # a shipped config, by name

1. runs `timm-isomax finetune` with the config's ``finetune_args`` (into its ``source_checkpoint`` folder);
2. evaluates the result with timm_isomax.ood.evaluation on the ID test split and every OOD set;
3. writes the measured numbers (accuracy, OOD metrics per set with their conventions, the deployment
   threshold, the temperature, the weights' hash), the label names and the data config into the hub config,
   and the model card (README.md, with the numbers as `model-index` metadata) into the model folder.

--evaluate-only skips step 1 (the folder must hold the trained model, made with exactly this recipe: its
training/config.json is compared with finetune_args); --resume continues an interrupted training run.

A config with "seeds" trains the recipe once per seed (into SOURCE_CHECKPOINT.seed<k>; finished seeds are kept),
publishes the seed whose run has the highest validation AUROC of its chosen score (copied to SOURCE_CHECKPOINT,
its --seed written into finetune_args) and records every seed's test numbers and their mean for the card.
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
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import datasets

from timm_isomax.cli._errors import exit_code
from timm_isomax.hub import HubConfig, write_hub_config, write_model_card
from timm_isomax.hub.config import RETRAINED_TOLERANCE, SAME_WEIGHTS_TOLERANCE
from timm_isomax.train.reproduce import (RECORDED_DATA_ROOT, check_data, check_recipe, compare, measure, publish_seed_choice,
                                         recipe_command, resolve_hub_config, retrain, seed_folder, with_data_root,
                                         with_seed)

__all__ = ["main", "check", "with_data_root"]


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
        _retrain(config, resume=resume, output=folder)
    measured, limit, rows = compare(config, folder, tolerance)
    same_weights = measured["weights_sha256"] == recorded.get("weights_sha256")
    print(f"weights in {folder}: {'the recorded ones, bit for bit' if same_weights else 'other than the recorded ones'} "
          f"(SHA-256 {measured['weights_sha256'][:12]}, recorded {str(recorded.get('weights_sha256'))[:12]}); "
          f"tolerance {limit:g} points (threshold: {limit:g}% of its value)")
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


def _retrain(config: HubConfig, resume: bool = False, output: Optional[str] = None) -> None:
    print("timm-isomax finetune " + shlex.join(recipe_command(config, resume, output)))
    retrain(config, resume=resume, output=output)


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
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> Optional[int]:
    """Retrain (unless --evaluate-only), measure and record; or, with --check, compare (its exit code)."""
    if (args.check_dir or args.tolerance is not None) and not args.check:
        raise ValueError("--check-dir and --tolerance only apply with --check.")
    if args.tolerance is not None and not args.tolerance >= 0:
        raise ValueError(f"--tolerance must be a number of points >= 0, got {args.tolerance}.")
    config = resolve_hub_config(args.hub_config)
    run_config = with_data_root(config, args.data_root)  # what runs here; the file keeps its recorded paths
    check_data(run_config)
    if args.check:
        return check(run_config, args.evaluate_only, args.check_dir, args.tolerance, resume=args.resume)
    choice = None
    if config.seeds:
        print(f"seeds {config.seeds}: one run each (folders {seed_folder(config, config.seeds[0])} ...), the published "
              f"one chosen on validation")
        # each seed's folder is checked against the recipe and measured there; the published copy is not measured again
        measured, choice = publish_seed_choice(run_config, train_missing=not args.evaluate_only, resume=args.resume)
        config = with_seed(config, choice["seed"])
        print(f"seed {choice['seed']} chosen: validation AUROC " + ", ".join(
            f"seed {seed} {value:.4f}" for seed, value in choice["validation_auroc"].items()))
    else:
        if not args.evaluate_only:
            _retrain(run_config, resume=args.resume)
        elif not (Path(config.source_checkpoint) / "config.json").is_file():
            raise ValueError(f"{config.source_checkpoint} holds no trained model; run without --evaluate-only first.")
        check_recipe(run_config, config.source_checkpoint)
        measured = measure(run_config)
    metrics = dict(measured.metrics, **({"seed_choice": choice} if choice else {}))
    config = dataclasses.replace(config, metrics=metrics, label_names=measured.label_names,
                                 data_config=measured.data_config)
    write_hub_config(config)
    card = write_model_card(config, config.source_checkpoint)
    metrics = config.metrics
    print(f"{config.name}: accuracy {metrics['accuracy']:.2%}, {metrics['score']} AUROC "
          + ", ".join(f"{k} {v['auroc']:.2%}" for k, v in metrics["ood"].items()))
    print(f"wrote the metrics into {config.path} and the model card {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
