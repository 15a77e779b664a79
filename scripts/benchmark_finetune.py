#!/usr/bin/env python
"""The trainer's loop (timm_isomax.train, behind `timm-isomax finetune`) against a minimal plain-PyTorch
loop on the same model, data, transform, batch size and loader workers: training images per second of one
epoch, the two alternated over several rounds, medians and the ratio measured in the same run.

What the fine-tuning loop adds per step and must not make slow: per-image augmentation seeds (exact
resume), the scheduler update, the AMP scaler, the NaN check and progress every 20 steps, mid-epoch
checkpoints when asked. Start-up (data checks, model building) and evaluation are outside the timed epoch in
both.

    python scripts/benchmark_finetune.py                                       # offline: sklearn digits, 64 px
    python scripts/benchmark_finetune.py --dataset ../shared/data/cifar10 --model cifar_resnet20 --train-limit 8192
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets
import timm
import torch

import timm_isomax
from timm_isomax.data import dataset_for_model, find_columns, load_image_dataset
from timm_isomax.train import LOG_NAME, TRAINING_DIR, TrainConfig, train


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet10t", help="base architecture, trained from scratch as _isomaxplus")
    p.add_argument("--dataset", default="sklearn-digits")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--train-limit", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def plain_epoch(model, loader, loss_fn, optimizer, device) -> float:
    """The plainest training epoch, the baseline: no seeds, scheduler, scaler, checks or progress."""
    model.train()
    total = torch.zeros((), device=device)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return (total / max(len(loader), 1)).item()  # one host sync, at the end


def plain_loop_rate(args, train_split, num_classes: int) -> float:
    """Images per second of one epoch of the plain loop: the same transform, loader and optimizer."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model(f"{args.model}_isomaxplus", num_classes=num_classes, in_chans=3).to(device)
    train_set = dataset_for_model(model, train_split, is_training=True, scale=(0.08, 1.0),
                                  data_config={"input_size": (3, args.img_size, args.img_size)})
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    plain_epoch(model, loader, timm_isomax.IsoMaxPlusLoss(), optimizer, device)
    return len(loader) * args.batch_size / (time.perf_counter() - start)


def finetune_loop_rate(args, output: Path) -> float:
    """Images per second of the trainer's one epoch (its own log: the training phase only)."""
    train(TrainConfig(model=args.model, from_scratch=True, dataset=args.dataset, output=str(output), epochs=1,
                            train_limit=args.train_limit, val_limit=args.batch_size, batch_size=args.batch_size,
                            workers=args.workers, img_size=args.img_size, lr=0.01, device=args.device,
                            progress=False))
    record = json.loads((output / TRAINING_DIR / LOG_NAME).read_text().splitlines()[-1])
    return record["images_per_second"]


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    train_split = load_image_dataset(args.dataset, split="train")
    train_split = train_split.select(range(min(args.train_limit, len(train_split))))
    label_column = find_columns(train_split)[1]
    num_classes = train_split.features[label_column].num_classes
    rates = {"plain loop": [], "finetune loop": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            rates["plain loop"].append(plain_loop_rate(args, train_split, num_classes))
            rates["finetune loop"].append(finetune_loop_rate(args, Path(scratch) / f"run{round_index}"))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.model}_isomaxplus, {args.dataset} ({len(train_split)} images, {args.img_size} px), batch "
          f"{args.batch_size}, {args.workers} workers, device {args.device}, {torch.get_num_threads()} threads; "
          f"median of {args.rounds} alternated one-epoch rounds")
    for name, rate in medians.items():
        print(f"  {name:14s} {rate:8.1f} img/s ({rate / medians['plain loop']:.3f}x)   rounds: "
              + ", ".join(f"{r:.1f}" for r in rates[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
