#!/usr/bin/env python
"""The IsoMax+ head against nn.Linear of the same shape: forward and forward+backward, fp32.

Each configuration runs the implementations interleaved (warm-up first, then repeated rounds) and prints
median times and the ratio to nn.Linear measured in the same run, so the ratios hold on a busy machine.
The exact reference form (cdist) runs only where its O(B*C*D) cost is affordable.

    python scripts/benchmark_head.py                 # the issue's shapes, CPU
    python scripts/benchmark_head.py --device cuda
    python scripts/benchmark_head.py --scaling       # cost vs the class count C and the batch B (D = 1024)

"IsoMax+ (previous: rescale every row)" is the head as it was before issue 32: every feature row divided by a
power of two of its largest magnitude before normalisation, which the head now does on the CPU only for
batches with a norm that over- or underflows (and always on accelerators and under torch.compile/export).
"""
import argparse
import time

import torch
from torch import nn

from timm_isomax import IsoMaxPlusHead
from timm_isomax.benchmark import hardware_description, interleaved_medians
from timm_isomax.layers import heads

PREVIOUS = "IsoMax+ (previous: rescale every row)"
SHAPES = [(256, 2048, 1000), (256, 1024, 21843)]
# --scaling: C from 100 to ImageNet-21k at B = 256, then B from 32 to 1024 at C = 1000
SCALING_SHAPES = ([(256, 1024, c) for c in (100, 300, 1000, 3000, 10000, 21843)]
                  + [(b, 1024, 1000) for b in (32, 64, 128, 512, 1024)])
CDIST_MAX_ELEMENTS = 2e9  # B*C*D above this: skip the reference form (seconds per call, GBs of memory)


UNIT_FEATURE_ROWS = heads._unit_feature_rows


class PreviousIsoMaxPlusHead(IsoMaxPlusHead):
    """IsoMax+ that rescales every feature row: the head's helper swapped for the rescaling one during each call
    (the inference and training paths look it up per call; the backward does not use it)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        heads._unit_feature_rows = heads._rescaled_unit_rows
        try:
            return super().forward(features)
        finally:
            heads._unit_feature_rows = UNIT_FEATURE_ROWS


def benchmark(shape, device: torch.device, rounds: int, reference: bool = True):
    batch, dim, classes = shape
    features = torch.randn(batch, dim, device=device, requires_grad=True)
    contenders = {"nn.Linear": nn.Linear(dim, classes).to(device),
                  "IsoMax+ (matmul)": IsoMaxPlusHead(dim, classes).to(device)}
    if reference:
        contenders[PREVIOUS] = PreviousIsoMaxPlusHead(dim, classes).to(device)
        if batch * dim * classes <= CDIST_MAX_ELEMENTS:
            contenders["IsoMax+ (cdist, reference)"] = IsoMaxPlusHead(dim, classes, distance_mode="cdist").to(device)

    def forward(head):
        with torch.no_grad():
            head(features)

    def forward_backward(head):
        head(features).sum().backward()

    calls = {(name, kind): (lambda fn=fn, head=head: fn(head))
             for name, head in contenders.items() for kind, fn in (("fwd", forward), ("fwd+bwd", forward_backward))}
    return interleaved_medians(calls, rounds, warmup_rounds=2, device=device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--scaling", action="store_true", help="the head's cost over C and B instead (no reference form)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, device {device}: {hardware_description(device)}; "
          f"median of {args.rounds} rounds")
    if args.scaling:
        return scaling_table(device, args.rounds)
    print(f"{'B, D, C':>20s}  {'implementation':37s} {'fwd ms':>9s} {'x Linear':>9s} {'fwd+bwd ms':>11s} {'x Linear':>9s}")
    for shape in SHAPES:
        medians = benchmark(shape, device, args.rounds)
        names = sorted({name for name, _ in medians}, key=lambda n: (n != "nn.Linear", n))
        for name in names:
            fwd, both = medians[(name, "fwd")], medians[(name, "fwd+bwd")]
            base_fwd, base_both = medians[("nn.Linear", "fwd")], medians[("nn.Linear", "fwd+bwd")]
            print(f"{str(shape):>20s}  {name:37s} {1e3 * fwd:9.2f} {fwd / base_fwd:9.2f} {1e3 * both:11.2f} "
                  f"{both / base_both:9.2f}")
    return 0


def scaling_table(device: torch.device, rounds: int) -> int:
    """Time per multiply-add (ns per B*C*D) stays flat when the cost grows linearly in B*C*D."""
    print(f"{'B, D, C':>20s}  {'IsoMax+ fwd ms':>14s} {'fwd+bwd ms':>11s} {'ns/(B*C*D) fwd+bwd':>19s} "
          f"{'Linear fwd+bwd ms':>18s} {'x Linear':>9s}")
    for shape in SCALING_SHAPES:
        medians = benchmark(shape, device, rounds, reference=False)
        fwd, both = medians[("IsoMax+ (matmul)", "fwd")], medians[("IsoMax+ (matmul)", "fwd+bwd")]
        linear = medians[("nn.Linear", "fwd+bwd")]
        macs = shape[0] * shape[1] * shape[2]
        print(f"{str(shape):>20s}  {1e3 * fwd:14.2f} {1e3 * both:11.2f} {1e9 * both / macs:19.4f} {1e3 * linear:18.2f} "
              f"{both / linear:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
