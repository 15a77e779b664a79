"""How far ahead of the runner-up each benchmark run's validation-chosen OOD score was, from the committed seed files.

A run chooses its score by the highest mean validation AUROC (timm_isomax.ood.selection). Where the chosen score
leads the next one by a few hundredths of a point, the choice is noise, however different the two scores read on
the test sets. Runs recorded since 2026-12-05 also carry the margin's paired-bootstrap spread (``margin_std``);
older seed files hold the AUROCs only, so this prints the margin for every run and the spread where it exists.

    python scripts/selection_margins.py                      # every protocol with validated runs
    python scripts/selection_margins.py cifar10_finetune_resnet56
"""
import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def margins(protocol_folder: Path):
    """``{head: [(seed, chosen, runner_up, margin, margin_std or None), ...]}`` for the validation-chosen runs."""
    out = {}
    for path in sorted(protocol_folder.glob("seed*.json")):
        run = json.loads(path.read_text())
        for row in run["rows"]:
            selection = row.get("selection")
            if row.get("chosen_by") != "validation" or not selection or len(selection["aurocs"]) < 2:
                continue
            means = {score: values["mean"] for score, values in selection["aurocs"].items()}
            chosen, runner_up = sorted(means, key=lambda score: -means[score])[:2]
            out.setdefault(row["head"], []).append((run["seed"], chosen, runner_up, means[chosen] - means[runner_up],
                                                    selection.get("margin_std")))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocols", nargs="*", help="protocol names (folders of benchmarks/results); default: all")
    args = parser.parse_args(argv)
    folders = [RESULTS / name for name in args.protocols] or sorted(p for p in RESULTS.iterdir() if p.is_dir())
    missing = [folder.name for folder in folders if not folder.is_dir()]
    if missing:
        parser.error(f"no results folder for {', '.join(missing)} in {RESULTS}; pass protocols with committed runs.")
    print("| protocol | head | seed: chosen > runner-up, margin in AUROC points (+- bootstrap std where recorded) |")
    print("|---|---|---|")
    for folder in folders:
        for head, runs in margins(folder).items():
            cells = "; ".join(f"{seed}: {chosen} > {runner_up} by {100 * margin:.2f}"
                              + (f" +- {100 * spread:.2f}" if spread is not None else "")
                              for seed, chosen, runner_up, margin, spread in runs)
            print(f"| {folder.name} | {head} | {cells} |")


if __name__ == "__main__":
    main()
