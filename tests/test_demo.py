"""`hpa-zoo demo` end to end through the CLI: synthetic data -> TFDS -> Team 1 recipe -> report -> submission.

The network is the tiny CNN of tests/test_training.py (``--model``) with Team 1's real recipe: building the
DenseNet121 train step alone takes minutes on a busy 2-core CPU. The DenseNet121 demo is timed by hand (README).
"""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest.importorskip("tensorflow_datasets")

from tests.test_training import tiny_model  # noqa: E402,F401


def test_demo_cli_runs_end_to_end_and_labels_everything_synthetic(tiny_model, tmp_path):
    from hpa_zoo.cli import main
    from hpa_zoo.demo import BANNER
    from hpa_zoo.labels import parse_target

    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--n-train", "40", "--n-test", "6", "--size", "64", "--epochs", "1",
                 "--batch-size", "8", "--model", tiny_model])
    assert code == 0

    report = (out / "report.md").read_text()
    assert report.count(BANNER) >= 2 and "| # | class |" in report and "per_class_f1.png" in report
    png = (out / "per_class_f1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # trained on the TFDS build of the synthetic set (64 px -> 48 px input)
    meta = json.loads((out / "train" / "preset" / "metadata.json").read_text())
    assert meta["model_name"] == tiny_model and meta["data"] == "hpa_kaggle/128"
    assert (meta["recipe"]["image_size"], meta["recipe"]["input_size"]) == (64, 48)

    sub = pd.read_csv(out / "submission" / "submission.csv", dtype=str, keep_default_na=False)
    test_ids = pd.read_csv(out / "synthetic" / "sample_submission.csv", dtype=str)["Id"]
    assert sorted(sub["Id"]) == sorted(test_ids)
    assert all(parse_target(t) for t in sub["Predicted"])  # force_top: every row has a label
