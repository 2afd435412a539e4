"""benchmarks/sample_leaks.py (split part) on a tiny synthetic dataset: the sample-level split shares no sample
between validation and training, the image-level split does, and each score is sklearn's macro F1 of that fold."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_split_leak_measures_both_splits(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import sample_leaks
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    data = sample_leaks.make_data(tmp_path, n_train=24, n_test=0, k=4, size=32, preset="demo", seed=1)
    result = sample_leaks.split_leak(data, n_splits=3)
    shared = result["valid_images_with_a_same_sample_train_image"]
    assert shared["sample-level"] == 0.0 and shared["image-level"] > 0.5
    assert result["n_images"] == 24 and result["n_samples"] == 6
    for by_split in result["models"].values():
        for split in ("image-level", "sample-level"):
            folds = by_split[split]["per_fold"]
            assert len(folds) == 3 and all(0.0 <= f <= 1.0 for f in folds)
            assert abs(by_split[split]["mean"] - np.mean(folds)) < 1e-4
        assert by_split["inflation"] == by_split["image-level"]["mean"] - by_split["sample-level"]["mean"]
