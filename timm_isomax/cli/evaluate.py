"""Evaluate timm models (IsoMax+, IsoMax or SoftMax) for OOD detection: an ID test set against OOD sets.

Prints a table (ID accuracy; per OOD set and their macro mean: AUROC, FPR@95 and TNR@95 with ID
positive, FPR95 with OOD positive, AUPR-In/Out, detection accuracy) and writes results.json,
results.csv and, per OOD set, hist_<set>.png (ID-vs-OOD score histograms) and roc_<set>.png into
--output. Several --model values are evaluated side by side. Example:

    timm-isomax evaluate --model out/mnist_softmax --model out/mnist_isomaxplus \\
        --id-dataset ../shared/data/mnist --ood-dataset ../shared/data/fashion_mnist \\
        --ood-dataset ../shared/data/notmnist --limit 2000 --output out/ood_eval

--model takes any name timm.create_model takes (local-dir:DIR, hf-hub:ORG/NAME, resnet50_isomaxplus.tag)
or a model folder written by timm_isomax.hub.save_pretrained. Default scores: every score of the
model's head (its logit scores; feature scores; KNN and the post-hoc detectors where a feature bank is saved
beside it), the model's own first: an IsoMax model's ood_config["score"], or the score a SoftMax run of
timm-isomax finetune chose (its training/evaluation.json).
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import datasets
import torch

import timm_isomax  # noqa: F401  (registers the <arch>_isomaxplus / <arch>_isomax models with timm)
from timm_isomax.cli._errors import exit_code
from timm_isomax.ood.evaluation import evaluate_models, format_table, load_eval_set, write_results
from timm_isomax.train.arguments import score_name
from timm_isomax.hub.folder import output_folder_problem
from timm_isomax.ood.plots import plots_unavailable, save_plots  # matplotlib is imported only when a plot is drawn


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="timm-isomax evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="model name or folder (repeatable)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="load the model's weights (default); --no-pretrained: random weights, for smoke tests")
    p.add_argument("--id-dataset", required=True, help="ID dataset: local path (Parquet folder/file, ...) or Hub id")
    p.add_argument("--id-split", default="test")
    p.add_argument("--ood-dataset", action="append", required=True, help="OOD dataset (repeatable; labels optional)")
    p.add_argument("--ood-split", action="append", default=None,
                   help="split of the OOD sets: once for all, or once per --ood-dataset (default: test)")
    p.add_argument("--score", action="append", default=None, type=score_name,
                   help="OOD score(s) to evaluate (repeatable; default: each model's own, see above): a logit score "
                        "(msp, max_logit, energy, entropic, mds, mmls, mmles), a feature score (norm_cosine, "
                        "feature_norm), knn<k> (e.g. knn50) or mahalanobis / vim / react / ash (these need the "
                        "model's feature bank)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 elsewhere")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--limit", type=int, default=None, help="use N images of each set (a class-balanced sample, seed 0)")
    p.add_argument("--output", default="ood_eval", help="folder for results.json, results.csv and the PNGs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def _ood_splits(args: argparse.Namespace) -> List[str]:
    splits = args.ood_split or ["test"]
    if len(splits) == 1:
        return splits * len(args.ood_dataset)
    if len(splits) != len(args.ood_dataset):
        raise ValueError(f"give --ood-split once, or once per --ood-dataset ({len(args.ood_dataset)}), not {len(splits)} times.")
    return splits


# what an evaluation writes into --output besides results.json / results.csv (save_plots' file names)
_PLOT_PATTERNS = ("hist_*.png", "roc_*.png")


def _replace_earlier_evaluation(output: Path) -> None:
    """Clear an earlier evaluation in ``output`` (once the new one is done): its results are replaced, and its
    plots (of other models or OOD sets) would stay beside the new ones as if they were this evaluation's."""
    if not (output / "results.json").exists():
        return
    stale = [path for pattern in _PLOT_PATTERNS for path in output.glob(pattern)]
    for path in stale:
        path.unlink()
    print(f"note: {output} held an earlier evaluation: its results.json and results.csv are replaced"
          + (f", its {len(stale)} plot(s) removed." if stale else "."), file=sys.stderr)


def run(args: argparse.Namespace) -> None:
    datasets.disable_progress_bars()
    problem = output_folder_problem(args.output)  # before anything loads: not after the whole evaluation
    if problem:
        raise ValueError(problem)
    # asked before the evaluation: a missing optional extra is said at once, not after the tables
    plots_note = None if args.no_plots else plots_unavailable()
    if plots_note:
        print(f"note: {plots_note}; --no-plots silences this.", file=sys.stderr)
    id_set = load_eval_set(args.id_dataset, args.id_split, args.limit)
    ood_sets = [load_eval_set(source, split, args.limit) for source, split in zip(args.ood_dataset, _ood_splits(args))]
    evaluations = evaluate_models(args.model, id_set, ood_sets, pretrained=args.pretrained, score_names=args.score,
                                  batch_size=args.batch_size, device=args.device, amp=args.amp, workers=args.workers,
                                  progress=args.progress)
    print(format_table(evaluations, id_set, ood_sets))
    _replace_earlier_evaluation(Path(args.output))
    paths = write_results(evaluations, id_set, ood_sets, args.output, settings=vars(args))
    if not args.no_plots and not plots_note:
        paths += save_plots(evaluations, id_set.name, [s.name for s in ood_sets], args.output)
    print("wrote " + ", ".join(str(p) for p in paths))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
