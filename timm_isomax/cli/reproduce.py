"""Reproduce a published model from its hub config: train with the recorded recipe, evaluate, record.

    timm-isomax reproduce hub_configs/resnet10t_isomaxplus.mnist.json

1. runs `timm-isomax finetune` with the config's ``finetune_args`` (into its ``source_checkpoint`` folder);
2. evaluates the result with timm_isomax.evaluation on the ID test split and every OOD set;
3. writes the measured numbers (accuracy, OOD metrics per set with their conventions, the deployment
   threshold, the temperature), the label names and the data config into the hub config, and the model
   card (README.md) into the model folder.

--evaluate-only skips step 1 (the folder must hold the trained model); --resume continues an interrupted
training run. Run it from the repository root: the recorded dataset paths are relative to it.
"""
import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import datasets

from timm_isomax.hub import WEIGHTS_NAME, read_config, write_model_card
from timm_isomax.hub_config import HubConfig, load_hub_config, write_hub_config
from timm_isomax.cli.finetune import main as finetune_main
from timm_isomax.provenance import weights_sha256
from timm_isomax.evaluation import CONVENTIONS, evaluate_model, load_eval_set, load_model


def train(config: HubConfig, resume: bool = False) -> None:
    """Run ``timm-isomax finetune`` with the config's recipe (its own argument parsing: exactly as typed)."""
    args = list(config.finetune_args) + (["--resume"] if resume and "--resume" not in config.finetune_args else [])
    print("timm-isomax finetune " + shlex.join(args))
    code = finetune_main(args)
    if code:
        raise SystemExit(f"error: fine-tuning failed (exit code {code}); fix the recipe in {config.path} or pass --resume.")


def measure(config: HubConfig) -> HubConfig:
    """Evaluate ``config.source_checkpoint`` and return the config with metrics, labels and data config filled."""
    folder = Path(config.source_checkpoint)
    model = load_model(f"local-dir:{folder}")
    limit = config.evaluation.get("limit")
    id_set = load_eval_set(config.dataset["path"], config.dataset["eval_split"], limit=limit, name=config.dataset["name"])
    ood_sets = [load_eval_set(d["path"], d["split"], limit=limit, name=d["name"]) for d in config.ood_datasets]
    result = evaluate_model(model, id_set, ood_sets, batch_size=config.evaluation.get("batch_size", 256), name=config.name)
    score = model.ood_config["score"]
    saved = read_config(folder)
    command = f"timm-isomax reproduce {config.path}" if config.path else "timm-isomax reproduce"
    config.metrics = dict(
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
    config.label_names = saved.get("label_names")
    config.data_config = {k: saved["pretrained_cfg"][k] for k in
                          ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
                          if k in saved.get("pretrained_cfg", {})}
    return config


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="timm-isomax reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hub_config", help="a hub config JSON file (hub_configs/NAME.json)")
    p.add_argument("--evaluate-only", action="store_true", help="skip training: evaluate the existing model folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    args = p.parse_args(argv)
    datasets.disable_progress_bars()
    try:
        config = load_hub_config(args.hub_config)
        if not args.evaluate_only:
            train(config, resume=args.resume)
        elif not (Path(config.source_checkpoint) / "config.json").is_file():
            raise ValueError(f"{config.source_checkpoint} holds no trained model; run without --evaluate-only first.")
        config = measure(config)
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
