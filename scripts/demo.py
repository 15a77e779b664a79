#!/usr/bin/env python
"""Train one timm backbone with a SoftMax head and with an IsoMax+ head under the same recipe, and print
their accuracy and OOD detection (AUROC) side by side.

Default (offline, no data needed beyond what pip installs): scikit-learn's handwritten digits, classes 0-4
in-distribution, the held-out classes 5-9 as OOD. With the shared data, e.g.:

    python scripts/demo.py --id-dataset ../shared/data/mnist \
        --ood-dataset ../shared/data/fashion_mnist --ood-dataset ../shared/data/notmnist --train-limit 10000
"""
import argparse
import json
import sys
import time

import datasets
import torch

import timm_isomax  # noqa: F401  (registers <arch>_isomaxplus)
from timm_isomax.data import SKLEARN_DIGITS
from timm_isomax.experiment import HEAD_KINDS, Recipe, build_protocol, compare_heads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id-dataset", default=None, help="ID dataset: local path or Hub id (default: sklearn digits 0-4)")
    p.add_argument("--ood-dataset", action="append", default=[], help="OOD dataset (repeatable)")
    p.add_argument("--arch", default="resnet10t", help="timm base architecture (default: resnet10t)")
    p.add_argument("--heads", nargs="+", default=["softmax", "isomaxplus"], choices=sorted(HEAD_KINDS))
    p.add_argument("--epochs", type=int, default=None, help="default: 15 on digits, 2 otherwise")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="use the first N images of each test set")
    p.add_argument("--ood-split", default="test")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    start = time.perf_counter()
    if args.id_dataset is None:
        protocol = build_protocol(SKLEARN_DIGITS, [SKLEARN_DIGITS], img_size=args.img_size, id_classes=range(5),
                                  ood_classes=range(5, 10), train_limit=args.train_limit, test_limit=args.test_limit)
        epochs = args.epochs or 15
    else:
        if not args.ood_dataset:
            print("error: give at least one --ood-dataset with --id-dataset", file=sys.stderr)
            return 2
        protocol = build_protocol(args.id_dataset, args.ood_dataset, img_size=args.img_size, ood_split=args.ood_split,
                                  train_limit=args.train_limit, test_limit=args.test_limit)
        epochs = args.epochs or 2
    recipe = Recipe(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"ID: {protocol.name} ({len(protocol.train_set)} train / {len(protocol.id_test)} test, "
          f"{protocol.num_classes} classes); OOD: " + ", ".join(f"{k} ({len(v)})" for k, v in protocol.ood_sets.items()))
    print(f"{args.arch}, {epochs} epochs, batch {args.batch_size}, lr {args.lr}, seed {args.seed}, "
          f"{args.img_size}px, CPU threads {torch.get_num_threads()}")
    rows = compare_heads(args.arch, protocol.num_classes, protocol.train_set, protocol.id_test, protocol.ood_sets,
                         recipe, heads=args.heads, in_chans=protocol.in_chans)
    ood_names = list(protocol.ood_sets)
    header = f"{'model':28s} {'score':10s} {'ID acc':>7s} " + " ".join(f"{('AUROC ' + n)[:24]:>24s}" for n in ood_names)
    print(header + "\n" + "-" * len(header))
    for row in rows:
        for score, per_ood in row["metrics"].items():
            print(f"{row['arch']:28s} {score:10s} {100 * row['accuracy']:7.2f} "
                  + " ".join(f"{100 * per_ood[n]['auroc']:24.2f}" for n in ood_names))
    print(f"(AUROC: ID = positive, higher score = more in-distribution; total {time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(protocol=protocol.name, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
