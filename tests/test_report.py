"""hpa_zoo.analysis.report: the Fig. 2 report from predictions CSVs: per-class F1 against sklearn, the single-label
confusion matrix against sklearn's, the figures and one self-contained HTML page that states the data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from hpa_zoo import cli
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.infer.ensemble import save_predictions
from hpa_zoo.data.labels import format_target
from hpa_zoo.analysis.report import confusion_single_label, figure_report


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    y = np.zeros((n, 28), bool)
    for i in range(n):
        y[i, rng.choice([0, 25, 2, 7, 21], size=1 + (i % 4 == 0), replace=False)] = True
    ids = [f"img{i:03d}" for i in range(n)]
    pd.DataFrame({"Id": ids, "Target": [format_target(np.flatnonzero(r)) for r in y]}).to_csv(
        tmp_path / "labels.csv", index=False)
    good = np.clip(y * 0.7 + rng.uniform(0, 0.45, y.shape), 0, 1)  # informative
    weak = rng.uniform(0, 1, y.shape)                                 # noise
    paths = [save_predictions(tmp_path / f"{name}.csv", ids, p, model_name=name, fold="test")
             for name, p in (("good", good), ("weak", weak))]
    return tmp_path, ids, y, good, paths


def test_report_figures_and_numbers_match_sklearn(run):
    folder, ids, y, good, paths = run
    summary = figure_report(paths, folder / "labels.csv", out_dir=folder / "rep",
                            data_label="synthetic data — not an HPA result")
    pred = good > 0.5
    pred[np.arange(len(pred)), good.argmax(1)] = True
    table = pd.read_csv(folder / "rep" / "per_class_f1.csv")
    mine = table[table["model"] == "good"].set_index("class")["f1"]
    ref = f1_score(y, pred, average=None, zero_division=0)
    np.testing.assert_allclose([mine[c] for c in CLASS_NAMES], ref, atol=1e-6)
    assert summary["models"]["good"]["macro_f1"] == pytest.approx(ref.mean())
    assert summary["models"]["good"]["macro_f1"] > summary["models"]["weak"]["macro_f1"]
    single = y.sum(1) == 1
    cm = confusion_matrix(y[single].argmax(1), good[single].argmax(1), labels=range(28)).astype(float)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    np.testing.assert_allclose(confusion_single_label(y, good)[0], cm, atol=1e-12)
    for name in ("fig2a_class_counts", "fig2b_precision_recall", "fig2c_per_class_f1", "fig2d_single_multi",
                 "supp_fig2_confusion"):
        assert (folder / "rep" / f"{name}.png").stat().st_size > 5000
    html = (folder / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "synthetic data — not an HPA result" in html
    assert "the paper's figure" in html
    assert json.loads((folder / "rep" / "summary.json").read_text())["models"]["weak"]["n_images"] == 80


def test_cli_report(run, capsys):
    folder, _, _, _, paths = run
    rc = cli.main(["report", *map(str, paths), "--labels", str(folder / "labels.csv"), "--out", str(folder / "c")])
    assert rc == 0 and (folder / "c" / "report.html").is_file()
    assert "macro F1" in capsys.readouterr().out


def test_labels_come_from_a_target_column_when_no_csv_is_given(run):
    folder, ids, y, good, paths = run
    frame = pd.read_csv(paths[0])
    frame.insert(1, "Target", pd.read_csv(folder / "labels.csv")["Target"])
    frame.to_csv(folder / "val_predictions.csv", index=False)
    with_target = figure_report([folder / "val_predictions.csv"], None, out_dir=folder / "t", data_label="synthetic")
    with_csv = figure_report([paths[0]], folder / "labels.csv", out_dir=folder / "u", data_label="synthetic")
    assert list(with_target["models"].values())[0]["macro_f1"] == pytest.approx(
        list(with_csv["models"].values())[0]["macro_f1"])
