"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _real_samples() -> Path | None:
    env = os.environ.get("HPA_REAL_SAMPLES")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data" / "hpa_real_samples",
                   REPO_ROOT / "shared" / "data" / "hpa_real_samples"]
    for c in candidates:
        if (c / "labels.csv").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def real_samples_dir() -> Path:
    """The three real HPA fields of view (`../shared/data/hpa_real_samples`); skips the test if absent."""
    path = _real_samples()
    if path is None:
        pytest.skip("real HPA samples not found (../shared/data/hpa_real_samples); set HPA_REAL_SAMPLES")
    return path
