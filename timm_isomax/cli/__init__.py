"""The command line: ``timm-isomax <command> [options]`` (console script) or ``python -m timm_isomax <command>``.

Each command is a thin layer over library functions and has its own ``--help`` with examples::

    timm-isomax finetune --model resnet50.a1_in1k --dataset uoft-cs/cifar10 --output out/r50   # convert + fine-tune
    timm-isomax finetune                                   # the offline default (pip-installed weights and data)
    timm-isomax evaluate --model out/r50 --id-dataset uoft-cs/cifar10 --ood-dataset ...
    timm-isomax convert --model resnet50.a1_in1k --dataset ...      # zero-shot conversion, evaluated
    timm-isomax reproduce hub_configs/resnet10t_isomaxplus.mnist.json
    timm-isomax push hub_configs/resnet10t_isomaxplus.mnist.json --dry-run outputs/hub_dry_run
    timm-isomax benchmark mnist --seeds 0                  # SoftMax vs IsoMax vs IsoMax+, one protocol
    timm-isomax demo --model out/r50 --id-dataset uoft-cs/cifar10   # try a model in the browser
"""
import importlib
import os
import sys
from typing import List, Optional

__all__ = ["COMMANDS", "main"]

# command -> (module in this package, one-line summary)
COMMANDS = {
    "finetune": ("finetune", "convert a SoftMax checkpoint and fine-tune it (or fine-tune it as SoftMax: --head softmax)"),
    "evaluate": ("evaluate", "OOD evaluation of models side by side: accuracy, AUROC, FPR@95, AUPR, plots"),
    "convert": ("convert", "zero-shot conversion of a SoftMax model to IsoMax+, evaluated beside its source"),
    "reproduce": ("reproduce", "train, evaluate and record a published model from its hub config"),
    "push": ("push", "upload a model folder with its card to the Hugging Face Hub (--dry-run writes it locally)"),
    "benchmark": ("benchmark", "SoftMax vs IsoMax vs IsoMax+ on the benchmark protocols, resumable, mean ± std"),
    "demo": ("demo", "a local web page: one image, each model's classes, OOD score and verdict (needs [app])"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: timm-isomax <command> [options]   (or: python -m timm_isomax <command> ...)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "timm-isomax <command> --help shows a command's options and examples."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``timm-isomax <command> ...``; returns the exit status (2 for a usage error)."""
    try:
        code = _run(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe could no longer be caught
        return code
    except BrokenPipeError:
        # the reader left (`timm-isomax finetune --help | head`): no traceback. Python's advice: point stdout at
        # devnull, so that the interpreter's own last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        print(f"error: unknown command {command!r}" + (f"; did you mean {close[0]!r}?" if close else "")
              + f" Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")
    return module.main(rest)
