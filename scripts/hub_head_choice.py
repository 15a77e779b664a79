"""Which head of a benchmark protocol becomes its hub model, chosen on validation data only (issue 30, section 5).

The rule, fixed before the cifar10_airbench grid's last seeds landed (docs/benchmarks.md): among the candidate
heads, the highest mean over seeds of each run's validation AUROC of its own chosen score, on the OOD validation
sets that every candidate run has (a DisMax run trained on mosaics leaves the jigsaw puzzles out, so heads are
compared on the real near half alone there); a tie goes to the first candidate listed (IsoMax+, the package's
default). The seed is then `timm-isomax reproduce`'s to choose. The test sets play no part. It reads the committed
seed files, and refuses a protocol whose candidates do not all have the same seeds (a head with fewer seeds would
be compared on other data).

    python scripts/hub_head_choice.py cifar10_airbench
    python scripts/hub_head_choice.py cifar10_airbench --heads isomaxplus dismax
"""
import argparse
import statistics
from pathlib import Path

from timm_isomax.benchmark import load_runs

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
CANDIDATES = ("isomaxplus", "isomax", "dismax")  # the IsoMax family, the package's default first


def validation_aurocs(protocol_folder: Path, heads=CANDIDATES):
    """``({head: {seed: validation AUROC of the run's chosen score}}, sets)``: the AUROC is the mean over ``sets``,
    the OOD validation sets that every candidate run of the protocol's seed files has."""
    rows = {head: {} for head in heads}
    for run in load_runs(protocol_folder):
        for row in run["rows"]:
            if row["head"] in rows and row.get("chosen_by") == "validation":
                rows[row["head"]][run["seed"]] = row
    every = [row for per_seed in rows.values() for row in per_seed.values()]
    sets = [name for name in every[0]["selection"]["sets"] if all(name in row["selection"]["sets"] for row in every)] \
        if every else []
    aurocs = {head: {seed: statistics.fmean(row["selection"]["aurocs"][row["score"]][name] for name in sets)
                     for seed, row in per_seed.items()} for head, per_seed in rows.items()}
    return aurocs, sets


def choose_head(aurocs) -> str:
    """The head with the highest mean over seeds (the first listed of equal means); every head must have the same
    seeds."""
    seeds = {head: sorted(values) for head, values in aurocs.items()}
    if not all(seeds.values()) or len({tuple(s) for s in seeds.values()}) != 1:
        raise ValueError(f"the candidates' seeds differ or are missing ({seeds}): finish the grid first.")
    return max(aurocs, key=lambda head: statistics.fmean(aurocs[head].values()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", help="a folder of benchmarks/results, e.g. cifar10_airbench")
    parser.add_argument("--heads", nargs="+", default=list(CANDIDATES), help="candidates, in order of preference")
    args = parser.parse_args(argv)
    folder = RESULTS / args.protocol
    if not folder.is_dir():
        parser.error(f"no results folder {folder}; pass a protocol with committed runs "
                     f"({', '.join(sorted(p.name for p in RESULTS.iterdir() if p.is_dir()))}).")
    try:
        aurocs, sets = validation_aurocs(folder, args.heads)
    except FileNotFoundError as error:  # a results folder without seed files
        parser.exit(1, f"hub_head_choice.py: {error}\n")
    print(f"validation AUROC of each run's chosen score, mean over {', '.join(sets)}:")
    for head, values in aurocs.items():
        shown = ", ".join(f"seed {seed} {100 * value:.2f}" for seed, value in sorted(values.items()))
        mean = f"{100 * statistics.fmean(values.values()):.2f}" if values else "-"
        print(f"{head}: mean {mean} ({shown})")
    try:
        print(f"chosen: {choose_head(aurocs)}")
    except ValueError as error:
        parser.exit(1, f"hub_head_choice.py: {error}\n")


if __name__ == "__main__":
    main()
