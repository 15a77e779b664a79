#!/usr/bin/env python
"""The start-up cost that a wheel install of timm-isomax adds to every interpreter (its autoload .pth):
`python -c pass` in a clean venv outside the repo that holds the wheel, beside the same venv without it
(both reach their dependencies in this environment), timed interleaved; medians and ratio.

    python scripts/benchmark_startup.py --rounds 30
"""
import argparse
import fcntl
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    """The project's wheel, built from this checkout (no build isolation: this venv's setuptools).

    setuptools stages the package in the checkout's ``build/`` (git-ignored) and never empties it: a module that
    was moved or deleted since the last build would ship in the wheel. So the staging folder goes first."""
    # one build at a time per checkout: two test workers building at once emptied each other's build/ (pytest -n 2
    # without --dist loadfile splits one test file's wheel fixture over both)
    lock = Path(tempfile.gettempdir()) / f"timm_isomax_wheel_{hashlib.sha1(str(ROOT).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        shutil.rmtree(ROOT / "build", ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                        "-w", str(out)], check=True, capture_output=True, text=True)
    return next(out.glob("timm_isomax-*.whl"))


def clean_venv_with_wheel(folder: Path, with_wheel: bool = True) -> Path:
    """A new venv in ``folder`` with only the wheel installed (no editable install, no repo on sys.path); torch,
    timm and the rest are reached through a path entry to this environment's site-packages (whose own .pth
    files, the editable install's among them, are not run). Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    python = folder / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    if with_wheel:
        wheel = build_wheel(folder / "wheel")
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                        "-q", str(wheel)], check=True, capture_output=True, text=True)
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    return python


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "TIMM_ISOMAX_NO_AUTOLOAD"}
    with tempfile.TemporaryDirectory() as scratch:
        pythons = {"with the wheel": clean_venv_with_wheel(Path(scratch) / "with"),
                   "without it": clean_venv_with_wheel(Path(scratch) / "without", with_wheel=False)}
        times = {name: [] for name in pythons}
        for _ in range(args.rounds + 2):  # two warm-up rounds
            for name, python in pythons.items():
                start = time.perf_counter()
                subprocess.run([str(python), "-c", "pass"], env=env, cwd=scratch, check=True)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values[2:]) for name, values in times.items()}
    print(f"`python -c pass` in a clean venv, median of {args.rounds} interleaved rounds:")
    for name, seconds in medians.items():
        print(f"  {name}: {1000 * seconds:.1f} ms")
    print(f"  ratio: {medians['with the wheel'] / medians['without it']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
