#!/usr/bin/env python
"""One epoch of training batches two ways, side by side in one run: today's path (each JPEG decoded, converted,
padded-cropped-flipped and normalised image by image in a DataLoader, every epoch) against ``--data-on-device``
(the split decoded once into a uint8 tensor, batches indexed and augmented as tensors). Both deliver the same
augmentation (pad-and-crop by 4, random flips) and normalisation; the model is not run, so the ratio is that of the
data pipelines alone. The two alternate over rounds (timm_isomax.benchmark.interleaved_medians); the one-time
decode, and reading the decoded tensors back from the cache file, are timed too.

    python scripts/benchmark_decoded.py                                  # CIFAR-10 JPEG, 10,000 images, 0 workers
    python scripts/benchmark_decoded.py --workers 2 --train-limit 45000 --device cuda
"""
import argparse
import sys
import tempfile
import time

import datasets
import timm
import torch

import timm_isomax  # noqa: F401  (registers cifar_airnet)
from timm_isomax.benchmark import hardware_description, interleaved_medians
from timm_isomax.data import DecodedCache, decoded_for_model, load_labelled_splits
from timm_isomax.train.batches import DecodedTrainBatches
from timm_isomax.train.rng import PerImageSeeds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="../shared/data/cifar10")
    p.add_argument("--model", default="cifar_airnet", help="whose data config (size, normalisation) is used")
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the JPEG path")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def drain(batches, device: torch.device) -> int:
    """Consume an epoch of batches on ``device``; the number of images."""
    count = 0
    for images, labels in batches:
        images.to(device, non_blocking=True)
        count += len(labels)
    return count


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    device = torch.device(args.device)
    splits = load_labelled_splits(args.dataset, train_limit=args.train_limit, val_limit=args.batch_size)
    model = timm.create_model(args.model, num_classes=splits.num_classes)
    jpeg_set, _ = splits.for_model(model, {"augmentation": "crop-flip", "padding": 4})
    jpeg_loader = torch.utils.data.DataLoader(PerImageSeeds(jpeg_set, 0), batch_size=args.batch_size, shuffle=True,
                                              drop_last=True, num_workers=args.workers)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        decoded_for_model(model, splits.train, DecodedCache(folder))
        decode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        decoded = decoded_for_model(model, splits.train, DecodedCache(folder)).to(device)
        load_seconds = time.perf_counter() - start
    batches = DecodedTrainBatches(decoded, args.batch_size, seed=0, padding=4, flip="random", pad_mode="zeros")
    epochs = iter(range(10**6))

    def decoded_epoch():
        batches.epoch = next(epochs)
        return drain(batches, device)

    medians = interleaved_medians({"jpeg per epoch": lambda: drain(jpeg_loader, device), "decoded once": decoded_epoch},
                                  rounds=args.rounds, device=device)
    images = len(splits.train) // args.batch_size * args.batch_size
    print(f"{args.dataset}: {len(splits.train)} training images at {tuple(decoded.images.shape[1:])}, batch "
          f"{args.batch_size}, pad-crop 4 + flip, {args.workers} loader workers, device {args.device}; "
          f"{hardware_description(device)}; median of {args.rounds} interleaved epochs (1 warm-up)")
    for name, seconds in medians.items():
        print(f"  {name:15s} {seconds:8.3f} s/epoch  {images / seconds:10.0f} img/s")
    print(f"  speed-up of an epoch's batches: {medians['jpeg per epoch'] / medians['decoded once']:.1f}x; "
          f"one-time decode {decode_seconds:.2f} s, reading the cache file back {load_seconds:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
