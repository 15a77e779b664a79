#!/usr/bin/env python
"""A timm model with its SoftMax classifier against its _isomaxplus variant: inference throughput and
training-step time, interleaved in one process, with the ratio (IsoMax+ / SoftMax throughput).

--layouts instead times the _isomaxplus model's training step four ways (float32; channels_last; autocast:
bf16 on CPU, fp16 on CUDA; both) against float32, the choice behind a protocol's ``amp`` and
``channels_last`` (the head computes in float32 under autocast in every case).

    python scripts/benchmark_model.py                                  # resnet50, batch 64, 224 px, CPU
    python scripts/benchmark_model.py --img-size 128 --rounds 5        # quicker on 2 CPU cores
    python scripts/benchmark_model.py --device cuda --amp
    python scripts/benchmark_model.py --layouts --arch cifar_resnet20 --img-size 32 --batch-size 128 --num-classes 10
"""
import argparse
import functools

import timm
import torch

import timm_isomax  # noqa: F401  (registers <arch>_isomaxplus)
from timm_isomax.benchmark import interleaved_medians
from timm_isomax.models.inference import amp_dtype


def training_step(model: torch.nn.Module, loss_fn, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  targets: torch.Tensor, amp: bool) -> None:
    """One SGD step of ``model`` on the batch, under autocast when ``amp`` (the dtype the trainer uses)."""
    model.train()
    with torch.autocast(device_type=images.device.type, dtype=amp_dtype(images.device), enabled=amp):
        loss = loss_fn(model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--layouts", action="store_true",
                   help="time the _isomaxplus training step in float32 / channels_last / autocast / both")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    if args.layouts:
        return compare_layouts(args, device, images, targets)
    models = {name: timm.create_model(name, num_classes=args.num_classes).to(device)
              for name in (args.arch, f"{args.arch}_isomaxplus")}
    losses = {args.arch: torch.nn.CrossEntropyLoss(), f"{args.arch}_isomaxplus": timm_isomax.IsoMaxPlusLoss()}
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) for name, model in models.items()}
    autocast = dict(device_type=device.type, dtype=amp_dtype(device), enabled=args.amp)

    def infer(name):
        models[name].eval()
        with torch.no_grad(), torch.autocast(**autocast):
            models[name](images)

    def train_step(name):
        training_step(models[name], losses[name], optimizers[name], images, targets, args.amp)

    calls = {(name, kind): (lambda fn=fn, name=name: fn(name))
             for name in models for kind, fn in (("infer", infer), ("train", train_step))}
    medians = interleaved_medians(calls, args.rounds, device=device)
    print(f"{args.arch}, batch {args.batch_size}, {args.img_size} px, {args.num_classes} classes, device {device}, "
          f"amp {args.amp}, {torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds")
    base = args.arch
    for name in models:
        infer_rate = args.batch_size / medians[(name, "infer")]
        train_ms = 1e3 * medians[(name, "train")]
        print(f"  {name:28s} inference {infer_rate:8.1f} img/s ({infer_rate * medians[(base, 'infer')] / args.batch_size:.3f}x)"
              f"   train step {train_ms:8.1f} ms (throughput {medians[(base, 'train')] / medians[(name, 'train')]:.3f}x)")
    return 0


def compare_layouts(args, device: torch.device, images: torch.Tensor, targets: torch.Tensor) -> int:
    """The ``_isomaxplus`` training step in each memory format x autocast setting, interleaved; the
    ratio is float32's step time over each one's (>1 = faster)."""
    name = f"{args.arch}_isomaxplus"
    loss_fn = timm_isomax.IsoMaxPlusLoss()
    variants = {"float32": (False, False), "channels_last": (True, False), "autocast": (False, True),
                "autocast + channels_last": (True, True)}
    steps = {}
    for variant, (channels_last, amp) in variants.items():
        torch.manual_seed(0)  # the same initial weights for every variant
        model = timm.create_model(name, num_classes=args.num_classes).to(device)
        batch = images
        if channels_last:
            model, batch = model.to(memory_format=torch.channels_last), images.contiguous(
                memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps[variant] = functools.partial(training_step, model, loss_fn, optimizer, batch, targets, amp)
    medians = interleaved_medians(steps, args.rounds, device=device)
    print(f"{name} training step, batch {args.batch_size}, {args.img_size} px, {args.num_classes} classes, device "
          f"{device} (autocast dtype {amp_dtype(device)}), {torch.get_num_threads()} threads; median of "
          f"{args.rounds} interleaved rounds")
    for variant in variants:
        print(f"  {variant:26s} {1e3 * medians[variant]:8.1f} ms   {args.batch_size / medians[variant]:8.1f} img/s "
              f"({medians['float32'] / medians[variant]:.3f}x float32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
