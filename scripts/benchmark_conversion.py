#!/usr/bin/env python
"""Real SoftMax checkpoints converted to IsoMax+: accuracy kept and OOD detection (AUROC) gained, with no
training, and after a short fine-tune where a fine-tuned model folder exists.

The sources are listed in benchmarks/conversion.json (checkpoint, key map, ID and OOD datasets under
--data-root). For each: the SoftMax model's accuracy and its best OOD score (of MSP, max logit, energy and
entropy), the zero-shot IsoMax+ model's accuracy and MDS, and those of the fine-tuned folder if present.

    python scripts/benchmark_conversion.py                       # every source (about 10 min on 2 CPU cores)
    python scripts/benchmark_conversion.py --only cifar_resnet20 --limit 2000
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import datasets
import torch

import timm_isomax  # noqa: F401  (registers the IsoMax architectures)
from timm_isomax.benchmark import hardware_description
from timm_isomax.conversion import load_softmax_model
from timm_isomax.evaluation import evaluate_conversion, evaluate_model, load_eval_set, load_model
from timm_isomax.metrics import percent

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = os.environ.get("TIMM_ISOMAX_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
SOFTMAX_SCORES = ("msp", "max_logit", "energy", "entropic")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", default=str(ROOT / "benchmarks" / "conversion.json"))
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    p.add_argument("--only", nargs="+", help="the sources whose model is one of these")
    p.add_argument("--limit", type=int, help="use the first N images of each set (default: each source's limit)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "conversion"))
    return p.parse_args(argv)


def _auroc(evaluation, score, ood):
    return evaluation.metrics[score][ood]["auroc"]


def measure_source(source: dict, data_root: str, limit, settings: dict) -> dict:
    """One row: the SoftMax source, its zero-shot conversion and (if saved) its fine-tuned IsoMax+ model."""
    def eval_set(name, split="test"):
        return load_eval_set(str(Path(data_root) / name), split, limit or source.get("limit"))

    id_set = eval_set(source["id_dataset"])
    ood_sets = [eval_set(name) for name in source["ood_datasets"]]
    softmax = load_softmax_model(source["model"], source["checkpoint"].replace("{data}", data_root), source["key_map"])
    start = time.perf_counter()
    base, zero_shot, converted = evaluate_conversion(softmax, id_set, ood_sets, source["model"], **settings)
    row = dict(name=source["name"], id_dataset=id_set.name, images=len(id_set.dataset), conversion=converted.conversion.method,
               softmax_accuracy=base.accuracy, zero_shot_accuracy=zero_shot.accuracy, ood={})
    finetuned = None
    if source.get("finetuned") and (ROOT / source["finetuned"]).is_dir():
        finetuned = evaluate_model(load_model(str(ROOT / source["finetuned"])), id_set, ood_sets, ["mds"], **settings)
        row.update(finetuned_accuracy=finetuned.accuracy, finetune_command=source.get("finetune_command"))
    for ood in ood_sets:
        best = max(SOFTMAX_SCORES, key=lambda score: _auroc(base, score, ood.name))
        row["ood"][ood.name] = dict(best_softmax_score=best, best_softmax_auroc=_auroc(base, best, ood.name),
                                    softmax_auroc={s: _auroc(base, s, ood.name) for s in SOFTMAX_SCORES},
                                    zero_shot_mds_auroc=_auroc(zero_shot, "mds", ood.name),
                                    finetuned_mds_auroc=_auroc(finetuned, "mds", ood.name) if finetuned else None)
    row["seconds"] = time.perf_counter() - start
    return row


def _shown(value) -> str:
    return percent(value, missing="")


def markdown(rows) -> str:
    lines = ["| SoftMax checkpoint | ID set (images) | acc SoftMax | acc IsoMax+ zero-shot | acc fine-tuned | OOD set "
             "| best SoftMax AUROC (score) | MDS AUROC zero-shot | MDS AUROC fine-tuned |", "|" + "---|" * 9]
    for row in rows:
        for ood, result in row["ood"].items():
            lines.append(
                f"| {row['name']} | {row['id_dataset']} ({row['images']}) | {_shown(row['softmax_accuracy'])} "
                f"| {_shown(row['zero_shot_accuracy'])} | {_shown(row.get('finetuned_accuracy'))} | {ood} "
                f"| {_shown(result['best_softmax_auroc'])} ({result['best_softmax_score']}) "
                f"| {_shown(result['zero_shot_mds_auroc'])} | {_shown(result['finetuned_mds_auroc'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    try:
        sources = json.loads(Path(args.sources).read_text())["sources"]
    except (OSError, ValueError, KeyError) as error:
        print(f"error: cannot read the sources file {args.sources} ({error}); it needs a 'sources' list.", file=sys.stderr)
        return 2
    sources = [s for s in sources if not args.only or s["model"] in args.only]
    settings = dict(batch_size=args.batch_size, workers=args.workers)
    rows = []
    for source in sources:
        try:
            rows.append(measure_source(source, args.data_root, args.limit, settings))
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {source['name']}: {error}", file=sys.stderr)
            return 2
        print(f"{source['name']}: done in {rows[-1]['seconds']:.0f} s", flush=True)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    (output / "conversion.json").write_text(json.dumps(dict(hardware=hardware_description(torch.device("cpu")),
                                                            rows=rows), indent=1))
    (output / "conversion.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
