"""Only what pyproject.toml cannot say: the wheel carries ``timm_isomax-autoload.pth`` at the root of
site-packages (Python runs it at start-up; see ``_timm_isomax_autoload.py``)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "timm_isomax-autoload.pth"


class BuildWithAutoload(build_py):
    def run(self):
        super().run()
        shutil.copy(Path(__file__).parent / PTH, Path(self.build_lib) / PTH)

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": BuildWithAutoload})
