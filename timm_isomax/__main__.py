"""``python -m timm_isomax <command>``: the command line of :mod:`timm_isomax.cli`."""
import sys

from .cli import main

sys.exit(main())
