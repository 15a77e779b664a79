"""Install the ``app`` extra (gradio, for ``timm-isomax demo``) into this Python at constraints.txt's versions.

Why not ``pip install -e .[app]`` with the other extras: gradio caps pillow below 13, which constraints.txt pins (the
version the suite's numbers were made with), so pip's resolver refuses the pair. gradio itself goes in without its
dependencies; they go in through the resolver, pillow left as it is. The browser test (tests/test_demo_app.py) is
what shows that gradio runs with this pillow. Users installing ``timm-isomax[app]`` get a pillow gradio accepts.

    .venv/bin/python scripts/install_app_extra.py      # scripts/in_venv.sh runs it after the main install
"""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"
# the requirement of gradio's that constraints.txt overrides (see above)
OVERRIDDEN = {"pillow"}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", str(CONSTRAINTS), *args], check=True)


def main() -> None:
    print("[install_app_extra] gradio beside pillow 13: pip reports its pillow<13 cap as a conflict, as expected",
          file=sys.stderr)
    pip("--no-deps", "gradio")
    wanted = [Requirement(text) for text in importlib.metadata.requires("gradio") or []]
    wanted = [str(r) for r in wanted if r.name.lower() not in OVERRIDDEN and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    pip(*wanted)


if __name__ == "__main__":
    main()
