#!/usr/bin/env python
"""The papers' claim, measured: SoftMax vs IsoMax vs IsoMax+ trained with the same backbone, recipe and seeds,
evaluated on the same ID test set and OOD sets (mean ± std over seeds).

Protocols are the JSON files in benchmarks/protocols/ (datasets are folders under --data-root). Each seed's
results are written when that seed finishes (<output>/<protocol>/seed<k>.json), so a rerun resumes where an
interrupted one stopped; then the tables (<output>/<protocol>.md, all metrics), summary.json and a plot.

    python scripts/benchmark_ood.py                         # every protocol, 3 seeds each (about 1.5 h on 2 CPU cores)
    python scripts/benchmark_ood.py mnist fashion_mnist     # some of them
    python scripts/benchmark_ood.py --smoke                 # every protocol shrunk to seconds (what the tests run)
    python scripts/benchmark_ood.py --report-only           # tables and plot from the saved runs
"""
import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import datasets

import timm_isomax  # noqa: F401  (registers <arch>_isomaxplus)
from timm_isomax.benchmark import (TABLE_METRICS, load_protocol, load_runs, markdown_table, run_protocol,
                                   smoke_version, summarize)
from timm_isomax.plots import plot_benchmark

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "benchmarks" / "protocols"
DEFAULT_DATA_ROOT = os.environ.get("TIMM_ISOMAX_SHARED_DATA", str(ROOT.parent / "shared" / "data"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocols", nargs="*", help="protocol names (benchmarks/protocols/<name>.json) or JSON paths; "
                                                 "default: all")
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder holding the datasets (default: %(default)s)")
    p.add_argument("--output", default=None, help="results folder (default: benchmarks/results, or "
                                                  "outputs/benchmark_smoke with --smoke)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the protocols' seeds")
    p.add_argument("--smoke", action="store_true", help="run each protocol's smoke version")
    p.add_argument("--device", default="cpu")
    p.add_argument("--throughput-rounds", type=int, default=5, help="interleaved rounds of the inference timing")
    p.add_argument("--report-only", action="store_true", help="only rebuild tables and plot from saved runs")
    return p.parse_args(argv)


def _protocol_path(entry: str) -> Path:
    return Path(entry) if entry.endswith(".json") else PROTOCOLS / f"{entry}.json"


def _write_report(output: Path, names) -> None:
    # summary.json and the plot cover every protocol with runs in ``output``, the printout those just run
    summary = summarize(load_runs(output))
    (output / "summary.json").write_text(json.dumps(summary, indent=1))
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        (output / f"{name}.md").write_text(markdown_table(summary, TABLE_METRICS, protocol=name) + "\n")
    plot = plot_benchmark(summary, output / "ood_benchmark.png")
    print("\n\n".join(markdown_table(summary, protocol=name) for name in names))
    print(f"\nfull tables: {output}/<protocol>.md; plot: {plot}")


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    paths = [_protocol_path(entry) for entry in args.protocols] or sorted(PROTOCOLS.glob("*.json"))
    try:
        protocols = [load_protocol(path) for path in paths]
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.smoke:
        protocols = [smoke_version(protocol) for protocol in protocols]
    if args.seeds:
        protocols = [dataclasses.replace(protocol, seeds=tuple(args.seeds)) for protocol in protocols]
    output = Path(args.output or (ROOT / "outputs" / "benchmark_smoke" if args.smoke else ROOT / "benchmarks" / "results"))
    if not args.report_only:
        missing = [d for p in protocols for d in (p.id_dataset, *p.ood_datasets) if not (Path(args.data_root) / d).exists()]
        if missing:
            print(f"error: datasets {sorted(set(missing))} not found under {args.data_root}; pass --data-root "
                  f"(the folder with mnist/, cifar10/, ...) or set TIMM_ISOMAX_SHARED_DATA.", file=sys.stderr)
            return 2
        for protocol in protocols:
            try:
                run_protocol(protocol, args.data_root, output, args.device, args.throughput_rounds)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
    try:
        _write_report(output, [protocol.name for protocol in protocols])
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
