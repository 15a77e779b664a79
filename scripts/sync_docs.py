"""Write the benchmark's tables into the README and docs/*.md from the committed runs, wherever a document
quotes one between ``<!-- results: NAME -->`` and ``<!-- results: end -->`` (NAME: ``headline``, or a
protocol such as ``cifar10_frozen_lite0`` or an ablation such as ``fashion_mnist_6ep``).

    bash scripts/in_venv.sh timm-isomax benchmark --report-only && bash scripts/in_venv.sh python scripts/sync_docs.py

tests/test_benchmark.py checks that every quoted table is what this script writes, so a number in a table of
the README or the docs can only come from the runs in benchmarks/results/.
"""
import sys
from pathlib import Path
from typing import Dict, List

from timm_isomax.benchmark import fill_result_tables, load_runs, result_tables

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def documents() -> List[Path]:
    """The documents that may quote tables: the README and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# Runs of the protocols as they were before issue 29 (validated on the test split, SoftMax read with a per-column
# oracle): kept as evidence, quoted under the prefix "test_validated." (e.g. "test_validated.headline").
ARCHIVES = {"test_validated": RESULTS / "test_validated"}


def tables() -> Dict[str, str]:
    """Every quotable table: the main results' (none before the first run lands), the ablations'
    (benchmarks/results/ablations/) and the archived runs' (prefixed with the archive's name)."""
    found = {}
    if any(RESULTS.glob("*/seed*.json")):
        found.update(result_tables(load_runs(RESULTS)))
    ablations = RESULTS / "ablations"
    if ablations.is_dir():
        found.update({name: table for name, table in result_tables(load_runs(ablations)).items() if name != "headline"})
    for prefix, folder in ARCHIVES.items():
        found.update({f"{prefix}.{name}": table for name, table in result_tables(load_runs(folder)).items()})
    return found


def main() -> int:
    try:
        available = tables()
        for path in documents():
            text = path.read_text()
            filled = fill_result_tables(text, available, where=str(path.relative_to(ROOT)))
            if filled != text:
                path.write_text(filled)
                print(f"updated the quoted tables of {path.relative_to(ROOT)}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
