"""`import timm_isomax` stays light: it registers ~2,700 architectures but loads no data or plotting stack."""
import subprocess
import sys


def test_import_does_not_load_datasets_or_matplotlib():
    code = ("import sys, timm_isomax; heavy = [m for m in ('datasets', 'matplotlib', 'pandas', 'sklearn') "
            "if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
