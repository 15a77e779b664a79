#!/usr/bin/env python
"""The IsoMax+ head against nn.Linear of the same shape: forward and forward+backward, fp32.

Each configuration runs the implementations interleaved (warm-up first, then repeated rounds) and prints
median times and the ratio to nn.Linear measured in the same run, so the ratios hold on a busy machine.
The exact reference form (cdist) runs only where its O(B*C*D) cost is affordable.

    python scripts/benchmark_head.py                 # the issue's shapes, CPU
    python scripts/benchmark_head.py --device cuda
"""
import argparse
import statistics
import time

import torch
from torch import nn

from timm_isomax import IsoMaxPlusHead

SHAPES = [(256, 2048, 1000), (256, 1024, 21843)]
CDIST_MAX_ELEMENTS = 2e9  # B*C*D above this: skip the reference form (seconds per call, GBs of memory)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def benchmark(shape, device: torch.device, rounds: int):
    batch, dim, classes = shape
    features = torch.randn(batch, dim, device=device, requires_grad=True)
    heads = {"nn.Linear": nn.Linear(dim, classes).to(device), "IsoMax+ (matmul)": IsoMaxPlusHead(dim, classes).to(device)}
    if batch * dim * classes <= CDIST_MAX_ELEMENTS:
        heads["IsoMax+ (cdist, reference)"] = IsoMaxPlusHead(dim, classes, distance_mode="cdist").to(device)

    def forward(head):
        with torch.no_grad():
            head(features)

    def forward_backward(head):
        head(features).sum().backward()

    times = {(name, kind): [] for name in heads for kind in ("fwd", "fwd+bwd")}
    for round_index in range(rounds + 2):  # two warm-up rounds
        for name, head in heads.items():
            for kind, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
                elapsed = time_call(lambda: fn(head), device)
                if round_index >= 2:
                    times[(name, kind)].append(elapsed)
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds")
    print(f"{'B, D, C':>20s}  {'implementation':28s} {'fwd ms':>9s} {'x Linear':>9s} {'fwd+bwd ms':>11s} {'x Linear':>9s}")
    for shape in SHAPES:
        medians = benchmark(shape, device, args.rounds)
        names = sorted({name for name, _ in medians}, key=lambda n: (n != "nn.Linear", n))
        for name in names:
            fwd, both = medians[(name, "fwd")], medians[(name, "fwd+bwd")]
            base_fwd, base_both = medians[("nn.Linear", "fwd")], medians[("nn.Linear", "fwd+bwd")]
            print(f"{str(shape):>20s}  {name:28s} {1e3 * fwd:9.2f} {fwd / base_fwd:9.2f} {1e3 * both:11.2f} "
                  f"{both / base_both:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
