"""Copy the benchmark's results table (benchmarks/results/headline.md, written by
`timm-isomax benchmark --report-only`) into the README between its headline markers.

    bash scripts/in_venv.sh timm-isomax benchmark --report-only && python scripts/sync_readme.py

tests/test_benchmark.py checks that the two agree, so a README number can only come from the report.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- headline:start -->", "<!-- headline:end -->"


def synced(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(f"README.md needs exactly one {START} and one {END} line around the results table.")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table.strip()}\n{END}{tail}"


def main() -> int:
    readme, table = ROOT / "README.md", ROOT / "benchmarks" / "results" / "headline.md"
    try:
        text = synced(readme.read_text(), table.read_text())
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    readme.write_text(text)
    print(f"copied {table.relative_to(ROOT)} into README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
