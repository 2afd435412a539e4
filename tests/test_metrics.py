"""hpa_zoo.nn.metrics against scikit-learn (an independent implementation of the same definitions)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from hpa_zoo.nn import metrics
from hpa_zoo.cli import main
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import HpaDataError


def _random_pair(rng, n=200, c=28, p_true=0.1, p_flip=0.08):
    y_true = (rng.random((n, c)) < p_true).astype(np.uint8)
    y_pred = np.where(rng.random((n, c)) < p_flip, 1 - y_true, y_true).astype(np.uint8)
    return y_true, y_pred


def _sk_macro(t, p):
    return f1_score(t, p, average="macro", zero_division=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_f1_and_per_class_scores_match_sklearn_on_random_data(seed):
    t, p = _random_pair(np.random.default_rng(seed))
    assert metrics.macro_f1(t, p) == pytest.approx(_sk_macro(t, p), abs=1e-12)
    prec, rec, f1, sup = precision_recall_fscore_support(t, p, average=None, zero_division=0)
    ours = metrics.per_class_scores(t, p)
    np.testing.assert_allclose(ours["f1"], f1, atol=1e-12)
    np.testing.assert_allclose(ours["precision"], prec, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], rec, atol=1e-12)
    np.testing.assert_array_equal(ours["support"], sup)


@pytest.mark.parametrize("case", ["no_positive_predictions", "classes_absent_from_truth", "all_empty", "perfect"])
def test_macro_f1_edge_cases_match_sklearn(case):
    rng = np.random.default_rng(3)
    t, p = _random_pair(rng, n=50)
    if case == "no_positive_predictions":
        p[:] = 0
    elif case == "classes_absent_from_truth":
        t[:, [3, 8, 27]] = 0
        p[:, 8] = 1  # predicted but never true: F1 0; 3 and 27 may be predicted too
    elif case == "all_empty":
        t[:], p[:] = 0, 0
    else:
        p = t.copy()
    expected = _sk_macro(t, p)
    assert metrics.macro_f1(t, p) == pytest.approx(expected, abs=1e-12)
    if case == "all_empty":
        assert expected == 0.0
    if case == "perfect":  # perfect prediction still scores classes absent from the truth as 0
        assert metrics.macro_f1(t, p) == pytest.approx((t.sum(0) > 0).mean())


def test_bad_shapes_and_non_binary_values_are_clear_errors():
    with pytest.raises(HpaDataError, match="must match"):
        metrics.macro_f1(np.zeros((3, 28)), np.zeros((4, 28)))
    with pytest.raises(HpaDataError, match="0/1"):
        metrics.macro_f1(np.zeros((3, 28)), np.full((3, 28), 0.7))


def test_streaming_macro_f1_over_batches_equals_numpy_on_all_data():
    rng = np.random.default_rng(4)
    t, _ = _random_pair(rng, n=97)
    logits = rng.normal(0, 2, t.shape).astype(np.float32) + 2.5 * (t - 0.5)
    m = metrics.MacroF1()
    for lo in range(0, 97, 20):  # uneven last batch
        m.update_state(t[lo:lo + 20], logits[lo:lo + 20])
    expected = _sk_macro(t, (logits > 0).astype(np.uint8))
    assert 0.2 < expected < 0.95
    assert float(m.result()) == pytest.approx(expected, abs=1e-6)
    m.reset_state()
    assert float(m.result()) == 0.0
    probs = metrics.MacroF1(from_logits=False, threshold=0.3)
    probs.update_state(t, 1 / (1 + np.exp(-logits)))
    assert float(probs.result()) == pytest.approx(_sk_macro(t, (1 / (1 + np.exp(-logits)) > 0.3)), abs=1e-6)
    clone = metrics.MacroF1.from_config(probs.get_config())
    assert (clone.threshold, clone.from_logits) == (0.3, False)


def _fig2d_example():
    # 3 single-label rows (class 0, 0, 1) and 2 multi-label rows ({0, 2}, {1, 2}); 4 classes.
    t = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0]], np.uint8)
    p = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]], np.uint8)
    return t, p


def test_report_splits_single_and_multi_label_rows_by_true_label_count():
    t, p = _fig2d_example()
    names = ["a", "b", "c", "d"]
    rep = metrics.f1_report(t, p, class_names=names)
    # single rows 0-2: class a: TP1 FN1 -> 2/3; class b: TP1 FP1 -> 2/3; c, d absent -> 0 => (4/3)/4
    assert rep["single_label_macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 4)
    # multi rows 3-4: a: TP1 -> 1; b: TP1 -> 1; c: TP1 FN1 -> 2/3; d -> 0
    assert rep["multi_label_macro_f1"] == pytest.approx((1 + 1 + 2 / 3) / 4)
    assert (rep["n_single_label"], rep["n_multi_label"], rep["n_images"]) == (3, 2, 5)
    assert rep["single_label_macro_f1"] == pytest.approx(_sk_macro(t[:3], p[:3]))
    assert rep["macro_f1"] == pytest.approx(_sk_macro(t, p))
    assert rep["per_class"]["c"] == {"index": 2, "f1": pytest.approx(2 / 3), "precision": 1.0, "recall": 0.5,
                                     "support": 2, "predicted": 1}
    md = metrics.report_to_markdown(rep)
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[2].strip() for row in table] == ["a", "b", "c", "d"]  # by support 3, 2, 2, 0
    assert "single-label images: macro F1 0.3333" in md


def _write(path, header, rows):
    path.write_text(header + "\n" + "\n".join(f"{i},{v}" for i, v in rows) + "\n")
    return path


def test_evaluate_csv_scores_a_submission_with_empty_predictions(tmp_path):
    rng = np.random.default_rng(5)
    t, p = _random_pair(rng, n=40, p_true=0.15)
    t[:, 0] = 1  # every image has a label
    p[:5] = 0  # five images predicted with no label: an empty Predicted
    ids = [f"id{k:03d}" for k in range(40)]
    fmt = lambda row: " ".join(str(c) for c in np.flatnonzero(row))  # noqa: E731
    labels = _write(tmp_path / "labels.csv", "Id,Target", [(i, fmt(r)) for i, r in zip(ids, t)])
    order = rng.permutation(40)  # rows in another order than the labels
    preds = _write(tmp_path / "sub.csv", "Id,Predicted", [(ids[k], fmt(p[k])) for k in order])
    rep = metrics.evaluate_csv(preds, labels)
    assert rep["macro_f1"] == pytest.approx(_sk_macro(t, p))
    assert rep["n_images"] == 40 and set(rep["per_class"]) == set(CLASS_NAMES)


def test_evaluate_csv_names_missing_ids_and_bad_rows(tmp_path):
    labels = _write(tmp_path / "labels.csv", "Id,Target", [("a", "0"), ("b", "1 2"), ("c", "5")])
    preds = _write(tmp_path / "sub.csv", "Id,Predicted", [("a", "0"), ("x", "1")])
    with pytest.raises(HpaDataError, match=r"2 id\(s\) of labels.csv missing from sub.csv: b, c.*1 id\(s\).*: x"):
        metrics.evaluate_csv(preds, labels)
    bad = _write(tmp_path / "bad.csv", "Id,Predicted", [("a", "0"), ("b", "1 99"), ("c", "")])
    with pytest.raises(HpaDataError, match=r"bad.csv line 3 \(Id b\).*99"):
        metrics.evaluate_csv(bad, labels)


def test_cli_evaluate_prints_and_writes_the_report(tmp_path, capsys):
    labels = _write(tmp_path / "labels.csv", "Id,Target", [("a", "0"), ("b", "0 25"), ("c", "25")])
    preds = _write(tmp_path / "sub.csv", "Id,Predicted", [("a", "0"), ("b", "25"), ("c", "")])
    out = tmp_path / "report.md"
    assert main(["evaluate", str(preds), str(labels), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # Nucleoplasm: TP1 FN1 -> 2/3; Cytosol: TP1 FN1 -> 2/3; 26 other classes 0.
    assert f"macro F1: **{(4 / 3) / 28:.4f}**" in printed
    assert out.read_text() == printed
    assert main(["evaluate", str(preds), str(tmp_path / "missing.csv")]) == 1


def test_bootstrap_macro_f1_matches_sklearn_on_the_same_resamples():
    rng = np.random.default_rng(4)
    y_true = (rng.random((80, 28)) < 0.15).astype(np.uint8)
    y_pred = np.where(rng.random((80, 28)) < 0.8, y_true, 1 - y_true).astype(np.uint8)
    out = metrics.bootstrap_macro_f1(y_true, y_pred, n_boot=200, confidence=0.9, seed=7)
    draw = np.random.default_rng(7)  # the documented resampling, scored by sklearn
    ref = [f1_score(y_true[idx], y_pred[idx], average="macro", zero_division=0)
           for idx in (draw.integers(0, 80, 80) for _ in range(200))]
    assert out["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert out["low"] == pytest.approx(np.quantile(ref, 0.05)) and out["high"] == pytest.approx(np.quantile(ref, 0.95))
    assert out["low"] < out["macro_f1"] < out["high"]
    # perfect predictions: every resample scores the classes it contains 1, absent classes 0
    exact = metrics.bootstrap_macro_f1(y_true, y_true, n_boot=50, seed=0)
    assert exact["macro_f1"] == pytest.approx(1.0) and exact["high"] <= 1.0
    # two seeds' predictions of the same images: each resample scores the mean of their macro F1s
    other = np.where(rng.random((80, 28)) < 0.6, y_true, 1 - y_true).astype(np.uint8)
    both = metrics.bootstrap_macro_f1(y_true, np.stack([y_pred, other]), n_boot=100, seed=3)
    draw = np.random.default_rng(3)
    ref = [np.mean([f1_score(y_true[idx], q[idx], average="macro", zero_division=0) for q in (y_pred, other)])
           for idx in (draw.integers(0, 80, 80) for _ in range(100))]
    assert both["low"] == pytest.approx(np.quantile(ref, 0.025))
    assert both["high"] == pytest.approx(np.quantile(ref, 0.975))
    assert both["macro_f1"] == pytest.approx(np.mean([f1_score(y_true, q, average="macro", zero_division=0)
                                                      for q in (y_pred, other)]))
    with pytest.raises(HpaDataError, match="n_boot=0"):
        metrics.bootstrap_macro_f1(y_true, y_pred, n_boot=0)
