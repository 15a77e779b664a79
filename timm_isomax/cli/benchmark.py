"""The papers' claim, measured: SoftMax vs IsoMax vs IsoMax+ trained by the product's trainer with the same
start model, recipe and seeds, evaluated on the same ID test set and OOD sets (mean ± std over seeds).

Protocols are the JSON files in benchmarks/protocols/ (datasets are folders under --data-root). Every
(seed, head) is one trainer run into --runs (checkpointed: an interrupted benchmark continues mid-run with
the same command); each finished run's results join <output>/<protocol>/seed<k>.json at once; then the
tables (<output>/<protocol>.md, all metrics), summary.json and a plot.

    timm-isomax benchmark mnist fashion_mnist cifar10    # the from-scratch protocols
    timm-isomax benchmark mnist fashion_mnist     # some of them
    timm-isomax benchmark cifar10_converge --heads dismax   # only some heads (others may run beside it)
    timm-isomax benchmark --smoke                 # every protocol shrunk to seconds (what the tests run)
    timm-isomax benchmark --report-only           # tables and plot from the saved runs
    timm-isomax benchmark cifar10_airbench --heads isomaxplus --seeds 0 --print-commands
                                                  # each run as the `timm-isomax finetune` command it is
"""
import argparse
import importlib.resources
import dataclasses
import os
import shlex
import sys
from typing import List
from pathlib import Path

import datasets

import timm_isomax  # noqa: F401  (registers <arch>_isomaxplus)
from timm_isomax.cli._errors import exit_code
from timm_isomax.benchmark import (TABLE_METRICS, heads_problem, headline_table, load_protocol, load_runs, markdown_table,
                                   missing_inputs, run_protocol, smoke_version, summarize,
                                   summary_json)
from timm_isomax.ood.plots import plot_benchmark, plots_unavailable
from timm_isomax.benchmark.protocol import train_config
from timm_isomax.train import HEADS
from timm_isomax.train.arguments import args_from_settings

# the shipped protocols (benchmarks/protocols/ in the repository, timm_isomax.protocols in the package)
PROTOCOLS = Path(str(importlib.resources.files("timm_isomax.protocols")))
# the README's results table, regenerated with the other reports (scripts/sync_docs.py copies it in)
HEADLINE_NAME = "headline.md"
# paths relative to where it runs (the repository root, next to ../shared)
DEFAULT_DATA_ROOT = os.environ.get("TIMM_ISOMAX_SHARED_DATA", str(Path("..") / "shared" / "data"))
WORKDIR = Path(".")  # outputs go under the folder it runs in


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="timm-isomax benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocols", nargs="*", help="protocol names (benchmarks/protocols/<name>.json) or JSON paths; "
                                                 "default: all")
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder holding the datasets (default: %(default)s)")
    p.add_argument("--output", default=None, help="results folder (default: benchmarks/results, or "
                                                  "outputs/benchmark_smoke with --smoke)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the protocols' seeds")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=None,
                   help="train only these of the protocols' heads (default: all); a second benchmark of other heads "
                        "of the same seeds may run at the same time")
    p.add_argument("--smoke", action="store_true", help="run each protocol's smoke version")
    p.add_argument("--runs", default=str(WORKDIR / "outputs" / "benchmark_runs"),
                   help="where the trainer's run folders (checkpoints, models) go (default: %(default)s)")
    p.add_argument("--feature-cache", default=str(WORKDIR / "outputs" / "feature_cache"),
                   help="frozen-backbone features kept between runs (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--throughput-rounds", type=int, default=5, help="interleaved rounds of the inference timing")
    p.add_argument("--report-only", action="store_true", help="only rebuild tables and plot from saved runs")
    p.add_argument("--print-commands", action="store_true",
                   help="print each (seed, head) run as the `timm-isomax finetune` command that trains it, run nothing")
    return p.parse_args(argv)


def _protocol_path(entry: str) -> Path:
    return Path(entry) if entry.endswith(".json") else PROTOCOLS / f"{entry}.json"


def _write_report(output: Path, names) -> None:
    # summary.json and the plot cover every protocol with runs in ``output``, the printout those just run
    runs = load_runs(output)
    summary = summarize(runs)
    (output / "summary.json").write_text(summary_json(summary))
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        (output / f"{name}.md").write_text(markdown_table(summary, TABLE_METRICS, protocol=name) + "\n")
    (output / HEADLINE_NAME).write_text(headline_table(runs) + "\n")
    plots_note = plots_unavailable()  # the tables are written either way: the plot is an optional extra
    plot = plots_note or plot_benchmark(summary, output / "ood_benchmark.png")
    print("\n\n".join(markdown_table(summary, protocol=name) for name in names))
    print(f"\nfull tables: {output}/<protocol>.md; plot: {plot}")


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    paths = [_protocol_path(entry) for entry in args.protocols] or sorted(PROTOCOLS.glob("*.json"))
    return exit_code(lambda: run(args, paths), interrupted="the same command continues where it stopped.")


def _print_commands(args: argparse.Namespace, protocols) -> None:
    # the benchmark's own settings, spelled as the product's command: one table cell retrained by hand, or a
    # hub config's finetune_args (timm-isomax reproduce reuses a run folder trained with exactly these)
    feature_cache = Path(args.feature_cache) if args.feature_cache else None
    for protocol in protocols:
        for seed in protocol.seeds:
            for head in args.heads or protocol.heads:
                settings = train_config(protocol, head, seed, args.data_root, Path(args.runs), feature_cache)
                print(shlex.join(["timm-isomax", "finetune", *args_from_settings(settings)]))


def run(args: argparse.Namespace, paths: List[Path]) -> None:
    """Run what is missing of the protocols (resuming), then write the report from every committed run."""
    protocols = [load_protocol(path) for path in paths]
    if args.smoke:
        protocols = [smoke_version(protocol) for protocol in protocols]
    if args.seeds:
        protocols = [dataclasses.replace(protocol, seeds=tuple(args.seeds)) for protocol in protocols]
    output = Path(args.output or (WORKDIR / "outputs" / "benchmark_smoke" if args.smoke else WORKDIR / "benchmarks" / "results"))
    if args.smoke and args.runs == parse_args([]).runs:
        args.runs = str(WORKDIR / "outputs" / "benchmark_smoke_runs")
    if args.print_commands:
        _print_commands(args, protocols)
        return
    if not args.report_only:
        problems = [problem for problem in (heads_problem(protocol, args.heads) for protocol in protocols)
                    if problem] if args.heads else []
        if problems:
            raise ValueError("; ".join(problems))
        missing = sorted({entry for p in protocols for entry in missing_inputs(p, args.data_root)})
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} not found (data root {args.data_root}); pass --data-root (the "
                                    f"folder with mnist/, cifar10/, checkpoints/, ...) or set TIMM_ISOMAX_SHARED_DATA.")
        for protocol in protocols:
            run_protocol(protocol, args.data_root, output, args.runs, args.feature_cache, args.device,
                         args.throughput_rounds, heads=args.heads)
    _write_report(output, [protocol.name for protocol in protocols])


if __name__ == "__main__":
    sys.exit(main())
