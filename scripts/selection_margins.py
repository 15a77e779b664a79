"""How far ahead of the runner-up each benchmark run's validation-chosen OOD score was, from the committed seed files.

A run chooses its score by the highest mean validation AUROC (timm_isomax.ood.selection). Where the chosen score
leads the next one by a few hundredths of a point, the choice is noise, however different the two scores read on
the test sets. Runs recorded since 2026-12-05 also carry the margin's paired-bootstrap spread (``margin_std``);
older seed files hold the AUROCs only, so this prints the margin for every run and the spread where it exists.

    python scripts/selection_margins.py                      # every protocol with validated runs
    python scripts/selection_margins.py cifar10_finetune_resnet56
"""
import argparse
from pathlib import Path

from timm_isomax.benchmark import load_runs

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def margins(runs):
    """``{(protocol, head): [(seed, chosen, runner_up, margin, margin_std or None), ...]}`` for the runs' (seed files,
    as :func:`timm_isomax.benchmark.load_runs` reads them) validation-chosen rows."""
    out = {}
    for run in runs:
        for row in run["rows"]:
            selection = row.get("selection")
            if row.get("chosen_by") != "validation" or not selection or len(selection["aurocs"]) < 2:
                continue
            means = {score: values["mean"] for score, values in selection["aurocs"].items()}
            chosen, runner_up = sorted(means, key=lambda score: -means[score])[:2]
            out.setdefault((run["protocol"]["name"], row["head"]), []).append(
                (run["seed"], chosen, runner_up, means[chosen] - means[runner_up], selection.get("margin_std")))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocols", nargs="*", help="protocol names (folders of benchmarks/results); default: all")
    args = parser.parse_args(argv)
    missing = [name for name in args.protocols if not (RESULTS / name).is_dir()]
    if missing:
        parser.error(f"no results folder for {', '.join(missing)} in {RESULTS}; pass protocols with committed runs.")
    # every protocol: the seed files one folder down (load_runs leaves deeper ones, pilots and ablations, out)
    try:
        runs = [run for name in args.protocols for run in load_runs(RESULTS / name)] or load_runs(RESULTS)
    except FileNotFoundError as error:  # a results folder without seed files
        parser.exit(1, f"selection_margins.py: {error}\n")
    print("| protocol | head | seed: chosen > runner-up, margin in AUROC points (+- bootstrap std where recorded) |")
    print("|---|---|---|")
    for (protocol, head), choices in margins(runs).items():
        cells = "; ".join(f"{seed}: {chosen} > {runner_up} by {100 * margin:.2f}"
                          + (f" +- {100 * spread:.2f}" if spread is not None else "")
                          for seed, chosen, runner_up, margin, spread in choices)
        print(f"| {protocol} | {head} | {cells} |")


if __name__ == "__main__":
    main()
