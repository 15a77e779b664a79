"""Only what pyproject.toml cannot say:

* the package list: every subpackage of ``timm_isomax`` found on disk, plus the two folders pyproject.toml's
  ``package-dir`` maps into it (``hub_configs/`` and ``benchmarks/protocols/``);
* the wheel carries ``timm_isomax-autoload.pth`` at the root of site-packages (Python runs it at start-up; see
  ``_timm_isomax_autoload.py``)."""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH = "timm_isomax-autoload.pth"
MAPPED_PACKAGES = ["timm_isomax.hub_configs", "timm_isomax.protocols"]  # folders elsewhere: pyproject.toml's package-dir


class BuildWithAutoload(build_py):
    def run(self):
        super().run()
        shutil.copy(Path(__file__).parent / PTH, Path(self.build_lib) / PTH)

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(packages=find_packages(include=["timm_isomax", "timm_isomax.*"]) + MAPPED_PACKAGES,
      cmdclass={"build_py": BuildWithAutoload})
