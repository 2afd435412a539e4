"""`hpa-zoo demo` end to end through the CLI: synthetic data -> Team 1 recipe -> report + baselines -> submission.

The network is the tiny CNN of tests/test_training.py (``--model``) with Team 1's real recipe: building the
DenseNet121 train step alone takes minutes on a busy 2-core CPU. The DenseNet121 demo is timed by hand (README).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score


import tensorflow_datasets  # noqa: F401
from tests.test_training import tiny_model  # noqa: E402,F401


def test_demo_cli_runs_end_to_end_and_labels_everything_synthetic(tiny_model, tmp_path):
    from hpa_zoo.cli import main
    from hpa_zoo.demo import BANNER
    from hpa_zoo.data.labels import parse_target

    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--n-train", "40", "--n-test", "6", "--size", "64", "--image-size", "64",
                 "--input-size", "48", "--epochs", "2", "--batch-size", "8", "--model", tiny_model])
    assert code == 0

    report = (out / "report.md").read_text()
    assert report.count(BANNER) >= 4 and "| # | class |" in report and "preset `demo`" in report
    for name in ("per_class_f1.png", "learning_curve.png", "gradcam.png"):
        assert f"]({name})" in report
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| label prior |" in report and "| pixel-statistics logistic |" in report
    assert "| submission |" in report and "| truth (`test_labels.csv`) |" in report

    # the label-prior baseline, recomputed with sklearn: every class seen in the training folds on everywhere
    summary = json.loads((out / "summary.json").read_text())
    folds = pd.read_csv(out / "train" / "folds.csv", dtype={"Id": str}).set_index("Id")["fold"]
    train_csv = pd.read_csv(out / "synthetic" / "train.csv", dtype=str).set_index("Id")
    y = np.zeros((len(train_csv), 28), np.uint8)
    for k, target in enumerate(train_csv["Target"]):
        y[k, [int(c) for c in target.split()]] = 1
    val = (folds.loc[train_csv.index] == 0).to_numpy()
    prior = np.tile(y[~val].max(axis=0), (int(val.sum()), 1))
    expected = f1_score(y[val], prior, average="macro", zero_division=0)
    assert summary["baselines"]["label prior"] == pytest.approx(expected)
    assert 0 <= summary["baselines"]["pixel-statistics logistic"] <= 1
    # the preset keeps the last epoch (the demo's default); the lowest val_focal epoch is still reported
    assert summary["weights_from"] == "last" and "Weights in the preset: the last epoch (2 of 2)" in report
    assert f"the lowest `val_focal` was epoch {summary['best_epoch']} of 2" in report
    assert summary["best_epoch"] in (1, 2) and summary["val_macro_f1"] == pytest.approx(
        json.loads((out / "train" / "val_report.json").read_text())["macro_f1"])
    truth = pd.read_csv(out / "synthetic" / "test_labels.csv", dtype=str)["Target"].str.split().map(len).mean()
    assert summary["test"]["truth_labels_per_image"] == pytest.approx(truth)

    # trained on the synthetic Kaggle-layout folder (64 px -> 48 px input)
    meta = json.loads((out / "train" / "preset" / "metadata.json").read_text())
    assert meta["model_name"] == tiny_model and meta["data"] == str(out / "synthetic")
    assert (meta["recipe"]["image_size"], meta["recipe"]["input_size"]) == (64, 48)
    # Team 1's LB-ratio rule, its targets the synthetic training-label frequencies
    ratios = y.mean(axis=0)
    np.testing.assert_allclose(meta["recipe"]["thresholds"]["kwargs"]["ratios"], ratios)

    sub = pd.read_csv(out / "submission" / "submission.csv", dtype=str, keep_default_na=False)
    test_ids = pd.read_csv(out / "synthetic" / "sample_submission.csv", dtype=str)["Id"]
    assert sorted(sub["Id"]) == sorted(test_ids)
    if meta["tie_aware_ratios"] is None:
        assert all(parse_target(t) for t in sub["Predicted"])  # force_top: every row has a label
    assert summary["test"]["labels_per_image"] == pytest.approx(sub["Predicted"].str.split().map(len).mean())
    # the test submission's TTA: Team 1's dihedral views of the whole image, max, without its random crops
    sidecar = json.loads((out / "submission" / "probabilities.csv.json").read_text())
    assert sidecar["tta"] == {"transforms": "d4", "n_random_crops": 0, "n_random_passes": 0, "aggregate": "max"}
    assert "TTA is `whole`" in report


def test_demo_tta_choices_map_to_the_recipes_tta():
    from hpa_zoo.demo import demo_tta
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.recipe import TTAConfig, load_recipe

    recipe = load_recipe("team1_densenet121_512")
    assert recipe.tta == TTAConfig("d4", n_random_crops=3, aggregate="max")  # teams.md §1.6
    assert demo_tta("whole", recipe) == TTAConfig("d4", n_random_crops=0, aggregate="max")
    assert demo_tta("default", recipe) == "default" and demo_tta("none", recipe) == "none"
    with pytest.raises(ConfigError, match="whole, default, none"):
        demo_tta("d8", recipe)
