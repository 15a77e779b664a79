import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("TIMM_ISOMAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real datasets); tests that need it skip where it is absent."""
    if not (SHARED_DATA / "mnist" / "test.parquet").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set TIMM_ISOMAX_SHARED_DATA)")
    return SHARED_DATA
